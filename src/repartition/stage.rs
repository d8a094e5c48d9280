//! What the two stages share: a consumer in a group of their own with manual commits carrying
//! metadata, an idempotent producer whose acknowledgements clear offsets in a `Tracker`, and the
//! assignment bookkeeping.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
use crate::source::lane_header::LaneHeader;
use crate::telemetry::events::{KafkaClientError, RateLimit};
use crate::telemetry::metrics::Metrics;

/// A consumer for a stage: its own group, commits only by `commit` (with metadata), starting at
/// `start` when the group has no commit (`kafka.start_from` for the input topics; the beginning for
/// the internal ones, whose every record is new to the group).
pub fn consumer(
    cfg: &Config,
    brokers: &str,
    base: &std::path::Path,
    group: &str,
    start: crate::config::StartFrom,
    metrics: Arc<Metrics>,
) -> anyhow::Result<BaseConsumer<ConsumerCtx>> {
    let mut k = cfg.kafka.clone();
    k.group_id = group.to_string();
    let mut fixed = BTreeMap::new();
    fixed.insert("enable.auto.commit".to_string(), "false".to_string());
    fixed.insert("auto.offset.reset".to_string(), start.as_str().to_string());
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

/// A sequencer partition's released records, per lane (source partition): those not yet
/// acknowledged, and the last released. Each lane is released in position order, so "everything
/// of the lane before position n was delivered" is exact per lane — across lanes the release order
/// is the merge's, which is not position order once every lane has ended (live input).
#[derive(Default)]
pub struct Released {
    unacked: BTreeMap<u32, std::collections::BTreeSet<i64>>,
    last: BTreeMap<u32, i64>,
}

impl Released {
    pub fn release(&mut self, lane: u32, seq: i64) {
        self.unacked.entry(lane).or_default().insert(seq);
        self.last.insert(lane, seq);
    }

    pub fn acked(&mut self, lane: u32, seq: i64) {
        if let Some(s) = self.unacked.get_mut(&lane) {
            s.remove(&seq);
        }
    }

    /// Per lane, the position below which everything was released and acknowledged.
    pub fn delivered(&self) -> BTreeMap<u32, i64> {
        self.last
            .iter()
            .map(|(&lane, &last)| {
                let first_unacked = self.unacked.get(&lane).and_then(|s| s.first().copied());
                (lane, first_unacked.unwrap_or(last + 1))
            })
            .collect()
    }
}

/// Per-lane positions as commit metadata (`lane=seq,…`), and back.
pub fn positions_to_metadata(p: &BTreeMap<u32, i64>) -> String {
    p.iter()
        .map(|(l, s)| format!("{l}={s}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn positions_from_metadata(m: &str) -> BTreeMap<u32, i64> {
    m.split(',')
        .filter_map(|kv| {
            let (l, s) = kv.split_once('=')?;
            Some((l.parse().ok()?, s.parse().ok()?))
        })
        .collect()
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
                    r.acked(key.lane, key.seq);
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
    // (`client_config` applies the pass-through options; the settings here win over them.)
    // Lingering 10 ms rather than the alerts' 1: a backlog moves in larger batches (on the mock
    // broker 47.5k records/s against 40–42k at 2 ms), for at most 10 ms more per hop.
    let mut c = crate::client::client_config(&cfg.kafka, brokers, base)?;
    c.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "0")
        .set("linger.ms", "10")
        .set("queue.buffering.max.messages", "1000000");
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

/// Per assigned partition: its committed offset and metadata (`None`: no commit).
pub type Committed = BTreeMap<i32, (Option<i64>, Option<String>)>;

const COMMIT_EVERY: Duration = Duration::from_millis(200);

/// A stage's work, driven by `run`: one poll loop, rebalances, commits, for both stages.
pub trait Stage {
    fn consumer(&self) -> Arc<BaseConsumer<ConsumerCtx>>;
    /// The consumer-group generation the stage last took its assignment at.
    fn generation(&mut self) -> &mut u64;
    /// Takes the assignment after a rebalance.
    fn reassigned(&mut self) -> anyhow::Result<()>;
    fn take(&mut self, m: &rdkafka::message::BorrowedMessage<'_>) -> anyhow::Result<()>;
    /// After each round of polling: pass on what may go, send the markers due.
    fn round(&mut self);
    fn commit(&mut self);
    fn producer(&self) -> &ThreadedProducer<Acks>;
}

/// Reads `topic` until `stop`, then flushes and commits what was delivered.
pub fn run(stage: &mut impl Stage, topic: &str, stop: &AtomicBool) -> anyhow::Result<()> {
    let consumer = stage.consumer();
    consumer.subscribe(&[topic])?;
    let mut next_commit = Instant::now() + COMMIT_EVERY;
    while !stop.load(Ordering::Relaxed) {
        let mut timeout = Duration::from_millis(100);
        for _ in 0..2048 {
            let polled = consumer.poll(timeout);
            let generation = consumer.context().generation.load(Ordering::SeqCst);
            if generation != *stage.generation() {
                *stage.generation() = generation;
                stage.reassigned()?;
            }
            match polled {
                None => break,
                Some(Ok(m)) => stage.take(&m)?,
                Some(Err(e)) => tracing::debug!(error = %e, topic, "Consume error."),
            }
            timeout = Duration::ZERO;
        }
        stage.round();
        if Instant::now() >= next_commit {
            stage.commit();
            next_commit = Instant::now() + COMMIT_EVERY;
        }
    }
    let _ = stage.producer().flush(Duration::from_secs(10));
    stage.commit();
    Ok(())
}

/// Whether a marker whose content is now `state` is due: it changed and the last went `every` ago,
/// or it did not and the heartbeat is due (a stage that restarts learns where idle lanes stand).
pub fn marker_due<S: PartialEq>(
    last: &Option<(S, Instant)>,
    state: &S,
    every: Duration,
    heartbeat: Duration,
) -> bool {
    match last {
        Some((s, at)) if s == state => at.elapsed() >= heartbeat,
        Some((_, at)) => at.elapsed() >= every,
        None => true,
    }
}

/// Sends a marker (a lane header, no payload) to partition `q` of `topic`; nothing waits for it.
pub fn send_marker(producer: &ThreadedProducer<Acks>, topic: &str, q: i32, header: &LaneHeader) {
    let record = BaseRecord::<[u8], [u8], Box<Sent>>::with_opaque_to(
        topic,
        Box::new(Sent {
            partition: q,
            offset: None,
            key: None,
        }),
    )
    .partition(q)
    .headers(header.to_headers());
    send(producer, record);
}

/// A stage's clients: a consumer in `group` starting at `start`, and a producer whose
/// acknowledgements clear the stage's tracker (and, for a sequencer, its released records).
pub struct Clients {
    pub consumer: Arc<BaseConsumer<ConsumerCtx>>,
    pub producer: ThreadedProducer<Acks>,
    pub tracker: Arc<Tracker>,
    pub released: Arc<Mutex<AHashMap<i32, Released>>>,
}

pub fn clients(
    cfg: &Config,
    brokers: &str,
    base: &std::path::Path,
    group: &str,
    start: crate::config::StartFrom,
    input: Input,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Clients> {
    let tracker = Arc::new(Tracker::default());
    let released = Arc::new(Mutex::new(AHashMap::new()));
    Ok(Clients {
        consumer: Arc::new(consumer(cfg, brokers, base, group, start, metrics.clone())?),
        producer: producer(
            cfg,
            brokers,
            base,
            input,
            tracker.clone(),
            released.clone(),
            metrics,
        )?,
        tracker,
        released,
    })
}

/// The partitions assigned now, with their committed offsets and metadata (`None`: no commit).
/// The metadata carries what the stage's order needs: without it a stage cannot go on, so a
/// failed lookup is retried and, failing, fails the stage.
pub fn assigned(consumer: &BaseConsumer<ConsumerCtx>) -> anyhow::Result<Committed> {
    let mut out = BTreeMap::new();
    let tpl = consumer.assignment()?;
    if tpl.count() == 0 {
        return Ok(out);
    }
    let mut attempt = 0;
    let committed = loop {
        match consumer.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
            Ok(c) => break c,
            Err(e) if attempt < 5 => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "Reading a stage's committed offsets failed; retrying.");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => anyhow::bail!("reading the committed offsets of a repartition stage: {e}"),
        }
    };
    for e in committed.elements() {
        let offset = match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        };
        let meta = Some(e.metadata().to_string()).filter(|m| !m.is_empty());
        out.insert(e.partition(), (offset, meta));
    }
    Ok(out)
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
