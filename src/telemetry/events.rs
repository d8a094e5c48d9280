//! Internal events: each one a struct whose `emit` both logs and counts, so a log line and its metric
//! never drift apart (Vector's `internal_events`). Events that can repeat per record or per poll are
//! counted every time and logged at most once per `LOG_EVERY` per kind, with how many were not logged.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::OnGap;
use crate::record::{Alert, Input, OffsetGap, Reject};

use super::metrics::{Metrics, RestoreOutcome};

const LOG_EVERY: Duration = Duration::from_secs(30);

/// Logs a repeated event once per `LOG_EVERY` per key; the count says how many were not logged.
pub struct RateLimit<K = &'static str> {
    last: Mutex<HashMap<K, (Instant, u64)>>,
}

impl<K> Default for RateLimit<K> {
    fn default() -> Self {
        RateLimit {
            last: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash> RateLimit<K> {
    /// `Some(suppressed since the last logged one)` when this occurrence should be logged.
    pub fn check(&self, key: K) -> Option<u64> {
        let mut last = self.last.lock().expect("rate limit lock");
        let now = Instant::now();
        match last.get_mut(&key) {
            Some((at, skipped)) if now.duration_since(*at) < LOG_EVERY => {
                *skipped += 1;
                None
            }
            Some((at, skipped)) => {
                let n = *skipped;
                *at = now;
                *skipped = 0;
                Some(n)
            }
            None => {
                last.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

/// A record that did not make it into the state; it goes to the dead-letter destination.
pub struct RecordRejected<'a> {
    pub input: Input,
    pub partition: i32,
    pub offset: i64,
    pub reject: &'a Reject,
}

impl RecordRejected<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.count_reject(self.reject.reason);
        tracing::debug!(
            input = %self.input,
            partition = self.partition,
            offset = self.offset,
            reason = %self.reject.reason,
            "Record rejected; sent to the dead-letter topic."
        );
    }
}

/// A dead letter handed to the sinks.
pub struct DeadLettered;

impl DeadLettered {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.dead_letters.fetch_add(1, Ordering::Relaxed);
    }
}

/// An alert handed to the sinks, one count per department it goes to.
pub struct AlertSent<'a> {
    pub alert: &'a Alert,
}

impl AlertSent<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        // A shadow alert is counted by the departments it would go to once promoted.
        let counts = match self.alert.mode {
            crate::record::Mode::Shadow => &metrics.shadow_alerts,
            _ => &metrics.alerts,
        };
        for d in &self.alert.departments {
            counts.count(&self.alert.rule.id, *d);
        }
    }
}

/// A sink refused a message for good: the input offset stays uncommitted (read again after a
/// restart), so this is operator business.
pub struct OutputFailed<'a> {
    pub sink: &'static str,
    /// `alert` or `dead letter`.
    pub what: &'static str,
    pub id: &'a str,
    pub error: &'a dyn std::fmt::Display,
}

impl OutputFailed<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.delivery_failed.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            sink = self.sink,
            what = self.what,
            id = self.id,
            error = %self.error,
            "Output not handed to its sink; its input offset stays uncommitted."
        );
    }
}

/// librdkafka reported a client error (broker down, authentication, ...). It retries by itself; the
/// log says once per `LOG_EVERY` what is wrong and how often it happened since.
pub struct KafkaClientError<'a> {
    pub client: &'static str,
    pub error: &'a dyn std::fmt::Display,
    pub reason: &'a str,
}

impl KafkaClientError<'_> {
    pub fn emit(&self, metrics: &Metrics, limit: &RateLimit) {
        metrics.kafka_errors.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = limit.check(self.client) {
            tracing::warn!(
                client = self.client,
                error = %self.error,
                reason = self.reason,
                repeated = suppressed,
                "Kafka client error; librdkafka retries (repeated: errors since the last line)."
            );
        }
    }
}

/// A record whose message key is not the one its partitioning needs: counted always, logged once
/// per `LOG_EVERY` per input with an example.
pub struct RecordMiskeyed<'a> {
    pub input: Input,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub expected: &'a str,
}

impl RecordMiskeyed<'_> {
    pub fn emit(&self, metrics: &Metrics, limit: &RateLimit<Input>) {
        metrics.miskeyed[self.input.index()].fetch_add(1, Ordering::Relaxed);
        if let Some(not_logged) = limit.check(self.input) {
            tracing::warn!(
                topic = self.topic,
                partition = self.partition,
                offset = self.offset,
                key = %self.key.map_or("(none)".into(), String::from_utf8_lossy),
                expected = self.expected,
                not_logged,
                total = metrics.miskeyed[self.input.index()].load(Ordering::Relaxed),
                "Record keyed other than by its account: the producer's partitioner may put one \
                 account's records in several partitions, whose state then sees part of the account \
                 (README \"Keying\")."
            );
        }
    }
}

/// A partition's state started, after an assignment.
pub struct PartitionStarted {
    pub partition: i32,
    pub outcome: RestoreOutcome,
}

impl PartitionStarted {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.snapshots.count_restore(self.outcome);
        tracing::debug!(
            partition = self.partition,
            outcome = %self.outcome.label(),
            "Partition state started."
        );
    }
}

/// A rule library change validated and handed to every pipeline, or refused.
pub struct RulesReloaded {
    pub accepted: bool,
}

impl RulesReloaded {
    pub fn emit(&self, metrics: &Metrics) {
        let c = if self.accepted {
            &metrics.reloads_ok
        } else {
            &metrics.reloads_refused
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Records gone from the broker before they were read: counted always, logged as an error once per
/// `LOG_EVERY` per input partition (with the episodes not logged).
pub struct OffsetGapFound<'a> {
    pub gap: &'a OffsetGap,
    pub topic: &'a str,
    pub policy: OnGap,
}

impl OffsetGapFound<'_> {
    pub fn emit(&self, metrics: &Metrics, limit: &RateLimit<(Input, i32)>) {
        let totals = metrics.count_gap(self.gap);
        let Some(not_logged) = limit.check((self.gap.input, self.gap.partition)) else {
            return;
        };
        let g = self.gap;
        let what = match self.policy {
            OnGap::Continue => "resuming at the oldest record left (kafka.on_gap = continue); windows over this span may miss records",
            OnGap::Stop => "stopping without committing past the gap (kafka.on_gap = stop)",
        };
        tracing::error!(
            topic = self.topic,
            partition = g.partition,
            expected = g.expected,
            received = g.received,
            skipped = g.skipped(),
            reason = g.reason.as_str(),
            partition_skipped_total = totals.skipped,
            episodes_not_logged = not_logged,
            "Records skipped: offsets {}..{} of {}/{} were gone from the broker before they were read ({}); {what}.",
            g.expected,
            g.received,
            self.topic,
            g.partition,
            match g.reason {
                crate::record::GapReason::Deleted => "deleted: retention, deleted records or the broker's size limit",
                crate::record::GapReason::Rewound => "the log restarted lower: topic recreated or truncated",
                crate::record::GapReason::Skipped => "not delivered by the broker though still in its log: a broker fault",
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_event_is_logged_once_per_period_with_the_count_in_between() {
        let limit = RateLimit::default();
        assert_eq!(limit.check("a"), Some(0));
        assert_eq!(limit.check("a"), None);
        assert_eq!(limit.check("a"), None);
        assert_eq!(limit.check("b"), Some(0), "kinds are limited apart");
        limit.last.lock().unwrap().get_mut("a").unwrap().0 -= LOG_EVERY;
        assert_eq!(limit.check("a"), Some(2));
    }
}
