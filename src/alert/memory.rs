//! Alert memory: what the alert policy remembers per (rule, entity) — when it last alerted and at which
//! severity (cooldown, escalation), and positive evaluations so far (min-hits). Rules read it too:
//! `alerted("wangiri_inbound", number, "72h")` is how a callback to a flagged Wangiri number is found.
//!
//! It also holds what analysts said (`alert::feedback`): the alerts it issued by id, so that a
//! decision naming an alert id finds its (rule, entity); a snooze per (rule, entity), until an event
//! time; and each entity's last few decisions, for `inspect`. Those are small (alerts are rare next
//! to records) and are checkpointed with the rest, so a snooze survives a restart and follows its
//! partition to another instance.
//!
//! Keyed by rule *id*, not by position in a rule set, so it survives a reload: a rule edited while a
//! SIM box is being tracked keeps its cooldown. Serializable, like the window store, for snapshots,
//! full or incremental (the changed entries and latches, with tombstones: see `state::delta`).

use ahash::AHashMap;
use serde::{Deserialize, Serialize};

use crate::record::{Number, Severity};
use crate::state::changes::{apply_entries, ChangedKeys};

use crate::rules::library::StableHash;

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Memo {
    /// Trigger time of the last alert emitted (UTC seconds), if any.
    pub last_alert: Option<i64>,
    pub last_severity: Severity,
    /// Positive evaluations since `first_hit` (min-hits counting).
    pub hits: u32,
    pub first_hit: i64,
    /// Newest time this entry was touched, for pruning.
    pub touched: i64,
    /// An analyst's snooze: positive evaluations before this time raise nothing.
    pub snoozed_until: Option<i64>,
}

/// An alert this memory issued: what a decision naming its id acts on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Issued {
    /// The memory entry of its (rule, entity).
    pub entry: (u64, u64),
    pub rule: String,
    /// The entity's key (unscoped), under which its decisions are listed.
    pub entity: String,
    /// Trigger time (UTC seconds).
    pub t: i64,
}

/// What an analyst decided about one alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Disposition {
    Confirmed,
    FalsePositive,
    Snooze,
}

impl Disposition {
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Confirmed => "confirmed",
            Disposition::FalsePositive => "false_positive",
            Disposition::Snooze => "snooze",
        }
    }

    pub const ALL: [Disposition; 3] = [
        Disposition::Confirmed,
        Disposition::FalsePositive,
        Disposition::Snooze,
    ];
}

/// A decision as the memory keeps it, in an entity's list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    pub alert_id: u128,
    pub rule: String,
    pub disposition: Disposition,
    /// Snooze end (UTC seconds).
    pub until: Option<i64>,
    pub analyst: String,
    pub note: Option<String>,
    /// The memory's event time when it was applied.
    pub at: i64,
}

/// Decisions kept per entity, newest last: enough for `inspect`; the counts are Prometheus's.
pub const JUDGEMENTS_KEPT: usize = 8;

/// What applying a decision did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Judged {
    /// Applied to the alert of this rule.
    Applied { rule: String },
    /// The same decision was applied before (a re-read after a restart): nothing changed.
    Again,
    /// No alert of that id here (another partition's, pruned, or never issued).
    Unknown,
}

/// An `edge` condition's key: (rule, entity, name).
type LatchKey = (u64, u64, u64);
/// An `edge` condition last seen: its value and when.
type Latch = (bool, i64);

#[derive(Default, Serialize, Deserialize)]
pub struct AlertMemory {
    entries: AHashMap<(u64, u64), Memo>,
    /// `edge` conditions last seen per (rule, entity, name): value and when.
    latches: AHashMap<LatchKey, Latch>,
    /// Trigger time of the evaluation in progress: `alerted` looks back from here.
    #[serde(skip)]
    now: i64,
    /// Entry count after the last prune: prune again when it has doubled.
    pruned_at_len: usize,
    /// Latch names per (rule, entity), for the bound on `edge`; rebuilt from `latches` after a
    /// restore or a prune (`None`).
    #[serde(skip)]
    latch_counts: Option<AHashMap<(u64, u64), u32>>,
    /// `edge` calls refused by the bound since start.
    #[serde(skip)]
    pub edges_refused: u64,
    /// Alerts issued, by id, while their entry is kept.
    issued: AHashMap<u128, Issued>,
    /// Analysts' decisions per entity key hash, newest last, at most `JUDGEMENTS_KEPT`.
    judgements: AHashMap<u64, Vec<Judgement>>,
    /// Keys changed since the last durable checkpoint (`track_changes`); `None`, and free, when off.
    #[serde(skip)]
    changes: Option<Box<MemoryChanges>>,
}

#[derive(Default)]
struct MemoryChanges {
    entries: ChangedKeys<(u64, u64)>,
    latches: ChangedKeys<LatchKey>,
    issued: ChangedKeys<u128>,
    judgements: ChangedKeys<u64>,
}

/// The memory's changes since its last durable checkpoint as written, borrowed. Decoded as
/// `MemoryDelta` (same fields, same order).
#[derive(Serialize)]
pub struct MemoryDeltaRef<'a> {
    entries: Vec<((u64, u64), Option<&'a Memo>)>,
    latches: Vec<(LatchKey, Option<&'a Latch>)>,
    issued: Vec<(u128, Option<&'a Issued>)>,
    judgements: Vec<(u64, Option<&'a Vec<Judgement>>)>,
    pruned_at_len: usize,
}

/// The memory's changes as read back (`AlertMemory::apply_delta`).
#[derive(Deserialize)]
pub struct MemoryDelta {
    entries: Vec<((u64, u64), Option<Memo>)>,
    latches: Vec<(LatchKey, Option<Latch>)>,
    issued: Vec<(u128, Option<Issued>)>,
    judgements: Vec<(u64, Option<Vec<Judgement>>)>,
    pruned_at_len: usize,
}

/// What `edge` answers when a rule asks about one name too many for one entity.
#[derive(Debug, PartialEq, Eq)]
pub struct TooManyEdges {
    pub max: u32,
}

/// What the policy decided for a positive evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Emit,
    /// Fewer positive evaluations than `min_hits` within the window so far.
    NeedMoreHits,
    /// Within the cooldown of an alert at the same or a higher severity.
    Cooldown,
    /// An analyst snoozed this (rule, entity) past the trigger time.
    Snoozed,
}

pub fn key_hash(s: &str) -> u64 {
    let mut h = StableHash::new();
    h.write(s.as_bytes());
    h.finish() as u64
}

/// The memory key of an entity as seen from one number (`policy::TriggerInfo::scope`).
pub fn scoped_key(entity_key: &str, number: Number) -> String {
    format!("{entity_key}\u{1f}{number}")
}

impl AlertMemory {
    pub fn set_now(&mut self, t: i64) {
        self.now = t;
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every (rule, entity) key hash that alerted, with the time of its last alert.
    pub fn alerts(&self) -> impl Iterator<Item = ((u64, u64), i64)> + '_ {
        self.entries
            .iter()
            .filter_map(|(k, m)| m.last_alert.map(|t| (*k, t)))
    }

    /// Whether `rule` alerted on `entity_key` within `window_s` before now.
    pub fn alerted_since(&self, rule: &str, entity_key: &str, window_s: i64) -> bool {
        self.entries
            .get(&(key_hash(rule), key_hash(entity_key)))
            .and_then(|m| m.last_alert)
            .is_some_and(|t| t > self.now - window_s && t <= self.now)
    }

    /// True when `cond` holds now and did not the last time this rule asked about this entity.
    /// A rule may keep at most `max` names per entity: names built from per-record values (a record
    /// id) would otherwise grow this memory for `state.max_window` — refused, and counted.
    pub fn edge(
        &mut self,
        rule: u64,
        entity: u64,
        name: &str,
        cond: bool,
        max: u32,
    ) -> Result<bool, TooManyEdges> {
        let now = self.now;
        let key = (rule, entity, key_hash(name));
        if !self.latches.contains_key(&key) {
            let latches = &self.latches;
            let counts = self.latch_counts.get_or_insert_with(|| {
                let mut c: AHashMap<(u64, u64), u32> = AHashMap::new();
                for (r, e, _) in latches.keys() {
                    *c.entry((*r, *e)).or_default() += 1;
                }
                c
            });
            let n = counts.entry((rule, entity)).or_default();
            if *n >= max {
                self.edges_refused += 1;
                return Err(TooManyEdges { max });
            }
            *n += 1;
        }
        let slot = self.latches.entry(key).or_insert((false, now));
        let rising = cond && !slot.0;
        *slot = (cond, now);
        if let Some(c) = self.changes.as_deref_mut() {
            c.latches.mark(key);
        }
        Ok(rising)
    }

    /// Heap bytes of the memory, for the state size (hash map slots and their keys and values).
    pub fn estimated_bytes(&self) -> usize {
        self.entries.capacity() * (std::mem::size_of::<((u64, u64), Memo)>() + 1)
            + self.latches.capacity() * (std::mem::size_of::<((u64, u64, u64), (bool, i64))>() + 1)
            + self.latch_counts.as_ref().map_or(0, |c| {
                c.capacity() * (std::mem::size_of::<((u64, u64), u32)>() + 1)
            })
            + self.issued.capacity() * (std::mem::size_of::<(u128, Issued)>() + 1 + 48)
            + self.judgements.capacity() * (std::mem::size_of::<(u64, Vec<Judgement>)>() + 1)
            + self
                .judgements
                .values()
                .map(|l| l.capacity() * (std::mem::size_of::<Judgement>() + 32))
                .sum::<usize>()
    }

    /// Records a positive evaluation at `t` and decides whether it becomes an alert.
    #[allow(clippy::too_many_arguments)]
    pub fn decide(
        &mut self,
        rule: &str,
        entity_key: &str,
        t: i64,
        severity: Severity,
        min_hits: u32,
        hit_window_s: i64,
        cooldown_s: i64,
    ) -> Decision {
        let key = (key_hash(rule), key_hash(entity_key));
        if let Some(c) = self.changes.as_deref_mut() {
            c.entries.mark(key);
        }
        let m = self.entries.entry(key).or_insert(Memo {
            last_alert: None,
            last_severity: Severity::Info,
            hits: 0,
            first_hit: t,
            touched: t,
            snoozed_until: None,
        });
        m.touched = m.touched.max(t);
        if m.snoozed_until.is_some_and(|u| t < u) {
            return Decision::Snoozed;
        }
        if t >= m.first_hit + hit_window_s || t < m.first_hit {
            m.hits = 0;
            m.first_hit = t;
        }
        m.hits += 1;
        if m.hits < min_hits {
            return Decision::NeedMoreHits;
        }
        // Within the cooldown only an escalation gets through (high → critical).
        if let Some(last) = m.last_alert {
            if t < last + cooldown_s && t >= last - cooldown_s && severity <= m.last_severity {
                return Decision::Cooldown;
            }
        }
        m.last_alert = Some(t);
        m.last_severity = severity;
        m.hits = 0;
        m.first_hit = t;
        Decision::Emit
    }

    /// Forgets entries untouched for `keep_s` before `now`, when the memory has doubled since the last
    /// prune (cheap amortised; alerts are rare next to records).
    pub fn maybe_prune(&mut self, now: i64, keep_s: i64) {
        let len = self.entries.len() + self.latches.len();
        if len < 1024 || len < 2 * self.pruned_at_len {
            return;
        }
        let mut changes = self.changes.as_deref_mut();
        self.entries.retain(|&k, m| {
            let keep = m.touched >= now - keep_s || m.snoozed_until.is_some_and(|u| u > now);
            if let (false, Some(c)) = (keep, changes.as_deref_mut()) {
                c.entries.mark(k);
            }
            keep
        });
        self.latches.retain(|&k, (_, t)| {
            let keep = *t >= now - keep_s;
            if let (false, Some(c)) = (keep, changes.as_deref_mut()) {
                c.latches.mark(k);
            }
            keep
        });
        let entries = &self.entries;
        self.issued.retain(|&id, i| {
            let keep = i.t >= now - keep_s && entries.contains_key(&i.entry);
            if let (false, Some(c)) = (keep, changes.as_deref_mut()) {
                c.issued.mark(id);
            }
            keep
        });
        self.judgements.retain(|&k, list| {
            let keep = list
                .iter()
                .any(|j| j.at >= now - keep_s || j.until.is_some_and(|u| u > now));
            if let (false, Some(c)) = (keep, changes.as_deref_mut()) {
                c.judgements.mark(k);
            }
            keep
        });
        self.latch_counts = None;
        self.pruned_at_len = self.entries.len() + self.latches.len();
    }

    /// Remembers an alert just emitted, so that a decision naming its id finds it.
    pub fn issue(&mut self, id: u128, issued: Issued) {
        if let Some(c) = self.changes.as_deref_mut() {
            c.issued.mark(id);
        }
        self.issued.insert(id, issued);
    }

    /// Whether this memory issued the alert `id` (and still keeps it).
    pub fn knows(&self, id: u128) -> bool {
        self.issued.contains_key(&id)
    }

    /// Applies an analyst's decision about alert `id`: lists it under the alert's entity and, for a
    /// snooze, holds back the alert's (rule, entity) until `j.until`. The same decision twice (a
    /// re-read of the feedback after a restart) changes nothing.
    pub fn judge(&mut self, mut j: Judgement) -> Judged {
        let Some(issued) = self.issued.get(&j.alert_id) else {
            return Judged::Unknown;
        };
        let entity = key_hash(&issued.entity);
        let list = self.judgements.entry(entity).or_default();
        let same = |k: &Judgement| {
            (k.alert_id, k.disposition, k.until, &k.analyst, &k.note)
                == (j.alert_id, j.disposition, j.until, &j.analyst, &j.note)
        };
        if list.iter().any(same) {
            return Judged::Again;
        }
        j.rule = issued.rule.clone();
        j.at = self.now;
        let rule = j.rule.clone();
        if let (Disposition::Snooze, Some(until)) = (j.disposition, j.until) {
            if let Some(m) = self.entries.get_mut(&issued.entry) {
                m.snoozed_until = Some(until);
                m.touched = m.touched.max(self.now);
            }
            if let Some(c) = self.changes.as_deref_mut() {
                c.entries.mark(issued.entry);
            }
        }
        list.push(j);
        if list.len() > JUDGEMENTS_KEPT {
            list.remove(0);
        }
        if let Some(c) = self.changes.as_deref_mut() {
            c.judgements.mark(entity);
        }
        Judged::Applied { rule }
    }

    /// An entity's decisions, newest last.
    pub fn judgements_of(&self, entity_key: &str) -> &[Judgement] {
        self.judgements
            .get(&key_hash(entity_key))
            .map_or(&[], |v| v.as_slice())
    }

    /// The snooze on (rule, entity), if one holds at `now`.
    pub fn snoozed_until(&self, rule: &str, entity_key: &str) -> Option<i64> {
        self.entries
            .get(&(key_hash(rule), key_hash(entity_key)))
            .and_then(|m| m.snoozed_until)
            .filter(|&u| u > self.now)
    }

    /// Starts (or stops) recording changed keys for incremental checkpoints; as
    /// `WindowStore::track_changes`.
    pub fn track_changes(&mut self, on: bool) {
        crate::state::changes::track(&mut self.changes, on);
    }

    /// Closes the open epoch of changes under `epoch`; as `WindowStore::seal_changes`.
    pub fn seal_changes(&mut self, epoch: u64) {
        if let Some(c) = self.changes.as_deref_mut() {
            c.entries.seal(epoch);
            c.latches.seal(epoch);
            c.issued.seal(epoch);
            c.judgements.seal(epoch);
        }
    }

    /// The changes of every sealed epoch not yet durable, borrowing the memory; as
    /// `WindowStore::delta` (encode it before the memory changes again).
    pub fn delta(&self) -> MemoryDeltaRef<'_> {
        debug_assert!(self.changes.is_some(), "delta() with change tracking off");
        let (entries, latches, issued, judgements) = match self.changes.as_deref() {
            Some(c) => {
                debug_assert!(
                    c.entries.open_is_empty()
                        && c.latches.open_is_empty()
                        && c.issued.open_is_empty()
                        && c.judgements.open_is_empty(),
                    "delta() after changes since seal_changes"
                );
                (
                    c.entries.entries(&self.entries),
                    c.latches.entries(&self.latches),
                    c.issued.entries(&self.issued),
                    c.judgements.entries(&self.judgements),
                )
            }
            None => (Vec::new(), Vec::new(), Vec::new(), Vec::new()),
        };
        MemoryDeltaRef {
            entries,
            latches,
            issued,
            judgements,
            pruned_at_len: self.pruned_at_len,
        }
    }

    /// Sealed epochs up to and including `epoch` are durable: forgets their changes.
    pub fn changes_durable(&mut self, epoch: u64) {
        if let Some(c) = self.changes.as_deref_mut() {
            c.entries.durable(epoch);
            c.latches.durable(epoch);
            c.issued.durable(epoch);
            c.judgements.durable(epoch);
        }
    }

    /// Entries and latches sorted, and the prune mark: for comparing two memories whose hash maps
    /// iterate in different orders.
    #[cfg(test)]
    pub(crate) fn canonical(&self) -> Vec<u8> {
        let mut entries: Vec<_> = self.entries.iter().collect();
        entries.sort_unstable_by_key(|(k, _)| **k);
        let mut latches: Vec<_> = self.latches.iter().collect();
        latches.sort_unstable_by_key(|(k, _)| **k);
        let mut issued: Vec<_> = self.issued.iter().collect();
        issued.sort_unstable_by_key(|(k, _)| **k);
        let mut judgements: Vec<_> = self.judgements.iter().collect();
        judgements.sort_unstable_by_key(|(k, _)| **k);
        postcard::to_stdvec(&(entries, latches, issued, judgements, self.pruned_at_len))
            .expect("encodes")
    }

    /// Restore: applies a delta on top of the state it was taken relative to.
    pub fn apply_delta(&mut self, d: MemoryDelta) {
        apply_entries(&mut self.entries, d.entries);
        apply_entries(&mut self.latches, d.latches);
        apply_entries(&mut self.issued, d.issued);
        apply_entries(&mut self.judgements, d.judgements);
        self.pruned_at_len = d.pruned_at_len;
        // Rebuilt from the latches when next needed.
        self.latch_counts = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cooldown_lets_escalations_through_and_min_hits_counts_within_the_window() {
        let mut m = AlertMemory::default();
        let d = |m: &mut AlertMemory, t, s| m.decide("r", "e", t, s, 1, 3600, 3600);
        assert_eq!(d(&mut m, 0, Severity::High), Decision::Emit);
        assert_eq!(d(&mut m, 600, Severity::High), Decision::Cooldown);
        assert_eq!(d(&mut m, 700, Severity::Critical), Decision::Emit);
        assert_eq!(d(&mut m, 800, Severity::High), Decision::Cooldown);
        assert_eq!(d(&mut m, 700 + 3600, Severity::High), Decision::Emit);
        m.set_now(700 + 3600 + 10);
        assert!(m.alerted_since("r", "e", 60));
        assert!(!m.alerted_since("r", "other", 60));

        let mut m = AlertMemory::default();
        let d = |m: &mut AlertMemory, t| m.decide("r", "e", t, Severity::Medium, 3, 600, 600);
        assert_eq!(d(&mut m, 0), Decision::NeedMoreHits);
        assert_eq!(d(&mut m, 100), Decision::NeedMoreHits);
        // The window restarts: the first two hits no longer count.
        assert_eq!(d(&mut m, 700), Decision::NeedMoreHits);
        assert_eq!(d(&mut m, 800), Decision::NeedMoreHits);
        assert_eq!(d(&mut m, 900), Decision::Emit);
    }

    #[test]
    fn edge_fires_once_per_crossing_and_rearms_when_seen_false() {
        let mut m = AlertMemory::default();
        let seq = [false, true, true, false, true];
        let got: Vec<bool> = seq
            .iter()
            .map(|&c| m.edge(1, 2, "above", c, 16).unwrap())
            .collect();
        assert_eq!(got, [false, true, false, false, true]);
        // Another entity, another name: separate latches.
        assert!(m.edge(1, 3, "above", true, 16).unwrap());
        assert!(m.edge(1, 2, "other", true, 16).unwrap());
        // A third name for entity 2 with a bound of 2: refused and counted; the known ones still work.
        assert_eq!(m.edge(1, 2, "third", true, 2), Err(TooManyEdges { max: 2 }));
        assert_eq!(m.edges_refused, 1);
        assert!(!m.edge(1, 2, "other", true, 2).unwrap());
        assert!(m.edge(1, 4, "third", true, 2).unwrap(), "per entity");
    }

    fn snooze(id: u128, until: i64) -> Judgement {
        Judgement {
            alert_id: id,
            rule: String::new(),
            disposition: Disposition::Snooze,
            until: Some(until),
            analyst: "m".into(),
            note: None,
            at: 0,
        }
    }

    /// A snooze holds back the (rule, entity) of the alert it names until its end, escalations
    /// included, and no other; it survives a prune and a checkpoint; the same decision twice
    /// changes nothing; an id never issued is unknown.
    #[test]
    fn a_snooze_holds_back_its_rule_and_entity_until_it_ends() {
        let mut m = AlertMemory::default();
        m.track_changes(true);
        let d = |m: &mut AlertMemory, e: &str, t, s| m.decide("r", e, t, s, 1, 600, 600);
        assert_eq!(d(&mut m, "e", 0, Severity::High), Decision::Emit);
        let issued = |e: &str| Issued {
            entry: (key_hash("r"), key_hash(e)),
            rule: "r".into(),
            entity: e.into(),
            t: 0,
        };
        m.issue(7, issued("e"));
        assert_eq!(d(&mut m, "f", 0, Severity::High), Decision::Emit);
        m.issue(8, issued("f"));
        m.seal_changes(1);
        let base = postcard::to_stdvec(&m).unwrap();
        m.changes_durable(1);

        m.set_now(10);
        assert_eq!(m.judge(snooze(99, 5000)), Judged::Unknown);
        assert_eq!(
            m.judge(snooze(7, 5000)),
            Judged::Applied { rule: "r".into() }
        );
        assert_eq!(m.judge(snooze(7, 5000)), Judged::Again);
        assert_eq!(m.snoozed_until("r", "e"), Some(5000));
        assert_eq!(m.judgements_of("e").len(), 1);
        assert_eq!(m.judgements_of("e")[0].at, 10);
        // Past the cooldown, and escalating: still held back; the other entity is not.
        assert_eq!(d(&mut m, "e", 1000, Severity::Critical), Decision::Snoozed);
        assert_eq!(d(&mut m, "f", 1000, Severity::High), Decision::Emit);
        // A checkpoint delta carries the snooze and the decision.
        m.seal_changes(2);
        let delta = postcard::to_stdvec(&m.delta()).unwrap();
        let restored = restore(&base, &[delta]);
        assert_eq!(restored.canonical(), m.canonical());
        // A prune long after keeps the snoozed entry while the snooze holds.
        for e in 0..3000 {
            m.decide("other", &e.to_string(), 4000, Severity::Low, 1, 60, 60);
        }
        m.maybe_prune(4500, 100);
        assert_eq!(d(&mut m, "e", 4900, Severity::High), Decision::Snoozed);
        // It ends.
        assert_eq!(d(&mut m, "e", 5000, Severity::High), Decision::Emit);
    }

    fn restore(base: &[u8], deltas: &[Vec<u8>]) -> AlertMemory {
        let mut m: AlertMemory = postcard::from_bytes(base).unwrap();
        for d in deltas {
            m.apply_delta(postcard::from_bytes(d).unwrap());
        }
        m
    }

    #[test]
    fn tracking_off_records_nothing() {
        let mut m = AlertMemory::default();
        for e in 0..100 {
            m.decide("r", &e.to_string(), e, Severity::High, 1, 60, 60);
            m.edge(1, e as u64, "x", true, 4).unwrap();
        }
        assert!(m.changes.is_none());
        m.track_changes(true);
        m.seal_changes(1);
        assert!(m.delta().entries.is_empty() && m.delta().latches.is_empty());
    }

    /// A prune removes most entries: the delta carries them as tombstones, and only the entries the
    /// prune removed or a decision touched, not every entry the sweep looked at.
    #[test]
    fn a_delta_carries_pruned_entries_as_tombstones() {
        let mut m = AlertMemory::default();
        m.track_changes(true);
        for e in 0..1500 {
            m.decide("r", &e.to_string(), e, Severity::High, 1, 60, 60);
            m.set_now(e);
            m.edge(7, e as u64, "above", e % 2 == 0, 4).unwrap();
        }
        m.seal_changes(1);
        let base = postcard::to_stdvec(&m).unwrap();
        m.changes_durable(1);

        // Epoch 2 touches ten entries; it fails. Epoch 3 prunes what is older than t = 1000.
        for e in 1490..1500 {
            m.decide("r", &e.to_string(), 5000, Severity::Critical, 1, 60, 60);
        }
        m.seal_changes(2);
        let _failed = postcard::to_stdvec(&m.delta()).unwrap();
        m.maybe_prune(2000, 1000);
        assert_eq!(m.len(), 500);
        m.seal_changes(3);
        let delta = postcard::to_stdvec(&m.delta()).unwrap();
        let decoded: MemoryDelta = postcard::from_bytes(&delta).unwrap();
        assert_eq!(
            decoded.entries.len(),
            1000 + 10,
            "pruned, and the failed epoch's"
        );
        assert_eq!(
            decoded.entries.iter().filter(|(_, v)| v.is_none()).count(),
            1000
        );
        assert_eq!(decoded.latches.len(), 1000);
        m.changes_durable(3);

        let mut restored = restore(&base, &[delta]);
        assert_eq!(restored.canonical(), m.canonical());
        // The latch bound is rebuilt from the restored latches.
        restored.set_now(3000);
        m.set_now(3000);
        for name in ["a", "b", "c", "d"] {
            assert_eq!(
                restored.edge(7, 1200, name, true, 4),
                m.edge(7, 1200, name, true, 4)
            );
        }
        assert_ne!(m.changes.as_ref().unwrap().latches.len(), 0);
        m.seal_changes(4);
        m.changes_durable(4);
        let c = m.changes.as_ref().unwrap();
        assert_eq!(
            c.entries.len() + c.latches.len(),
            0,
            "nothing held once durable"
        );
    }
}
