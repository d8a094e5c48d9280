//! The stages every record goes through, in one place. The replay command and (later) the Kafka daemon
//! feed it; everything between source and sink is this code in both modes.
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
use crate::classify::Classifier;
use crate::record::{Reject, RejectReason};
use crate::rules::{
    BuildErrors, RuleEngine, RuleSet, RuleSources, SandboxLimits, Shared, SharedStore,
};
use crate::source::{Decoded, Item};
use crate::state::{Outcome, Timer, WindowStore};

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

fn wall_clock_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub struct Pipeline {
    pub classifier: Classifier,
    pub store: SharedStore,
    /// The rule engine, when rules are enabled (`inspect` runs without).
    pub rules: Option<RuleEngine>,
    /// Classification takes the high-risk list from the rule library (and its reloads) rather than
    /// from a path in the config.
    pub high_risk_from_rules: bool,
    pub counts: Counts,
    /// Records later than this are skipped (inspect `--at`).
    pub cutoff: Option<i64>,
    /// Timers that have fired, kept when `keep_fired` is set (inspect shows them).
    pub fired: Vec<Timer>,
    pub keep_fired: bool,
    newest_any: Option<i64>,
    /// UTC offset of the latest accepted usage record: reports default to the records' own clock.
    pub display_offset: i16,
}

impl Pipeline {
    pub fn new(classifier: Classifier, store: WindowStore) -> Self {
        Pipeline {
            classifier,
            store: Rc::new(RefCell::new(store)),
            rules: None,
            high_risk_from_rules: false,
            counts: Counts::default(),
            cutoff: None,
            fired: Vec::new(),
            keep_fired: false,
            newest_any: None,
            display_offset: 0,
        }
    }

    /// Builds the rule set and turns rule evaluation on. The engine reads this pipeline's store.
    pub fn enable_rules(
        &mut self,
        sources: &RuleSources,
        limits: &SandboxLimits,
        quarantine_after: u64,
    ) -> Result<(), BuildErrors> {
        let shared = Shared::new(
            self.store.clone(),
            Rc::new(RefCell::new(AlertMemory::default())),
        );
        let set = RuleSet::build(sources, limits, &shared)?;
        let mut engine = RuleEngine::new(set, shared, limits.clone());
        engine.quarantine_after = quarantine_after;
        self.rules = Some(engine);
        self.adopt_rule_lists();
        Ok(())
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
            let watermark = {
                let mut store = self.store.borrow_mut();
                store.set_wall_clock(wall_clock_now());
                store.watermark()
            };
            if let (Some(engine), Some(w)) = (&mut self.rules, watermark) {
                engine.maintain(w);
            }
        }
        let verdict = match d.item {
            Err(reject) => Verdict::Reject(reject),
            Ok(item) if self.cutoff.is_some_and(|c| item.time() > c) => {
                self.counts.after_cutoff += 1;
                Verdict::Skipped
            }
            Ok(Item::Usage(r)) => {
                let class = self.classifier.classify(&r);
                let outcome = self.store.borrow_mut().apply_usage(&r, class);
                let store = self.store.borrow();
                match outcome {
                    Outcome::Accepted => {
                        drop(store);
                        self.counts.usage_accepted += 1;
                        self.note_time(r.event_start.utc);
                        self.display_offset = r.event_start.offset_min;
                        if let Some(engine) = &mut self.rules {
                            engine.on_usage(&r, class);
                        }
                        Verdict::Applied
                    }
                    Outcome::Duplicate => Verdict::Duplicate,
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
                        let wm = store.watermark().unwrap_or_default();
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
                                    store.config().allowed_lateness.0
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
                    _ => {
                        self.counts.events_accepted += 1;
                        self.note_time(e.occurred_at.utc);
                        if let Some(engine) = &mut self.rules {
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
    }

    fn on_fired(&mut self, before: usize) {
        if let Some(engine) = &mut self.rules {
            for t in &self.fired[before..] {
                engine.on_timer(t);
            }
        }
        if !self.keep_fired {
            self.fired.truncate(before);
        }
    }
}
