//! Workers: each owns the pipelines (window state + rule engine) of the partitions routed to it —
//! partition `p` of both input topics goes to worker `p % workers`, so an account's usage and events
//! (keyed alike, co-partitioned) meet in one pipeline with no lock on state.
//!
//! **Event-time order.** Kafka orders a partition, not two topics: a backlog of usage can be read
//! ahead of the account event (a credit limit, an invoice) that preceded it. Each partition merges
//! its usage and events with the aligner every mode uses (`source::align`): the earlier head goes
//! first, and a head waits while the other topic may still hold something earlier — until a record of
//! it arrives or the polling thread reports that partition's end offset reached (`Polled::End`). What
//! decides is only what has been read, so the order is the same whatever the load or timing. An idle
//! topic holds nothing back (its end is reached); a lagging one holds its partner back for as long as
//! it has unread records (Kafka Streams' tasks do the same with `max.task.idle.ms = 0`);
//! `daemon.align_wait` adds a wait after the end is reached, for producers that write the two topics
//! at different delays.
//!
//! **Calling numbers.** A calling number rings subscribers of every partition, so its state
//! (Wangiri) lives in the partition of the number (`repartition::calls`): a partition writes the
//! records the calling numbers need (an MT call, or a record of a rule reading calling-number
//! alerts, with its account facts: `rules::placement`) to the calls repartition topic, with markers
//! of how far its usage has come, and reads its share of the calls topic, merged by event time
//! across partitions, as a third lane with a pipeline of its own. The two never wait for each
//! other: the calls lane is not merged with the partition's usage and events.
//!
//! Per record: run the pipeline, hand each alert and reject to the sinks, mark the offset processed;
//! the tracker commits it once all of that is acknowledged (and, with snapshots on, once a durable
//! snapshot covers it: see `durability::checkpoint`).
//!
//! **Partitions come and go with the assignment.** A partition's pipeline is created (or restored from
//! its snapshot) by `Assign`, which the polling thread sends before any of its records, and
//! snapshotted and dropped by `Release`; what it still held unprocessed is dropped too and read again
//! by the next owner from the committed offset.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ahash::AHashMap;

use crate::alert::memory::{AlertMemory, Judged};
use crate::classify::Classifier;
use crate::config::Config;
use crate::durability::checkpoint::{
    self, ChainProgress, EncodedSnapshot, PartitionState, ReadBounds,
};
use crate::durability::layout::Link;
use crate::durability::snapshot::{self, Position, SnapshotKind};
use crate::pipeline::{Handover, Pipeline, PipelineOptions, RulesOptions, Scope, Verdict};
use crate::record::{Decoded, Decoder, GapMark, Input, Item, Mode, OffsetGap, Reject};
use crate::repartition::calls::CallsOut;
use crate::rules::api::CANDIDATE_NAMESPACE;
use crate::rules::RuleSources;
use crate::sink::{Origin, Output, Outputs, Rejected, Tracker};
use crate::source::align::Aligner;
use crate::source::kafka::InputMessage;
use crate::source::lane;
use crate::source::lane_header::{Handed, LaneHeader};
use crate::state::WindowStore;
use crate::telemetry::events::{
    AlertSent, DeadLettered, OutputFailed, RateLimit, RecordMiskeyed, RecordRejected,
};
use crate::telemetry::metrics::{Metrics, RuleView, WorkerView};

use super::poll::QueuedBytes;

/// What the polling thread and the rebalancer tell a worker.
pub enum WorkerMessage {
    /// Consumed messages and end-of-partition facts, in poll order.
    Polled(Vec<Polled>),
    Reload(Arc<RuleSources>),
    /// The candidate library changed (`rules.shadow_dir`).
    ReloadCandidate(Arc<RuleSources>),
    /// A partition assigned: its restored state (if any), how to treat re-read records, and where
    /// each of its topics starts reading (`[usage, events, calls]`).
    Assign {
        partition: i32,
        state: Option<Box<PartitionState>>,
        bounds: ReadBounds,
        starts: [Option<i64>; 3],
        /// The consumer-group generation of the assignment: names the partition's snapshots
        /// (`durability::dir`).
        generation: i32,
    },
    /// Partitions revoked: snapshot (when on) and drop them; the reply carries one receiver per
    /// snapshot, told when it is durable.
    Release {
        partitions: Vec<i32>,
        reply: SyncSender<Vec<Receiver<bool>>>,
    },
    /// An analyst's decision (`daemon::feedback`): offered to every partition held.
    Feedback(Arc<super::feedback::Decision>),
    /// Snapshot and stop.
    Stop,
}

/// One thing the polling thread read.
pub enum Polled {
    Message(InputMessage),
    /// The input partition's end offset was reached at `at`: every record before it has been handed
    /// over, and nothing else was on the broker.
    End {
        input: Input,
        partition: i32,
        at: i64,
    },
    /// The input partition reported at its end has more on the broker: wait for it again.
    Behind {
        input: Input,
        partition: i32,
    },
    /// Records of the partition were gone from the broker before they were read; the next message
    /// of that input is the first after the gap.
    Gap(OffsetGap),
}

/// What every worker shares.
#[derive(Clone)]
pub struct WorkerContext {
    pub index: usize,
    pub config: Arc<Config>,
    pub classifier: Classifier,
    pub sources: Arc<RuleSources>,
    /// The candidate library run in shadow beside it (`rules.shadow_dir`).
    pub candidate: Option<Arc<RuleSources>>,
    pub outputs: Vec<Arc<dyn Output + Send + Sync>>,
    pub tracker: Arc<Tracker>,
    pub metrics: Arc<Metrics>,
    /// The writer to the calls repartition topic, when calling numbers are tracked.
    pub calls: Option<Arc<CallsOut>>,
    pub queued: Arc<QueuedBytes>,
    /// Crash-like stop (tests): leave at once, queued records unprocessed.
    pub abort: Arc<AtomicBool>,
    /// The snapshot writer, when snapshots are on.
    pub snapshots: Option<SyncSender<EncodedSnapshot>>,
    /// Mis-keyed records are logged at most once a minute per input, by all workers together.
    pub miskeyed_log: Arc<RateLimit<Input>>,
    /// Analysts' decisions, when the feedback topic is read.
    pub feedback: Option<Arc<super::feedback::Desk>>,
}

impl WorkerContext {
    /// A pipeline with the rule library (validated at start-up: a failure here is a bug).
    pub fn pipeline(&self, scope: Scope) -> Pipeline {
        Pipeline::new(PipelineOptions {
            scope,
            rules: Some(RulesOptions {
                sources: &self.sources,
                sandbox: &self.config.rules.sandbox,
                quarantine: self.config.rules.quarantine_policy(),
                mode: Mode::Live,
                high_risk_from_rules: self.config.reference.high_risk_prefixes.is_none(),
                candidate: self.candidate.as_deref(),
            }),
            ..PipelineOptions::new(self.classifier.clone(), self.config.state.clone())
        })
        .expect("rule library validated at start-up")
    }

    pub fn topic(&self, input: Input) -> &str {
        self.config.kafka.topic(input)
    }
}

/// The pipeline's alerts, counting the overlap of a candidate library's with the live ones.
fn take_alerts(p: &mut Pipeline, metrics: &Metrics) -> Vec<crate::record::Alert> {
    let alerts = p.take_alerts();
    if p.candidate.is_some() {
        for (rule, o) in p.take_overlap() {
            metrics.overlap(&rule, &o);
        }
    }
    alerts
}

/// Counts what applying a decision to one pipeline did; true when the pipeline knew the alert.
fn judged(metrics: &Metrics, f: &crate::alert::feedback::Feedback, j: Judged) -> bool {
    match j {
        Judged::Applied { rule } => {
            metrics.feedback.applied(&rule, f.disposition);
            true
        }
        Judged::Again => {
            metrics.feedback.outcomes[1].fetch_add(1, Ordering::Relaxed);
            true
        }
        Judged::Unknown => false,
    }
}

/// Hands alerts to the sinks; the origin's offset waits for their acknowledgements.
pub fn send_alerts(
    outputs: &mut Outputs<'_>,
    metrics: &Metrics,
    alerts: Vec<crate::record::Alert>,
    origin: Origin,
) {
    for alert in alerts {
        let failed = outputs.alert(&alert, origin);
        for (sink, e) in &failed {
            OutputFailed {
                sink,
                what: "alert",
                id: &alert.alert_id,
                error: e,
            }
            .emit(metrics);
        }
        if failed.is_empty() {
            AlertSent { alert: &alert }.emit(metrics);
        }
    }
}

/// Markers to the calls repartition topic go at most this often while the usage moves...
const MARK_EVERY: Duration = Duration::from_millis(200);
/// ...and at least this often: a sequencer that (re)starts learns where idle partitions stand.
const HEARTBEAT: Duration = Duration::from_secs(2);

/// Markers of the calls topic read since a partition's last checkpoint that make it due for one
/// on their own.
const MARKERS_PER_CHECKPOINT: i64 = 1024;

/// A consumed record waiting for its turn in its partition's merge.
struct Queued {
    msg: InputMessage,
    /// `None`: a marker of a by-account topic (`crate::repartition`), no record.
    item: Option<Result<Item, Reject>>,
    /// A by-account topic's record: where it came from.
    origin: Option<LaneHeader>,
}

struct Partition {
    pipeline: Pipeline,
    /// The calling numbers of this partition of the calls topic (`Scope::CallingNumbers`), when
    /// they are tracked.
    calls: Option<Pipeline>,
    merge: Aligner<Queued>,
    bounds: ReadBounds,
    /// Per topic (`[usage, events, calls]`), the next offset: every record before it is in the
    /// state.
    covered: [Option<i64>; 3],
    last_record: Instant,
    /// Records processed since the last snapshot.
    dirty: bool,
    /// A snapshot of this partition was written since it was assigned (commits start after it).
    snapshotted: bool,
    /// Per input, the end offset reported, not yet passed on to the merge (`daemon.align_wait`),
    /// and since when.
    pending_end: [Option<Instant>; 2],
    /// What the last marker to the calls repartition topic said (next usage offset, running
    /// maximum, ended), and when it went.
    marked: Option<((i64, i64, bool), Instant)>,
    /// Per source partition (lane) of the calls topic, the position of the last record applied
    /// (checkpointed with the calling numbers).
    calls_seen: std::collections::BTreeMap<u32, i64>,
    /// The calls topic's position the last checkpoint sent covers.
    calls_checkpointed: i64,
    /// Assigned to this process now. A partition kept through a revoke (snapshots off) is not:
    /// it sends no marker until it comes back, since its new owner may be re-reading below
    /// where this one stood.
    owned: bool,
    /// Per input, a gap reported before its next record (`Polled::Gap`).
    gap: [Option<GapMark>; 2],
    /// The consumer-group generation under which this process owns the partition.
    generation: i32,
    /// Where its checkpoint chain stands (snapshots on).
    chain: ChainCursor,
}

/// A partition's checkpoint chain under its current owner (`durability::layout`).
#[derive(Default)]
struct ChainCursor {
    progress: Arc<ChainProgress>,
    next_seq: u64,
    /// The newest checkpoint sent to the writer (`-1`: none).
    sent: i64,
    /// Size of the newest durable base, and of the deltas sent since: a new base when the deltas
    /// reach half a base, so a restore reads at most one and a half.
    base_bytes: usize,
    since_base: usize,
    /// A base sent, not yet known durable: its sequence and size.
    pending_base: Option<(u64, usize)>,
}

impl Partition {
    /// A partition whose state covers what `bounds` says.
    fn new(
        pipeline: Pipeline,
        calls: Option<Pipeline>,
        merge: Aligner<Queued>,
        bounds: ReadBounds,
    ) -> Self {
        Partition {
            pipeline,
            calls,
            merge,
            bounds,
            covered: bounds.apply_from,
            last_record: Instant::now(),
            dirty: false,
            snapshotted: false,
            pending_end: [None; 2],
            marked: None,
            owned: true,
            calls_seen: Default::default(),
            calls_checkpointed: bounds.apply_from[2].unwrap_or(0),
            gap: [None, None],
            generation: 0,
            chain: ChainCursor {
                sent: -1,
                ..Default::default()
            },
        }
    }

    /// What a marker to the calls repartition topic says of this partition's usage now: no record
    /// before `next` is still to come, none after it is keyed below `high`, and whether the usage
    /// had ended with nothing held.
    fn usage_mark(&self) -> Option<(i64, i64, bool)> {
        let id = lane(Input::Usage);
        let (next, high) = self.merge.resume_point(id)?;
        let ended = self.merge.is_ended(id) && self.merge.queued(id) == 0;
        Some((next, high, ended))
    }
}

pub fn run(ctx: WorkerContext, rx: Receiver<WorkerMessage>) {
    let interval = Duration::from_secs(ctx.config.durability.snapshot_interval.0.max(1) as u64);
    let sinks = ctx.outputs.clone();
    let mut w = Worker {
        decoder: ctx.config.decoder(),
        outputs: Outputs::new(sinks.iter().map(|o| o.as_ref() as &dyn Output).collect()),
        ctx,
        partitions: AHashMap::new(),
        worked_off: AHashMap::new(),
    };
    let mut next_tick = Instant::now();
    let mut next_snapshot = Instant::now() + interval;
    loop {
        if w.ctx.abort.load(Ordering::Relaxed) {
            return;
        }
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(WorkerMessage::Polled(batch)) => w.polled(batch),
            Ok(WorkerMessage::Reload(sources)) => w.reload(sources),
            Ok(WorkerMessage::ReloadCandidate(sources)) => w.reload_candidate(sources),
            Ok(WorkerMessage::Assign {
                partition,
                state,
                bounds,
                starts,
                generation,
            }) => w.assign(partition, state, bounds, starts, generation),
            Ok(WorkerMessage::Feedback(d)) => w.feedback(&d),
            Ok(WorkerMessage::Release { partitions, reply }) => {
                let done = w.release(&partitions);
                w.flush();
                let _ = reply.send(done);
            }
            Ok(WorkerMessage::Stop) | Err(RecvTimeoutError::Disconnected) => {
                w.flush();
                w.publish_view();
                let parts: Vec<(i32, bool)> = w
                    .partitions
                    .iter()
                    .map(|(&p, part)| (p, part.snapshotted))
                    .collect();
                for (p, snapshotted) in parts {
                    // Even an idle partition's: its start may be committed, and a commit without
                    // a snapshot means a rebuild at the next start.
                    w.snapshot(p, None, !snapshotted);
                }
                return;
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        w.flush();
        w.mark_all();
        if Instant::now() >= next_tick {
            w.tick();
            w.flush();
            next_tick = Instant::now() + Duration::from_secs(1);
            // A partition new to this process is snapshotted at once: commits start after it.
            let due = Instant::now() >= next_snapshot;
            if due {
                next_snapshot = Instant::now() + interval;
            }
            let parts: Vec<i32> = w
                .partitions
                .iter()
                .filter(|(_, p)| p.dirty && (due || !p.snapshotted))
                .map(|(&k, _)| k)
                .collect();
            for p in parts {
                w.snapshot(p, None, false);
            }
        }
    }
}

struct Worker<'a> {
    ctx: WorkerContext,
    decoder: Decoder,
    outputs: Outputs<'a>,
    partitions: AHashMap<i32, Partition>,
    /// Read-ahead worked off (negative bytes), handed back to the poller once per batch.
    worked_off: AHashMap<(Input, i32), i64>,
}

impl Worker<'_> {
    /// Starts a partition: restored from its snapshot, or kept (snapshots off, reassigned), or new.
    fn assign(
        &mut self,
        partition: i32,
        state: Option<Box<PartitionState>>,
        bounds: ReadBounds,
        starts: [Option<i64>; 3],
        generation: i32,
    ) {
        let mut merge = Aligner::with_lanes(2);
        let highs = state.as_ref().map_or([i64::MIN; 2], |s| s.highs);
        for input in Input::ALL {
            let i = input.index();
            merge.open(lane(*input), highs[i], starts[i].unwrap_or(0));
        }
        if let (None, Some(part)) = (&state, self.partitions.get_mut(&partition)) {
            // Snapshots off and the partition stayed here through an eager rebalance: keep its state,
            // read again from the committed offsets (duplicates are recognised by record id; calls
            // written again, by their position in the sequencer).
            part.bounds = bounds;
            if part.generation != generation {
                // A chain belongs to one owner's generation: the next checkpoint starts a new one.
                part.chain = ChainCursor {
                    sent: -1,
                    ..Default::default()
                };
            }
            part.generation = generation;
            part.marked = None;
            part.owned = true;
            let old = std::mem::replace(&mut part.merge, merge);
            self.unqueue(partition, old);
            return;
        }
        let with_calls = self.ctx.calls.is_some();
        let mut pipeline = self.ctx.pipeline(if with_calls {
            Scope::Lines
        } else {
            Scope::Everything
        });
        let mut calls = with_calls.then(|| self.ctx.pipeline(Scope::CallingNumbers));
        let mut calls_seen = Default::default();
        if let Some(state) = state {
            let state = *state;
            pipeline.restore(state.store, state.memory);
            if let (Some(c), Some(s)) = (&mut calls, state.calls) {
                c.restore(s.store, s.memory);
                calls_seen = s.seen;
            }
        }
        tracing::debug!(
            worker = self.ctx.index,
            partition,
            ?bounds,
            "Partition started."
        );
        if self.ctx.snapshots.is_some() {
            // The first checkpoint of this owner is a base; changes are recorded from here on.
            for p in std::iter::once(&pipeline).chain(calls.as_ref()) {
                p.with_state_mut(|store, memory| {
                    store.track_changes(true);
                    memory.track_changes(true);
                });
            }
        }
        // Decisions read while the partition was elsewhere, or before its checkpoint was written.
        if let Some(desk) = &self.ctx.feedback {
            for d in desk.retained() {
                if let Ok(f) = &d.read {
                    for p in std::iter::once(&mut pipeline).chain(calls.as_mut()) {
                        judged(&self.ctx.metrics, f, p.judge(f));
                    }
                }
            }
        }
        let mut part = Partition::new(pipeline, calls, merge, bounds);
        part.calls_seen = calls_seen;
        part.generation = generation;
        self.partitions.insert(partition, part);
    }

    /// Offers an analyst's decision to every partition held; the dead letter of a malformed one, or
    /// of one no partition knows (`daemon::feedback`).
    fn feedback(&mut self, d: &super::feedback::Decision) {
        use super::feedback::Answer;
        let metrics = &self.ctx.metrics;
        let reject = match &d.read {
            Err(reject) => {
                metrics.feedback.outcomes[3].fetch_add(1, Ordering::Relaxed);
                Some(reject.clone())
            }
            Ok(f) => {
                let mut known = false;
                for part in self.partitions.values_mut() {
                    for p in std::iter::once(&mut part.pipeline).chain(part.calls.as_mut()) {
                        if judged(metrics, f, p.judge(f)) {
                            known = true;
                            part.dirty = true;
                        }
                    }
                }
                let desk = self
                    .ctx
                    .feedback
                    .as_ref()
                    .expect("decisions come from the desk");
                match desk.answer(d, known) {
                    Answer::Settled => None,
                    Answer::NotHere => {
                        metrics.feedback.outcomes[4].fetch_add(1, Ordering::Relaxed);
                        None
                    }
                    Answer::Unknown => {
                        metrics.feedback.outcomes[2].fetch_add(1, Ordering::Relaxed);
                        Some(crate::alert::feedback::unknown(f))
                    }
                }
            }
        };
        let Some(reject) = reject.filter(|_| !d.reread) else {
            return;
        };
        let topic = self
            .ctx
            .feedback
            .as_ref()
            .map_or("", |desk| desk.topic.as_str());
        let rejected = Rejected {
            source: topic,
            partition: Some(d.partition),
            position: d.offset as u64,
            key: &d.key,
            raw: &d.raw,
            truncated: 0,
            reject: &reject,
        };
        let failed = self.outputs.reject(&rejected, Origin::Untracked);
        for (sink, e) in &failed {
            OutputFailed {
                sink,
                what: "dead letter",
                id: &format!("{topic}/{}/{}", d.partition, d.offset),
                error: e,
            }
            .emit(&self.ctx.metrics);
        }
        if failed.is_empty() {
            DeadLettered.emit(&self.ctx.metrics);
        }
    }

    /// Snapshots (when on) and drops the partitions; what they held unprocessed is read again by
    /// their next owner. With snapshots off they are kept: they usually come straight back.
    fn release(&mut self, partitions: &[i32]) -> Vec<Receiver<bool>> {
        let mut done = Vec::new();
        for &p in partitions {
            if self.ctx.snapshots.is_some() {
                let (tx, rx) = sync_channel(1);
                self.snapshot(p, Some(tx), true);
                done.push(rx);
                if let Some(part) = self.partitions.remove(&p) {
                    self.unqueue(p, part.merge);
                }
            } else if let Some(part) = self.partitions.get_mut(&p) {
                part.owned = false;
            }
        }
        done
    }

    /// Gives back the queued-bytes budget of records dropped unprocessed.
    fn unqueue(&mut self, partition: i32, mut merge: Aligner<Queued>) {
        for input in Input::ALL {
            let bytes: i64 = merge
                .close(lane(*input))
                .iter()
                .map(|q| q.msg.weight())
                .sum();
            *self.worked_off.entry((*input, partition)).or_default() -= bytes;
        }
    }

    /// Encodes a partition's state and hands it to the writer; `force` even if nothing changed.
    fn snapshot(&mut self, partition: i32, done: Option<SyncSender<bool>>, force: bool) {
        let reply = |done: Option<SyncSender<bool>>, ok: bool| {
            if let Some(d) = done {
                let _ = d.send(ok);
            }
        };
        let (Some(sink), Some(part)) = (&self.ctx.snapshots, self.partitions.get_mut(&partition))
        else {
            return reply(done, self.ctx.snapshots.is_none());
        };
        if !part.dirty && !force {
            return reply(done, true);
        }
        let started = Instant::now();
        let mut positions = Vec::new();
        let mut covers = Vec::new();
        let mut highs = [i64::MIN; 2];
        for input in Input::ALL {
            highs[input.index()] = part
                .merge
                .resume_point(lane(*input))
                .map_or(i64::MIN, |r| r.1);
        }
        for input in Input::LANES {
            if let Some(next) = part.covered[input.index()] {
                positions.push(Position {
                    topic: self.ctx.topic(input).to_string(),
                    partition,
                    next,
                });
                covers.push((input, partition, next - 1));
            }
        }
        // One checkpoint in flight per partition: a delta is relative to the newest durable one,
        // which must not change under it (a base in flight would remove its parent). One that
        // somebody waits for (revoke, shutdown) waits for the one in flight to settle first, and
        // is a base if it does not.
        let chain = &mut part.chain;
        let settled = || chain.progress.settled.load(Ordering::SeqCst) >= chain.sent;
        if !settled() && (force || done.is_some()) {
            let until = Instant::now()
                + Duration::from_secs(self.ctx.config.durability.delivery_timeout.0.max(1) as u64);
            while !settled() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let in_flight = !settled();
        if in_flight && !force && done.is_none() {
            return;
        }
        let durable = chain.progress.durable.load(Ordering::SeqCst);
        // The budget of deltas counts from the newest base once it is durable: a base that failed
        // leaves the deltas on the one before, and the next checkpoint tries a base again.
        if let Some((seq, bytes)) = chain.pending_base {
            if !in_flight {
                if durable >= seq as i64 {
                    chain.base_bytes = bytes;
                    chain.since_base = 0;
                }
                chain.pending_base = None;
            }
        }
        let parent = (!in_flight && durable >= 0 && chain.since_base * 2 <= chain.base_bytes)
            .then_some(durable as u64);
        let now_us = crate::telemetry::metrics::now_ms().max(0) as u64 * 1000;
        let seq = chain.next_seq.max(now_us);
        // Both stores of the partition (its lines and accounts, its calling numbers) seal their
        // changes under the same sequence: one checkpoint holds both.
        let seal = |store: &mut WindowStore, memory: &mut AlertMemory| {
            if durable >= 0 {
                store.changes_durable(durable as u64);
                memory.changes_durable(durable as u64);
            }
            store.seal_changes(seq);
            memory.seal_changes(seq);
        };
        let calls = part.calls.as_ref();
        let seen = &part.calls_seen;
        let calling_numbers = calls.map_or(0, |c| c.store.borrow().size().calling_numbers);
        let encoded = part.pipeline.with_state_mut(|store, memory| {
            seal(store, memory);
            let (store, memory) = (&*store, &*memory);
            let mut header =
                checkpoint::header(SnapshotKind::Partition(partition), positions, store);
            header.calling_numbers += calling_numbers as u64;
            let encode = |calls: Option<(&WindowStore, &AlertMemory)>| match parent {
                None => snapshot::encode(
                    &header,
                    &checkpoint::PartitionStateRef {
                        store,
                        memory,
                        highs,
                        calls: calls.map(|(store, memory)| checkpoint::CallsStateRef {
                            store,
                            memory,
                            seen,
                        }),
                    },
                ),
                Some(_) => snapshot::encode(
                    &header,
                    &checkpoint::PartitionDeltaRef {
                        store: store.delta(),
                        memory: memory.delta(),
                        highs,
                        calls: calls.map(|(store, memory)| checkpoint::CallsDeltaRef {
                            store: store.delta(),
                            memory: memory.delta(),
                            seen,
                        }),
                    },
                ),
            };
            match calls {
                Some(c) => c.with_state_mut(|cs, cm| {
                    seal(cs, cm);
                    encode(Some((&*cs, &*cm)))
                }),
                None => encode(None),
            }
        });
        match encoded {
            Ok(bytes) => {
                let len = bytes.len();
                let link = Link {
                    partition,
                    generation: part.generation,
                    seq,
                    parent,
                };
                let waited = done.is_some();
                let job = EncodedSnapshot {
                    link: (link, part.chain.progress.clone()),
                    bytes,
                    covers,
                    started,
                    done,
                };
                // While the store is slow or down the writer's queue fills: a periodic checkpoint
                // is then dropped (its changes stay sealed, so the next one holds them) rather
                // than stopping this worker; one somebody waits for is queued whatever it takes.
                let sent = if waited || force {
                    sink.send(job).is_ok()
                } else {
                    match sink.try_send(job) {
                        Ok(()) => true,
                        Err(TrySendError::Full(_)) => {
                            tracing::debug!(
                                partition,
                                "Checkpoint writer busy; the next interval tries again."
                            );
                            false
                        }
                        Err(TrySendError::Disconnected(_)) => false,
                    }
                };
                if sent {
                    part.dirty = false;
                    part.snapshotted = true;
                    part.calls_checkpointed = part.covered[Input::Calls.index()].unwrap_or(0);
                    let chain = &mut part.chain;
                    chain.next_seq = seq + 1;
                    chain.sent = seq as i64;
                    match parent {
                        None => chain.pending_base = Some((seq, len)),
                        Some(_) => chain.since_base += len,
                    }
                }
            }
            Err(e) => {
                tracing::error!(partition, error = %e, "Partition state not encodable; no snapshot.");
                reply(done, false);
            }
        }
    }

    fn polled(&mut self, batch: Vec<Polled>) {
        let mut touched: Vec<i32> = Vec::new();
        for item in batch {
            match item {
                Polled::Message(m) => {
                    let p = m.partition;
                    if self.queue(m) && touched.last() != Some(&p) {
                        touched.push(p);
                    }
                }
                // The calls lane is not merged: its end decides nothing.
                Polled::End {
                    input: Input::Calls,
                    ..
                }
                | Polled::Behind {
                    input: Input::Calls,
                    ..
                } => {}
                Polled::Gap(g) if g.input == Input::Calls => {
                    // Counted and logged by the poller; the calls lost are the calling numbers'.
                }
                Polled::End {
                    input,
                    partition,
                    at,
                } => {
                    let wait = self.ctx.config.daemon.align_wait.0;
                    let Some(part) = self.partitions.get_mut(&partition) else {
                        continue;
                    };
                    let id = lane(input);
                    // Only if nothing of that input arrived since: the end moved on otherwise.
                    if part.merge.head(id).is_none_or(|(k, _)| k.seq < at) {
                        if wait == 0 {
                            part.merge.set_ended(id, true);
                        } else {
                            part.pending_end[input.index()] = Some(Instant::now());
                        }
                        touched.push(partition);
                    }
                }
                Polled::Behind { input, partition } => {
                    if let Some(part) = self.partitions.get_mut(&partition) {
                        part.merge.set_ended(lane(input), false);
                        part.pending_end[input.index()] = None;
                    }
                }
                Polled::Gap(g) => {
                    if let Some(part) = self.partitions.get_mut(&g.partition) {
                        // Marked in the state when the first record after it is read (its time).
                        part.gap[g.input.index()] = Some(GapMark {
                            input: g.input,
                            partition: g.partition,
                            from: g.expected,
                            to: g.received,
                            reason: g.reason,
                            after: part.pipeline.store.borrow().newest_event_time(),
                            before: None,
                        });
                    }
                }
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for p in touched {
            self.drain(p);
        }
    }

    /// Decodes a consumed message into its partition's merge; false if the partition is not held
    /// here (polled before a rebalance took it away: its next owner reads it again).
    fn queue(&mut self, m: InputMessage) -> bool {
        let Some(part) = self.partitions.get_mut(&m.partition) else {
            tracing::debug!(
                partition = m.partition,
                offset = m.offset,
                "Record of a partition not held here dropped."
            );
            *self.worked_off.entry((m.input, m.partition)).or_default() -= m.weight();
            return false;
        };
        if m.input == Input::Calls {
            self.process_call(m);
            return false;
        }
        // A by-account topic: its markers say how far the merge upstream has come, and its records
        // go by the merge key they were released with, not by their own time.
        let origin = m.lane;
        if let Some(h) = origin.filter(LaneHeader::is_marker) {
            let id = lane(m.input);
            part.merge.push(
                id,
                m.offset,
                Some(h.time),
                Queued {
                    msg: m,
                    item: None,
                    origin: None,
                },
            );
            part.merge.set_ended(id, h.ended());
            return true;
        }
        self.ctx.metrics.records_in[m.input.index()].fetch_add(1, Ordering::Relaxed);
        let item = match m.input {
            Input::Usage | Input::Calls => self.decoder.usage(&m.payload).map(Item::Usage),
            Input::Events => self.decoder.account_event(&m.payload).map(Item::Event),
        };
        let time = match origin {
            Some(h) => Some(h.time),
            None => item.as_ref().ok().map(Item::time),
        };
        if let Some(mut mark) = part.gap[m.input.index()].take() {
            mark.before = time;
            part.pipeline.store.borrow_mut().note_gap(mark);
            part.dirty = true;
        }
        part.last_record = Instant::now();
        part.pending_end[m.input.index()] = None;
        part.merge.push(
            lane(m.input),
            m.offset,
            time,
            Queued {
                msg: m,
                item: Some(item),
                origin,
            },
        );
        true
    }

    /// Processes the partition's queued records in event-time order as far as it is known.
    fn drain(&mut self, partition: i32) {
        loop {
            let Some(part) = self.partitions.get_mut(&partition) else {
                return;
            };
            let Some((id, key, q)) = part.merge.pop() else {
                break;
            };
            let input = if id == lane(Input::Usage) {
                Input::Usage
            } else {
                Input::Events
            };
            self.process(partition, input, key.time, q);
        }
        self.mark(partition);
    }

    /// Tells the calls repartition topic how far the partition's usage has come, when that moved
    /// (at most every `MARK_EVERY`) or as a heartbeat: the sequencer merges every partition's
    /// calls and releases none before each partition has shown it can send nothing earlier.
    fn mark(&mut self, partition: i32) {
        let (Some(out), Some(part)) = (&self.ctx.calls, self.partitions.get_mut(&partition)) else {
            return;
        };
        if !part.owned {
            return;
        }
        let Some(state) = part.usage_mark() else {
            return;
        };
        if !crate::repartition::marker_due(&part.marked, &state, MARK_EVERY, HEARTBEAT) {
            return;
        }
        out.mark(LaneHeader::marker(
            partition as u32,
            state.0,
            state.1,
            state.2,
        ));
        part.marked = Some((state, Instant::now()));
    }

    fn mark_all(&mut self) {
        if self.ctx.calls.is_none() {
            return;
        }
        let parts: Vec<i32> = self.partitions.keys().copied().collect();
        for p in parts {
            self.mark(p);
        }
    }

    /// Hands back the read-ahead worked off, once per batch.
    fn flush(&mut self) {
        self.ctx.queued.apply(&mut self.worked_off);
    }

    /// A record of the calls topic, in offset order (already merged by event time across
    /// partitions): applied to the calling numbers' state, and the rules that run beside them.
    fn process_call(&mut self, m: InputMessage) {
        let partition = m.partition;
        let weight = m.weight();
        *self
            .worked_off
            .entry((Input::Calls, partition))
            .or_default() -= weight;
        let Some(part) = self.partitions.get_mut(&partition) else {
            tracing::debug!(
                partition,
                offset = m.offset,
                "Call of a partition not held here dropped."
            );
            return;
        };
        let marker = m.lane.is_some_and(|h| h.is_marker());
        let applies = part.bounds.applies(Input::Calls, m.offset);
        // The calls topic holds each source partition's records in their order there: one at or
        // below the last applied of its lane is a copy (a sequencer released it again after a
        // restart), which must not run the rules twice.
        let copy = match m.lane.filter(|_| !marker && applies) {
            Some(h) => {
                let seen = part.calls_seen.entry(h.lane).or_insert(i64::MIN);
                let copy = h.seq <= *seen;
                *seen = (*seen).max(h.seq);
                copy
            }
            None => false,
        };
        if copy {
            self.ctx
                .metrics
                .repartition
                .by(Input::Calls)
                .duplicates
                .fetch_add(1, Ordering::Relaxed);
        }
        if !marker && applies && !copy {
            let record = self.decoder.usage(&m.payload);
            match (record, m.handed, &mut part.calls) {
                (Ok(record), Some(handed), Some(calls)) => {
                    calls.take_over(Handover {
                        record,
                        call: handed.call,
                        facts: handed.facts,
                    });
                    let alerts = take_alerts(calls, &self.ctx.metrics);
                    if part.bounds.emits(Input::Calls, m.offset) {
                        send_alerts(
                            &mut self.outputs,
                            &self.ctx.metrics,
                            alerts,
                            Origin::record(Input::Calls, partition, m.offset),
                        );
                    } else {
                        self.ctx
                            .metrics
                            .snapshots
                            .outputs_suppressed
                            .fetch_add(alerts.len() as u64, Ordering::Relaxed);
                    }
                }
                (record, handed, _) => {
                    // Written by cdrguard itself: a record here that does not read back is a bug
                    // or a foreign writer, not input to dead-letter.
                    tracing::error!(
                        partition,
                        offset = m.offset,
                        decoded = record.is_ok(),
                        header = handed.is_some(),
                        "Unreadable message on the calls topic skipped."
                    );
                }
            }
        }
        if applies {
            part.covered[Input::Calls.index()] = Some(m.offset + 1);
            // A marker changes no state: an idle partition (heartbeats every 2 s) is not
            // checkpointed for each one, only once they add up (so that its commit, its lag and
            // what a restart re-reads stay bounded).
            let behind = m.offset + 1 - part.calls_checkpointed;
            part.dirty |= !marker || behind >= MARKERS_PER_CHECKPOINT;
        }
        self.ctx
            .tracker
            .processed(Input::Calls, partition, m.offset);
    }

    /// `key_time`: the record's merge key (its lane's running maximum), which orders it among the
    /// calls of every partition.
    fn process(&mut self, partition: i32, input: Input, key_time: i64, q: Queued) {
        let Some(item) = q.item else {
            return self.pass_marker(partition, input, q.msg);
        };
        let m = q.msg;
        let origin_header = q.origin;
        let weight = m.weight();
        let origin = Origin::record(input, partition, m.offset);
        let snapshots = &self.ctx.metrics.snapshots;
        let part = self.partitions.get_mut(&partition).expect("queued here");
        let emit = part.bounds.emits(input, m.offset);
        // What the calling numbers need of this record, if anything.
        let mut handover: Option<Handover> = None;
        let applies = part.bounds.applies(input, m.offset);
        if applies {
            let source = self.ctx.topic(input);
            // Judged against the state before the record (its line's account as known then);
            // counted once it is applied, and once: re-read records (outputs suppressed) were
            // counted the first time.
            // (A by-account topic is keyed by cdrguard itself.)
            let miskeyed = match (&item, emit, origin_header) {
                (Ok(item), true, None) => part.pipeline.miskeyed(item, m.key.as_deref()),
                _ => None,
            };
            if emit {
                if let Ok(Item::Usage(r)) = &item {
                    self.ctx.metrics.count_repairs(r.repairs);
                }
            }
            let verdict = part.pipeline.process(Decoded {
                source,
                line: m.offset as u64,
                raw: &m.payload,
                truncated: 0,
                item,
            });
            part.covered[input.index()] = Some(m.offset + 1);
            part.dirty = true;
            if let (Some(expected), Verdict::Applied) = (&miskeyed, &verdict) {
                RecordMiskeyed {
                    input,
                    topic: source,
                    partition,
                    offset: m.offset,
                    key: m.key.as_deref(),
                    expected,
                }
                .emit(&self.ctx.metrics, &self.ctx.miskeyed_log);
            }
            if matches!(verdict, Verdict::Applied) {
                handover = part.pipeline.take_handover();
            }
            let alerts = take_alerts(&mut part.pipeline, &self.ctx.metrics);
            if emit {
                if let Verdict::Reject(reject) = &verdict {
                    RecordRejected {
                        input,
                        partition,
                        offset: m.offset,
                        reject,
                    }
                    .emit(&self.ctx.metrics);
                    // A by-account topic's record is reported where its producer wrote it.
                    let (source, partition, position) = match origin_header {
                        Some(h) => (
                            self.ctx.config.kafka.source_topic(input),
                            h.lane as i32,
                            h.seq,
                        ),
                        None => (source, partition, m.offset),
                    };
                    let rejected = Rejected {
                        source,
                        partition: Some(partition),
                        position: position as u64,
                        key: m.key.as_deref().unwrap_or(&[]),
                        raw: &m.payload,
                        truncated: 0,
                        reject,
                    };
                    let failed = self.outputs.reject(&rejected, origin);
                    for (sink, e) in &failed {
                        OutputFailed {
                            sink,
                            what: "dead letter",
                            id: &format!("{source}/{partition}/{}", m.offset),
                            error: e,
                        }
                        .emit(&self.ctx.metrics);
                    }
                    if failed.is_empty() {
                        DeadLettered.emit(&self.ctx.metrics);
                    }
                }
                send_alerts(&mut self.outputs, &self.ctx.metrics, alerts, origin);
            } else {
                // Re-read after a rebuild: delivered before the crash, not sent again.
                let dead = matches!(verdict, Verdict::Reject(_)) as u64;
                snapshots
                    .outputs_suppressed
                    .fetch_add(alerts.len() as u64 + dead, Ordering::Relaxed);
            }
        } else {
            // Already in the restored snapshot, and written to the calls topic before it became
            // durable (`repartition::calls`).
            snapshots.records_skipped.fetch_add(1, Ordering::Relaxed);
        }
        if let (Some(h), Some(out)) = (handover, &self.ctx.calls) {
            // Keyed by the number whose partition keeps it: an MT call's calling number; a
            // callback's destination, where the calling number it asks about lives.
            let number = match h.call {
                true => h.record.other_party.number,
                false => h.record.destination(),
            };
            if let Some(number) = number {
                out.send(
                    &self.ctx.tracker,
                    &number.to_string(),
                    &m.payload,
                    LaneHeader::record(partition as u32, m.offset, key_time),
                    &Handed {
                        call: h.call,
                        facts: h.facts,
                    },
                );
            }
        }
        self.ctx.tracker.processed(input, partition, m.offset);
        *self.worked_off.entry((input, partition)).or_default() -= weight;
    }

    /// A by-account topic's marker, in its turn: the offset is passed, nothing else happens.
    fn pass_marker(&mut self, partition: i32, input: Input, m: InputMessage) {
        let Some(part) = self.partitions.get_mut(&partition) else {
            return;
        };
        // Below a restored snapshot's position the state already covers more: leave it.
        if part.bounds.applies(input, m.offset) {
            part.covered[input.index()] = Some(m.offset + 1);
        }
        self.ctx.tracker.processed(input, partition, m.offset);
        *self.worked_off.entry((input, partition)).or_default() -= m.weight();
    }

    fn reload(&mut self, sources: Arc<RuleSources>) {
        for part in self.partitions.values_mut() {
            // Validated before it was sent: a failure here is logged by the engine, the set stays.
            let _ = part.pipeline.reload_rules(&sources);
            if let Some(c) = &mut part.calls {
                let _ = c.reload_rules(&sources);
            }
        }
        self.ctx.sources = sources;
    }

    fn reload_candidate(&mut self, sources: Arc<RuleSources>) {
        for part in self.partitions.values_mut() {
            for p in std::iter::once(&mut part.pipeline).chain(part.calls.as_mut()) {
                let _ = p.reload_candidate(&sources);
            }
        }
        self.ctx.candidate = Some(sources);
    }

    fn tick(&mut self) {
        // `daemon.align_wait`: an input whose end was reached holds its partner back this long.
        let wait = Duration::from_secs(self.ctx.config.daemon.align_wait.0.max(0) as u64);
        let mut waited = Vec::new();
        for (&p, part) in self.partitions.iter_mut() {
            for input in Input::ALL {
                if let Some(since) = part.pending_end[input.index()] {
                    if since.elapsed() >= wait {
                        part.pending_end[input.index()] = None;
                        part.merge.set_ended(lane(*input), true);
                        waited.push(p);
                    }
                }
            }
        }
        for p in waited {
            self.drain(p);
        }
        let idle = self.ctx.config.daemon.idle_watermark_after.0;
        if idle > 0 {
            let now = crate::telemetry::metrics::now_ms() / 1000;
            // Only a partition caught up on both inputs: wall-clock time never overtakes records
            // still to be read.
            let quiet: Vec<i32> = self
                .partitions
                .iter()
                .filter(|(_, p)| {
                    p.merge.is_empty()
                        && Input::ALL.iter().all(|i| p.merge.is_ended(lane(*i)))
                        && p.last_record.elapsed() >= Duration::from_secs(idle as u64)
                })
                .map(|(&k, _)| k)
                .collect();
            for partition in quiet {
                let Some(part) = self.partitions.get_mut(&partition) else {
                    continue;
                };
                part.pipeline.advance_idle(now);
                let alerts = take_alerts(&mut part.pipeline, &self.ctx.metrics);
                send_alerts(
                    &mut self.outputs,
                    &self.ctx.metrics,
                    alerts,
                    Origin::Untracked,
                );
            }
        }
        self.publish_view();
    }

    fn publish_view(&mut self) {
        let mut view = WorkerView {
            partitions: self.partitions.len(),
            ..Default::default()
        };
        for (&p, part) in &self.partitions {
            add_to_view(&mut view, &part.pipeline);
            if let Some(c) = &part.calls {
                add_to_view(&mut view, c);
            }
            if let Some(w) = part.pipeline.store.borrow().watermark() {
                view.watermarks.insert(p, w);
            }
        }
        store_view(&self.ctx, view);
    }
}

pub fn store_view(ctx: &WorkerContext, view: WorkerView) {
    let mut workers = ctx.metrics.workers.lock().expect("metrics lock");
    if workers.len() <= ctx.index {
        workers.resize(ctx.index + 1, WorkerView::default());
    }
    workers[ctx.index] = view;
}

/// Adds a pipeline's state size and rule statistics to a worker's metrics view.
pub fn add_to_view(view: &mut WorkerView, pipeline: &Pipeline) {
    let size = pipeline.store.borrow().size();
    view.entities += (size.subscribers + size.accounts + size.calling_numbers + size.imeis) as u64;
    view.state_bytes += size.estimated_bytes as u64;
    view.timers_pending += size.timers_pending as u64;
    let Some(engine) = &pipeline.rules else {
        return;
    };
    view.ruleset_version = engine.version().to_string();
    let (memory_bytes, edges_refused) = engine.alert_memory();
    view.state_bytes += memory_bytes as u64;
    view.edges_refused += edges_refused;
    // Every pipeline reloads the same library: a reload counts once, not once per partition.
    view.reloads_ok = view.reloads_ok.max(engine.counters.reloads_ok);
    view.reloads_failed = view.reloads_failed.max(engine.counters.reloads_failed);
    let candidate = pipeline.candidate.iter().flat_map(|c| {
        c.stats()
            .iter()
            .map(|s| (format!("{}{}", s.id, CANDIDATE_NAMESPACE), s, "shadow"))
    });
    let live = engine
        .stats()
        .iter()
        .map(|s| (s.id.clone(), s, s.mode.as_str()));
    for (key, s, mode) in live.chain(candidate) {
        match view.rules.get_mut(&key) {
            Some(r) => {
                let _ = r.latency.add(&s.latency);
                r.evaluations += s.evaluations;
                r.errors += s.errors;
                r.quarantined |= s.quarantined;
                r.quarantines += s.quarantines;
            }
            None => {
                view.rules.insert(
                    key,
                    RuleView {
                        evaluations: s.evaluations,
                        errors: s.errors,
                        quarantined: s.quarantined,
                        quarantines: s.quarantines,
                        latency: s.latency.clone(),
                        mode,
                    },
                );
            }
        }
    }
}

/// Sends to the worker owning `partition`.
pub fn worker_of(workers: &[Sender<WorkerMessage>], partition: i32) -> &Sender<WorkerMessage> {
    &workers[partition.unsigned_abs() as usize % workers.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{Classifier, PrefixList};
    use crate::config::Config;
    use crate::pipeline::PipelineOptions;

    fn queued(offset: i64) -> Queued {
        Queued {
            msg: InputMessage {
                input: Input::Usage,
                partition: 0,
                offset,
                key: None,
                payload: Vec::new(),
                timestamp_ms: None,
                lane: None,
                handed: None,
            },
            item: None,
            origin: None,
        }
    }

    /// A marker to the calls repartition topic tells the sequencer that nothing of the partition
    /// before its position, nor keyed below its time, is still to come: with records held in the
    /// partition's merge it must stop at the first of them, whatever has been read past it.
    #[test]
    fn a_marker_never_claims_more_than_the_partition_can_still_send() {
        let config = Config::default();
        let classifier = Classifier::new(
            crate::record::Number::parse("33").unwrap(),
            PrefixList::default(),
        );
        let pipeline = Pipeline::new(PipelineOptions::new(classifier, config.state.clone()))
            .expect("no rules");
        let mut part = Partition::new(
            pipeline,
            None,
            Aligner::with_lanes(2),
            ReadBounds::default(),
        );
        let usage = lane(Input::Usage);
        part.merge.open(usage, 1_000, 40);
        assert_eq!(part.usage_mark(), Some((40, 1_000, false)));
        part.merge.push(usage, 40, Some(2_000), queued(40));
        part.merge.push(usage, 41, Some(1_500), queued(41));
        part.merge.set_ended(usage, true);
        // Held: the first held record's position and the running maximum before it.
        assert_eq!(part.usage_mark(), Some((40, 1_000, false)));
        part.merge.pop_unbounded();
        part.merge.pop_unbounded();
        assert_eq!(part.usage_mark(), Some((42, 2_000, true)));
    }
}
