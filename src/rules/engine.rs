//! `RuleEngine`: runs the active `RuleSet` on each record, event and fired timer, counts what every
//! rule did, quarantines rules that keep failing, and swaps in a new set on reload.
//!
//! Per usage record: the class's dispatch list (often empty: one lookup and done); otherwise one view
//! of the record, its subscriber and its account, shared by the rules that run, and one sandboxed call
//! per rule — unless the rule's gate (`gate`), its first guards evaluated natively, says the script
//! would return nothing: then no call, and the evaluation counts as `gated`. A failing call is counted against its rule with its message and the record goes on to the
//! other rules; a rule that fails `quarantine_after` times stops running until the next reload.
//!
//! Owned by one worker thread with the window store it reads (the Rhai engine is not `Send`).

use std::rc::Rc;
use std::time::Instant;

use ahash::{AHashMap, AHashSet};
use hdrhistogram::Histogram;
use rhai::Dynamic;

use crate::classify::RecordClass;
use crate::record::{AccountEvent, Direction, EventTime, Number, RecordType, UsageRecord};
use crate::record::{Alert, EntityRef, EntityType, Mode, Segment};
use crate::state::Timer;

use super::api::{
    AccountView, EntityKey, EntityView, EventView, ParamsView, Shared, TimerView, UsageView, View,
};
use super::gate::{Inputs, Verdict};
use super::library::RuleSources;
use super::meta::{self, RuleMode};
use super::params::segment_index;
use super::ruleset::{BuildErrors, Rule, RuleSet, ENTRY};
use super::sandbox::{self, SandboxLimits, ScriptError};
use crate::alert::memory::{key_hash, Decision};
use crate::alert::policy::{self, TriggerInfo};

/// What one rule did over the run (kept by rule id across reloads).
pub struct RuleStats {
    pub id: String,
    pub version: String,
    /// The rule's mode in the active set (a reload can promote it).
    pub mode: RuleMode,
    /// Evaluations, those the rule's gate decided included (`gate`).
    pub evaluations: u64,
    /// Evaluations the rule's gate decided without calling the script: it would have returned
    /// nothing (`gate`).
    pub gated: u64,
    pub alerts: u64,
    /// Positive verdicts held back by the cooldown.
    pub suppressed: u64,
    /// Positive verdicts still short of `min_hits`.
    pub pending_hits: u64,
    /// Positive verdicts held back by an analyst's snooze (`alert::feedback`).
    pub snoozed: u64,
    pub errors: u64,
    pub errors_by_kind: std::collections::BTreeMap<&'static str, u64>,
    pub last_error: Option<String>,
    /// Errors since the active set was loaded.
    pub errors_since_load: u64,
    pub quarantined: bool,
    /// Event time at which the rule was quarantined (re-admitted a cool-down later).
    pub quarantined_at: Option<i64>,
    /// Times the rule was quarantined.
    pub quarantines: u64,
    /// (evaluations, errors, time-budget overruns) of the last two blocks of
    /// `QuarantinePolicy::window` evaluations: the recent error rate and p99 against the budget.
    recent: [(u64, u64, u64); 2],
    /// Distinct entities alerted on.
    pub entities: AHashSet<u64>,
    /// Evaluation time, nanoseconds.
    pub latency: Histogram<u64>,
}

impl RuleStats {
    fn new(id: &str, version: &str) -> Self {
        RuleStats {
            id: id.to_string(),
            version: version.to_string(),
            mode: RuleMode::Live,
            evaluations: 0,
            gated: 0,
            alerts: 0,
            suppressed: 0,
            pending_hits: 0,
            snoozed: 0,
            errors: 0,
            errors_by_kind: Default::default(),
            last_error: None,
            errors_since_load: 0,
            quarantined: false,
            quarantined_at: None,
            quarantines: 0,
            recent: [(0, 0, 0); 2],
            entities: AHashSet::new(),
            latency: Histogram::new_with_bounds(1, 3_600_000_000_000, 2)
                .expect("valid histogram bounds"),
        }
    }
}

/// Engine-wide counts.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct EngineCounters {
    pub usage_records: u64,
    /// Usage records whose class no rule declares as a trigger: dispatch ran nothing.
    pub usage_without_rules: u64,
    pub events: u64,
    pub timers: u64,
    /// Rule evaluations, those decided by gates included.
    pub evaluations: u64,
    /// Rule evaluations decided by a rule's gate, without calling its script (`gate`).
    pub gated: u64,
    pub alerts: u64,
    pub errors: u64,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
}

/// Who a trigger concerns, resolved once and shared by every rule it runs.
#[derive(Default)]
struct Subject<'a> {
    sub: Option<Number>,
    caller: Option<Number>,
    imei: Option<Number>,
    account: Option<u32>,
    /// The number a usage record's traffic went to (`UsageRecord::destination`).
    destination: Option<Number>,
    /// The account as the record's partition saw it (a rule run beside the calling numbers).
    facts: Option<&'a AccountFacts>,
}

/// Which rules an engine runs (`rules::placement`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Placement {
    /// Every rule: replay, inspect, rule tests, a daemon that keeps no calling-number state.
    #[default]
    All,
    /// A daemon partition: all but the calling-number rules and the rules reading their alerts.
    Partition,
    /// A daemon partition's calls lane: the calling-number rules and the rules reading their
    /// alerts.
    CallingNumbers,
}

impl Placement {
    pub fn runs(self, rule: &Rule) -> bool {
        let beside_calls = rule.meta().entity == EntityType::CallingNumber || rule.reads_callers;
        match self {
            Placement::All => true,
            Placement::Partition => !beside_calls,
            Placement::CallingNumbers => beside_calls,
        }
    }
}

/// What a subscriber rule run beside the calling numbers needs of the record's account, taken in
/// the partition when the record was applied (the calls lane keeps no accounts).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccountFacts {
    pub id: Option<String>,
    pub segment: Option<Segment>,
    pub credit_limit: bool,
    pub overdue: bool,
}

/// When a failing rule is quarantined, and when it comes back. A rule that fails now and then keeps
/// running (its errors are counted); one that fails often stops, and is tried again after a
/// cool-down, so that a long-running daemon does not go dark on a rule for good.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuarantinePolicy {
    /// Errors among the recent evaluations before a rule is quarantined.
    pub after: u64,
    /// ...and the share of the recent evaluations they must be.
    pub error_rate: f64,
    /// Recent means the last `window`..`2 × window` evaluations.
    pub window: u64,
    /// Event time after which a quarantined rule runs again.
    pub cooldown_s: i64,
}

impl Default for QuarantinePolicy {
    fn default() -> Self {
        QuarantinePolicy {
            after: 50,
            error_rate: 0.05,
            window: 1000,
            cooldown_s: 3600,
        }
    }
}

/// Evaluations stopped by the CPU-time budget among the recent ones that quarantine a rule on their
/// own, when they are also more than `OVERRUN_SHARE` of them: the rule's p99 CPU time per
/// evaluation is over its budget. (Not the `p99 µs` of the summary, which is wall-clock time over
/// every evaluation since the library was loaded.) Each overrun is also an error, counted like any
/// other.
const MIN_OVERRUNS: u64 = 10;
const OVERRUN_SHARE: f64 = 0.01;

impl QuarantinePolicy {
    /// Whether a rule with these recent (evaluations, errors, time-budget overruns) is taken out.
    fn trips(&self, (evaluations, errors, overruns): (u64, u64, u64)) -> bool {
        (errors >= self.after && errors as f64 >= self.error_rate * evaluations as f64)
            || (overruns >= MIN_OVERRUNS && overruns as f64 > OVERRUN_SHARE * evaluations as f64)
    }
}

/// How an engine runs, fixed when it is built.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub limits: SandboxLimits,
    /// When a failing rule is taken out, and when it comes back.
    pub quarantine: QuarantinePolicy,
    /// Stamped on every alert.
    pub mode: Mode,
    pub placement: Placement,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            limits: SandboxLimits::default(),
            quarantine: QuarantinePolicy::default(),
            mode: Mode::Replay,
            placement: Placement::All,
        }
    }
}

pub struct RuleEngine {
    set: RuleSet,
    shared: Rc<Shared>,
    opts: EngineOptions,
    stats: Vec<RuleStats>,
    stats_index: AHashMap<String, usize>,
    /// `stats` slot of each rule of the active set.
    slots: Vec<usize>,
    pub counters: EngineCounters,
    /// Alerts emitted and not yet taken by the caller.
    pub alerts: Vec<Alert>,
}

impl RuleEngine {
    pub fn new(set: RuleSet, shared: Rc<Shared>, opts: EngineOptions) -> Self {
        let mut e = RuleEngine {
            set,
            shared,
            opts,
            stats: Vec::new(),
            stats_index: AHashMap::new(),
            slots: Vec::new(),
            counters: EngineCounters::default(),
            alerts: Vec::new(),
        };
        e.index_stats();
        e
    }

    pub fn set(&self) -> &RuleSet {
        &self.set
    }

    pub fn version(&self) -> &str {
        &self.set.version
    }

    pub fn shared(&self) -> &Rc<Shared> {
        &self.shared
    }

    /// Per-rule statistics, by rule id (rules of earlier sets included).
    pub fn stats(&self) -> &[RuleStats] {
        &self.stats
    }

    fn index_stats(&mut self) {
        *self.shared.shadow.borrow_mut() = self
            .set
            .rules
            .iter()
            .filter(|r| r.meta().mode == RuleMode::Shadow)
            .map(|r| r.id().to_string())
            .collect();
        self.slots.clear();
        for r in &self.set.rules {
            let slot = match self.stats_index.get(r.id()) {
                Some(&s) => s,
                None => {
                    self.stats.push(RuleStats::new(r.id(), &r.meta().version));
                    self.stats_index
                        .insert(r.id().to_string(), self.stats.len() - 1);
                    self.stats.len() - 1
                }
            };
            let s = &mut self.stats[slot];
            s.version = r.meta().version.clone();
            s.mode = r.meta().mode;
            s.errors_since_load = 0;
            s.quarantined = false;
            s.quarantined_at = None;
            s.recent = [(0, 0, 0); 2];
            self.slots.push(slot);
        }
    }

    /// Builds a new set from `sources` and, only if all of it is valid, makes it the active one. The
    /// window state and the alert memory are untouched either way.
    pub fn reload(&mut self, sources: &RuleSources) -> Result<(), BuildErrors> {
        match RuleSet::build(sources, &self.opts.limits, &self.shared) {
            Ok(set) => {
                let old = std::mem::replace(&mut self.set, set);
                self.index_stats();
                self.counters.reloads_ok += 1;
                tracing::debug!(
                    old_version = %old.version,
                    version = %self.set.version,
                    rules = self.set.rules.len(),
                    "Rules reloaded."
                );
                for w in &self.set.warnings {
                    tracing::warn!("{w}");
                }
                Ok(())
            }
            Err(e) => {
                self.counters.reloads_failed += 1;
                tracing::error!(
                    version = %self.set.version,
                    errors = e.errors.len(),
                    "Rule reload failed; the previous rules stay active. {e}"
                );
                Err(e)
            }
        }
    }

    /// Whether a usage record of this class triggers a rule that reads calling-number alerts, which
    /// a daemon partition hands over with `account_facts` (`rules::placement`).
    pub fn hands_over(&self, class: RecordClass) -> bool {
        self.opts.placement == Placement::Partition
            && self
                .set
                .for_class(class)
                .iter()
                .any(|&(i, _)| self.set.rules[i as usize].reads_callers)
    }

    /// The record's account as a rule sees it at the record's time.
    pub fn account_facts(&self, r: &UsageRecord) -> AccountFacts {
        let store = self.shared.store.borrow();
        let Some(a) = store
            .subscriber(r.served.msisdn)
            .and_then(|e| store.account_at(e.account))
        else {
            return AccountFacts::default();
        };
        AccountFacts {
            id: Some(a.id.to_string()),
            segment: Some(a.ledger.segment),
            credit_limit: a.ledger.credit_limit.is_some(),
            overdue: a.ledger.overdue(r.event_start) > crate::record::Money::ZERO,
        }
    }

    /// Evaluates the rules a usage record (already applied to state) can trigger; `facts`: its
    /// account as its partition saw it (the calls lane, which keeps no accounts).
    pub fn on_usage(&mut self, r: &UsageRecord, class: RecordClass, facts: Option<&AccountFacts>) {
        self.counters.usage_records += 1;
        if self.set.for_class(class).is_empty() {
            self.counters.usage_without_rules += 1;
            return;
        }
        let predicates = (if r.charge.amount > crate::record::Money::ZERO {
            meta::CHARGED
        } else {
            0
        }) | (if r.location.lat.is_some() && r.location.lon.is_some() {
            meta::LOCATED
        } else {
            0
        });
        if !self
            .set
            .for_class(class)
            .iter()
            .any(|&(_, need)| need & !predicates == 0)
        {
            self.counters.usage_without_rules += 1;
            return;
        }
        let subject = {
            let store = self.shared.store.borrow();
            let msisdn = r.served.msisdn;
            let mt_voice = r.record_type == RecordType::Voice && r.direction == Some(Direction::Mt);
            Subject {
                sub: Some(msisdn),
                caller: r
                    .other_party
                    .number
                    .filter(|&n| mt_voice && store.calling_number(n).is_some()),
                imei: r.served.imei.filter(|&n| store.imei(n).is_some()),
                account: store
                    .subscriber(msisdn)
                    .map(|e| e.account)
                    .filter(|&s| store.account_at(s).is_some()),
                destination: r.destination(),
                facts,
            }
        };
        let written = r.written_numbers();
        let priced = r
            .charge
            .original
            .as_deref()
            .map(|(amount, currency)| format!("{amount} {currency}"));
        let trigger = Dynamic::from(UsageView::new(r, class));
        let entries = self.set.for_class(class).len();
        let mut last = usize::MAX;
        for k in 0..entries {
            let (i, need) = self.set.for_class(class)[k];
            let i = i as usize;
            // A rule listed twice (two predicate masks) runs once: entries of a rule are adjacent.
            if need & !predicates != 0 || i == last {
                continue;
            }
            last = i;
            self.evaluate(
                i,
                &trigger,
                r.event_start,
                (Some(&r.record_id), &written, priced.as_deref()),
                &subject,
            );
        }
    }

    /// Evaluates the rules an account event (already applied to the ledger) can trigger.
    pub fn on_event(&mut self, e: &AccountEvent) {
        self.counters.events += 1;
        if self.set.for_event(e.event_type).is_empty() {
            return;
        }
        let subject = {
            let store = self.shared.store.borrow();
            Subject {
                sub: e.msisdn.filter(|&n| store.subscriber(n).is_some()),
                account: store.account_slot(&e.account_id),
                ..Subject::default()
            }
        };
        let trigger = Dynamic::from(EventView::new(e));
        let n = self.set.for_event(e.event_type).len();
        for k in 0..n {
            let i = self.set.for_event(e.event_type)[k] as usize;
            self.evaluate(
                i,
                &trigger,
                e.occurred_at,
                (Some(&e.event_id), &[], None),
                &subject,
            );
        }
    }

    /// Evaluates timer rules for a fired timer.
    pub fn on_timer(&mut self, t: &Timer) {
        self.counters.timers += 1;
        if self.set.for_timer().is_empty() {
            return;
        }
        let subject = Subject {
            account: self.shared.store.borrow().account_slot(&t.account_id),
            ..Subject::default()
        };
        let trigger = Dynamic::from(TimerView::new(t));
        for k in 0..self.set.for_timer().len() {
            let i = self.set.for_timer()[k] as usize;
            self.evaluate(i, &trigger, t.at, (None, &[], None), &subject);
        }
    }

    fn evaluate(
        &mut self,
        i: usize,
        trigger: &Dynamic,
        time: EventTime,
        (record_id, written, original_charge): (Option<&str>, &[(String, String)], Option<&str>),
        subject: &Subject<'_>,
    ) {
        let slot = self.slots[i];
        if self.stats[slot].quarantined && !self.readmit(slot, time.utc) {
            return;
        }
        let set = &mut self.set;
        let rule = &mut set.rules[i];
        let kind = rule.meta().entity;
        if !self.opts.placement.runs(rule) {
            return;
        }
        let end = time.utc;

        // The entity the rule is keyed by; a trigger without one (an MT call from an untracked
        // caller for a calling-number rule) does not run the rule.
        // Strings for the alert's entity are made only when a rule says "alert": most evaluations
        // return nothing.
        let (entity, number) = match kind {
            EntityType::Subscriber | EntityType::CallingNumber | EntityType::Imei => {
                let n = match kind {
                    EntityType::Subscriber => subject.sub,
                    EntityType::Imei => subject.imei,
                    _ => subject.caller,
                };
                let Some(n) = n else { return };
                (
                    EntityArg::Entity(EntityView::new(self.shared.clone(), kind, n, end)),
                    Some(n),
                )
            }
            EntityType::Account => match subject.account {
                Some(_) => (
                    EntityArg::Account(AccountView::new(
                        self.shared.clone(),
                        subject.account,
                        time,
                    )),
                    None,
                ),
                None => return,
            },
        };
        // Declared account conditions, checked natively: no script runs for a record they exclude.
        let needs = rule.resolved.requires;
        let segment = if let Some(f) = subject.facts {
            if needs != 0
                && !((needs & meta::NEEDS_CREDIT_LIMIT == 0 || f.credit_limit)
                    && (needs & meta::NEEDS_OVERDUE == 0 || f.overdue))
            {
                return;
            }
            f.segment.filter(|_| kind == EntityType::Subscriber)
        } else {
            let store = self.shared.store.borrow();
            let account = subject.account.and_then(|s| store.account_at(s));
            if needs != 0 {
                let ok = account.is_some_and(|a| {
                    (needs & meta::NEEDS_CREDIT_LIMIT == 0 || a.ledger.credit_limit.is_some())
                        && (needs & meta::NEEDS_OVERDUE == 0
                            || a.ledger.overdue(time) > crate::record::Money::ZERO)
                });
                if !ok {
                    return;
                }
            }
            // A calling number or a device is nobody's account: the record's account (a victim's)
            // must not pick its parameters or route its alerts to a key-account manager.
            account
                .filter(|_| matches!(kind, EntityType::Subscriber | EntityType::Account))
                .map(|a| a.ledger.segment)
        };
        let acct = AccountView::new(self.shared.clone(), subject.account, time);
        let params = rule.params[segment_index(segment)].clone();

        // A rule reading calling-number alerts runs, in the daemon, in the partition of the number
        // its record went to (`placement`). Its memory of the subscriber (cooldown, `edge`, alert
        // ids) is kept per that number too, so that it depends on that partition's records only and
        // replay matches the daemon: a victim calling back two flagged numbers gets an alert for each
        // (each names another number to block); two callbacks to one number within the cooldown, one.
        let scope = subject.destination.filter(|_| rule.reads_callers);
        self.shared.memory.borrow_mut().set_now(end);
        self.shared.current.set((
            match self.shared.namespace {
                "" => rule.id_hash,
                ns => rule.id_hash ^ key_hash(ns),
            },
            match (number, scope, subject.account) {
                (Some(n), Some(to), _) => EntityKey::Scoped(n, to),
                (Some(n), None, _) => EntityKey::Number(n),
                (None, _, Some(slot)) => EntityKey::Account(slot),
                (None, _, None) => EntityKey::None,
            },
        ));
        let started = Instant::now();
        // The guards at the top of the script, evaluated natively: when one holds, the script
        // would return nothing, and is not called (`gate`).
        let gated = rule.gate.as_ref().is_some_and(|g| {
            let record = trigger.read_lock::<UsageView>();
            let inputs = Inputs {
                record: record.as_deref(),
                entity: entity.view(),
                account: &acct,
                params: &params,
            };
            g.check(&inputs) == Verdict::Skip
        });
        let result = if gated && !VERIFY_GATES {
            Ok(None)
        } else {
            let result = sandbox::call(
                &set.engine,
                &rule.ast,
                &mut rule.scope,
                ENTRY,
                vec![
                    trigger.clone(),
                    entity.into_dynamic(),
                    Dynamic::from(acct),
                    Dynamic::from(ParamsView(params)),
                ],
            )
            .and_then(sandbox::expect_map_or_unit);
            assert!(
                !gated || matches!(result, Ok(None)),
                "the gate of rule {} skipped an evaluation its script answers with {result:?}",
                rule.id()
            );
            result
        };
        let elapsed = started.elapsed().as_nanos() as u64;

        let stats = &mut self.stats[slot];
        stats.evaluations += 1;
        if gated {
            stats.gated += 1;
            self.counters.gated += 1;
        }
        // A full block starts the next before this evaluation counts, so that its error, if any,
        // lands in the same block as the evaluation.
        if stats.recent[1].0 >= self.opts.quarantine.window {
            stats.recent = [stats.recent[1], (0, 0, 0)];
        }
        stats.recent[1].0 += 1;
        stats.latency.saturating_record(elapsed.max(1));
        self.counters.evaluations += 1;

        let verdict = match result {
            Ok(None) => return,
            Ok(Some(map)) => {
                let account_id = match subject.facts {
                    Some(f) => f.id.clone().filter(|_| kind == EntityType::Subscriber),
                    None => {
                        let store = self.shared.store.borrow();
                        subject
                            .account
                            .filter(|_| {
                                matches!(kind, EntityType::Subscriber | EntityType::Account)
                            })
                            .and_then(|s| store.account_at(s))
                            .map(|a| a.id.to_string())
                    }
                };
                let entity = EntityRef {
                    kind,
                    key: match number {
                        Some(n) => n.to_string(),
                        None => account_id.clone().unwrap_or_default(),
                    },
                    // A line known only by its IMSI has no MSISDN to name (its key says `imsi:…`).
                    msisdn: number
                        .filter(|n| kind == EntityType::Subscriber && !n.is_imsi_line())
                        .map(|n| n.to_string()),
                    account_id,
                    segment,
                };
                let info = TriggerInfo {
                    time,
                    record_id,
                    segment,
                    scope,
                    written,
                    original_charge: original_charge.map(str::to_string),
                };
                policy::decide(
                    rule,
                    &self.shared.memory_id(&rule.meta().id),
                    &set.version,
                    &map,
                    &info,
                    entity,
                    &mut self.shared.memory.borrow_mut(),
                    match rule.meta().mode {
                        RuleMode::Shadow => Mode::Shadow,
                        RuleMode::Live => self.opts.mode,
                    },
                    wall_clock_now(),
                )
            }
            Err(e) => Err(e),
        };
        match verdict {
            Ok((Decision::Emit, Some(alert))) => {
                stats.alerts += 1;
                stats.entities.insert(key_hash(&alert.entity.key));
                self.counters.alerts += 1;
                self.alerts.push(alert);
            }
            Ok((Decision::Cooldown, _)) => stats.suppressed += 1,
            Ok((Decision::NeedMoreHits, _)) => stats.pending_hits += 1,
            Ok((Decision::Snoozed, _)) => stats.snoozed += 1,
            Ok((Decision::Emit, None)) => {}
            Err(e) => self.count_error(slot, &e, end),
        }
    }

    /// A quarantined rule comes back once its cool-down (event time, so that a replay and the
    /// daemon decide alike) has passed; true if it did.
    fn readmit(&mut self, slot: usize, now: i64) -> bool {
        let cooldown = self.opts.quarantine.cooldown_s;
        let s = &mut self.stats[slot];
        match s.quarantined_at {
            Some(at) if now >= at.saturating_add(cooldown) => {
                s.quarantined = false;
                s.quarantined_at = None;
                s.recent = [(0, 0, 0); 2];
                tracing::warn!(
                    rule = %s.id,
                    quarantines = s.quarantines,
                    "Rule re-admitted after its quarantine cool-down; quarantined again if it keeps failing."
                );
                true
            }
            _ => false,
        }
    }

    fn count_error(&mut self, slot: usize, e: &ScriptError, at: i64) {
        self.counters.errors += 1;
        let q = self.opts.quarantine;
        let s = &mut self.stats[slot];
        s.errors += 1;
        s.errors_since_load += 1;
        s.recent[1].1 += 1;
        s.recent[1].2 += u64::from(matches!(
            e,
            ScriptError::Limit {
                limit: sandbox::Limit::Time,
                ..
            }
        ));
        *s.errors_by_kind.entry(e.kind()).or_default() += 1;
        let file = self
            .set
            .rules
            .iter()
            .find(|r| r.id() == s.id)
            .map_or("", |r| r.file.as_str());
        let message = match e.position() {
            (0, _) => format!("{file}: {}", e.detail()),
            (line, column) => format!("{file}:{line}:{column}: {}", e.detail()),
        };
        // The first error of a rule is logged; after that it is counted (a log line per record would
        // flood the log), until quarantine.
        if s.errors == 1 {
            tracing::warn!(rule = %s.id, error = %message, "Rule failed; counted, the record goes on to the other rules.");
        }
        s.last_error = Some(message);
        let [a, b] = s.recent;
        let (evaluations, errors, overruns) = (a.0 + b.0, a.1 + b.1, a.2 + b.2);
        if !s.quarantined && q.trips((evaluations, errors, overruns)) {
            s.quarantined = true;
            s.quarantined_at = Some(at);
            s.quarantines += 1;
            tracing::error!(
                rule = %s.id,
                errors,
                overruns,
                evaluations,
                last_error = s.last_error.as_deref().unwrap_or(""),
                cooldown = %crate::record::time::format_duration(q.cooldown_s),
                "Rule quarantined: it keeps failing, or over 1% of its recent evaluations were stopped by the CPU-time budget. It comes back after the cool-down (event time) or at the next reload."
            );
        }
    }

    /// The alert memory's estimated bytes, and the `edge` names refused by its bound.
    pub fn alert_memory(&self) -> (usize, u64) {
        let m = self.shared.memory.borrow();
        (m.estimated_bytes(), m.edges_refused)
    }

    /// Forgets alert memory untouched for longer than the longest window.
    pub fn maintain(&mut self, now: i64) {
        let keep = self.shared.store.borrow().config().max_window.0;
        self.shared.memory.borrow_mut().maybe_prune(now, keep);
    }

    /// Takes the alerts emitted so far.
    pub fn take_alerts(&mut self) -> std::vec::Drain<'_, Alert> {
        self.alerts.drain(..)
    }
}

/// Debug builds (every test among them) call the script after a gate said `Skip` too, and panic
/// unless it returned nothing: each replay in a test checks every gated evaluation against Rhai.
/// Release builds trust the gate, which is sound by construction (`gate`).
pub(crate) const VERIFY_GATES: bool = cfg!(debug_assertions);

/// The entity argument of `evaluate`: a subscriber, calling number or device, or an account.
enum EntityArg {
    Entity(EntityView),
    Account(AccountView),
}

impl EntityArg {
    fn view(&self) -> View<'_> {
        match self {
            EntityArg::Entity(v) => View::Entity(v),
            EntityArg::Account(v) => View::Account(v),
        }
    }

    fn into_dynamic(self) -> Dynamic {
        match self {
            EntityArg::Entity(v) => Dynamic::from(v),
            EntityArg::Account(v) => Dynamic::from(v),
        }
    }
}

fn wall_clock_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_is_quarantined_for_its_error_rate_or_for_a_p99_over_the_budget() {
        let q = QuarantinePolicy::default(); // 50 errors and 5%, over 1000..2000 evaluations
        assert!(!q.trips((2000, 49, 0)), "too few errors");
        assert!(
            !q.trips((2000, 60, 0)),
            "3% errors: a rare failure keeps running"
        );
        assert!(q.trips((1000, 60, 0)), "6% errors");
        // Overruns are errors too; 1% of the evaluations over the budget is a p99 over it.
        assert!(!q.trips((2000, 15, 15)), "0.75% overruns");
        assert!(q.trips((2000, 25, 25)), "1.25% overruns");
        assert!(
            !q.trips((500, 9, 9)),
            "a few slow evaluations in a short history"
        );
    }
}
