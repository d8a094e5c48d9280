//! Partition handover at rebalances, on the polling thread (inside `poll`).
//!
//! **Assigned**: for each partition number, read the group's committed offsets and the partition's
//! snapshot, decide where each input starts and what is skipped or suppressed (`ReadBounds`), set the
//! start offsets in the assignment, and hand the restored state to the partition's worker before any of
//! its records. The cases, per input, with C the committed offset and S the snapshot's:
//!
//! | snapshot | committed | start at | state | outputs |
//! |---|---|---|---|---|
//! | S ≥ C (normal) | C | C | skip below S | sent from C |
//! | S < C (stale: another owner went on) | C | S | apply from S | suppressed below C |
//! | missing, corrupt, other version | C | rebuild window | apply all read | suppressed below C |
//! | S, none committed | none | S (if the log reaches it) | skip below S | all |
//! | none | none | `kafka.start_from` | new | all |
//!
//! The poller hears of every input partition's start offset (the event-time merge counts from it).
//! A partition's calls topic (`repartition::calls`) is one more input here: same table, same
//! checkpoint.
//!
//! **Revoking**: the partitions' workers snapshot and drop them, and once those are durable the
//! offsets are committed, so the next owner (or this process, reassigned) starts exactly where the
//! snapshots end.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{Config, StartFrom};
use crate::durability::checkpoint::{self, PartitionState, ReadBounds};
use crate::durability::layout::{Checkpoints, Link};
use crate::durability::snapshot::{Loaded, SnapshotError};
use crate::record::Input;
use crate::sink::Tracker;
use crate::source::kafka::{ConsumerCtx, RebalanceHook};
use crate::telemetry::events::PartitionStarted;
use crate::telemetry::metrics::{Metrics, RestoreOutcome};

use super::poll::Assignment;
use super::worker::{worker_of, WorkerMessage};

const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// The consumer group's generation as this member knows it (-1 outside a group). rdkafka has no
/// safe accessor; librdkafka's consumer-group metadata carries it (the one `unsafe` of the crate).
#[allow(unsafe_code)]
fn group_generation(consumer: &BaseConsumer<ConsumerCtx>) -> i32 {
    use rdkafka::bindings as ffi;
    // SAFETY: the handle is the live consumer's; the metadata is a copy, destroyed after reading.
    unsafe {
        let md = ffi::rd_kafka_consumer_group_metadata(consumer.client().native_ptr());
        if md.is_null() {
            return -1;
        }
        let generation = ffi::rd_kafka_consumer_group_metadata_generation_id(md);
        ffi::rd_kafka_consumer_group_metadata_destroy(md);
        generation
    }
}

pub struct Rebalancer {
    pub cfg: Arc<Config>,
    pub dir: Option<Arc<Checkpoints>>,
    pub tracker: Arc<Tracker>,
    pub metrics: Arc<Metrics>,
    pub assignment: Arc<Assignment>,
    pub workers: Mutex<Vec<Sender<WorkerMessage>>>,
    /// The run loop has stopped and committed: the revoke at close has nothing left to do.
    pub stopped: AtomicBool,
}

/// Where a restored partition's state came from.
struct Restored {
    /// The group generation of the owner that wrote it.
    generation: i32,
    /// Its base and deltas, and their size.
    checkpoints: usize,
    bytes: usize,
}

/// Where an input of a partition starts reading.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Start {
    Committed,
    At(i64),
    /// The log's end (`kafka.start_from = latest` when the watermarks could not be read).
    End,
    /// The earliest offset within `durability.rebuild_window`.
    Rebuild,
}

impl Rebalancer {
    /// The run loop stopped: rebalances from now on (the one at close) have nothing to hand over, and
    /// the workers' channels may close.
    pub fn shutdown(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.workers.lock().expect("rebalancer lock").clear();
    }

    fn topic(&self, input: Input) -> &str {
        self.cfg.kafka.topic(input)
    }

    /// Loads the checkpoint chain of partition `p` a new owner restores (`layout::pick`: the
    /// newest generation covering the committed offsets `c`). Unusable checkpoints (corrupt,
    /// another version, another partition) are set aside and the other chains tried; the error is
    /// the first such one's, or `Missing` when there is none.
    fn load(
        &self,
        dir: &Checkpoints,
        p: i32,
        c: [Option<i64>; 3],
        listed: Option<&[Link]>,
    ) -> Result<(Loaded, PartitionState, Restored), SnapshotError> {
        let io = |e: crate::durability::store::StoreError| SnapshotError::Io {
            path: format!("partition-{p}").into(),
            source: std::io::Error::other(e.to_string()),
        };
        let mut chains = match listed {
            Some(links) => crate::durability::layout::chains(links, p),
            None => dir.partition_chains(p).map_err(io)?,
        };
        let mut first_error = None;
        // A checkpoint that vanished while it was read: another writer's base made it useless (a
        // stale owner of this generation, or the previous owner's late handover). The store then
        // holds a newer chain: list again.
        let mut relists = 3;
        loop {
            let mut usable = Vec::new();
            let mut vanished = false;
            for chain in chains {
                match checkpoint::read_newest(dir, &chain) {
                    Ok(l) => usable.push((chain, l)),
                    Err(SnapshotError::Missing(_)) if relists > 0 => vanished = true,
                    Err(e) => {
                        if !matches!(e, SnapshotError::Io { .. } | SnapshotError::Missing(_)) {
                            dir.set_aside(&chain.newest().key());
                        }
                        first_error.get_or_insert(e);
                    }
                }
            }
            if vanished {
                relists -= 1;
                tracing::warn!(
                    partition = p,
                    "A checkpoint was removed while it was read; listing the store again."
                );
                chains = dir.partition_chains(p).map_err(io)?;
                continue;
            }
            let next = |l: &Loaded| Input::LANES.map(|i| l.header.next(self.topic(i), p));
            let candidates: Vec<[Option<i64>; 3]> = usable.iter().map(|(_, l)| next(l)).collect();
            let Some(k) = crate::durability::layout::pick(&candidates, c) else {
                return Err(first_error
                    .unwrap_or_else(|| SnapshotError::Missing(format!("partition-{p}").into())));
            };
            let (chain, newest) = usable.swap_remove(k);
            match checkpoint::restore_chain(dir, &chain, &newest) {
                Ok((state, bytes)) => {
                    let from = Restored {
                        generation: chain.generation,
                        checkpoints: chain.links.len(),
                        bytes,
                    };
                    return Ok((newest, state, from));
                }
                Err(SnapshotError::Missing(gone)) if relists > 0 => {
                    relists -= 1;
                    tracing::warn!(partition = p, checkpoint = %gone.display(), "A checkpoint was removed while the chain was read; listing the store again.");
                    chains = dir.partition_chains(p).map_err(io)?;
                }
                Err(e) => {
                    tracing::error!(partition = p, error = %e, "A checkpoint chain could not be restored; trying the others.");
                    if !matches!(e, SnapshotError::Io { .. } | SnapshotError::Missing(_)) {
                        for l in &chain.links {
                            dir.set_aside(&l.key());
                        }
                    }
                    first_error.get_or_insert(e);
                    chains = usable.into_iter().map(|(c, _)| c).collect();
                }
            }
        }
    }

    /// The offsets within the rebuild window, for the (topic, partition)s asked: the first with a
    /// broker timestamp in the window, or the log's beginning when the broker cannot say (no answer,
    /// or "none that recent", which is also what brokers without timestamp lookup answer, e.g.
    /// librdkafka's mock cluster). Reading too much only costs time; reading too little would lose
    /// state.
    fn rebuild_offsets(
        &self,
        consumer: &BaseConsumer<ConsumerCtx>,
        wanted: &[(Input, i32)],
    ) -> BTreeMap<(Input, i32), Offset> {
        let mut out = BTreeMap::new();
        if wanted.is_empty() {
            return out;
        }
        let since =
            crate::telemetry::metrics::now_ms() - self.cfg.durability.rebuild_window.0 * 1000;
        let mut tpl = TopicPartitionList::new();
        for &(input, p) in wanted {
            let _ = tpl.add_partition_offset(self.topic(input), p, Offset::Offset(since));
        }
        match consumer.offsets_for_times(tpl, BROKER_TIMEOUT) {
            Ok(found) => {
                for &(input, p) in wanted {
                    let o = found
                        .find_partition(self.topic(input), p)
                        .map(|e| e.offset());
                    let at = match o {
                        Some(Offset::Offset(o)) => Offset::Offset(o),
                        other => {
                            tracing::warn!(topic = self.topic(input), partition = p, answer = ?other, "No offset for the rebuild window's start; rebuilding from the beginning of the log.");
                            Offset::Beginning
                        }
                    };
                    out.insert((input, p), at);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "Looking up the rebuild window's offsets failed; rebuilding from the beginning of the log.");
                for &k in wanted {
                    out.insert(k, Offset::Beginning);
                }
            }
        }
        out
    }
}

impl RebalanceHook for Rebalancer {
    fn assigned(&self, consumer: &BaseConsumer<ConsumerCtx>, tpl: &mut TopicPartitionList) {
        if self.stopped.load(Ordering::SeqCst) {
            return;
        }
        let started = Instant::now();
        let generation = group_generation(consumer);
        let parts: BTreeSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        let committed: BTreeMap<(String, i32), i64> = match consumer
            .committed_offsets(tpl.clone(), BROKER_TIMEOUT)
        {
            Ok(c) => c
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
                    _ => None,
                })
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "Reading committed offsets failed; outputs of re-read records may be sent again (same ids).");
                BTreeMap::new()
            }
        };
        let workers = self.workers.lock().expect("rebalancer lock").clone();
        // The topics of a partition: its inputs, and its calls when calling numbers are tracked.
        let with_calls = self.cfg.state.calling_numbers != crate::config::CallingNumbers::Off;
        let inputs: Vec<Input> = Input::LANES
            .into_iter()
            .filter(|&i| i != Input::Calls || with_calls)
            .collect();
        let index = Input::index;

        struct Plan {
            state: Option<Box<PartitionState>>,
            bounds: ReadBounds,
            start: [Start; 3],
            outcome: RestoreOutcome,
        }
        let mut plans: BTreeMap<i32, Plan> = BTreeMap::new();
        // One listing of the store for every partition assigned (not one per partition: an object
        // store answers each in tens of milliseconds); a partition lists its own folder again only
        // if this fails or a checkpoint vanishes while it is read.
        let listed: Option<Vec<Link>> = self.dir.as_ref().and_then(|d| match d.contents() {
            Ok((links, _)) => Some(links),
            Err(e) => {
                tracing::warn!(error = %e, "Listing the checkpoint store failed; each partition lists its own.");
                None
            }
        });
        for &p in &parts {
            let c = Input::LANES.map(|i| match inputs.contains(&i) {
                true => committed.get(&(self.topic(i).to_string(), p)).copied(),
                false => None,
            });
            for &i in &inputs {
                self.tracker.start(i, p, c[index(i)]);
            }
            let mut plan = Plan {
                state: None,
                bounds: ReadBounds {
                    apply_from: [None; 3],
                    emit_from: c,
                },
                start: [Start::Committed; 3],
                outcome: RestoreOutcome::NoSnapshots,
            };
            if let Some(dir) = &self.dir {
                match self.load(dir, p, c, listed.as_deref()) {
                    Ok((loaded, state, from)) => {
                        let s = Input::LANES.map(|i| loaded.header.next(self.topic(i), p));
                        let mut stale = false;
                        let mut foreign = false;
                        for &i in &inputs {
                            let k = index(i);
                            match (s[k], c[k]) {
                                (Some(s), Some(c)) if s < c => {
                                    plan.start[k] = Start::At(s);
                                    stale = true;
                                }
                                (Some(_), Some(_)) => {}
                                (Some(s), None) => {
                                    // No commit (expired, or another cluster): trust the snapshot
                                    // only if the log reaches its offset.
                                    match consumer.fetch_watermarks(
                                        self.topic(i),
                                        p,
                                        BROKER_TIMEOUT,
                                    ) {
                                        Ok((_, high)) if s <= high => {
                                            plan.start[k] = Start::At(s);
                                            self.tracker.start_restored(i, p, s);
                                        }
                                        _ => foreign = true,
                                    }
                                }
                                (None, Some(_)) => {
                                    plan.start[k] = Start::Rebuild;
                                    stale = true;
                                }
                                (None, None) => {}
                            }
                            plan.bounds.apply_from[k] = match plan.start[k] {
                                Start::Rebuild => None,
                                _ => s[k],
                            };
                        }
                        if foreign {
                            tracing::error!(partition = p, checkpoint = %loaded.path.display(), "The checkpoint is ahead of the partition's log (another cluster, or recreated topics): not used; starting new.");
                            plan.bounds.apply_from = [None; 3];
                            plan.start = [Start::Committed; 3];
                            plan.outcome = RestoreOutcome::ForeignSnapshot;
                        } else {
                            tracing::info!(
                                partition = p,
                                bytes = from.bytes,
                                checkpoints = from.checkpoints,
                                subscribers = loaded.header.subscribers,
                                accounts = loaded.header.accounts,
                                usage_from = ?s[0],
                                events_from = ?s[1],
                                calls_from = ?s[2],
                                committed_usage = ?c[0],
                                committed_events = ?c[1],
                                committed_calls = ?c[2],
                                stale,
                                from_generation = from.generation,
                                generation,
                                "Partition state restored from its snapshot."
                            );
                            plan.state = Some(Box::new(state));
                            plan.outcome = if stale {
                                RestoreOutcome::StaleSnapshot
                            } else {
                                RestoreOutcome::Snapshot
                            };
                            // What the snapshot holds may be committed as soon as it is re-read.
                            for &i in &inputs {
                                if let (Some(s), Start::Committed) =
                                    (s[index(i)], plan.start[index(i)])
                                {
                                    self.tracker.set_cap(i, p, s - 1);
                                }
                            }
                        }
                    }
                    // Committed at offset 0 at most: an owner that joined, committed where it
                    // started (`Tracker::start_new`) and was lost before its first checkpoint.
                    // Nothing was ever processed, so reading from the start is exact, not a rebuild.
                    Err(SnapshotError::Missing(_))
                        if c.iter().all(|c| c.is_none_or(|c| c == 0)) =>
                    {
                        plan.outcome = RestoreOutcome::New;
                    }
                    Err(e) => {
                        tracing::error!(
                            partition = p,
                            error = %e,
                            rebuild_window_s = self.cfg.durability.rebuild_window.0,
                            "No usable snapshot for a partition with committed offsets: rebuilding its state \
                             by re-reading the rebuild window (outputs already delivered are not sent again)."
                        );
                        for &i in &inputs {
                            if c[index(i)].is_some() {
                                plan.start[index(i)] = Start::Rebuild;
                            }
                        }
                        plan.outcome = RestoreOutcome::Rebuilt(e.reason());
                    }
                }
            }
            // A partition the group never committed starts where `kafka.start_from` says, resolved
            // now and committed with the first offsets stored (not here: a commit in flight while an
            // assignment starts can hold librdkafka's fetchers, confluentinc/librdkafka#1605). A crash
            // after its first snapshot then finds a commit to compare the snapshot with (without one,
            // a snapshot is checked against the log's end, which some brokers report short).
            for &i in &inputs {
                let k = index(i);
                if c[k].is_none() && plan.start[k] == Start::Committed {
                    match consumer.fetch_watermarks(self.topic(i), p, BROKER_TIMEOUT) {
                        Ok((low, high)) => {
                            // A by-account or calls topic holds what the repartition stages passed
                            // on for this group: all of it is new to the group.
                            let sequenced = self.cfg.kafka.sequenced(i);
                            let o = match self.cfg.kafka.start_from {
                                StartFrom::Latest if !sequenced => high,
                                _ => low,
                            };
                            plan.start[k] = Start::At(o);
                            plan.bounds.emit_from[k] = Some(o);
                            // Nothing before the start is needed: the state covers it from here,
                            // so a snapshot taken before any record arrives says so.
                            plan.bounds.apply_from[k] = Some(o);
                            self.tracker.start_new(i, p, o);
                            tracing::info!(
                                topic = self.topic(i),
                                partition = p,
                                offset = o,
                                "Partition new to the group: starting at its first offset to read."
                            );
                        }
                        Err(e) => {
                            tracing::warn!(partition = p, error = %e, "Watermarks unknown; starting per kafka.start_from without an initial commit.");
                            // The consumer's own reset goes to the log start (`source::kafka`).
                            if self.cfg.kafka.start_from == StartFrom::Latest {
                                plan.start[k] = Start::End;
                            }
                        }
                    }
                }
            }
            for &i in &inputs {
                self.tracker.own(i, p, generation);
            }
            plans.insert(p, plan);
        }

        let wanted: Vec<(Input, i32)> = plans
            .iter()
            .flat_map(|(&p, plan)| {
                inputs
                    .iter()
                    .copied()
                    .filter(move |&i| plan.start[index(i)] == Start::Rebuild)
                    .map(move |i| (i, p))
            })
            .collect();
        let rebuild = self.rebuild_offsets(consumer, &wanted);
        for (p, plan) in plans {
            let mut starts = [None; 3];
            for &i in &inputs {
                let k = index(i);
                let at = match plan.start[k] {
                    Start::Committed => None,
                    Start::At(o) => Some(Offset::Offset(o)),
                    Start::End => Some(Offset::End),
                    // Never past the committed offset: what comes after it was never processed.
                    Start::Rebuild => {
                        rebuild
                            .get(&(i, p))
                            .map(|&r| match (r, plan.bounds.emit_from[k]) {
                                (Offset::Offset(r), Some(c)) => Offset::Offset(r.min(c)),
                                (r, _) => r,
                            })
                    }
                };
                starts[k] = match at {
                    None => c_of(&committed, self.topic(i), p),
                    Some(Offset::Offset(o)) => Some(o),
                    // The log's beginning or end: its number, for the event-time merge and the
                    // poller's gap check.
                    Some(o) => consumer
                        .fetch_watermarks(self.topic(i), p, BROKER_TIMEOUT)
                        .ok()
                        .map(|(low, high)| if o == Offset::End { high } else { low }),
                };
                // The poller expects the committed offset at the latest: a start past it (a
                // rebuild from a log whose beginning moved past the commit) is a gap it counts.
                let expected = match (starts[k], plan.bounds.emit_from[k]) {
                    (Some(s), Some(c)) => Some(s.min(c)),
                    (s, _) => s,
                };
                self.assignment.assigned(i, p, expected);
                if let Some(o) = at {
                    if let Err(e) = tpl.set_partition_offset(self.topic(i), p, o) {
                        tracing::error!(error = %e, partition = p, "Setting the start offset failed.");
                    }
                }
            }
            PartitionStarted {
                partition: p,
                outcome: plan.outcome,
            }
            .emit(&self.metrics);
            let work = WorkerMessage::Assign {
                partition: p,
                state: plan.state,
                bounds: plan.bounds,
                starts,
                generation,
            };
            if worker_of(&workers, p).send(work).is_err() {
                tracing::error!(partition = p, "Worker stopped; partition not started.");
            }
        }
        tracing::info!(
            partitions = parts.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Assignment prepared."
        );
    }

    fn revoking(&self, consumer: &BaseConsumer<ConsumerCtx>, tpl: &TopicPartitionList) {
        if self.stopped.load(Ordering::SeqCst) {
            return;
        }
        let started = Instant::now();
        let parts: BTreeSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        let workers = self.workers.lock().expect("rebalancer lock").clone();
        let mut by_worker: BTreeMap<usize, Vec<i32>> = BTreeMap::new();
        for &p in &parts {
            by_worker
                .entry(p.unsigned_abs() as usize % workers.len())
                .or_default()
                .push(p);
        }
        let mut waits = Vec::new();
        for (w, partitions) in by_worker {
            let (reply, wait) = sync_channel(1);
            let work = WorkerMessage::Release { partitions, reply };
            if workers[w].send(work).is_ok() {
                waits.push(wait);
            }
        }
        let timeout = Duration::from_secs(self.cfg.durability.delivery_timeout.0.max(1) as u64 + 5);
        let mut durable = true;
        let mut done = Vec::new();
        for wait in waits {
            match wait.recv_timeout(timeout) {
                Ok(rx) => done.extend(rx),
                Err(_) => durable = false,
            }
        }
        for rx in done {
            durable &= rx.recv_timeout(timeout).unwrap_or(false);
        }
        if !durable {
            tracing::warn!("Not every snapshot of the revoked partitions became durable; their next owner re-reads from the last commit.");
        }
        super::poll::store_offsets(consumer, &self.tracker);
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "Commit at revoke.");
        }
        for &p in &parts {
            for i in Input::LANES {
                self.tracker.forget(i, p);
                self.assignment.revoked(i, p);
            }
        }
        tracing::info!(
            partitions = parts.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            durable,
            "Revoked partitions handed over."
        );
    }
}

/// The committed offset of a (topic, partition), if any.
fn c_of(committed: &BTreeMap<(String, i32), i64>, topic: &str, p: i32) -> Option<i64> {
    committed.get(&(topic.to_string(), p)).copied()
}
