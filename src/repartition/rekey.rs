//! The first stage: reads an input topic as its producers keyed it and writes every record, unchanged,
//! to the repartition topic keyed by its account (else its msisdn), with its lane header: source
//! partition, offset, and the partition's running maximum event time. Markers tell every partition of
//! the repartition topic how far each source partition has come, so a sequencer waiting for a lane
//! that sends it nothing is not held back for ever.
//!
//! The running maximum is the merge key of what follows, so it must not depend on when this stage
//! last restarted: it is committed with the source offset, as commit metadata (Kafka Streams keeps
//! its partition time the same way, KIP-353), and read back at assignment.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseRecord, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::OnGap;
use crate::record::{Decoder, Input, Number};
use crate::sink::Tracker;
use crate::source::kafka::ConsumerCtx;
use crate::telemetry::metrics::Metrics;

use super::stage::{self, Acks, Sent, Stage};
use crate::source::lane_header::LaneHeader;

/// A marker goes out when its lane moved, at most this often (to every partition of the
/// repartition topic: P² markers per interval when every lane moves)...
const MARK_EVERY: Duration = Duration::from_millis(200);
/// ...and at least this often: a sequencer that (re)starts learns where idle lanes stand.
const HEARTBEAT: Duration = Duration::from_secs(2);

/// A record read and not yet passed on.
pub(super) struct Pending {
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    timestamp: Option<i64>,
    routed: Routed,
    /// The lane's running maximum at this record (its merge key time), and before it.
    high: i64,
    high_before: i64,
}

/// Records waiting in a lane before its partition is paused.
const MAX_WAITING: usize = 50_000;

pub(super) struct SourceLane {
    /// The next offset to read, once known.
    next: Option<i64>,
    /// Running maximum event time so far (`i64::MIN`: none).
    high: i64,
    /// The running maximum after each offset sent and not yet committed past (commit metadata).
    highs: BTreeMap<i64, i64>,
    /// The high at the lane's start (commit metadata of an offset before any sent here).
    start_high: i64,
    /// What the last marker said: (next, high, ended), and when it went.
    marked: Option<((i64, i64, bool), Instant)>,
    fresh: bool,
    /// Read, not yet passed on (in order: one waiting for the line table holds the rest).
    waiting: std::collections::VecDeque<Pending>,
    paused: bool,
}

pub struct Rekeyer {
    pub input: Input,
    pub consumer: Arc<BaseConsumer<ConsumerCtx>>,
    pub producer: ThreadedProducer<Acks>,
    pub source: String,
    /// `source`, for librdkafka's cache lookups.
    pub source_c: CString,
    pub target: String,
    /// Partitions of the repartition topic.
    pub targets: i32,
    pub tracker: Arc<Tracker>,
    pub decoder: Decoder,
    pub metrics: Arc<Metrics>,
    pub on_gap: OnGap,
    /// The line table, for usage records that name no account (usage only).
    pub lines: Option<Arc<super::lines::Lines>>,
    pub(super) lanes: BTreeMap<i32, SourceLane>,
    pub(super) generation: u64,
}

impl Stage for Rekeyer {
    fn consumer(&self) -> Arc<BaseConsumer<ConsumerCtx>> {
        self.consumer.clone()
    }

    fn generation(&mut self) -> &mut u64 {
        &mut self.generation
    }

    fn reassigned(&mut self) -> anyhow::Result<()> {
        self.reassigned()
    }

    fn take(&mut self, m: &BorrowedMessage<'_>) -> anyhow::Result<()> {
        self.rekey(m)
    }

    fn round(&mut self) {
        self.drain();
        self.mark();
    }

    fn commit(&mut self) {
        self.commit()
    }

    fn producer(&self) -> &ThreadedProducer<Acks> {
        &self.producer
    }
}

impl Rekeyer {
    pub fn run(&mut self, stop: &AtomicBool) -> anyhow::Result<()> {
        let topic = self.source.clone();
        stage::run(self, &topic, stop)
    }

    /// Takes the new assignment: each partition resumes at its commit with the running maximum
    /// committed beside it.
    fn reassigned(&mut self) -> anyhow::Result<()> {
        let assigned = stage::assigned(&self.consumer)?;
        // A partition paused here and assigned again stays paused in librdkafka
        // (confluentinc/librdkafka#1849); its waiting records are gone with the old lane.
        if let Ok(tpl) = self.consumer.assignment() {
            let _ = self.consumer.resume(&tpl);
        }
        self.lanes.retain(|p, _| assigned.contains_key(p));
        for (p, (committed, meta)) in assigned {
            let high = meta.and_then(|m| m.parse::<i64>().ok()).unwrap_or(i64::MIN);
            self.tracker.start(self.input, p, committed);
            self.lanes.insert(
                p,
                SourceLane {
                    next: committed,
                    high,
                    highs: BTreeMap::new(),
                    start_high: high,
                    marked: None,
                    fresh: false,
                    waiting: Default::default(),
                    paused: false,
                },
            );
        }
        Ok(())
    }

    /// Passes one record on. Fails only for records gone before they were read with
    /// `kafka.on_gap = stop`.
    fn rekey(&mut self, m: &BorrowedMessage<'_>) -> anyhow::Result<()> {
        let p = m.partition();
        let Some(lane) = self.lanes.get_mut(&p) else {
            return Ok(());
        };
        let offset = m.offset();
        if let Some(expected) = lane.next.filter(|&e| e != offset) {
            let low = stage::ends(&self.consumer, &self.source_c, p).map(|(low, _)| low);
            if let Some(gap) =
                crate::record::detect_gap(self.input, p, expected, offset, low, false)
            {
                self.metrics
                    .repartition
                    .by(self.input)
                    .skipped
                    .fetch_add(gap.skipped(), Ordering::Relaxed);
                tracing::warn!(
                    topic = %self.source, partition = p, expected, received = offset,
                    reason = gap.reason.as_str(),
                    "Records gone from the broker before the repartition stage read them (cdrguard_repartition_records_skipped_total)."
                );
                if self.on_gap == OnGap::Stop {
                    anyhow::bail!(
                        "records gone from the broker: offsets {expected}..{offset} of {}/{p} ({}); stopped without committing past them (kafka.on_gap = stop)",
                        self.source,
                        gap.reason.as_str()
                    );
                }
            }
        }
        let payload = m.payload().unwrap_or_default();
        let (routed, time) = route(&self.decoder, self.input, payload);
        let high_before = lane.high;
        if let Some(t) = time {
            lane.high = lane.high.max(t);
        }
        lane.waiting.push_back(Pending {
            offset,
            key: m.key().map(<[u8]>::to_vec),
            payload: payload.to_vec(),
            timestamp: m.timestamp().to_millis(),
            routed,
            high: lane.high,
            high_before,
        });
        lane.next = Some(offset + 1);
        lane.fresh = true;
        Ok(())
    }

    /// Sends what may go, lane by lane in order: a record naming no account waits until the line
    /// table has every event keyed up to its own key (`lines`).
    fn drain(&mut self) {
        let watermark = self
            .lines
            .as_ref()
            .map_or(i64::MAX, |l| l.watermark.load(Ordering::Acquire));
        let parts: Vec<i32> = self.lanes.keys().copied().collect();
        for p in parts {
            loop {
                let lane = self.lanes.get_mut(&p).expect("listed");
                let ready = match lane.waiting.front() {
                    Some(w) if matches!(w.routed, Routed::Msisdn(_)) && self.lines.is_some() => {
                        w.high < watermark
                    }
                    Some(_) => true,
                    None => false,
                };
                if !ready {
                    break;
                }
                let w = lane.waiting.pop_front().expect("ready");
                self.send(p, w);
            }
            self.bound_waiting(p);
        }
    }

    /// Pauses fetching a partition whose records pile up behind one waiting for the line table.
    fn bound_waiting(&mut self, p: i32) {
        let Some(lane) = self.lanes.get_mut(&p) else {
            return;
        };
        let n = lane.waiting.len();
        let pause = if !lane.paused && n > MAX_WAITING {
            true
        } else if lane.paused && n < MAX_WAITING / 2 {
            false
        } else {
            return;
        };
        lane.paused = pause;
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition_offset(&self.source, p, Offset::Invalid)
            .is_ok()
        {
            let r = match pause {
                true => self.consumer.pause(&tpl),
                false => self.consumer.resume(&tpl),
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, partition = p, "Pausing or resuming a repartitioned partition failed.");
            }
        }
    }

    fn send(&mut self, p: i32, w: Pending) {
        let by = self.metrics.repartition.by(self.input);
        // The key, or (not decodable) the partition: it goes on as it is, to the worker that
        // dead-letters it with the reason; this partition number keeps it beside its neighbours.
        let (key, partition): (Option<Vec<u8>>, Option<i32>) = match &w.routed {
            Routed::Account(a) => (Some(a.as_bytes().to_vec()), None),
            Routed::Msisdn(n) => {
                let found = self.lines.as_ref().and_then(|l| {
                    let table = l.table.read().expect("lines lock");
                    table.account_at(*n, w.high).map(str::to_string)
                });
                match found {
                    Some(a) => (Some(a.into_bytes()), None),
                    None => {
                        by.by_msisdn.fetch_add(1, Ordering::Relaxed);
                        (Some(n.to_string().into_bytes()), None)
                    }
                }
            }
            Routed::Undecodable => (w.key.clone(), Some(p % self.targets)),
        };
        let header = LaneHeader::record(p as u32, w.offset, w.high);
        let mut record = BaseRecord::with_opaque_to(
            &self.target,
            Box::new(Sent {
                partition: p,
                offset: Some(w.offset),
                key: None,
            }),
        )
        .payload(&w.payload[..])
        .headers(header.to_headers());
        if let Some(ts) = w.timestamp {
            record = record.timestamp(ts);
        }
        if let Some(k) = &key {
            record = record.key(&k[..]);
        }
        if let Some(q) = partition {
            record = record.partition(q);
        }
        self.tracker.add(self.input, p, w.offset);
        stage::send(&self.producer, record);
        self.tracker.processed(self.input, p, w.offset);
        by.rekeyed.fetch_add(1, Ordering::Relaxed);
        if let Some(lane) = self.lanes.get_mut(&p) {
            lane.highs.insert(w.offset, w.high);
        }
    }

    /// Markers: where each source partition stands, to every partition of the repartition topic.
    fn mark(&mut self) {
        let source = &self.source_c;
        let mut positions = None;
        for (&p, lane) in self.lanes.iter_mut() {
            let fresh = std::mem::take(&mut lane.fresh);
            let Some((low, end)) = stage::ends(&self.consumer, source, p) else {
                continue;
            };
            if lane.next.is_none() && low == end {
                lane.next = Some(end);
            }
            if lane.next.is_none_or(|n| n < end) && !fresh {
                // Transaction markers and compacted-away offsets are never handed over; the
                // position moves past them.
                let pos = positions.get_or_insert_with(|| stage::positions(&self.consumer));
                if let Some(&o) = pos.get(&p) {
                    lane.next = Some(lane.next.map_or(o, |n| n.max(o)));
                }
            }
            let Some(next) = lane.next else { continue };
            // What has been passed on: up to the first record still waiting.
            let state = match lane.waiting.front() {
                Some(w) => (w.offset, w.high_before, false),
                None => (next, lane.high, next >= end),
            };
            if !stage::marker_due(&lane.marked, &state, MARK_EVERY, HEARTBEAT) {
                continue;
            }
            let header = LaneHeader::marker(p as u32, state.0, state.1, state.2);
            for q in 0..self.targets {
                stage::send_marker(&self.producer, &self.target, q, &header);
            }
            self.metrics
                .repartition
                .by(self.input)
                .markers
                .fetch_add(self.targets as u64, Ordering::Relaxed);
            lane.marked = Some((state, Instant::now()));
        }
    }

    /// Commits what the repartition topic has acknowledged, with the running maximum there.
    fn commit(&mut self) {
        let mut offsets = Vec::new();
        for (input, p, upto) in self.tracker.committable() {
            let Some(lane) = self.lanes.get_mut(&p) else {
                continue;
            };
            let high = lane
                .highs
                .range(..=upto)
                .next_back()
                .map_or(lane.start_high, |(_, &h)| h);
            // What is committed is never needed again (the latest entry stays as the next floor).
            lane.highs = lane.highs.split_off(&upto);
            lane.start_high = high;
            offsets.push((p, upto + 1, high.to_string()));
            self.tracker.stored(input, p, upto);
        }
        if !stage::commit(&self.consumer, &self.source, &offsets) {
            tracing::debug!("Repartition commit failed; retried with the next.");
        }
    }
}

/// Where a record goes.
pub(super) enum Routed {
    Account(String),
    /// A usage record that names no account: by its line's account if the line table knows it,
    /// else by its msisdn.
    Msisdn(Number),
    Undecodable,
}

fn route(decoder: &Decoder, input: Input, payload: &[u8]) -> (Routed, Option<i64>) {
    match input {
        Input::Usage | Input::Calls => match decoder.usage(payload) {
            Ok(r) => {
                let t = Some(r.event_start.utc);
                match r.served.account_id {
                    Some(a) => (Routed::Account(a.to_string()), t),
                    None => (Routed::Msisdn(r.served.msisdn), t),
                }
            }
            Err(_) => (Routed::Undecodable, None),
        },
        Input::Events => match decoder.account_event(payload) {
            Ok(e) => (
                Routed::Account(e.account_id.to_string()),
                Some(e.occurred_at.utc),
            ),
            Err(_) => (Routed::Undecodable, None),
        },
    }
}
