//! Kafka input: a consumer-group member reading the usage and account-event topics.
//!
//! `BaseConsumer` polled by one thread, which hands each message (copied: payload, key, position) to the
//! worker that owns its partition number. Not `StreamConsumer`: its known stall after rebalances
//! (rust-rdkafka issues) is avoided, and a plain poll loop is all a thread-per-worker design needs.
//!
//! Offsets: `enable.auto.offset.store = false` — only offsets the tracker has cleared (every alert and
//! dead letter of that record and all earlier ones acknowledged) are stored, and the auto-commit
//! commits what is stored. `enable.auto.commit` stays on because it only ever commits stored offsets.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::sink::ack::Input;
use crate::telemetry::metrics::Metrics;

/// One consumed message, owned, on its way to a worker.
pub struct InputMessage {
    pub input: Input,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// Broker timestamp (ms), for latency figures.
    pub timestamp_ms: Option<i64>,
}

pub struct ConsumerCtx {
    pub metrics: Arc<Metrics>,
    pub board: Arc<LagBoard>,
    pub usage_topic: String,
    pub events_topic: String,
    /// What to do with partitions as they are assigned and revoked (the daemon's state handover).
    pub hook: std::sync::OnceLock<Arc<dyn RebalanceHook>>,
    /// Bumped at every rebalance: messages polled before it may belong to partitions given away.
    pub generation: std::sync::atomic::AtomicU64,
}

/// Called on the polling thread, inside `poll`, during a rebalance (eager protocol: everything is
/// revoked, then the new assignment arrives).
pub trait RebalanceHook: Send + Sync {
    /// Before the assignment takes effect: restore state and set each partition's start offset in
    /// `tpl` (left as is: the committed offset).
    fn assigned(&self, consumer: &BaseConsumer<ConsumerCtx>, tpl: &mut TopicPartitionList);
    /// Before the partitions are given away: snapshot their state and commit.
    fn revoking(&self, consumer: &BaseConsumer<ConsumerCtx>, tpl: &TopicPartitionList);
}

/// Per input partition, messages on the broker not yet handed to cdrguard (from librdkafka's
/// statistics, every 25 ms). Workers use it to merge a partition's usage and events in event time:
/// a record waits for the other topic only while that topic has something unread.
#[derive(Default)]
pub struct LagBoard {
    lag: std::sync::Mutex<ahash::AHashMap<(Input, i32), i64>>,
    ready: std::sync::atomic::AtomicBool,
    /// Messages polled and on their way to a worker, not yet in its partition queues.
    in_transit: std::sync::Mutex<ahash::AHashMap<(Input, i32), i64>>,
    /// Wall-clock ms at which the statistics the lags come from were taken.
    updated_ms: std::sync::atomic::AtomicI64,
    /// Wall clock minus librdkafka's monotonic clock (ms), the smallest seen: statistics wait in the
    /// consumer queue behind the messages fetched before them, so the time they reach us can be
    /// well after the time they describe; the least-delayed one pins the clock offset.
    clock_offset_ms: std::sync::atomic::AtomicI64,
    /// Start offsets of partitions that do not start at their committed offset (`set_start`).
    starts: std::sync::Mutex<ahash::AHashMap<(Input, i32), Option<i64>>>,
}

impl LagBoard {
    /// Unread messages of a partition; 0 for a partition the statistics do not list (the topic has
    /// fewer partitions); `None` before the first statistics.
    pub fn lag(&self, input: Input, partition: i32) -> Option<i64> {
        if !self.ready.load(Ordering::Relaxed) {
            return None;
        }
        let lag = self
            .lag
            .lock()
            .expect("lag lock")
            .get(&(input, partition))
            .copied()
            .unwrap_or(0);
        // Negative: assigned, high watermark not reported yet.
        (lag >= 0).then_some(lag)
    }

    /// When the current lags were reported (wall-clock ms).
    pub fn updated_ms(&self) -> i64 {
        self.updated_ms.load(Ordering::Relaxed)
    }

    /// A message was handed to a worker's channel (+1) or taken into its queues (−1).
    pub fn transit(&self, input: Input, partition: i32, delta: i64) {
        *self
            .in_transit
            .lock()
            .expect("transit lock")
            .entry((input, partition))
            .or_default() += delta;
    }

    /// Where an assigned partition starts reading when that is not its committed offset (a restore or
    /// a rebuild seeks elsewhere): until the first message arrives, its lag counts from there.
    /// `Some(None)`: the log's beginning; `None`: the committed offset (forget an earlier start).
    ///
    /// The partition's lag is unknown until statistics report its high watermark: right after an
    /// assignment they may not, and reading that as "nothing unread" would let the other topic's
    /// records run ahead of this one's (a rebuild re-reading history would apply usage before the
    /// payments that preceded it).
    pub fn set_start(&self, input: Input, partition: i32, start: Option<Option<i64>>) {
        self.lag
            .lock()
            .expect("lag lock")
            .insert((input, partition), -1);
        let mut starts = self.starts.lock().expect("starts lock");
        match start {
            Some(s) => starts.insert((input, partition), s),
            None => starts.remove(&(input, partition)),
        };
    }

    /// Messages of a partition polled but not yet queued by its worker.
    pub fn in_transit(&self, input: Input, partition: i32) -> i64 {
        self.in_transit
            .lock()
            .expect("transit lock")
            .get(&(input, partition))
            .copied()
            .unwrap_or(0)
    }

    pub fn snapshot(&self) -> Vec<((Input, i32), i64)> {
        let mut v: Vec<_> = self
            .lag
            .lock()
            .expect("lag lock")
            .iter()
            .filter(|(_, v)| **v >= 0)
            .map(|(k, v)| (*k, *v))
            .collect();
        v.sort();
        v
    }
}

impl ClientContext for ConsumerCtx {
    fn error(&self, error: KafkaError, reason: &str) {
        self.metrics.kafka_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%error, reason, "Kafka consumer error; retrying.");
    }

    fn stats(&self, stats: rdkafka::Statistics) {
        let mut lag = self.board.lag.lock().expect("lag lock");
        let starts = self.board.starts.lock().expect("starts lock");
        for (name, topic) in &stats.topics {
            let input = if *name == self.usage_topic {
                Input::Usage
            } else if *name == self.events_topic {
                Input::Events
            } else {
                continue;
            };
            for (&p, part) in &topic.partitions {
                if p < 0 {
                    continue;
                }
                // app_offset: the next offset to hand to the application (invalid before any).
                let from = if part.app_offset >= 0 {
                    part.app_offset
                } else if let Some(start) = starts.get(&(input, p)) {
                    start.unwrap_or(part.lo_offset.max(0))
                } else if part.committed_offset >= 0 {
                    part.committed_offset
                } else {
                    part.lo_offset.max(0)
                };
                if part.hi_offset < 0 {
                    // Not known yet: an entry marked unknown at assignment stays unknown.
                    continue;
                }
                lag.insert((input, p), (part.hi_offset - from).max(0));
            }
        }
        // `ts` is librdkafka's monotonic clock (µs) when the statistics were taken.
        let taken = stats.ts / 1000;
        let offset = crate::telemetry::metrics::now_ms() - taken;
        let seen = self.board.clock_offset_ms.load(Ordering::Relaxed);
        let offset = if seen == 0 { offset } else { offset.min(seen) };
        self.board.clock_offset_ms.store(offset, Ordering::Relaxed);
        self.board
            .updated_ms
            .store(taken + offset, Ordering::Relaxed);
        self.board.ready.store(true, Ordering::Relaxed);
    }
}

/// The eager (range) rebalance, done here rather than in `pre_rebalance`/`post_rebalance` so that
/// the hook can change the assignment's start offsets before `assign` (a restored snapshot or a rebuild
/// starts somewhere other than the committed offset).
impl ConsumerContext for ConsumerCtx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if let Some(h) = self.hook.get() {
                    h.assigned(consumer, tpl);
                }
                let parts: Vec<String> = tpl
                    .elements()
                    .iter()
                    .map(|e| format!("{}/{}", e.topic(), e.partition()))
                    .collect();
                tracing::info!(partitions = %parts.join(" "), "Partitions assigned.");
                if let Err(e) = consumer.assign(tpl) {
                    tracing::error!(error = %e, "Assigning partitions failed.");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(partitions = tpl.count(), "Partitions revoked.");
                if let Some(h) = self.hook.get() {
                    h.revoking(consumer, tpl);
                }
                if let Err(e) = consumer.unassign() {
                    tracing::warn!(error = %e, "Unassigning partitions failed.");
                }
            }
            other => {
                tracing::warn!(error = ?other, "Rebalance failed; dropping the assignment.");
                let _ = consumer.unassign();
            }
        }
    }
}

pub fn consumer(
    cfg: &KafkaConfig,
    brokers: &str,
    metrics: Arc<Metrics>,
    board: Arc<LagBoard>,
) -> Result<BaseConsumer<ConsumerCtx>, KafkaError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", &cfg.start_from)
        .set("enable.partition.eof", "false")
        // Range assigns partition p of both (co-partitioned) topics to one member: an account's
        // usage and events meet in one worker. Round-robin or cooperative-sticky would split them.
        .set("partition.assignment.strategy", "range")
        // Low fetch wait: a record should not sit at the broker for the default 500 ms (and the
        // mock broker answers a fetch only when the wait expires).
        .set("fetch.wait.max.ms", "2")
        // The event-time merge lets a record go ahead of the other topic only on lag statistics
        // taken after the record, so their period bounds live latency: measured at 20k records/s,
        // p50 58.7 ms / p99 109.5 ms with 100 ms, 17.0 / 31.2 ms with 25 ms (26.8 / 40.6 ms once
        // statistics are dated by librdkafka's clock with a 10 ms margin), for ~3% less backlog
        // throughput (128 partitions).
        .set("statistics.interval.ms", "25");
    for (k, v) in &cfg.options {
        c.set(k, v);
    }
    c.create_with_context(ConsumerCtx {
        metrics,
        board,
        usage_topic: cfg.usage_topic.clone(),
        events_topic: cfg.events_topic.clone(),
        hook: std::sync::OnceLock::new(),
        generation: std::sync::atomic::AtomicU64::new(0),
    })
}
