//! The line table: which account each line belongs to, for usage records that do not say
//! (`served.account_id` absent) — a global table, as Kafka Streams' `GlobalKTable`: every instance
//! reads every partition of the events topic, merged in event time (`source::align`), and keeps the
//! lines the events name (an `activation`, or any event carrying an msisdn, as the state does).
//!
//! **Deterministic lookups.** Each entry keeps the merge key time of its event (its partition's
//! running maximum), and a usage record of merge key time `T` is looked up only once the table's
//! merge has passed `T` (`watermark`), against the entries keyed at or before `T` — so what a record
//! finds depends on the records, not on how far this thread had read. Ties go to the event, as in
//! every merge.
//!
//! **Durable.** The table is written, as it changes, to a compacted topic (`<group>-lines`, one
//! partition), followed by where each events partition stands (its next offset and running
//! maximum, so keys come out the same after a restart). A start reads the topic whole and resumes
//! the events from there: lines activated before the events topic's retention stay known. Several
//! instances write the same entries; re-reading events from an older position rewrites the same.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ahash::AHashMap;
use compact_str::CompactString;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use crate::record::{Decoder, Number};
use crate::source::align::Aligner;
use crate::source::kafka::ConsumerCtx;
use crate::telemetry::metrics::Metrics;

/// Assignments a line keeps (a line moved between accounts now and then; its latest few are kept
/// for lookups of older records).
const HISTORY: usize = 8;
const POSITIONS_EVERY: Duration = Duration::from_secs(1);
/// Events held in the table's merge per partition before its fetching pauses.
const MAX_QUEUED: usize = 100_000;
/// Key prefix of a position entry in the lines topic (no msisdn starts with it).
const POSITION: &str = "pos/";

#[derive(Default)]
pub struct LineTable {
    /// Line → (merge key time, account), oldest first.
    by_line: AHashMap<u64, Vec<(i64, CompactString)>>,
}

impl LineTable {
    /// Records that `line` belongs to `account` from key time `t`; false if already known.
    pub fn set(&mut self, line: Number, t: i64, account: &str) -> bool {
        let h = self.by_line.entry(line.key()).or_default();
        if h.iter().any(|(at, a)| *at == t && a == account) {
            return false;
        }
        let i = h.partition_point(|(at, _)| *at <= t);
        h.insert(i, (t, account.into()));
        if h.len() > HISTORY {
            h.remove(0);
        }
        true
    }

    /// The account of `line` for a record keyed at `t`: its latest assignment keyed at or before.
    pub fn account_at(&self, line: Number, t: i64) -> Option<&str> {
        let h = self.by_line.get(&line.key())?;
        h.iter()
            .rev()
            .find(|(at, _)| *at <= t)
            .map(|(_, a)| a.as_str())
    }

    fn len(&self) -> usize {
        self.by_line.len()
    }

    /// The value written to the lines topic for `line`: `time account` pairs, tab separated.
    fn encode(&self, line: Number) -> String {
        let mut out = String::new();
        for (t, a) in self.by_line.get(&line.key()).into_iter().flatten() {
            if !out.is_empty() {
                out.push('\t');
            }
            out.push_str(&format!("{t} {a}"));
        }
        out
    }

    fn decode_into(&mut self, line: Number, value: &str) {
        for pair in value.split('\t') {
            if let Some((t, a)) = pair.split_once(' ') {
                if let Ok(t) = t.parse() {
                    self.set(line, t, a);
                }
            }
        }
    }
}

/// What the usage rekeyer reads: the table and how far its merge has come.
pub struct Lines {
    pub table: RwLock<LineTable>,
    /// Every event keyed below this is in the table (`i64::MAX`: every events partition at its end).
    pub watermark: AtomicI64,
}

impl Default for Lines {
    fn default() -> Self {
        Lines {
            table: RwLock::default(),
            watermark: AtomicI64::new(i64::MIN),
        }
    }
}

/// A decoded event, waiting for its turn.
struct Named {
    line: Option<(Number, CompactString)>,
}

pub struct LinesStage {
    pub shared: Arc<Lines>,
    pub consumer: BaseConsumer<ConsumerCtx>,
    pub producer: ThreadedProducer<DefaultProducerContext>,
    /// The events topic and its partition count.
    pub events: String,
    pub partitions: i32,
    /// The compacted topic.
    pub topic: String,
    pub decoder: Decoder,
    pub metrics: Arc<Metrics>,
}

impl LinesStage {
    pub fn run(&mut self, stop: &AtomicBool) -> anyhow::Result<()> {
        let positions = self.restore()?;
        let mut merge: Aligner<Named> = Aligner::default();
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            let (next, high) = positions.get(&p).copied().unwrap_or((0, i64::MIN));
            merge.open(p as u32, high, next);
            let offset = match positions.get(&p) {
                Some(&(next, _)) => Offset::Offset(next),
                None => Offset::Beginning,
            };
            tpl.add_partition_offset(&self.events, p, offset)?;
        }
        self.consumer.assign(&tpl)?;
        let events = CString::new(self.events.clone())?;
        let mut next_positions = Instant::now() + POSITIONS_EVERY;
        let mut fresh = vec![false; self.partitions as usize];
        let mut paused = vec![false; self.partitions as usize];
        while !stop.load(Ordering::Relaxed) {
            let mut timeout = Duration::from_millis(100);
            for _ in 0..4096 {
                let Some(m) = self.consumer.poll(timeout) else {
                    break;
                };
                timeout = Duration::ZERO;
                let Ok(m) = m else { continue };
                let p = m.partition();
                let named = self
                    .decoder
                    .account_event(m.payload().unwrap_or_default())
                    .ok();
                let time = named.as_ref().map(|e| e.occurred_at.utc);
                let line = named.and_then(|e| Some((e.msisdn?, e.account_id)));
                merge.push(p as u32, m.offset(), time, Named { line });
                fresh[p as usize] = true;
            }
            let mut positions = None;
            let mut pause = TopicPartitionList::new();
            let mut resume = TopicPartitionList::new();
            for p in 0..self.partitions {
                let lane = p as u32;
                let fresh = std::mem::take(&mut fresh[p as usize]);
                let Some((low, end)) =
                    crate::source::kafka::end_offsets(&self.consumer, &events, p)
                else {
                    continue;
                };
                // A partition emptied by retention, or one whose log starts past its position.
                let mut next = merge.next_of(lane).unwrap_or(0).max(low);
                if next < end && !fresh {
                    // Transaction markers and compacted-away offsets are never handed over; the
                    // position moves past them.
                    let pos =
                        positions.get_or_insert_with(|| super::stage::positions(&self.consumer));
                    if let Some(&o) = pos.get(&p) {
                        merge.advance(lane, o, None);
                        next = next.max(o);
                    }
                }
                merge.set_ended(lane, next >= end && !fresh && merge.queued(lane) == 0);
                // A partition far ahead of the others waits for them here: bounded.
                let queued = merge.queued(lane);
                if queued > MAX_QUEUED && !paused[p as usize] {
                    paused[p as usize] = true;
                    let _ = pause.add_partition_offset(&self.events, p, Offset::Invalid);
                } else if queued < MAX_QUEUED / 2 && paused[p as usize] {
                    paused[p as usize] = false;
                    let _ = resume.add_partition_offset(&self.events, p, Offset::Invalid);
                }
            }
            if pause.count() > 0 {
                let _ = self.consumer.pause(&pause);
            }
            if resume.count() > 0 {
                let _ = self.consumer.resume(&resume);
            }
            let mut changed = Vec::new();
            {
                let mut table = self.shared.table.write().expect("lines lock");
                while let Some((_, key, named)) = merge.pop() {
                    if let Some((line, account)) = named.line {
                        if table.set(line, key.time, &account) {
                            changed.push((line, table.encode(line)));
                        }
                    }
                }
                self.metrics
                    .repartition
                    .lines
                    .store(table.len() as i64, Ordering::Relaxed);
            }
            for (line, value) in changed {
                self.write(&line.to_string(), &value);
            }
            let bound = merge.lower_bound().map_or(i64::MIN, |k| k.time);
            self.shared.watermark.store(bound, Ordering::Release);
            if Instant::now() >= next_positions {
                // After the entries they cover (one partition: in order).
                for p in 0..self.partitions {
                    if let Some((next, high)) = merge.resume_point(p as u32) {
                        self.write(&format!("{POSITION}{p}"), &format!("{next} {high}"));
                    }
                }
                next_positions = Instant::now() + POSITIONS_EVERY;
            }
        }
        let _ = self.producer.flush(Duration::from_secs(10));
        Ok(())
    }

    fn write(&self, key: &str, value: &str) {
        let mut record = BaseRecord::<str, str>::to(&self.topic)
            .partition(0)
            .key(key)
            .payload(value);
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((_, r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }

    /// Reads the lines topic whole: the table, and where each events partition stood.
    fn restore(&mut self) -> anyhow::Result<BTreeMap<i32, (i64, i64)>> {
        let timeout = Duration::from_secs(30);
        let (low, high) = self.consumer.fetch_watermarks(&self.topic, 0, timeout)?;
        let mut positions = BTreeMap::new();
        if high <= low {
            return Ok(positions);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, 0, Offset::Offset(low))?;
        self.consumer.assign(&tpl)?;
        let started = Instant::now();
        let mut table = self.shared.table.write().expect("lines lock");
        let mut read = 0u64;
        while started.elapsed() < Duration::from_secs(600) {
            let Some(m) = self.consumer.poll(Duration::from_millis(500)) else {
                // The end a broker reports can fall short of the last batch's records (tansu);
                // what was missed is re-derived from the events after the positions read.
                if read > 0 || started.elapsed() > timeout {
                    break;
                }
                continue;
            };
            let m = m?;
            read += 1;
            let (Some(Ok(key)), Some(Ok(value))) = (m.key_view::<str>(), m.payload_view::<str>())
            else {
                continue;
            };
            if let Some(p) = key.strip_prefix(POSITION) {
                let mut it = value.split(' ');
                if let (Ok(p), Some(Ok(next)), Some(Ok(h))) = (
                    p.parse::<i32>(),
                    it.next().map(str::parse::<i64>),
                    it.next().map(str::parse::<i64>),
                ) {
                    positions.insert(p, (next, h));
                }
            } else if let Ok(line) = Number::parse(key) {
                table.decode_into(line, value);
            }
            if m.offset() + 1 >= high {
                break;
            }
        }
        tracing::info!(
            lines = table.len(),
            messages = read,
            "Line table restored from {}.",
            self.topic
        );
        self.consumer.unassign()?;
        Ok(positions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lookup_finds_the_assignment_keyed_at_or_before_the_record() {
        let mut t = LineTable::default();
        let line = Number::parse("33612000001").unwrap();
        assert!(t.set(line, 100, "A-1"));
        assert!(!t.set(line, 100, "A-1"), "known");
        assert!(t.set(line, 300, "A-2"));
        assert_eq!(t.account_at(line, 99), None);
        assert_eq!(t.account_at(line, 100), Some("A-1"), "ties go to the event");
        assert_eq!(t.account_at(line, 299), Some("A-1"));
        assert_eq!(t.account_at(line, 300), Some("A-2"));
        // Written and read back, the same.
        let mut back = LineTable::default();
        back.decode_into(line, &t.encode(line));
        assert_eq!(back.account_at(line, 150), Some("A-1"));
        assert_eq!(back.account_at(line, 301), Some("A-2"));
        for i in 0..10 {
            t.set(line, 400 + i, "A-3");
        }
        assert_eq!(t.by_line[&line.key()].len(), HISTORY, "a few kept");
    }
}
