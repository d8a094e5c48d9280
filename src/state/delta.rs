//! Incremental checkpoints: what changed in a store since its last durable checkpoint.
//!
//! **Why.** A full snapshot writes every entity, changed or not: ~300 MiB per partition at a million
//! subscribers, every interval, when a few percent of them had a record since. A delta writes only the
//! entities touched since the base it applies to, and a restore reads the last full base, then the
//! deltas written after it, in order.
//!
//! **Per-key tombstones.** Each keyed map (subscribers, calling numbers, IMEIs, line links, account
//! slots, alert memos) lists every key changed since the base with its value now, or `None` when the
//! key is gone (evicted, cleared, pruned). So a removal needs no replay of the sweep that made it, and
//! a key changed ten times is written once. The dedup memory is the exception: it changes with every
//! record and its entries only ever come and go by generation, so it travels as a journal of what
//! happened (`DedupOp`). Small things (counters, watermark, gap marks) are written whole every time.
//!
//! **Relative to the last durable checkpoint, not the last one taken.** A checkpoint can fail after
//! its changes were sealed (object store down, process killed mid-upload), and nothing restores from
//! a failed one. So changes are kept per sealed epoch until the caller says an epoch is durable, and a
//! delta holds every sealed epoch not yet confirmed: with checkpoints A then B in flight, B's delta
//! contains A's changes too, so B applied to the last durable checkpoint is whole whether or not A
//! ever lands.
//!
//! **What it costs.** Nothing while tracking is off (replay, tests, `inspect`): no set is touched. With
//! it on, one hash-set insert per key touched, and memory proportional to the keys changed since the
//! last durable checkpoint: each key is held once with the newest epoch that changed it, however many
//! checkpoints fail in a row, and the dedup journal never holds more than two generations of ids.
//!
//! **The trap.** A delta reads the store's values when it is encoded, not when its epoch was sealed:
//! encode it right after `seal_changes`, before the next record, or its values run ahead of the input
//! offsets the checkpoint claims.

use std::collections::{BTreeMap, VecDeque};

use ahash::AHashSet;
use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::record::GapMark;

use super::calls::OpenCall;
use super::changes::{apply_entries, track, StoreChanges};
use super::dedup::DedupOp;
use super::entity::Entity;
use super::store::{Account, StoreCounters, WindowStore};
use super::timers::Timer;

/// The sealed epochs' journal, written as one sequence.
struct JournalRef<'a>(&'a VecDeque<(u64, Vec<DedupOp>)>);

impl Serialize for JournalRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        // postcard needs the length up front, which a chained iterator does not give serde.
        let len = self.0.iter().map(|(_, ops)| ops.len()).sum();
        let mut seq = s.serialize_seq(Some(len))?;
        for op in self.0.iter().flat_map(|(_, ops)| ops) {
            seq.serialize_element(op)?;
        }
        seq.end()
    }
}

/// A store's delta as written, borrowed from the store: no entity is copied. Decoded as `StoreDelta`
/// (same fields, same order).
#[derive(Serialize)]
pub struct StoreDeltaRef<'a> {
    subscribers: Vec<(u64, Option<&'a Entity>)>,
    calling_numbers: Vec<(u64, Option<&'a Entity>)>,
    imeis: Vec<(u64, Option<&'a Entity>)>,
    line_accounts: Vec<(u64, Option<&'a u32>)>,
    open_calls: Vec<(u64, Option<&'a OpenCall>)>,
    /// Slots are never reused, so the vector only grows; slots past the base's length that are not
    /// listed are empty.
    accounts_len: u32,
    accounts: Vec<(u32, Option<&'a Account>)>,
    /// Per account id whose timers changed, all its pending timers with their sequence numbers,
    /// which order them against every other account's timers due at the same instant.
    timers: Vec<(&'a str, Vec<(u64, &'a Timer)>)>,
    timer_seq: u64,
    dedup: JournalRef<'a>,
    newest: Option<i64>,
    final_watermark: Option<i64>,
    next_maintenance: i64,
    counters: &'a StoreCounters,
    gaps: &'a [GapMark],
}

/// A store's delta as read back (`WindowStore::apply_delta`).
#[derive(Deserialize)]
pub struct StoreDelta {
    subscribers: Vec<(u64, Option<Entity>)>,
    calling_numbers: Vec<(u64, Option<Entity>)>,
    imeis: Vec<(u64, Option<Entity>)>,
    line_accounts: Vec<(u64, Option<u32>)>,
    open_calls: Vec<(u64, Option<OpenCall>)>,
    accounts_len: u32,
    accounts: Vec<(u32, Option<Box<Account>>)>,
    timers: Vec<(CompactString, Vec<(u64, Timer)>)>,
    timer_seq: u64,
    dedup: Vec<DedupOp>,
    newest: Option<i64>,
    final_watermark: Option<i64>,
    next_maintenance: i64,
    counters: StoreCounters,
    gaps: Vec<GapMark>,
}

impl WindowStore {
    /// Starts (or stops) recording what changes, for incremental checkpoints. Off by default, so that
    /// replay and tests pay nothing; the daemon turns it on for each partition store after creating or
    /// restoring it. Turning it on starts with no recorded changes: the next delta is relative to a
    /// full checkpoint taken from then on. Turning it on again while on keeps what was recorded.
    pub fn track_changes(&mut self, on: bool) {
        track(&mut self.changes, on);
    }

    /// Closes the open epoch of changes under `epoch` (a checkpoint's sequence number, increasing).
    /// Full checkpoints seal too: confirming one forgets everything before it.
    pub fn seal_changes(&mut self, epoch: u64) {
        let Some(c) = self.changes.as_deref_mut() else {
            return;
        };
        debug_assert!(
            c.last_sealed.is_none_or(|last| epoch > last),
            "epochs increase"
        );
        c.last_sealed = Some(epoch);
        for keys in c.entity_keys() {
            keys.seal(epoch);
        }
        c.line_accounts.seal(epoch);
        c.open_calls.seal(epoch);
        c.accounts.seal(epoch);
        c.timers.seal(epoch);
        c.dedup.seal(epoch);
    }

    /// The changes of every sealed epoch not yet durable (their union, current values), borrowing the
    /// store. Encode it before the store changes again (module doc). Empty with tracking off.
    pub fn delta(&self) -> StoreDeltaRef<'_> {
        // Tracking off: nothing was recorded, so the delta is empty (and the daemon has a bug).
        static NONE: std::sync::OnceLock<Box<StoreChanges>> = std::sync::OnceLock::new();
        debug_assert!(self.changes.is_some(), "delta() with change tracking off");
        let c = self
            .changes
            .as_ref()
            .unwrap_or_else(|| NONE.get_or_init(Box::default));
        debug_assert!(
            c.open_is_empty(),
            "delta() after changes since seal_changes: its values would run ahead of its epoch"
        );
        let mut timers: BTreeMap<&str, Vec<(u64, &Timer)>> = c
            .timers
            .sorted()
            .into_iter()
            .map(|id| (id.as_str(), Vec::new()))
            .collect();
        for t in self
            .timers
            .pending_where(|id| c.timers.sealed.contains_key(id))
        {
            if let Some(list) = timers.get_mut(t.account_id.as_str()) {
                list.push((t.seq, t));
            }
        }
        for list in timers.values_mut() {
            list.sort_unstable_by_key(|(seq, t)| (t.at.utc, *seq));
        }
        StoreDeltaRef {
            subscribers: c.subscribers.entries(&self.subscribers),
            calling_numbers: c.calling_numbers.entries(&self.calling_numbers),
            imeis: c.imeis.entries(&self.imeis),
            line_accounts: c.line_accounts.entries(&self.line_accounts),
            open_calls: c.open_calls.entries(&self.open_calls),
            accounts_len: self.accounts.len() as u32,
            accounts: c
                .accounts
                .sorted()
                .into_iter()
                .map(|&slot| (slot, self.accounts[slot as usize].as_deref()))
                .collect(),
            timers: timers.into_iter().collect(),
            timer_seq: self.timers.next_seq(),
            dedup: JournalRef(&c.dedup.sealed),
            newest: self.newest,
            final_watermark: self.final_watermark,
            next_maintenance: self.next_maintenance,
            counters: &self.counters,
            gaps: &self.gaps,
        }
    }

    /// Sealed epochs up to and including `epoch` are durable: forgets their changes.
    pub fn changes_durable(&mut self, epoch: u64) {
        let Some(c) = self.changes.as_deref_mut() else {
            return;
        };
        for keys in c.entity_keys() {
            keys.durable(epoch);
        }
        c.line_accounts.durable(epoch);
        c.open_calls.durable(epoch);
        c.accounts.durable(epoch);
        c.timers.durable(epoch);
        c.dedup.durable(epoch);
    }

    /// Restore: applies a delta on top of the state it was taken relative to (a full base, then each
    /// delta in the order written). Before tracking is turned on: what it applies is not recorded.
    pub fn apply_delta(&mut self, d: StoreDelta) {
        apply_entries(&mut self.subscribers, d.subscribers);
        apply_entries(&mut self.calling_numbers, d.calling_numbers);
        apply_entries(&mut self.imeis, d.imeis);
        apply_entries(&mut self.line_accounts, d.line_accounts);
        apply_entries(&mut self.open_calls, d.open_calls);
        if self.accounts.len() < d.accounts_len as usize {
            self.accounts.resize_with(d.accounts_len as usize, || None);
        }
        for (slot, acct) in d.accounts {
            let here = &mut self.accounts[slot as usize];
            // The index is rebuilt for the slots that changed; an id that moved to a newer slot (an
            // account cleared, then seen again) must not be unlinked by its old slot's tombstone.
            if let Some(old) = here.as_deref() {
                if self.account_index.get(&old.id) == Some(&slot) {
                    self.account_index.remove(&old.id);
                }
            }
            if let Some(new) = acct.as_deref() {
                self.account_index.insert(new.id.clone(), slot);
            }
            *here = acct;
        }
        let replaced: AHashSet<CompactString> = d.timers.iter().map(|(id, _)| id.clone()).collect();
        self.timers.replace(
            |id| replaced.contains(id),
            d.timers
                .into_iter()
                .flat_map(|(_, list)| list)
                .map(|(seq, t)| Timer { seq, ..t }),
            d.timer_seq,
        );
        self.dedup.replay(&d.dedup);
        self.newest = d.newest;
        self.final_watermark = d.final_watermark;
        self.next_maintenance = d.next_maintenance;
        self.counters = d.counters;
        self.gaps = d.gaps;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::memory::{AlertMemory, MemoryDelta};
    use crate::classify::{Classifier, PrefixList};
    use crate::config::{Secs, StateConfig};
    use crate::record::{AccountEvent, Date, Decoder, EventTime, Number, Severity, UsageRecord};
    use ahash::AHashMap;
    use proptest::prelude::*;

    const T0: i64 = 1_790_000_000;

    /// Short horizons, so that a few hundred records cross dedup generations, maintenance sweeps,
    /// evictions, ledger pruning and overdue timers.
    fn config() -> StateConfig {
        StateConfig {
            allowed_lateness: Secs(600),
            dedup_horizon: Secs(1800),
            max_window: Secs(2 * 3600),
            distinct_horizon: Secs(3600),
            invoice_overdue_days: vec![1, 2],
            ledger_history: Secs(12 * 3600),
            track_imei: true,
            ..StateConfig::default()
        }
    }

    /// The store's content in a form two stores can be compared by: hash maps sorted by key, each
    /// part encoded. (Entities here stay in the small distinct form, which has no hash map.)
    fn canonical(s: &WindowStore) -> Vec<(&'static str, Vec<u8>)> {
        fn enc<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
            postcard::to_stdvec(v).expect("encodes")
        }
        fn sorted<K: Ord + Serialize, V: Serialize>(m: &AHashMap<K, V>) -> Vec<u8> {
            let mut v: Vec<(&K, &V)> = m.iter().collect();
            v.sort_unstable_by(|a, b| a.0.cmp(b.0));
            enc(&v)
        }
        let timers: Vec<(u64, &Timer)> = s
            .timers
            .in_order()
            .into_iter()
            .map(|t| (t.seq, t))
            .collect();
        vec![
            ("subscribers", sorted(&s.subscribers)),
            ("calling_numbers", sorted(&s.calling_numbers)),
            ("imeis", sorted(&s.imeis)),
            ("line_accounts", sorted(&s.line_accounts)),
            ("open_calls", sorted(&s.open_calls)),
            ("accounts", enc(&s.accounts)),
            ("account_index", sorted(&s.account_index)),
            ("timers", enc(&(s.timers.next_seq(), timers))),
            ("dedup", enc(&s.dedup.canonical())),
            (
                "newest",
                enc(&(s.newest, s.final_watermark, s.next_maintenance)),
            ),
            ("counters", enc(&s.counters)),
            ("gaps", enc(&s.gaps)),
        ]
    }

    /// One input, made once and applied alike to the original and the restored state.
    #[derive(Clone, Debug)]
    enum Input {
        Usage(UsageRecord),
        Event(AccountEvent),
        Idle(i64),
        ClearLine(Number),
        ClearAccount(String),
        Decide {
            rule: u8,
            entity: u8,
            t: i64,
            critical: bool,
        },
        Edge {
            rule: u8,
            entity: u8,
            name: u8,
            cond: bool,
            t: i64,
        },
    }

    /// Applies an input; what it returns (outcome, timers fired, features) must be the same for the
    /// original and the restored state.
    fn apply(input: &Input, store: &mut WindowStore, memory: &mut AlertMemory) -> String {
        let classifier = Classifier::new(Number::parse("33").unwrap(), PrefixList::new());
        let mut fired = Vec::new();
        let outcome = match input {
            Input::Usage(r) => {
                let outcome = store.apply_usage(r, classifier.classify(r));
                store.advance(&mut fired);
                let line = store.subscriber(r.served.msisdn).map(|e| {
                    let all = crate::classify::ClassFilter::all();
                    let sums = crate::state::Features::sum(e, &all, 3600, e.last_seen);
                    let distinct =
                        crate::state::Features::distinct_numbers(e, &all, 3600, e.last_seen);
                    (
                        sums,
                        distinct,
                        e.max_concurrent_calls(e.first_seen, e.last_seen),
                    )
                });
                format!("{outcome:?} {line:?}")
            }
            Input::Event(e) => {
                let outcome = store.apply_event(e);
                store.advance(&mut fired);
                let acct = store.account(&e.account_id).map(|a| {
                    (
                        a.ledger.exposure(),
                        a.lines.clone(),
                        store.usage_of(a).charges_since(0),
                    )
                });
                format!("{outcome:?} {acct:?}")
            }
            Input::Idle(now) => format!("{}", store.advance_idle(*now, &mut fired)),
            Input::ClearLine(n) => format!("{}", store.remove_subscriber(*n)),
            Input::ClearAccount(id) => format!("{}", store.remove_account(id)),
            Input::Decide {
                rule,
                entity,
                t,
                critical,
            } => {
                let severity = if *critical {
                    Severity::Critical
                } else {
                    Severity::High
                };
                let d = memory.decide(
                    &format!("r{rule}"),
                    &format!("e{entity}"),
                    *t,
                    severity,
                    2,
                    3600,
                    1800,
                );
                format!("{d:?}")
            }
            Input::Edge {
                rule,
                entity,
                name,
                cond,
                t,
            } => {
                memory.set_now(*t);
                let e = memory.edge(
                    u64::from(*rule),
                    u64::from(*entity),
                    &format!("n{name}"),
                    *cond,
                    2,
                );
                format!("{e:?}")
            }
        };
        format!("{outcome} fired {fired:?}")
    }

    /// What the test generates; `Input`s are made from these against a running clock.
    #[derive(Clone, Debug)]
    enum Step {
        /// A usage record `dt` s after the clock, stamped `back` s earlier (late past 600 s); or
        /// (`again` 1) a resend of an earlier record, or (2) its id with other content.
        Usage {
            line: u8,
            acct: Option<u8>,
            kind: u8,
            other: u8,
            imei: u8,
            charge: u8,
            dt: u16,
            back: u16,
            again: u8,
        },
        Event {
            acct: u8,
            line: u8,
            kind: u8,
            n: u8,
            days: u8,
        },
        Idle {
            minutes: u16,
        },
        Clear {
            account: bool,
            which: u8,
        },
        Alert {
            rule: u8,
            entity: u8,
            edge: bool,
            cond: bool,
        },
        /// Seal and write a checkpoint: `fate` 0 confirmed, 1 failed, 2 left in flight.
        Checkpoint {
            full: bool,
            fate: u8,
        },
        /// Settle a checkpoint in flight.
        Settle {
            which: u8,
            ok: bool,
        },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            12 => (0u8..6, proptest::option::weighted(0.8, 0u8..3), 0u8..4, 0u8..6, 0u8..4, 0u8..3, 0u16..1500, 0u16..900, prop_oneof![8 => Just(0u8), 1 => Just(1), 1 => Just(2)])
                .prop_map(|(line, acct, kind, other, imei, charge, dt, back, again)| Step::Usage { line, acct, kind, other, imei, charge, dt, back, again }),
            5 => (0u8..3, 0u8..6, 0u8..7, 0u8..3, 0u8..3).prop_map(|(acct, line, kind, n, days)| Step::Event { acct, line, kind, n, days }),
            1 => (0u16..600).prop_map(|minutes| Step::Idle { minutes }),
            1 => (any::<bool>(), 0u8..6).prop_map(|(account, which)| Step::Clear { account, which }),
            3 => (0u8..2, 0u8..4, any::<bool>(), any::<bool>()).prop_map(|(rule, entity, edge, cond)| Step::Alert { rule, entity, edge, cond }),
            3 => (prop::bool::weighted(0.2), 0u8..3).prop_map(|(full, fate)| Step::Checkpoint { full, fate }),
            1 => (any::<u8>(), prop::bool::weighted(0.7)).prop_map(|(which, ok)| Step::Settle { which, ok }),
        ]
    }

    /// Makes inputs from steps: a clock, and the records so far for resends.
    struct Source {
        now: i64,
        n: u32,
        sent: Vec<(String, String)>,
    }

    impl Source {
        fn input(&mut self, step: &Step) -> Option<Input> {
            let decoder = Decoder::default();
            let at = |t: i64| EventTime::from_utc(t).to_string();
            Some(match *step {
                Step::Usage {
                    line,
                    acct,
                    kind,
                    other,
                    imei,
                    charge,
                    dt,
                    back,
                    again,
                } => {
                    if again > 0 && !self.sent.is_empty() {
                        let (_, json) = self.sent[other as usize * 7 % self.sent.len()].clone();
                        let json = match again {
                            1 => json,
                            _ => json.replace("\"duration_s\":", "\"duration_s\":1"),
                        };
                        return Some(Input::Usage(decoder.usage(json.as_bytes()).unwrap()));
                    }
                    self.now += i64::from(dt);
                    self.n += 1;
                    let id = format!("u{}", self.n);
                    let (record_type, direction, number) = match kind {
                        0 => ("voice", "mo", format!("3361111111{other}")),
                        1 => ("voice", "mt", format!("4479000000{other}")),
                        2 => ("data", "mo", String::new()),
                        _ => ("sms", "mo", format!("3361111111{other}")),
                    };
                    let other_party = if number.is_empty() {
                        "{}".to_string()
                    } else {
                        format!(r#"{{"number":"{number}"}}"#)
                    };
                    let account = acct
                        .map(|a| format!(r#","account_id":"A-{a}""#))
                        .unwrap_or_default();
                    // Some records are parts of a few long calls (`state::calls`): cumulative or
                    // not, so open calls go through checkpoints, deltas and restores too.
                    let part = match other % 5 {
                        0 => format!(
                            r#","call_ref":"c{line}","seq":{},"cumulative":true"#,
                            self.n
                        ),
                        1 => format!(r#","call_ref":"d{line}","seq":{}"#, self.n),
                        _ => String::new(),
                    };
                    let json = format!(
                        r#"{{"record_id":"{id}","record_type":"{record_type}","direction":"{direction}","event_start":"{}","duration_s":{},"answered":true,"served":{{"msisdn":"3360000000{line}","imei":"3587560742618{imei}"{account}}},"other_party":{other_party},"location":{{"cell_id":{},"lat":45.{other},"lon":4.{imei}}},"charge":{{"amount":"{charge}.50"}}{part}}}"#,
                        at(self.now - i64::from(back)),
                        60 + u32::from(dt % 7) * 100,
                        1000 + u32::from(other % 3),
                    );
                    self.sent.push((id, json.clone()));
                    Input::Usage(decoder.usage(json.as_bytes()).unwrap())
                }
                Step::Event {
                    acct,
                    line,
                    kind,
                    n,
                    days,
                } => {
                    self.n += 1;
                    let id = self.n;
                    let head = format!(
                        r#""event_id":"e{id}","occurred_at":"{}","account_id":"A-{acct}""#,
                        at(self.now)
                    );
                    let due = Date::of(EventTime::from_utc(self.now)).plus_days(i32::from(days));
                    let body = match kind {
                        0 => format!(r#""event_type":"activation","msisdn":"3360000000{line}""#),
                        1 | 2 => format!(
                            r#""event_type":"invoice_issued","invoice":{{"invoice_id":"I{acct}-{n}","due_date":"{due}","amount_due":"{}.00"}}"#,
                            10 + n
                        ),
                        3 => format!(
                            r#""event_type":"payment_received","payment":{{"payment_id":"P{id}","invoice_id":"I{acct}-{n}"}},"amount":{{"value":"{}.00"}}"#,
                            5 + n
                        ),
                        4 => format!(
                            r#""event_type":"payment_reversed","payment":{{"payment_id":"R{id}","reversed_payment_id":"P{}"}},"amount":{{"value":"3.00"}}"#,
                            id.saturating_sub(u32::from(n) + 1)
                        ),
                        5 => format!(
                            r#""event_type":"credit_limit_changed","credit":{{"credit_limit":"{}0"}}"#,
                            n + 1
                        ),
                        _ => r#""event_type":"deactivation""#.to_string(),
                    };
                    let json = format!("{{{head},{body}}}");
                    Input::Event(decoder.account_event(json.as_bytes()).unwrap())
                }
                Step::Idle { minutes } => {
                    self.now += i64::from(minutes) * 60;
                    Input::Idle(self.now)
                }
                Step::Clear {
                    account: false,
                    which,
                } => Input::ClearLine(Number::parse(&format!("3360000000{which}")).unwrap()),
                Step::Clear {
                    account: true,
                    which,
                } => Input::ClearAccount(format!("A-{}", which % 3)),
                Step::Alert {
                    rule,
                    entity,
                    edge: false,
                    cond,
                } => Input::Decide {
                    rule,
                    entity,
                    t: self.now,
                    critical: cond,
                },
                Step::Alert {
                    rule,
                    entity,
                    edge: true,
                    cond,
                } => Input::Edge {
                    rule,
                    entity,
                    name: entity % 3,
                    cond,
                    t: self.now,
                },
                Step::Checkpoint { .. } | Step::Settle { .. } => return None,
            })
        }
    }

    /// A checkpoint as written, with what its restore must give.
    struct Written {
        epoch: u64,
        /// The newest durable checkpoint when it was taken (`None`: a full base).
        parent: Option<u64>,
        store: Vec<u8>,
        memory: Vec<u8>,
        expect: (Vec<(&'static str, Vec<u8>)>, Vec<u8>),
    }

    /// The checkpoint side, as the daemon runs it: epochs, writes that succeed, fail or linger.
    #[derive(Default)]
    struct Checkpoints {
        epoch: u64,
        durable: BTreeMap<u64, Written>,
        newest: Option<u64>,
        in_flight: Vec<Written>,
        deltas: usize,
    }

    impl Checkpoints {
        fn take(
            &mut self,
            full: bool,
            store: &mut WindowStore,
            memory: &mut AlertMemory,
        ) -> Written {
            self.epoch += 1;
            store.seal_changes(self.epoch);
            memory.seal_changes(self.epoch);
            let parent = self.newest.filter(|_| !full);
            let (s, m) = match parent {
                None => (
                    postcard::to_stdvec(&*store).unwrap(),
                    postcard::to_stdvec(&*memory).unwrap(),
                ),
                Some(_) => {
                    self.deltas += 1;
                    (
                        postcard::to_stdvec(&store.delta()).unwrap(),
                        postcard::to_stdvec(&memory.delta()).unwrap(),
                    )
                }
            };
            Written {
                epoch: self.epoch,
                parent,
                store: s,
                memory: m,
                expect: (canonical(store), memory.canonical()),
            }
        }

        fn confirm(&mut self, w: Written, store: &mut WindowStore, memory: &mut AlertMemory) {
            store.changes_durable(w.epoch);
            memory.changes_durable(w.epoch);
            self.newest = self.newest.max(Some(w.epoch));
            self.durable.insert(w.epoch, w);
            self.check_restore();
        }

        /// The newest durable checkpoint: its base, then each delta on its parent chain.
        fn restore(&self) -> (WindowStore, AlertMemory) {
            let mut chain = Vec::new();
            let mut at = self.newest;
            while let Some(e) = at {
                let w = &self.durable[&e];
                chain.push(w);
                at = w.parent;
            }
            let base = chain.pop().expect("a base");
            let mut store = postcard::from_bytes::<WindowStore>(&base.store)
                .unwrap()
                .restored(config());
            let mut memory: AlertMemory = postcard::from_bytes(&base.memory).unwrap();
            for w in chain.into_iter().rev() {
                store.apply_delta(postcard::from_bytes::<StoreDelta>(&w.store).unwrap());
                memory.apply_delta(postcard::from_bytes::<MemoryDelta>(&w.memory).unwrap());
            }
            (store, memory)
        }

        fn check_restore(&self) {
            let (store, memory) = self.restore();
            let expect = &self.durable[&self.newest.unwrap()].expect;
            for ((part, got), (_, want)) in canonical(&store).iter().zip(&expect.0) {
                assert!(got == want, "restored {part} differs from the original's");
            }
            assert!(
                memory.canonical() == expect.1,
                "restored alert memory differs"
            );
        }
    }

    fn run(steps: &[Step], tail: &[Step]) {
        let mut store = WindowStore::new(config());
        let mut memory = AlertMemory::default();
        store.track_changes(true);
        memory.track_changes(true);
        let mut source = Source {
            now: T0,
            n: 0,
            sent: Vec::new(),
        };
        let mut ck = Checkpoints::default();
        for s in steps {
            match *s {
                Step::Checkpoint { full, fate } => {
                    let w = ck.take(full, &mut store, &mut memory);
                    match fate {
                        0 => ck.confirm(w, &mut store, &mut memory),
                        1 => {}
                        _ => ck.in_flight.push(w),
                    }
                }
                Step::Settle { which, ok } if !ck.in_flight.is_empty() => {
                    let w = ck.in_flight.remove(which as usize % ck.in_flight.len());
                    if ok {
                        ck.confirm(w, &mut store, &mut memory);
                    }
                }
                _ => {
                    if let Some(input) = source.input(s) {
                        apply(&input, &mut store, &mut memory);
                    }
                }
            }
        }
        // The last checkpoint restores the state as it is now...
        let w = ck.take(false, &mut store, &mut memory);
        ck.confirm(w, &mut store, &mut memory);
        let (mut restored, mut restored_memory) = ck.restore();
        // ...and behaves as the original from here on.
        restored.track_changes(true);
        restored_memory.track_changes(true);
        for s in tail {
            if let Some(input) = source.input(s) {
                let want = apply(&input, &mut store, &mut memory);
                let got = apply(&input, &mut restored, &mut restored_memory);
                assert_eq!(got, want, "after a restore, {input:?}");
            }
        }
        for ((part, got), (_, want)) in canonical(&restored).iter().zip(&canonical(&store)) {
            assert!(got == want, "{part} differs after the same input");
        }
        assert!(restored_memory.canonical() == memory.canonical());
    }

    fn cases() -> u32 {
        std::env::var("CDRGUARD_PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(48)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

        /// Base + the confirmed deltas (each on the checkpoint that was durable when it was taken)
        /// equals the original, whatever checkpoints failed or lingered in flight, across evictions,
        /// dedup generations, ledger pruning and timers firing; and behaves the same afterwards.
        #[test]
        fn base_and_confirmed_deltas_restore_the_original(
            steps in proptest::collection::vec(step(), 50..300),
            tail in proptest::collection::vec(step(), 40..80),
        ) {
            run(&steps, &tail);
        }
    }

    fn usage(store: &mut WindowStore, id: u32, line: u32, t: i64) {
        let json = format!(
            r#"{{"record_id":"r{id}","record_type":"voice","direction":"mo","event_start":"{}","duration_s":60,"served":{{"msisdn":"3360{line:07}","account_id":"A-{}"}},"other_party":{{"number":"33611111111"}}}}"#,
            EventTime::from_utc(t),
            line % 50
        );
        let r = Decoder::default().usage(json.as_bytes()).unwrap();
        let class = Classifier::new(Number::parse("33").unwrap(), PrefixList::new()).classify(&r);
        assert_eq!(
            store.apply_usage(&r, class),
            crate::state::Outcome::Accepted
        );
        store.advance(&mut Vec::new());
    }

    #[test]
    fn tracking_off_records_nothing_and_a_delta_holds_only_what_changed() {
        let mut store = WindowStore::new(config());
        for line in 0..400 {
            usage(&mut store, line, line, T0 + i64::from(line));
        }
        assert!(
            store.changes.is_none(),
            "nothing recorded with tracking off"
        );

        store.track_changes(true);
        store.seal_changes(1);
        let base = postcard::to_stdvec(&store).unwrap();
        store.changes_durable(1);
        // Touch k = 20 of the 400 subscribers (5 %), five of them twice.
        let touched: Vec<u32> = (0..20).map(|i| i * 19).collect();
        for (i, &line) in touched.iter().chain(&touched[..5]).enumerate() {
            usage(&mut store, 1000 + i as u32, line, T0 + 500 + i as i64);
        }
        store.seal_changes(2);
        let bytes = postcard::to_stdvec(&store.delta()).unwrap();
        let delta: StoreDelta = postcard::from_bytes(&bytes).unwrap();
        let keys: Vec<u64> = delta.subscribers.iter().map(|(k, _)| *k).collect();
        let mut want: Vec<u64> = touched
            .iter()
            .map(|l| Number::parse(&format!("3360{l:07}")).unwrap().key())
            .collect();
        want.sort_unstable();
        assert_eq!(keys, want, "exactly the k touched subscribers, sorted");
        assert!(delta.subscribers.iter().all(|(_, e)| e.is_some()));
        assert!(delta.accounts.is_empty(), "no account changed");
        assert_eq!(delta.dedup.len(), 20 + 5, "one insert per record");
        assert!(
            bytes.len() * 10 <= base.len(),
            "{} of {} bytes",
            bytes.len(),
            base.len()
        );

        let mut restored = postcard::from_bytes::<WindowStore>(&base)
            .unwrap()
            .restored(config());
        restored.apply_delta(delta);
        assert!(canonical(&restored) == canonical(&store));

        // Once durable, nothing is held; a later epoch holds only its own changes.
        store.changes_durable(2);
        assert_eq!(store.changes.as_ref().unwrap().len(), 0);
        usage(&mut store, 5000, 3, T0 + 400);
        store.seal_changes(3);
        assert_eq!(store.delta().subscribers.len(), 1);
    }

    fn invoice(store: &mut WindowStore, account: &str, invoice: &str, t: i64, due_days: i32) {
        let due = Date::of(EventTime::from_utc(t)).plus_days(due_days);
        let json = format!(
            r#"{{"event_id":"{invoice}","event_type":"invoice_issued","occurred_at":"{}","account_id":"{account}","invoice":{{"invoice_id":"{invoice}","due_date":"{due}","amount_due":"10.00"}}}}"#,
            EventTime::from_utc(t)
        );
        let e = Decoder::default().account_event(json.as_bytes()).unwrap();
        assert_eq!(store.apply_event(&e), crate::state::Outcome::Accepted);
    }

    /// Timers due at the same midnight fire in scheduling order after a restore from a base and a
    /// delta. Regression guard: when full snapshots renumbered timers from 1, a delta's timers (with
    /// their original, larger numbers) sorted after untouched timers scheduled later than them.
    #[test]
    fn timers_due_together_fire_in_scheduling_order_after_a_restore() {
        let mut store = WindowStore::new(config());
        // Earlier invoices fire their timers, so sequence numbers are well past the pending count.
        for i in 0..5 {
            invoice(&mut store, "W", &format!("w{i}"), T0, 0);
        }
        usage(&mut store, 1, 1, T0 + 3 * 86_400);
        assert_eq!(store.counters.timers_fired, 10);
        let t = T0 + 3 * 86_400;
        invoice(&mut store, "X", "x1", t, 1);
        invoice(&mut store, "Y", "y1", t, 1);
        store.track_changes(true);
        store.seal_changes(1);
        let base = postcard::to_stdvec(&store).unwrap();
        store.changes_durable(1);
        // X's timers change (a second invoice); Y's do not, so the delta holds X's alone.
        invoice(&mut store, "X", "x2", t, 5);
        store.seal_changes(2);
        let delta = postcard::to_stdvec(&store.delta()).unwrap();
        let mut restored = postcard::from_bytes::<WindowStore>(&base)
            .unwrap()
            .restored(config());
        restored.apply_delta(postcard::from_bytes(&delta).unwrap());

        let fire = |s: &mut WindowStore| {
            let mut fired = Vec::new();
            s.advance_idle(t + 3 * 86_400, &mut fired);
            fired
                .iter()
                .map(|f| f.account_id.to_string())
                .collect::<Vec<_>>()
        };
        let want = fire(&mut store);
        assert_eq!(want[..2], ["X", "Y"]);
        assert_eq!(fire(&mut restored), want);
    }

    /// Checkpoints failing for hours: a key changed in every failed epoch is held once, the dedup
    /// journal keeps no more than two generations, and the delta still restores the store.
    #[test]
    fn failed_checkpoints_hold_each_key_once_and_two_dedup_generations() {
        let mut store = WindowStore::new(config());
        for line in 0..5 {
            usage(&mut store, line, line, T0 + i64::from(line));
        }
        store.track_changes(true);
        store.seal_changes(1);
        let base = postcard::to_stdvec(&store).unwrap();
        store.changes_durable(1);
        let mut id = 100;
        for epoch in 2..=41u64 {
            for line in 0..5 {
                id += 1;
                usage(
                    &mut store,
                    id,
                    line,
                    T0 + epoch as i64 * 600 + i64::from(line),
                );
            }
            store.seal_changes(epoch);
        }
        let c = store.changes.as_ref().unwrap();
        assert_eq!(c.subscribers.len(), 5);
        // Generations of 1800 s at 600 s per epoch: two generations are at most six epochs' inserts
        // (of 200 since the base), and two starts.
        assert!(
            c.dedup.len() <= 6 * 5 + 2,
            "journal of {} operations",
            c.dedup.len()
        );
        // No seal at all for as long (a checkpoint stuck in flight): the open journal is bounded too.
        for t in 0..200 {
            id += 1;
            usage(&mut store, id, t % 5, T0 + 41 * 600 + i64::from(t) * 120);
        }
        let open = store.changes.as_ref().unwrap().dedup.open.len();
        assert!(open <= 2 * 15 + 2, "open journal of {open} operations");
        store.seal_changes(42);
        let delta = postcard::to_stdvec(&store.delta()).unwrap();
        let mut restored = postcard::from_bytes::<WindowStore>(&base)
            .unwrap()
            .restored(config());
        restored.apply_delta(postcard::from_bytes(&delta).unwrap());
        assert!(canonical(&restored) == canonical(&store));
    }
}
