//! The polling thread: reads both input topics and hands each message to the worker that owns its
//! partition, followed by the facts the event-time merge decides on — "this input partition's end
//! offset is reached" (`Polled::End`), and "it is not any more: the broker has more" (`Polled::Behind`,
//! known from a fetch response before its records are handed over). It also keeps the read-ahead bounded (pausing a partition whose
//! records pile up in a worker while its merge waits), stores the offsets the tracker cleared, and
//! relays validated rule reloads.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ahash::AHashMap;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::source::lane_header::{Handed, LaneHeader};

use crate::config::{Config, OnGap};
use crate::record::{detect_gap, Input, OffsetGap};
use crate::rules::Reloader;
use crate::sink::Tracker;
use crate::source::kafka::{end_offsets, ConsumerCtx, InputMessage};
use crate::telemetry::events::{OffsetGapFound, RateLimit, RulesReloaded};
use crate::telemetry::metrics::{now_ms, Metrics};

use super::status::Status;
use super::worker::{Polled, WorkerMessage};

/// Bytes of input read ahead and not yet processed, per input partition: the poller adds what it
/// hands over, workers subtract what they process or drop.
pub struct QueuedBytes {
    by: Mutex<AHashMap<(Input, i32), i64>>,
    metrics: Arc<Metrics>,
}

impl QueuedBytes {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        QueuedBytes {
            by: Mutex::default(),
            metrics,
        }
    }

    /// Adds (or, negative, takes back) bytes per input partition, and empties `changes`: one lock
    /// per batch, not per message.
    pub fn apply(&self, changes: &mut AHashMap<(Input, i32), i64>) {
        if changes.is_empty() {
            return;
        }
        let mut total = 0;
        let mut by = self.by.lock().expect("queued lock");
        for (k, v) in changes.drain() {
            *by.entry(k).or_default() += v;
            total += v;
        }
        drop(by);
        self.metrics
            .align
            .queued_bytes
            .fetch_add(total, Ordering::Relaxed);
    }

    fn get(&self, input: Input, partition: i32) -> i64 {
        self.by
            .lock()
            .expect("queued lock")
            .get(&(input, partition))
            .copied()
            .unwrap_or(0)
    }
}

/// The assignment's start offsets, written by the rebalancer (inside `poll`, on this thread) and
/// read by the poller when a poll comes back from a rebalance.
#[derive(Default)]
pub struct Assignment {
    starts: Mutex<BTreeMap<(Input, i32), Option<i64>>>,
}

impl Assignment {
    /// An input partition assigned, reading from `start` (`None`: not known before its first record).
    pub fn assigned(&self, input: Input, partition: i32, start: Option<i64>) {
        self.starts
            .lock()
            .expect("assignment lock")
            .insert((input, partition), start);
    }

    pub fn revoked(&self, input: Input, partition: i32) {
        self.starts
            .lock()
            .expect("assignment lock")
            .remove(&(input, partition));
    }

    /// Partitions of `input` assigned here now.
    pub fn held(&self, input: Input) -> usize {
        self.starts
            .lock()
            .expect("assignment lock")
            .keys()
            .filter(|(i, _)| *i == input)
            .count()
    }

    fn current(&self) -> BTreeMap<(Input, i32), Option<i64>> {
        self.starts.lock().expect("assignment lock").clone()
    }
}

/// How often input partitions that had no message in a round are checked for their end offset
/// (and, at a consumer position moved past transaction markers, for an end reached without a
/// message): the check of every partition costs a lock each, and nothing about them changes in
/// between but what the broker has (which only matters to records produced while the daemon reads).
const IDLE_CHECK: Duration = Duration::from_millis(20);

/// What the poller knows of one assigned input partition.
struct Reading {
    topic: CString,
    /// The next offset to read (one past the last message handed over).
    next: Option<i64>,
    /// `next` when its end was last reported: report again only after it moved.
    end_reported: Option<i64>,
    /// The partition's end offset, as last cached.
    end: Option<i64>,
    paused: bool,
    /// A message of it came in the current poll round.
    fresh: bool,
}

pub struct Poller<'a> {
    pub consumer: &'a BaseConsumer<ConsumerCtx>,
    pub cfg: &'a Config,
    pub workers: &'a [Sender<WorkerMessage>],
    pub tracker: &'a Tracker,
    pub metrics: &'a Metrics,
    pub queued: &'a QueuedBytes,
    pub assignment: &'a Assignment,
    pub reloader: Option<Reloader>,
    pub status: Status,
    readings: BTreeMap<(Input, i32), Reading>,
    generation: u64,
    /// Bytes handed over in the current round, per input partition.
    round_bytes: AHashMap<(Input, i32), i64>,
    next_idle_check: Instant,
    gap_log: RateLimit<(Input, i32)>,
    /// A gap found with `kafka.on_gap = stop`: the poller stops.
    stopped_by: Option<OffsetGap>,
    /// Per input: read from a by-account topic, whose messages carry lane headers and whose end is
    /// told by markers, not by its end offset (`crate::repartition`).
    sequenced: [bool; 3],
    /// Analysts' decisions, when read (`daemon::feedback`).
    pub feedback: Option<super::feedback::Reader>,
    /// The candidate library's watcher (`rules.shadow_dir`).
    pub candidate_reloader: Option<Reloader>,
    /// When `input.exchange_rates` is next looked at.
    next_rates_check: Instant,
}

impl<'a> Poller<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        consumer: &'a BaseConsumer<ConsumerCtx>,
        cfg: &'a Config,
        workers: &'a [Sender<WorkerMessage>],
        tracker: &'a Tracker,
        metrics: &'a Metrics,
        queued: &'a QueuedBytes,
        assignment: &'a Assignment,
        reloader: Option<Reloader>,
        status: Status,
    ) -> Self {
        Poller {
            consumer,
            cfg,
            workers,
            tracker,
            metrics,
            queued,
            assignment,
            reloader,
            status,
            readings: BTreeMap::new(),
            generation: u64::MAX,
            round_bytes: AHashMap::new(),
            next_idle_check: Instant::now(),
            gap_log: RateLimit::default(),
            stopped_by: None,
            sequenced: Input::LANES.map(|i| cfg.kafka.sequenced(i)),
            feedback: None,
            candidate_reloader: None,
            next_rates_check: Instant::now(),
        }
    }

    /// Polls until `stop` or `abort` is set.
    pub fn run(&mut self, stop: &AtomicBool, abort: &AtomicBool) -> anyhow::Result<()> {
        let mut next_store = Instant::now();
        while !stop.load(Ordering::Relaxed) && !abort.load(Ordering::Relaxed) {
            let batches = self.poll_round();
            for (w, batch) in batches.into_iter().enumerate() {
                if !batch.is_empty() && self.workers[w].send(WorkerMessage::Polled(batch)).is_err()
                {
                    // An abort stops the workers at once: one may be gone before this round ends.
                    if abort.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    anyhow::bail!("worker {w} stopped unexpectedly");
                }
            }
            if let Some(g) = self.stopped_by {
                anyhow::bail!(
                    "records gone from the broker: offsets {}..{} of {}/{} ({}); stopped without committing past them (kafka.on_gap = stop). \
                     To go on, set kafka.on_gap = \"continue\" for one run: the skip is counted and marked in the state",
                    g.expected,
                    g.received,
                    self.consumer.context().topic(g.input),
                    g.partition,
                    g.reason.as_str()
                );
            }
            if let Some(f) = &mut self.feedback {
                f.poll(self.workers);
            }
            self.bound_read_ahead();
            self.metrics.last_poll_ms.store(now_ms(), Ordering::Relaxed);
            if Instant::now() >= next_store {
                store_offsets(self.consumer, self.tracker);
                next_store = Instant::now() + Duration::from_millis(100);
            }
            self.reload();
            let lag = self.lag();
            self.status.maybe_log(self.metrics, self.tracker, lag);
        }
        Ok(())
    }

    /// Polls up to `daemon.poll_batch` messages per worker (less when the poll comes back empty: a
    /// quiet stream waits for nothing), then the end facts the round established. One batch per
    /// worker.
    fn poll_round(&mut self) -> Vec<Vec<Polled>> {
        let mut batches: Vec<Vec<Polled>> = (0..self.workers.len()).map(|_| Vec::new()).collect();
        let ctx = self.consumer.context();
        let mut timeout = Duration::from_millis(100);
        let mut polled = 0;
        let most = self.cfg.daemon.poll_batch * batches.len();
        while polled < most {
            let polled_msg = self.consumer.poll(timeout);
            let generation = ctx.generation.load(Ordering::SeqCst);
            if generation != self.generation {
                // A rebalance ran inside that poll: what was polled before it may belong to
                // partitions given away (their next owner reads them from the committed offset),
                // and the assignment's start offsets are new.
                self.generation = generation;
                for b in &mut batches {
                    b.clear();
                }
                self.reassigned();
            }
            let Some(m) = polled_msg else {
                break;
            };
            timeout = Duration::ZERO;
            polled += 1;
            match m {
                Ok(m) => {
                    let Some(input) = ctx.input_of(m.topic()) else {
                        continue;
                    };
                    let msg = InputMessage {
                        input,
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().unwrap_or_default().to_vec(),
                        timestamp_ms: m.timestamp().to_millis(),
                        lane: match self.sequenced[input.index()] {
                            true => LaneHeader::of(m.headers()),
                            false => None,
                        },
                        handed: match input {
                            Input::Calls => Handed::of(m.headers()),
                            _ => None,
                        },
                    };
                    let w = msg.partition.unsigned_abs() as usize % batches.len();
                    if let Some(r) = self.readings.get_mut(&(input, msg.partition)) {
                        if let Some(gap) = r.next.and_then(|expected| {
                            let contiguous = self.sequenced[input.index()];
                            gap_before(
                                self.consumer,
                                r,
                                input,
                                msg.partition,
                                expected,
                                msg.offset,
                                contiguous,
                            )
                        }) {
                            OffsetGapFound {
                                gap: &gap,
                                topic: ctx.topic(input),
                                policy: self.cfg.kafka.on_gap,
                            }
                            .emit(self.metrics, &self.gap_log);
                            if self.cfg.kafka.on_gap == OnGap::Stop {
                                // Neither this record nor anything after it is handed over, so
                                // nothing past the gap is committed.
                                self.stopped_by = Some(gap);
                                break;
                            }
                            batches[w].push(Polled::Gap(gap));
                        }
                        r.next = Some(msg.offset + 1);
                        r.fresh = true;
                    }
                    *self.round_bytes.entry((input, msg.partition)).or_default() += msg.weight();
                    batches[w].push(Polled::Message(msg));
                }
                // Client errors are counted and logged by the context; nothing to do per message.
                Err(e) => tracing::debug!(error = %e, "Consume error."),
            }
        }
        self.queued.apply(&mut self.round_bytes);
        self.ends(&mut batches);
        batches
    }

    /// Takes the new assignment's start offsets.
    fn reassigned(&mut self) {
        let ctx = self.consumer.context();
        let mut readings = BTreeMap::new();
        for ((input, p), start) in self.assignment.current() {
            let topic = CString::new(ctx.topic(input)).expect("topic names have no NUL");
            readings.insert(
                (input, p),
                Reading {
                    topic,
                    next: start,
                    end_reported: None,
                    end: None,
                    paused: false,
                    fresh: false,
                },
            );
        }
        self.readings = readings;
    }

    /// Reports every input partition whose end offset the round reached (or no longer reaches).
    fn ends(&mut self, batches: &mut [Vec<Polled>]) {
        let mut positions: Option<BTreeMap<(Input, i32), i64>> = None;
        let idle_check = Instant::now() >= self.next_idle_check;
        if idle_check {
            self.next_idle_check = Instant::now() + IDLE_CHECK;
        }
        for (&(input, p), r) in self.readings.iter_mut() {
            let fresh = std::mem::take(&mut r.fresh);
            if self.sequenced[input.index()] {
                // Its end offset says nothing: the sequencer writes it as it is read. Its markers
                // say when its merge has ended. (The lag still needs the end offset.)
                if let Some((_, end)) = end_offsets(self.consumer, &r.topic, p) {
                    r.end = Some(end);
                }
                continue;
            }
            if !fresh && !idle_check && r.end.is_some() {
                continue;
            }
            let Some((_, end)) = end_offsets(self.consumer, &r.topic, p) else {
                continue;
            };
            r.end = Some(end);
            let mut next = r.next;
            if next.is_none_or(|n| n < end) && !fresh && idle_check {
                // Transaction markers and compacted-away offsets are never handed over, but the
                // consumer's position moves past them: take it (one call per round, only when needed).
                let pos = positions.get_or_insert_with(|| positions_of(self.consumer));
                if let Some(&p) = pos.get(&(input, p)) {
                    next = Some(next.map_or(p, |n| n.max(p)));
                    r.next = next;
                }
            }
            let Some(next) = next else { continue };
            let batch = &mut batches[p.unsigned_abs() as usize % batches.len()];
            if next >= end {
                if r.end_reported != Some(next) {
                    r.end_reported = Some(next);
                    batch.push(Polled::End {
                        input,
                        partition: p,
                        at: next,
                    });
                }
            } else if r.end_reported.take().is_some() {
                // The broker has more than was reported: the end is no longer reached, even before
                // those records arrive (what arrives meanwhile on the other topic waits for them).
                batch.push(Polled::Behind {
                    input,
                    partition: p,
                });
            }
        }
    }

    /// Pauses fetching of an input partition whose records pile up in its worker (its merge waits
    /// for the other input), and resumes it when they have been worked off.
    fn bound_read_ahead(&mut self) {
        if self.readings.is_empty() {
            return;
        }
        let budget = (self.cfg.daemon.max_read_ahead_mib as i64) << 20;
        let limit = (budget / self.readings.len() as i64).max(1 << 20);
        let ctx = self.consumer.context();
        let (mut pause, mut resume) = (TopicPartitionList::new(), TopicPartitionList::new());
        for (&(input, p), r) in self.readings.iter_mut() {
            let queued = self.queued.get(input, p);
            if !r.paused && queued > limit {
                r.paused = true;
                let _ = pause.add_partition_offset(ctx.topic(input), p, Offset::Invalid);
                self.metrics.align.pauses.fetch_add(1, Ordering::Relaxed);
            } else if r.paused && queued < limit / 2 {
                r.paused = false;
                let _ = resume.add_partition_offset(ctx.topic(input), p, Offset::Invalid);
            }
        }
        if pause.count() > 0 {
            if let Err(e) = self.consumer.pause(&pause) {
                tracing::warn!(error = %e, "Pausing fetches failed.");
            }
        }
        if resume.count() > 0 {
            if let Err(e) = self.consumer.resume(&resume) {
                tracing::warn!(error = %e, "Resuming fetches failed.");
            }
        }
    }

    /// Hands a validated rule library to every worker, and puts a changed exchange-rate table in
    /// force (every decoder of the process shares it: `record::rates`).
    fn reload(&mut self) {
        if Instant::now() >= self.next_rates_check {
            self.next_rates_check = Instant::now() + Duration::from_secs(5);
            match self.cfg.rates.reload_if_changed() {
                Ok(Some(n)) => tracing::info!(rates = n, "Exchange rates reloaded."),
                Ok(None) => {}
                Err(e) => tracing::warn!(
                    error = %format!("{e:#}"),
                    "Exchange rates not reloaded; the rates in force stay."
                ),
            }
        }
        // A promotion moves a file from the candidate library to the live one: each reloads.
        if let Some(sources) = self.candidate_reloader.as_mut().and_then(Reloader::poll) {
            tracing::info!(version = %sources.version, "Candidate library reloaded.");
            for w in self.workers {
                let _ = w.send(WorkerMessage::ReloadCandidate(sources.clone()));
            }
        }
        let Some(reloader) = &mut self.reloader else {
            return;
        };
        let refused = reloader.counts.refused;
        match reloader.poll() {
            Some(sources) => {
                RulesReloaded { accepted: true }.emit(self.metrics);
                for w in self.workers {
                    let _ = w.send(WorkerMessage::Reload(sources.clone()));
                }
            }
            None if reloader.counts.refused > refused => {
                RulesReloaded { accepted: false }.emit(self.metrics)
            }
            None => {}
        }
    }

    /// Messages behind each partition's end offset.
    fn lag(&self) -> BTreeMap<(Input, i32), i64> {
        // Cheap: a few entries per assigned partition, once per poll round.
        self.readings
            .iter()
            .filter_map(|(&k, r)| Some((k, (r.end? - r.next?).max(0))))
            .collect()
    }
}

/// Whether records were skipped before `received` (see `record::gap`). The log start comes from
/// librdkafka's cache, refreshed by the fetch response that brought `received`; asked of the broker
/// only when the cache has none.
fn gap_before(
    consumer: &BaseConsumer<ConsumerCtx>,
    r: &Reading,
    input: Input,
    partition: i32,
    expected: i64,
    received: i64,
    contiguous: bool,
) -> Option<OffsetGap> {
    if received == expected {
        return None;
    }
    let mut low = end_offsets(consumer, &r.topic, partition)
        .map(|(low, _)| low)
        .filter(|&l| l >= 0);
    if low.is_none() && received > expected {
        let topic = r.topic.to_str().unwrap_or_default();
        low = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(5))
            .ok()
            .map(|(l, _)| l);
    }
    detect_gap(input, partition, expected, received, low, contiguous)
}

/// The consumer's position (next offset it will hand over) per assigned input partition.
fn positions_of(consumer: &BaseConsumer<ConsumerCtx>) -> BTreeMap<(Input, i32), i64> {
    let ctx = consumer.context();
    let mut out = BTreeMap::new();
    if let Ok(tpl) = consumer.position() {
        for e in tpl.elements() {
            if let (Some(input), Offset::Offset(o)) = (ctx.input_of(e.topic()), e.offset()) {
                out.insert((input, e.partition()), o);
            }
        }
    }
    out
}

/// Stores the offsets the tracker has cleared. `store_offset(o)` makes the next commit `o + 1`: the
/// next record to read.
pub fn store_offsets(consumer: &BaseConsumer<ConsumerCtx>, tracker: &Tracker) {
    let ctx = consumer.context();
    for (input, partition, offset) in tracker.committable() {
        let topic = ctx.topic(input);
        match consumer.store_offset(topic, partition, offset) {
            Ok(()) => tracker.stored(input, partition, offset),
            // A partition moving in a rebalance: retried while it is ours; otherwise its next owner
            // re-reads from the last commit.
            Err(e) => tracing::debug!(error = %e, topic, partition, offset, "Offset not stored."),
        }
    }
}
