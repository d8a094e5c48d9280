//! The second stage: reads a partition of the repartition topic — the records of one account range
//! from every source partition, interleaved as the first stage's instances happened to write them —
//! and writes them to the same partition of the by-account topic in merge order: by the key the
//! first stage gave each record (its source partition's running maximum event time, the source
//! partition, the offset), a record going only when every source partition has shown, by a record or
//! a marker, that nothing smaller can come (`source::align`). The order out depends on the records
//! only, never on which stage instance was faster.
//!
//! Markers go on to the workers: where the merge stands (its lower bound's event time) and whether
//! every source partition had ended, which is what a worker's own merge with the other input needs
//! instead of the by-account topic's end offset (that topic is written while it is read).
//!
//! Restarts: a record already released and acknowledged is skipped when read again, by its lane's
//! delivered position committed as metadata beside the offset (`lane=position,…`); a record a
//! first-stage instance sent twice (it restarted from its last commit) is skipped the same way, by
//! its position in its lane.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ahash::AHashMap;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseRecord, ThreadedProducer};

use crate::record::Input;
use crate::sink::Tracker;
use crate::source::align::{Aligner, Key};
use crate::source::kafka::ConsumerCtx;
use crate::telemetry::metrics::Metrics;

use super::stage::{self, Acks, Released, Sent, Stage};
use crate::source::lane_header::LaneHeader;

const MARK_EVERY: Duration = Duration::from_millis(20);
const HEARTBEAT: Duration = Duration::from_secs(2);
/// Source partitions a merge takes beyond the count known at start (partitions added); a header
/// naming one further out is not a lane (a memory bound).
const MAX_NEW_LANES: u32 = 1024;

/// A record waiting in a merge.
pub(super) struct Waiting {
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    timestamp: Option<i64>,
    /// A call's: what it is handed over for (`calls`), passed on with it.
    handed: Option<crate::source::lane_header::Handed>,
}

pub(super) struct Part {
    merge: Aligner<Waiting>,
    /// Per lane, the position below which everything was delivered before this assignment.
    delivered_before: BTreeMap<u32, i64>,
    /// What the last marker said (bound time, ended), and when it went.
    marked: Option<((i64, bool), Instant)>,
    /// Highest merge key time released.
    released_high: i64,
    /// The offset the consumer should hand over next (from the commit on): cdrguard writes this
    /// topic without holes, so a jump is records lost (`record::gap`).
    expected: Option<i64>,
}

pub struct Sequencer {
    pub input: Input,
    pub consumer: Arc<BaseConsumer<ConsumerCtx>>,
    pub producer: ThreadedProducer<Acks>,
    pub source: String,
    pub target: String,
    /// Partitions of the original input topic: the lanes every merge waits for.
    pub lanes: u32,
    pub tracker: Arc<Tracker>,
    pub released: Arc<Mutex<AHashMap<i32, Released>>>,
    pub metrics: Arc<Metrics>,
    pub(super) parts: BTreeMap<i32, Part>,
    pub(super) generation: u64,
    /// Partitions whose merge moved in the current round.
    pub(super) touched: Vec<i32>,
}

impl Stage for Sequencer {
    fn consumer(&self) -> Arc<BaseConsumer<ConsumerCtx>> {
        self.consumer.clone()
    }

    fn generation(&mut self) -> &mut u64 {
        &mut self.generation
    }

    fn reassigned(&mut self) -> anyhow::Result<()> {
        self.touched.clear();
        self.reassigned()
    }

    fn take(&mut self, m: &BorrowedMessage<'_>) -> anyhow::Result<()> {
        if self.take(m) && self.touched.last() != Some(&m.partition()) {
            self.touched.push(m.partition());
        }
        Ok(())
    }

    fn round(&mut self) {
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable();
        touched.dedup();
        for q in touched {
            self.release(q);
        }
        self.mark();
    }

    fn commit(&mut self) {
        self.commit()
    }

    fn producer(&self) -> &ThreadedProducer<Acks> {
        &self.producer
    }
}

impl Sequencer {
    pub fn run(&mut self, stop: &AtomicBool) -> anyhow::Result<()> {
        let topic = self.source.clone();
        stage::run(self, &topic, stop)
    }

    fn reassigned(&mut self) -> anyhow::Result<()> {
        let assigned = stage::assigned(&self.consumer)?;
        self.parts.retain(|q, _| assigned.contains_key(q));
        let mut released = self.released.lock().expect("released lock");
        released.retain(|q, _| assigned.contains_key(q));
        for (q, (committed, meta)) in assigned {
            self.tracker.start(self.input, q, committed);
            released.insert(q, Released::default());
            let delivered_before = meta
                .as_deref()
                .map(stage::positions_from_metadata)
                .unwrap_or_default();
            let mut merge = Aligner::with_lanes(self.lanes as usize);
            for (&lane, &next) in &delivered_before {
                if lane < self.lanes + MAX_NEW_LANES {
                    merge.open(lane, i64::MIN, next);
                }
            }
            self.parts.insert(
                q,
                Part {
                    merge,
                    delivered_before,
                    marked: None,
                    released_high: i64::MIN,
                    expected: committed,
                },
            );
        }
        Ok(())
    }

    /// Takes a message of the repartition topic into its partition's merge; true if a merge moved.
    fn take(&mut self, m: &BorrowedMessage<'_>) -> bool {
        let q = m.partition();
        let Some(part) = self.parts.get_mut(&q) else {
            return false;
        };
        let offset = m.offset();
        if let Some(expected) = part.expected.filter(|&e| e != offset) {
            let low = std::ffi::CString::new(self.source.as_str())
                .ok()
                .and_then(|t| stage::ends(&self.consumer, &t, q))
                .map(|(low, _)| low)
                .filter(|&l| l >= 0);
            if let Some(gap) = crate::record::detect_gap(self.input, q, expected, offset, low, true)
            {
                self.metrics
                    .repartition
                    .by(self.input)
                    .skipped
                    .fetch_add(gap.skipped(), Ordering::Relaxed);
                tracing::error!(
                    topic = %self.source, partition = q, expected, received = offset,
                    reason = gap.reason.as_str(),
                    "Records of a repartition topic never reached its sequencer; what they carried is lost (cdrguard_repartition_records_skipped_total)."
                );
            }
        }
        part.expected = Some(offset + 1);
        let Some(h) = LaneHeader::of(m.headers()) else {
            // Not written by the first stage: nothing to order it by, and nobody to send it to.
            tracing::warn!(
                topic = %self.source, partition = q, offset,
                "Message without a lane header in a repartition topic; skipped."
            );
            self.tracker.processed(self.input, q, offset);
            return false;
        };
        if h.lane >= self.lanes + MAX_NEW_LANES {
            tracing::warn!(lane = h.lane, topic = %self.source, partition = q, offset, "Lane header names a source partition far beyond the topic's; skipped.");
            self.tracker.processed(self.input, q, offset);
            return false;
        }
        if !part.merge.is_open(h.lane) {
            tracing::warn!(
                lane = h.lane,
                "A source partition beyond the count known at start (partitions added?); merged from now on."
            );
            part.merge.open(h.lane, i64::MIN, 0);
        }
        let next = part.merge.next_of(h.lane).unwrap_or(0);
        self.tracker.processed(self.input, q, offset);
        if h.is_marker() {
            // A marker older than what the lane already showed (a first-stage instance that lost
            // the partition, or its new owner re-reading below where the old one stood) says
            // nothing new — but "not ended" never claims too much, and lets a new owner clear what
            // the old one said at its end.
            if h.seq >= next {
                part.merge.advance(h.lane, h.seq, Some(h.time));
                part.merge.set_ended(h.lane, h.ended());
            } else if !h.ended() {
                part.merge.set_ended(h.lane, false);
            }
            return true;
        }
        if h.seq < next {
            self.metrics
                .repartition
                .by(self.input)
                .duplicates
                .fetch_add(1, Ordering::Relaxed);
            return false;
        }
        // Read, not yet delivered downstream: holds the commit.
        self.tracker.add(self.input, q, offset);
        part.merge.push(
            h.lane,
            h.seq,
            Some(h.time),
            Waiting {
                offset,
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().unwrap_or_default().to_vec(),
                timestamp: m.timestamp().to_millis(),
                handed: crate::source::lane_header::Handed::of(m.headers()),
            },
        );
        self.metrics
            .repartition
            .by(self.input)
            .held
            .fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Writes what the merge lets go, in merge order.
    fn release(&mut self, q: i32) {
        let Some(part) = self.parts.get_mut(&q) else {
            return;
        };
        let by = self.metrics.repartition.by(self.input);
        while let Some((lane, key, w)) = part.merge.pop() {
            self.released
                .lock()
                .expect("released lock")
                .entry(q)
                .or_default()
                .release(lane, key.seq);
            part.released_high = part.released_high.max(key.time);
            let header = LaneHeader::record(lane, key.seq, key.time);
            let mut record = BaseRecord::with_opaque_to(
                &self.target,
                Box::new(Sent {
                    partition: q,
                    offset: Some(w.offset),
                    key: Some(key),
                }),
            )
            .partition(q)
            .payload(&w.payload[..])
            .headers(match &w.handed {
                Some(h) => h.add_to(header.to_headers()),
                None => header.to_headers(),
            });
            if let Some(k) = &w.key {
                record = record.key(&k[..]);
            }
            if let Some(ts) = w.timestamp {
                record = record.timestamp(ts);
            }
            stage::send(&self.producer, record);
            by.sequenced.fetch_add(1, Ordering::Relaxed);
            by.held.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Markers to the workers: the merge's lower bound, and whether every lane has ended.
    fn mark(&mut self) {
        for (&q, part) in self.parts.iter_mut() {
            let Some(bound) = part.merge.lower_bound() else {
                continue;
            };
            let ended = bound == Key::MAX;
            if !ended && bound.time == i64::MIN {
                // A lane that has shown nothing yet: nothing to say.
                continue;
            }
            // Ended: what comes next is merged as it becomes visible (README "Order").
            let time = if ended {
                part.released_high
            } else {
                bound.time
            };
            let state = (time, ended);
            if !stage::marker_due(&part.marked, &state, MARK_EVERY, HEARTBEAT) {
                continue;
            }
            let header = LaneHeader::marker(u32::MAX, -1, time, ended);
            stage::send_marker(&self.producer, &self.target, q, &header);
            self.metrics
                .repartition
                .by(self.input)
                .markers
                .fetch_add(1, Ordering::Relaxed);
            part.marked = Some((state, Instant::now()));
        }
    }

    /// Commits what was delivered downstream, with the bound below which everything was.
    fn commit(&mut self) {
        let mut offsets = Vec::new();
        let released = self.released.lock().expect("released lock");
        for (input, q, upto) in self.tracker.committable() {
            let Some(part) = self.parts.get(&q) else {
                continue;
            };
            let mut delivered = part.delivered_before.clone();
            for (lane, next) in released
                .get(&q)
                .map(Released::delivered)
                .unwrap_or_default()
            {
                let e = delivered.entry(lane).or_insert(next);
                *e = (*e).max(next);
            }
            offsets.push((q, upto + 1, stage::positions_to_metadata(&delivered)));
            self.tracker.stored(input, q, upto);
        }
        drop(released);
        if !stage::commit(&self.consumer, &self.source, &offsets) {
            tracing::debug!("Sequencer commit failed; retried with the next.");
        }
    }
}
