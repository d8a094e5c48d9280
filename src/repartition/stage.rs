//! What the two stages share: a consumer in a group of their own with manual commits carrying
//! metadata, an idempotent producer whose acknowledgements clear offsets in a `Tracker`, and the
//! assignment bookkeeping.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ahash::AHashMap;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::config::Config;
use crate::record::Input;
use crate::sink::Tracker;
use crate::source::align::Key;
use crate::source::kafka::{self as kafka_in, ConsumerCtx};
use crate::telemetry::events::{KafkaClientError, RateLimit};
use crate::telemetry::metrics::Metrics;

/// A consumer for a stage: its own group, commits only by `commit` (with metadata), starting where
/// `kafka.start_from` says when the group has no commit.
pub fn consumer(
    cfg: &Config,
    brokers: &str,
    base: &std::path::Path,
    group: &str,
    metrics: Arc<Metrics>,
) -> anyhow::Result<BaseConsumer<ConsumerCtx>> {
    let mut k = cfg.kafka.clone();
    k.group_id = group.to_string();
    let mut fixed = BTreeMap::new();
    fixed.insert("enable.auto.commit".to_string(), "false".to_string());
    fixed.insert(
        "auto.offset.reset".to_string(),
        k.start_from.as_str().to_string(),
    );
    fixed.insert("fetch.wait.max.ms".to_string(), "100".to_string());
    // The user's pass-through options first, the stage's own settings over them.
    k.options.extend(fixed);
    kafka_in::consumer(&k, brokers, base, metrics)
}

/// What a produced message was for, told back with its acknowledgement.
pub struct Sent {
    pub partition: i32,
    /// The consumed offset it stands for; `None` for a marker (nothing waits for it).
    pub offset: Option<i64>,
    /// Its merge key, for a sequencer's released record.
    pub key: Option<Key>,
}

/// Released records not yet acknowledged, and the last released, per partition (sequencer).
#[derive(Default)]
pub struct Released {
    pub unacked: BTreeMap<Key, ()>,
    pub last: Option<Key>,
}

impl Released {
    /// Every key below this was released and acknowledged.
    pub fn delivered_below(&self) -> Option<Key> {
        match self.unacked.keys().next() {
            Some(&k) => Some(k),
            None => self.last.map(|k| Key {
                seq: k.seq.saturating_add(1),
                ..k
            }),
        }
    }
}

pub struct Acks {
    pub input: Input,
    pub tracker: Arc<Tracker>,
    pub released: Arc<Mutex<AHashMap<i32, Released>>>,
    pub metrics: Arc<Metrics>,
    errors: RateLimit,
}

impl ClientContext for Acks {
    fn error(&self, error: KafkaError, reason: &str) {
        KafkaClientError {
            client: "producer (repartition)",
            error: &error,
            reason,
        }
        .emit(&self.metrics, &self.errors);
    }
}

impl ProducerContext for Acks {
    type DeliveryOpaque = Box<Sent>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Sent>) {
        let ok = result.is_ok();
        if let Err((e, _)) = result {
            self.metrics.delivery_failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, partition = sent.partition, offset = ?sent.offset, "Repartitioned message could not be delivered; its offset will not be committed.");
        }
        if let Some(key) = sent.key {
            if ok {
                if let Some(r) = self
                    .released
                    .lock()
                    .expect("released lock")
                    .get_mut(&sent.partition)
                {
                    r.unacked.remove(&key);
                }
            }
        }
        if let Some(offset) = sent.offset {
            self.tracker.ack(self.input, sent.partition, offset, ok);
        }
    }
}

/// An idempotent producer (order kept per partition through retries) that retries forever, like
/// the alert producer: an internal record dropped would be a record lost.
pub fn producer(
    cfg: &Config,
    brokers: &str,
    base: &std::path::Path,
    input: Input,
    tracker: Arc<Tracker>,
    released: Arc<Mutex<AHashMap<i32, Released>>>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<ThreadedProducer<Acks>> {
    let mut c = crate::client::client_config(&cfg.kafka, brokers, base)?;
    c.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "0")
        .set("linger.ms", "2")
        .set("queue.buffering.max.messages", "1000000");
    for (k, v) in &cfg.kafka.options {
        c.set(k, v);
    }
    Ok(c.create_with_context(Acks {
        input,
        tracker,
        released,
        metrics,
        errors: RateLimit::default(),
    })?)
}

/// Sends, waiting while librdkafka's queue is full rather than dropping anything.
pub fn send(producer: &ThreadedProducer<Acks>, mut record: BaseRecord<'_, [u8], [u8], Box<Sent>>) {
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, r)) => {
                // Not retriable (a message larger than the producer allows): its offset never
                // clears, so nothing at or after it is committed, and it shows.
                let sent = r.delivery_opaque;
                tracing::error!(error = %e, partition = sent.partition, offset = ?sent.offset, "Repartitioned message refused by the producer; commits stop before it.");
                let acks = producer.context();
                acks.metrics.delivery_failed.fetch_add(1, Ordering::Relaxed);
                if let Some(o) = sent.offset {
                    acks.tracker.ack(acks.input, sent.partition, o, false);
                }
                return;
            }
        }
    }
}

/// The partitions assigned now, with their committed offsets and metadata (`None`: no commit).
pub fn assigned(
    consumer: &BaseConsumer<ConsumerCtx>,
) -> BTreeMap<i32, (Option<i64>, Option<String>)> {
    let mut out = BTreeMap::new();
    let Ok(tpl) = consumer.assignment() else {
        return out;
    };
    let committed = consumer
        .committed_offsets(tpl.clone(), Duration::from_secs(10))
        .unwrap_or(tpl);
    for e in committed.elements() {
        let offset = match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        };
        let meta = Some(e.metadata().to_string()).filter(|m| !m.is_empty());
        out.insert(e.partition(), (offset, meta));
    }
    out
}

/// Commits (asynchronously) `next` per partition of `topic`, each with its metadata.
pub fn commit(
    consumer: &BaseConsumer<ConsumerCtx>,
    topic: &str,
    offsets: &[(i32, i64, String)],
) -> bool {
    if offsets.is_empty() {
        return true;
    }
    let mut tpl = TopicPartitionList::new();
    for (p, next, meta) in offsets {
        let mut e = tpl.add_partition(topic, *p);
        if e.set_offset(Offset::Offset(*next)).is_ok() {
            e.set_metadata(meta.as_str());
        }
    }
    consumer.commit(&tpl, CommitMode::Async).is_ok()
}

/// `(log start, end)` of a partition from librdkafka's cache.
pub fn ends(consumer: &BaseConsumer<ConsumerCtx>, topic: &CString, p: i32) -> Option<(i64, i64)> {
    kafka_in::end_offsets(consumer, topic, p)
}

/// The consumer's position (next offset it will hand over) per assigned partition.
pub fn positions(consumer: &BaseConsumer<ConsumerCtx>) -> AHashMap<i32, i64> {
    let mut out = AHashMap::new();
    if let Ok(tpl) = consumer.position() {
        for e in tpl.elements() {
            if let Offset::Offset(o) = e.offset() {
                out.insert(e.partition(), o);
            }
        }
    }
    out
}
