//! Calling numbers across instances: the calls topic.
//!
//! A calling number rings subscribers of every partition, so its state (Wangiri waves) cannot live
//! in the partition of any one subscriber. Each partition's worker writes what the calling numbers
//! need of its usage — the MT calls that give a calling number state, and the records of subscriber
//! rules that read calling-number alerts (a Wangiri callback, with the account facts the partition
//! saw then) — to a repartition topic keyed by that number. The sequencer of the repartition stages
//! (`sequence`) merges each of its partitions by event time into the calls topic, which the same
//! consumer group reads as a partition's third lane (`Input::Calls`): calling-number state is then
//! partitioned, checkpointed, restored and moved with its partition like any other state.
//!
//! ```text
//!  partition p's worker ─► <g>-calls-repartition (key: the number; lane header: p, usage offset,
//!        running max; markers to every partition) ─► sequence (group <g>-calls-sequence)
//!  <g>-calls-by-number ─► partition q's worker, calls lane: calling-number state and rules
//! ```
//!
//! **Why the callback goes to the number, not the flag to every instance.** A Wangiri callback
//! asks whether its destination was flagged within the lookback before it. Keyed by that
//! destination, the callback lands in the same partition as every ring of the wave, merged into the
//! same event-time order as a replay takes them: it is evaluated after exactly the rings before it,
//! whichever instance was ahead. A global table of flags (a compacted topic every instance reads)
//! would give each callback whatever flags had arrived when it was evaluated — a different answer
//! under load — unless every callback waited for every partition's watermark. The rule library
//! keeps its side of the bargain: a rule reading calling-number alerts asks about
//! `rec.destination` (`rules::placement`), and its own alert memory is kept per number.
//!
//! **Delivery.** A usage offset is committed only once its record's message here is acknowledged
//! (the daemon's tracker), and a checkpoint covers an offset only then: what a partition's restored
//! checkpoint holds was written here before, and a restored partition writes again only what comes
//! after its checkpoint. A record written twice (a partition re-read from its commit) is recognised
//! by its lane position and skipped by the sequencer.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use ahash::AHashMap;
use rdkafka::producer::{BaseRecord, ThreadedProducer};

use crate::config::Config;
use crate::record::Input;
use crate::sink::Tracker;
use crate::source::lane_header::{Handed, LaneHeader};
use crate::telemetry::metrics::Metrics;

use super::stage::{self, Acks, Sent};

/// The repartition topic and the calls topic.
pub fn topics(group: &str) -> (String, String) {
    (
        format!("{group}-calls-repartition"),
        format!("{group}-calls-by-number"),
    )
}

/// A worker's writer to the repartition topic: one producer for every worker of the process.
pub struct CallsOut {
    producer: ThreadedProducer<Acks>,
    topic: String,
    /// Partitions of the repartition topic (markers go to each).
    partitions: i32,
    metrics: Arc<Metrics>,
}

impl CallsOut {
    /// A producer whose acknowledgements clear the daemon's `tracker` (usage offsets).
    pub fn new(
        cfg: &Config,
        brokers: &str,
        base: &std::path::Path,
        partitions: i32,
        tracker: Arc<Tracker>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let released = Arc::new(Mutex::new(AHashMap::new()));
        Ok(CallsOut {
            producer: stage::producer(
                cfg,
                brokers,
                base,
                Input::Usage,
                tracker,
                released,
                metrics.clone(),
            )?,
            topic: topics(&cfg.kafka.group_id).0,
            partitions,
            metrics,
        })
    }

    /// Writes a record of usage partition `partition` at `offset`, keyed by `number`; its offset is
    /// held (`tracker.add`) until the broker acknowledges it.
    pub fn send(
        &self,
        tracker: &Tracker,
        number: &str,
        raw: &[u8],
        header: LaneHeader,
        handed: &Handed,
    ) {
        let partition = header.lane as i32;
        let offset = header.seq;
        tracker.add(Input::Usage, partition, offset);
        let headers = handed.add_to(header.to_headers());
        let record = BaseRecord::<[u8], [u8], Box<Sent>>::with_opaque_to(
            &self.topic,
            Box::new(Sent {
                partition,
                offset: Some(offset),
                key: None,
            }),
        )
        .key(number.as_bytes())
        .payload(raw)
        .headers(headers);
        stage::send(&self.producer, record);
        self.metrics
            .repartition
            .by(Input::Calls)
            .rekeyed
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Tells every partition of the repartition topic how far a usage partition has come.
    pub fn mark(&self, header: LaneHeader) {
        for q in 0..self.partitions {
            stage::send_marker(&self.producer, &self.topic, q, &header);
        }
        self.metrics
            .repartition
            .by(Input::Calls)
            .markers
            .fetch_add(self.partitions as u64, Ordering::Relaxed);
    }

    /// Waits for what was sent to be acknowledged (at a graceful stop, before the last commit).
    pub fn flush(&self, timeout: std::time::Duration) {
        use rdkafka::producer::Producer;
        if let Err(e) = self.producer.flush(timeout) {
            tracing::error!(error = %e, "Not every record for the calls topic was acknowledged; their usage offsets stay uncommitted.");
        }
    }
}
