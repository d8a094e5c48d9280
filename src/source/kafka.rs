//! Kafka input: a consumer-group member reading the usage and account-event topics.
//!
//! `BaseConsumer` polled by one thread, which hands each message (copied: payload, key, position) to the
//! worker that owns its partition number. Not `StreamConsumer`: its known stall after rebalances
//! (rust-rdkafka issues) is avoided, and a plain poll loop is all a thread-per-worker design needs.
//!
//! Offsets: `enable.auto.offset.store = false` — only offsets the tracker has cleared (every alert and
//! dead letter of that record and all earlier ones acknowledged) are stored, and the auto-commit
//! commits what is stored. `enable.auto.commit` stays on because it only ever commits stored offsets.
//!
//! **End offsets.** The event-time merge needs to know when a partition has nothing more to read. That
//! comes from the end offset (high watermark) every fetch response carries, which librdkafka caches
//! per partition and updates before it queues the response's messages (`end_offsets`): once the next
//! offset to read has reached it, everything the broker had was handed over. No statistics timer and
//! no network round trip.

use std::ffi::CString;
use std::sync::Arc;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::record::Input;
use crate::telemetry::events::{KafkaClientError, RateLimit};
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
    /// The lane header of a by-account topic's message (`crate::repartition`).
    pub lane: Option<super::lane_header::LaneHeader>,
    /// A calls-topic message: what its record is handed over for (`repartition::calls`).
    pub handed: Option<super::lane_header::Handed>,
}

impl InputMessage {
    /// What it costs to hold in memory, for the read-ahead budget.
    pub fn weight(&self) -> i64 {
        (self.payload.len() + self.key.as_ref().map_or(0, Vec::len) + 96) as i64
    }
}

pub struct ConsumerCtx {
    pub metrics: Arc<Metrics>,
    /// The topics read (names of the two inputs).
    pub topics: KafkaConfig,
    /// What to do with partitions as they are assigned and revoked (the daemon's state handover).
    pub hook: std::sync::OnceLock<Arc<dyn RebalanceHook>>,
    /// Bumped at every rebalance: messages polled before it may belong to partitions given away.
    pub generation: std::sync::atomic::AtomicU64,
    errors: RateLimit,
}

impl ConsumerCtx {
    /// The input a topic is, if it is one.
    pub fn input_of(&self, topic: &str) -> Option<Input> {
        self.topics.input_of(topic)
    }

    pub fn topic(&self, input: Input) -> &str {
        self.topics.topic(input)
    }
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

impl ClientContext for ConsumerCtx {
    fn error(&self, error: KafkaError, reason: &str) {
        KafkaClientError {
            client: "consumer",
            error: &error,
            reason,
        }
        .emit(&self.metrics, &self.errors);
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

    /// A failed commit loses nothing — the records after the last commit are read again after a
    /// restart, and skipped as far as a snapshot holds them — but it must show: counted as a client
    /// error and logged (a commit during a rebalance, a member fenced by the coordinator).
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        let nothing_to_commit =
            |e: &KafkaError| e.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset);
        let failed = match result {
            Err(e) if !nothing_to_commit(&e) => Some(e.to_string()),
            _ => offsets.elements().iter().find_map(|e| {
                e.error()
                    .err()
                    .filter(|x| !nothing_to_commit(x))
                    .map(|x| format!("{}/{}: {x}", e.topic(), e.partition()))
            }),
        };
        if let Some(why) = failed {
            KafkaClientError {
                client: "consumer (offset commit)",
                error: &why,
                reason: "offsets not committed; they are committed again with the next ones",
            }
            .emit(&self.metrics, &self.errors);
        }
    }
}

pub fn consumer(
    cfg: &KafkaConfig,
    brokers: &str,
    base: &std::path::Path,
    metrics: Arc<Metrics>,
) -> anyhow::Result<BaseConsumer<ConsumerCtx>> {
    let mut c = crate::client::client_config(cfg, brokers, base)?;
    c.set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        // Only reached when the next offset is gone (retention, deleted records, a recreated
        // topic): a partition new to the group starts where `kafka.start_from` says, set explicitly
        // at assignment (`daemon::rebalance`). A reset resumes at the oldest record left, skipping
        // as little as can be; the poller counts the gap and applies `kafka.on_gap`.
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Range assigns partition p of both (co-partitioned) topics to one member: an account's
        // usage and events meet in one worker. Round-robin or cooperative-sticky would split them.
        .set("partition.assignment.strategy", "range")
        // Low fetch wait: a record should not sit at the broker for the default 500 ms (and the
        // mock broker answers a fetch only when the wait expires). Fetch responses also bring the
        // end offsets the event-time merge waits for.
        .set("fetch.wait.max.ms", "2");
    // Pass-through options win over the defaults above (owned ones are refused by `validate`).
    for (k, v) in &cfg.options {
        c.set(k, v);
    }
    Ok(c.create_with_context(ConsumerCtx {
        metrics,
        topics: cfg.clone(),
        hook: std::sync::OnceLock::new(),
        generation: std::sync::atomic::AtomicU64::new(0),
        errors: RateLimit::default(),
    })?)
}

/// The partition's log start and end offsets as of the last fetch response (or offset query) for it,
/// from librdkafka's cache: no network round trip. `None` before the first.
pub fn end_offsets(
    consumer: &BaseConsumer<ConsumerCtx>,
    topic: &CString,
    partition: i32,
) -> Option<(i64, i64)> {
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: `rd_kafka_get_watermark_offsets` only reads librdkafka's per-partition cache under its
    // own lock and writes the two out-parameters; the handle is alive for the consumer's lifetime
    // and `topic` is a valid NUL-terminated string for the call. rdkafka 0.39 wraps only the network
    // variant (`fetch_watermarks`), which would cost a broker round trip per partition per poll.
    #[allow(unsafe_code)]
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some((low, high))
}
