//! What a replay collects for the back-test page and the label score, cheaply: input records per hour
//! of event time, and the alerts folded by rule, department, severity and entity as they are written.
//!
//! Nothing here grows with the input: hours are a few thousand at most, and alerts are kept once per
//! (rule, entity), not once per alert, so a rule that fires on every record costs its entities.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use ahash::AHashMap;

use crate::record::{Alert, Department, EntityType, EventTime, Item, Severity};
use crate::sink::{Origin, Output, SinkError};

/// Seconds in an hour: the buckets of event time.
pub const HOUR: i64 = 3600;

/// The hour (UTC seconds / 3600, floored) an instant falls in.
pub fn hour_of(utc: i64) -> i64 {
    utc.div_euclid(HOUR)
}

/// Input records per hour of event time, usage records and account events apart.
#[derive(Clone, Debug, Default)]
pub struct InputVolume {
    /// Hour → [usage records, account events]; the hour being counted is in `current` until another
    /// hour comes.
    hours: BTreeMap<i64, [u64; 2]>,
    /// Input is ordered by event time within the lateness, so nearly every record falls in the hour
    /// of the one before: counting it here skips the map lookup.
    current: Option<(i64, [u64; 2])>,
    /// The first usage record's UTC offset: the page shows hours as the input writes them.
    offset_min: Option<i16>,
}

impl InputVolume {
    /// Counts one decoded record (rejected lines have no trustworthy time: they are counted by reason).
    pub fn add(&mut self, item: &Item) {
        let (t, kind) = match item {
            Item::Usage(r) => {
                self.offset_min.get_or_insert(r.event_start.offset_min);
                (r.event_start.utc, 0)
            }
            Item::Event(e) => (e.occurred_at.utc, 1),
        };
        let h = hour_of(t);
        match &mut self.current {
            Some((ch, counts)) if *ch == h => counts[kind] += 1,
            _ => {
                self.flush();
                let mut counts = [0; 2];
                counts[kind] = 1;
                self.current = Some((h, counts));
            }
        }
    }

    fn flush(&mut self) {
        if let Some((h, c)) = self.current.take() {
            let e = self.hours.entry(h).or_default();
            e[0] += c[0];
            e[1] += c[1];
        }
    }

    /// Hour → [usage records, account events].
    pub fn hours(&self) -> BTreeMap<i64, [u64; 2]> {
        let mut all = self.clone();
        all.flush();
        all.hours
    }

    /// The UTC offset of the input's first usage record, if any.
    pub fn offset_min(&self) -> Option<i16> {
        self.offset_min
    }
}

/// An entity an alert is about, as labels name it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntityKey {
    pub kind: EntityType,
    pub key: String,
}

/// One rule's alerts on one entity.
#[derive(Clone, Debug)]
pub struct EntityAlerts {
    pub alerts: u64,
    /// Trigger time of the first alert.
    pub first: EventTime,
    /// The highest severity among them.
    pub severity: Severity,
    /// The first alert's explanation.
    pub explanation: String,
}

/// The alerts of a replay, folded.
#[derive(Clone, Debug, Default)]
pub struct Alerts {
    pub total: u64,
    /// Rule → hour of the trigger time → alerts.
    pub by_rule_hour: BTreeMap<String, BTreeMap<i64, u64>>,
    /// Department → hour → alerts (an alert for two departments counts in both).
    pub by_department_hour: BTreeMap<Department, BTreeMap<i64, u64>>,
    /// Rule → severity → alerts.
    pub by_rule_severity: BTreeMap<String, BTreeMap<Severity, u64>>,
    /// Rule → entity → its alerts.
    pub by_rule_entity: BTreeMap<String, AHashMap<EntityKey, EntityAlerts>>,
}

impl Alerts {
    pub fn add(&mut self, a: &Alert) {
        let h = hour_of(a.trigger_event_time.utc);
        self.total += 1;
        *entry(&mut self.by_rule_hour, &a.rule.id)
            .entry(h)
            .or_default() += 1;
        for d in &a.departments {
            *self
                .by_department_hour
                .entry(*d)
                .or_default()
                .entry(h)
                .or_default() += 1;
        }
        *entry(&mut self.by_rule_severity, &a.rule.id)
            .entry(a.severity)
            .or_default() += 1;
        let key = EntityKey {
            kind: a.entity.kind,
            key: a.entity.key.clone(),
        };
        entry(&mut self.by_rule_entity, &a.rule.id)
            .entry(key)
            .and_modify(|e| {
                e.alerts += 1;
                e.severity = e.severity.max(a.severity);
                if a.trigger_event_time.utc < e.first.utc {
                    e.first = a.trigger_event_time;
                }
            })
            .or_insert_with(|| EntityAlerts {
                alerts: 1,
                first: a.trigger_event_time,
                severity: a.severity,
                explanation: a.evidence.explanation.clone(),
            });
    }
}

/// The map's value for `rule`, without allocating its key when it is there already (nearly always).
fn entry<'m, V: Default>(map: &'m mut BTreeMap<String, V>, rule: &str) -> &'m mut V {
    if !map.contains_key(rule) {
        map.insert(rule.to_string(), V::default());
    }
    map.get_mut(rule).expect("inserted above")
}

/// An output beside the alert file that folds every alert written into `Alerts`: both replay paths
/// (one thread, `--threads`) hand their alerts to their outputs, so the tally sees exactly the file's.
#[derive(Default)]
pub struct AlertTally {
    alerts: RefCell<Alerts>,
}

impl AlertTally {
    pub fn into_alerts(self) -> Alerts {
        self.alerts.into_inner()
    }
}

impl Output for AlertTally {
    fn name(&self) -> &'static str {
        "back-test tally"
    }

    /// The live alerts: the report and the labels score what reached the departments.
    fn alert(&self, alert: &Alert, _: &[u8], _: Origin) -> Result<(), SinkError> {
        if alert.mode != crate::record::Mode::Shadow {
            self.alerts.borrow_mut().add(alert);
        }
        Ok(())
    }

    fn flush(&self, _: Duration) -> Result<(), SinkError> {
        Ok(())
    }
}

/// What `replay` collected for `--report` and `--labels`.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub volume: InputVolume,
    pub alerts: Alerts,
}
