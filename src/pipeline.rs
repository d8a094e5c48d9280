//! The stages every record goes through, in one place. `replay`, `inspect`, `test` and the daemon's
//! partitions (their lines and accounts, and their calling numbers) feed it; everything between source and sink is this code in all modes.
//!
//! ```text
//! decoded line ─► classify ─► state (lateness, dedup, windows, ledger) ─► rules ─► timers due ─► rules
//!      └─ rejected ─────────────────┴─ late ──► dead letter                 └──────── alerts ◄──┘
//! ```
//!
//! The window store is shared (`Rc<RefCell<_>>`) with the rule views, which read it during rule
//! evaluation; the pipeline mutates it only between evaluations, so borrows never overlap.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::alert::memory::AlertMemory;
use crate::classify::{Classifier, RecordClass};
use crate::config::{CallingNumbers, StateConfig};
use crate::record::{Decoded, Item, Mode, Reject, RejectReason, Repair, UsageRecord};
use crate::rules::engine::{AccountFacts, EngineOptions, Placement};
use crate::rules::{
    BuildErrors, RuleEngine, RuleSet, RuleSources, SandboxLimits, Shared, SharedStore,
};
use crate::state::{tracks_caller, Outcome, Timer, WindowStore};

/// Counts of what happened to the input, by outcome.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Counts {
    /// Non-blank lines read.
    pub lines: u64,
    pub usage_accepted: u64,
    pub events_accepted: u64,
    pub duplicates: u64,
    /// Rejected lines by reason (including `late`).
    pub rejected: BTreeMap<RejectReason, u64>,
    /// Records after `--at` (inspect), not applied.
    pub after_cutoff: u64,
    /// Optional fields dropped from records that were kept (`record::repair`), by field.
    pub repaired: BTreeMap<Repair, u64>,
}

impl Counts {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// What the pipeline asks its caller to do with a line.
pub enum Verdict {
    Applied,
    Duplicate,
    /// Dead-letter this line for this reason.
    Reject(Reject),
    Skipped,
}

/// The dead letter of a record whose id was seen before with other content.
fn conflict(field: &str, id: &str) -> Reject {
    Reject::new(
        RejectReason::ConflictingDuplicate,
        Some(field.into()),
        format!(
            "id {id:?} was seen before with other content (within state.dedup_horizon): two records \
             share it; the first was kept"
        ),
    )
}

pub(crate) fn wall_clock_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Which part of the state and of the rule library a pipeline owns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scope {
    /// Everything: replay, inspect, rule tests, a daemon that keeps no calling-number state.
    #[default]
    Everything,
    /// Lines, accounts and devices (a daemon partition): calling numbers ring subscribers of every
    /// partition, so their state and rules belong to the partition of the number, and the calls
    /// that give them state, and the records of rules reading their alerts, are handed over
    /// (`take_handover`, `repartition::calls`).
    Lines,
    /// Calling numbers and the rules reading their alerts: a daemon partition's calls lane, fed by
    /// `take_over`.
    CallingNumbers,
}

/// The rule library a pipeline runs and how.
pub struct RulesOptions<'a> {
    pub sources: &'a RuleSources,
    pub sandbox: &'a SandboxLimits,
    pub quarantine: crate::rules::engine::QuarantinePolicy,
    /// Stamped on alerts.
    pub mode: Mode,
    /// Classification takes the high-risk list from the rule library (and its reloads) rather than
    /// from a path in the config.
    pub high_risk_from_rules: bool,
    /// A candidate library run in shadow beside this one (`rules.shadow_dir`).
    pub candidate: Option<&'a RuleSources>,
}

use crate::alert::overlap::Overlap;

/// An applied usage record a daemon partition hands to the calling numbers (`Scope::Lines`).
pub struct Handover {
    pub record: UsageRecord,
    /// It gives its calling number state (an MT call).
    pub call: bool,
    /// It triggers rules that run beside the calling numbers (`rules::placement`): its account as
    /// the partition
    /// saw it then.
    pub facts: Option<AccountFacts>,
}

/// Everything a pipeline is built from.
pub struct PipelineOptions<'a> {
    pub classifier: Classifier,
    pub state: StateConfig,
    pub scope: Scope,
    /// `None`: state only (`inspect`).
    pub rules: Option<RulesOptions<'a>>,
    /// Records later than this are skipped (`inspect --at`).
    pub cutoff: Option<i64>,
    /// Keep fired timers for the report (`inspect`).
    pub keep_fired: bool,
}

impl<'a> PipelineOptions<'a> {
    /// State and classification only, the whole scope: add rules or a cutoff with struct update.
    pub fn new(classifier: Classifier, state: StateConfig) -> Self {
        PipelineOptions {
            classifier,
            state,
            scope: Scope::Everything,
            rules: None,
            cutoff: None,
            keep_fired: false,
        }
    }
}

pub struct Pipeline {
    pub classifier: Classifier,
    pub store: SharedStore,
    /// The rule engine, when rules are enabled (`inspect` runs without).
    pub rules: Option<RuleEngine>,
    high_risk_from_rules: bool,
    scope: Scope,
    /// Which calls give a calling number state (before the scope took calling numbers off a
    /// partition's store): the calls a partition hands over.
    calling_numbers: CallingNumbers,
    /// The last applied record to hand over to the calling numbers (`Scope::Lines`).
    handover: Option<Handover>,
    pub counts: Counts,
    /// Records later than this are skipped (inspect `--at`).
    cutoff: Option<i64>,
    /// Timers that have fired, kept when `keep_fired` is set (inspect shows them).
    pub fired: Vec<Timer>,
    keep_fired: bool,
    newest_any: Option<i64>,
    /// UTC offset of the latest accepted usage record: reports default to the records' own clock.
    pub display_offset: i16,
    /// The candidate library's engine (`rules.shadow_dir`): the same state, its own part of the
    /// alert memory, every alert in shadow.
    pub candidate: Option<RuleEngine>,
    /// Per rule id in both libraries, the overlap of their alerts (`alert::overlap`).
    overlap: crate::alert::overlap::OverlapTracker,
    /// The input ended (`finish`): alerts wait for no partner.
    overlap_done: bool,
}

impl Pipeline {
    /// Builds the stages; with rules, the library must be valid as a whole.
    pub fn new(opts: PipelineOptions<'_>) -> Result<Self, BuildErrors> {
        let calling_numbers = opts.state.calling_numbers;
        let mut state = opts.state;
        match opts.scope {
            Scope::Everything => {}
            Scope::Lines => state.calling_numbers = CallingNumbers::Off,
            // Partitions run at their own pace and the calling numbers take every call one of them
            // accepted, whatever the other partitions' time.
            Scope::CallingNumbers => {
                state.allowed_lateness = state.max_window;
                state.roaming_allowed_lateness = None;
            }
        }
        let store = Rc::new(RefCell::new(WindowStore::new(state)));
        let mut pipeline = Pipeline {
            classifier: opts.classifier,
            store,
            rules: None,
            high_risk_from_rules: false,
            scope: opts.scope,
            calling_numbers,
            handover: None,
            counts: Counts::default(),
            cutoff: opts.cutoff,
            fired: Vec::new(),
            keep_fired: opts.keep_fired,
            newest_any: None,
            display_offset: 0,
            candidate: None,
            overlap: Default::default(),
            overlap_done: false,
        };
        if let Some(r) = opts.rules {
            let shared = Shared::new(
                pipeline.store.clone(),
                Rc::new(RefCell::new(AlertMemory::default())),
            );
            let set = RuleSet::build(r.sources, r.sandbox, &shared)?;
            let placement = match opts.scope {
                Scope::Everything => Placement::All,
                Scope::Lines => Placement::Partition,
                Scope::CallingNumbers => Placement::CallingNumbers,
            };
            let engine_opts = EngineOptions {
                limits: r.sandbox.clone(),
                quarantine: r.quarantine,
                mode: r.mode,
                placement,
            };
            if let Some(sources) = r.candidate {
                let shared = Shared::candidate(pipeline.store.clone(), shared.memory.clone());
                let set = RuleSet::build(sources, r.sandbox, &shared)?;
                let opts = EngineOptions {
                    mode: Mode::Shadow,
                    ..engine_opts.clone()
                };
                pipeline.candidate = Some(RuleEngine::new(set, shared, opts));
            }
            pipeline.rules = Some(RuleEngine::new(set, shared, engine_opts));
            pipeline.high_risk_from_rules = r.high_risk_from_rules;
            pipeline.adopt_rule_lists();
        }
        Ok(pipeline)
    }

    /// Swaps in a new rule set built from `sources`, or keeps the active one if anything is wrong
    /// with it. Window state is untouched either way.
    pub fn reload_rules(&mut self, sources: &RuleSources) -> Result<(), BuildErrors> {
        if let Some(engine) = &mut self.rules {
            engine.reload(sources)?;
            self.adopt_rule_lists();
        }
        Ok(())
    }

    /// Swaps in a new candidate library, or keeps the active one if anything is wrong with it.
    pub fn reload_candidate(&mut self, sources: &RuleSources) -> Result<(), BuildErrors> {
        if let Some(engine) = &mut self.candidate {
            engine.reload(sources)?;
        }
        Ok(())
    }

    /// The live and the candidate engine, those present.
    fn engines(&mut self) -> impl Iterator<Item = &mut RuleEngine> {
        self.rules.iter_mut().chain(self.candidate.iter_mut())
    }

    /// The overlap of the two libraries' alerts counted since the last call, per rule id in both
    /// (an alert counts once its partner came or could no longer come).
    pub fn take_overlap(&mut self) -> std::collections::BTreeMap<String, Overlap> {
        self.overlap.take()
    }

    /// Replaces the state and alert memory with restored ones (a snapshot), keeping this pipeline's
    /// configuration.
    pub fn restore(&mut self, store: WindowStore, memory: AlertMemory) {
        let cfg = self.store.borrow().config().clone();
        *self.store.borrow_mut() = store.restored(cfg);
        if let Some(e) = &self.rules {
            *e.shared().memory.borrow_mut() = memory;
        }
    }

    /// Runs `f` with the state and the alert memory, as a snapshot holds them (an empty memory
    /// without rules).
    pub fn with_state<R>(&self, f: impl FnOnce(&WindowStore, &AlertMemory) -> R) -> R {
        let store = self.store.borrow();
        match &self.rules {
            Some(e) => f(&store, &e.shared().memory.borrow()),
            None => f(&store, &AlertMemory::default()),
        }
    }

    /// Runs `f` with the state and the alert memory mutably (checkpoint bookkeeping: sealing and
    /// confirming epochs of changes, `state::delta`). Without rules, a throwaway empty memory.
    pub fn with_state_mut<R>(&self, f: impl FnOnce(&mut WindowStore, &mut AlertMemory) -> R) -> R {
        let mut store = self.store.borrow_mut();
        match &self.rules {
            Some(e) => f(&mut store, &mut e.shared().memory.borrow_mut()),
            None => f(&mut store, &mut AlertMemory::default()),
        }
    }

    /// Applies an analyst's decision to this pipeline's alert memory (`alert::feedback`): `Unknown`
    /// when it issued no alert of that id.
    pub fn judge(&mut self, f: &crate::alert::feedback::Feedback) -> crate::alert::memory::Judged {
        match &self.rules {
            Some(e) => e.shared().memory.borrow_mut().judge(f.judgement()),
            None => crate::alert::memory::Judged::Unknown,
        }
    }

    /// What the last record hands over to the calling numbers, if anything (`Scope::Lines`).
    pub fn take_handover(&mut self) -> Option<Handover> {
        self.handover.take()
    }

    /// The calls lane's step for a record a partition handed over: the call applied to the
    /// calling numbers' state, then the rules beside them run on it, in the calls topic's order
    /// (every partition's calls merged in event time).
    pub fn take_over(&mut self, h: Handover) -> Verdict {
        self.counts.lines += 1;
        if self.counts.lines % 4096 == 1 {
            self.maintain();
        }
        let r = h.record;
        let class = self.classifier.classify(&r);
        if h.call {
            let outcome = self.store.borrow_mut().apply_call(&r, class);
            match outcome {
                Outcome::Accepted => {
                    self.counts.usage_accepted += 1;
                    self.note_time(r.event_start.utc);
                }
                // Duplicates and late calls were the partition's to report. (A conflict here is
                // an id two partitions both accepted: the producer's keys split them.)
                Outcome::Duplicate => return Verdict::Duplicate,
                _ => return Verdict::Skipped,
            }
        }
        for engine in self.engines() {
            engine.on_usage(&r, class, h.facts.as_ref());
        }
        Verdict::Applied
    }

    /// The key a record's message should have had, when `key` is not it (README "Keying"): an
    /// account event's account; a usage record's account (its `served.account_id`, else the account
    /// this state knows its line belongs to), else its msisdn. Records keyed otherwise can land in
    /// a partition other than their account's, whose state then sees part of the account.
    pub fn miskeyed(&self, item: &Item, key: Option<&[u8]>) -> Option<String> {
        let by_account = |a: &str| (key != Some(a.as_bytes())).then(|| a.to_string());
        let r = match item {
            Item::Event(e) => return by_account(&e.account_id),
            Item::Usage(r) => r,
        };
        if let Some(a) = &r.served.account_id {
            return by_account(a);
        }
        if let Some(a) = self.store.borrow().line_account_id(r.served.msisdn) {
            return by_account(a);
        }
        // Producers key a line as they write it: compare canonical lines, not texts.
        let line = r.served.msisdn;
        let n = key
            .and_then(|k| std::str::from_utf8(k).ok())
            .and_then(|k| self.classifier.line_of_key(k, line.is_imsi_line()));
        (n != Some(line)).then(|| line.to_string())
    }

    /// Takes the alerts emitted since the last call: the live library's, then the candidate's
    /// (whose overlap with the live ones it counts).
    pub fn take_alerts(&mut self) -> Vec<crate::record::Alert> {
        let mut alerts: Vec<crate::record::Alert> = self
            .rules
            .as_mut()
            .map(|e| e.take_alerts().collect())
            .unwrap_or_default();
        let Some(candidate) = &mut self.candidate else {
            return alerts;
        };
        let shadow: Vec<crate::record::Alert> = candidate.take_alerts().collect();
        let Some(live) = &self.rules else {
            return shadow;
        };
        // The live rule's cooldown: how far apart two alerts of one finding can be.
        let window = |id: &str| {
            let live = live.set().rules.iter().find(|r| r.id() == id)?;
            Some(live.resolved.cooldown_s)
        };
        let both = |id: &str| candidate.set().rules.iter().any(|r| r.id() == id);
        for (a, is_live) in alerts
            .iter()
            .map(|a| (a, true))
            .chain(shadow.iter().map(|a| (a, false)))
        {
            if let (Some(w), true) = (window(&a.rule.id), both(&a.rule.id)) {
                self.overlap.alert(
                    &a.rule.id,
                    &a.entity.key,
                    a.trigger_event_time.utc,
                    is_live,
                    w,
                );
            }
        }
        let now = match self.overlap_done {
            true => Some(i64::MAX),
            false => self.store.borrow().newest_event_time(),
        };
        if let Some(now) = now {
            self.overlap.expire(now);
        }
        alerts.extend(shadow);
        alerts
    }

    fn adopt_rule_lists(&mut self) {
        let Some(engine) = &self.rules else { return };
        if self.high_risk_from_rules {
            if let Some(list) = engine.set().lists.get("high_risk_prefixes") {
                self.classifier.high_risk = list.clone();
            }
        }
    }

    pub fn process(&mut self, d: Decoded<'_>) -> Verdict {
        self.counts.lines += 1;
        if self.counts.lines % 4096 == 1 {
            self.maintain();
        }
        let verdict = match d.item {
            Err(reject) => Verdict::Reject(reject),
            Ok(item) if self.cutoff.is_some_and(|c| item.time() > c) => {
                self.counts.after_cutoff += 1;
                Verdict::Skipped
            }
            Ok(Item::Usage(r)) => {
                for repair in r.repairs.iter() {
                    *self.counts.repaired.entry(repair).or_default() += 1;
                }
                let class = self.classifier.classify(&r);
                let outcome = self.store.borrow_mut().apply_usage(&r, class);
                let store = self.store.borrow();
                match outcome {
                    Outcome::Accepted => {
                        drop(store);
                        self.counts.usage_accepted += 1;
                        self.note_time(r.event_start.utc);
                        self.display_offset = r.event_start.offset_min;
                        for engine in self.engines() {
                            engine.on_usage(&r, class, None);
                        }
                        self.hand_over(r, class);
                        Verdict::Applied
                    }
                    Outcome::Duplicate => Verdict::Duplicate,
                    Outcome::Conflict => Verdict::Reject(conflict("record_id", &r.record_id)),
                    Outcome::Future => Verdict::Reject(Reject::new(
                        RejectReason::Future,
                        Some("event_start".into()),
                        format!(
                            "event_start {} is more than {} after the current time",
                            r.event_start,
                            crate::record::time::format_duration(store.config().max_future_skew.0)
                        ),
                    )),
                    Outcome::Late => {
                        let wm = store.watermark_for(&r).unwrap_or_default();
                        Verdict::Reject(Reject::new(
                            RejectReason::Late,
                            Some("event_start".into()),
                            format!(
                                "event_start {} + duration_s {} ends before the watermark {} (allowed lateness {})",
                                r.event_start,
                                r.duration_s,
                                crate::record::EventTime {
                                    utc: wm,
                                    offset_min: r.event_start.offset_min
                                },
                                crate::record::time::format_duration(
                                    store.config().lateness_for(r.roaming.is_roaming)
                                )
                            ),
                        ))
                    }
                }
            }
            Ok(Item::Event(e)) => {
                let outcome = self.store.borrow_mut().apply_event(&e);
                match outcome {
                    Outcome::Duplicate => Verdict::Duplicate,
                    Outcome::Conflict => Verdict::Reject(conflict("event_id", &e.event_id)),
                    _ => {
                        self.counts.events_accepted += 1;
                        self.note_time(e.occurred_at.utc);
                        for engine in self.engines() {
                            engine.on_event(&e);
                        }
                        Verdict::Applied
                    }
                }
            }
        };
        match &verdict {
            Verdict::Reject(r) => *self.counts.rejected.entry(r.reason).or_default() += 1,
            Verdict::Duplicate => self.counts.duplicates += 1,
            _ => {}
        }
        self.fire_due_timers();
        verdict
    }

    /// Keeps an applied record for the calling numbers: a call whose calling number keeps state, or
    /// a record of a rule run beside them (with the account facts of now).
    fn hand_over(&mut self, r: UsageRecord, class: RecordClass) {
        if self.scope != Scope::Lines {
            return;
        }
        let call = tracks_caller(self.calling_numbers, &r, class);
        let facts = self
            .rules
            .iter()
            .chain(self.candidate.iter())
            .find(|e| e.hands_over(class))
            .map(|e| e.account_facts(&r));
        if call || facts.is_some() {
            self.handover = Some(Handover {
                record: r,
                call,
                facts,
            });
        }
    }

    /// Now and then: the wall clock for future-dated records, and alert memory past the watermark
    /// dropped.
    fn maintain(&mut self) {
        let watermark = {
            let mut store = self.store.borrow_mut();
            store.set_wall_clock(wall_clock_now());
            store.watermark()
        };
        if let Some(w) = watermark {
            for engine in self.engines() {
                engine.maintain(w);
            }
        }
    }

    fn note_time(&mut self, t: i64) {
        self.newest_any = Some(self.newest_any.map_or(t, |n| n.max(t)));
    }

    fn fire_due_timers(&mut self) {
        let before = self.fired.len();
        self.store.borrow_mut().advance(&mut self.fired);
        self.on_fired(before);
    }

    /// The stream is idle: event time follows the wall clock (live mode), so timers fire and their
    /// rules run with no record arriving.
    pub fn advance_idle(&mut self, now: i64) {
        let before = self.fired.len();
        let moved = self.store.borrow_mut().advance_idle(now, &mut self.fired);
        if moved {
            self.on_fired(before);
        }
    }

    /// End of input: close windows up to the newest event time (or the cutoff) and fire what is due.
    pub fn finish(&mut self) {
        let before = self.fired.len();
        // The confirmed newest usage time ends the input (not an unconfirmed clock outlier, and not an
        // account event, which can carry a future business date).
        let newest = self.store.borrow().newest_event_time();
        if let Some(t) = self.cutoff.or(newest).or(self.newest_any) {
            self.store.borrow_mut().finish(t, &mut self.fired);
        }
        self.on_fired(before);
        // The end of the input: no alert waits for a partner any more. (Taking the last alerts
        // adds their own; `take_alerts` after this call expires them the same way.)
        self.overlap_done = true;
    }

    fn on_fired(&mut self, before: usize) {
        for engine in self.rules.iter_mut().chain(self.candidate.iter_mut()) {
            for t in &self.fired[before..] {
                engine.on_timer(t);
            }
        }
        if !self.keep_fired {
            self.fired.truncate(before);
        }
    }
}
