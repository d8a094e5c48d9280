//! Workers: each owns the pipelines (window state + rule engine) of the partitions routed to it —
//! partition `p` of both input topics goes to worker `p % workers`, so an account's usage and events
//! (keyed alike, co-partitioned) meet in one pipeline with no lock on state.
//!
//! **Event-time merge per partition.** Kafka orders a partition, not two topics: a backlog of usage
//! can be read ahead of the account event (a credit limit, an invoice) that preceded it. Like Kafka
//! Streams' task synchronisation, a worker keeps each partition's usage and events in two queues and
//! processes the earlier head; a lone head waits while the other topic's partition still has unread
//! messages on the broker (`LagBoard`), at most `daemon.align_max_wait`. Live, both are read up and
//! nothing waits.
//!
//! **Caller shard.** A calling number rings subscribers of every partition, so its state (Wangiri)
//! cannot live in one partition: the MT calls that give a calling number state are also handed, in
//! their partition's order, to one caller shard that keeps only calling-number state and runs only
//! the rules keyed by calling number. Alerts it raises are flagged process-wide, so `alerted()` in
//! a subscriber's partition sees them (the Wangiri callback). The handover is synchronous and holds
//! the record's offset until the shard's alerts are acknowledged.
//!
//! Per record: run the pipeline, produce each alert to each of its departments' topics and each reject
//! to the dead-letter topic, then mark the offset processed; the tracker commits it once all of that is
//! acknowledged (and, with snapshots on, once a durable snapshot covers it: see `checkpoint`).
//!
//! **Partitions come and go with the assignment.** A partition's pipeline is created (or restored
//! from its snapshot) by `Work::Assign`, which the polling thread sends before any of its records, and
//! snapshotted and dropped by `Work::Release`. A record of a partition the worker does not hold was
//! polled before a rebalance gave the partition away: it is dropped unprocessed, and its next owner
//! reads it again from the committed offset.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ahash::AHashMap;

use crate::classify::Classifier;
use crate::config::{CallingNumbers, Config};
use crate::durability::snapshot::{self, Position, SnapshotKind};
use crate::pipeline::{Pipeline, Verdict};
use crate::record::{Alert, Decoder, Direction, EntityType, RecordType, Reject, UsageRecord};
use crate::rules::api::GlobalFlags;
use crate::rules::RuleSources;
use crate::sink::kafka::{headers, OutputProducer, Ticket};
use crate::source::kafka::{InputMessage, LagBoard};
use crate::source::{Decoded, Item};
use crate::state::WindowStore;

use crate::durability::checkpoint::{
    self as ckpt, index, CallerState, Job, PartitionState, Resume,
};
use crate::sink::ack::{Input, Tracker};
use crate::telemetry::metrics::{Metrics, RuleView, WorkerView};

pub enum Work {
    /// Consumed messages, in poll order.
    Records(Vec<InputMessage>),
    Reload(Arc<RuleSources>),
    /// A partition assigned: its restored state (if any) and how to treat re-read records.
    Assign {
        partition: i32,
        state: Option<Box<PartitionState>>,
        resume: Resume,
    },
    /// Partitions revoked: process what is queued, snapshot (when on) and drop them; the reply carries
    /// one receiver per snapshot, told when it is durable.
    Release {
        partitions: Vec<i32>,
        reply: SyncSender<Vec<Receiver<bool>>>,
    },
    /// Finish what is queued, snapshot, then stop.
    Stop,
}

/// What the caller shard is asked to do.
pub enum CallerWork {
    /// An MT call, and a reply once its alerts are handed to the producer. `replayed`: re-read from
    /// already committed input, so its alerts were delivered before (not sent again).
    Record {
        record: Box<UsageRecord>,
        ticket: (Input, i32, i64),
        replayed: bool,
        done: SyncSender<()>,
    },
    Reload(Arc<RuleSources>),
    /// Snapshot now (a revoke); `done` is told when it is durable.
    Snapshot {
        done: Option<SyncSender<bool>>,
    },
}

/// What every worker and the caller shard share.
#[derive(Clone)]
pub struct WorkerSetup {
    pub index: usize,
    pub config: Arc<Config>,
    pub classifier: Classifier,
    pub sources: Arc<RuleSources>,
    pub producer: Arc<OutputProducer>,
    pub tracker: Arc<Tracker>,
    pub metrics: Arc<Metrics>,
    pub board: Arc<LagBoard>,
    pub flags: GlobalFlags,
    /// Where MT calls go for calling-number state; `None`: the partitions keep it themselves.
    pub callers: Option<SyncSender<CallerWork>>,
    /// The mode stamped on alerts (`live`).
    pub mode: crate::record::Mode,
    /// Crash-like stop (tests): leave at once, queued records unprocessed.
    pub abort: Arc<std::sync::atomic::AtomicBool>,
    /// The snapshot writer, when snapshots are on.
    pub snapshots: Option<SyncSender<Job>>,
}

/// A consumed record waiting for its turn in its partition's event-time merge.
struct Pending {
    msg: InputMessage,
    item: Result<Item, Reject>,
    /// Event time; records that did not decode go first (they wait for nothing).
    time: i64,
    arrived: Instant,
    /// When it was produced (its Kafka timestamp, or when it arrived if that is earlier or unknown),
    /// wall-clock ms.
    produced_ms: i64,
}

struct Partition {
    pipeline: Pipeline,
    last_record: Instant,
    usage: VecDeque<Pending>,
    events: VecDeque<Pending>,
    resume: Resume,
    /// Per input (`[usage, events]`), the next offset: every record before it is in the state.
    covered: [Option<i64>; 2],
    /// Records processed since the last snapshot.
    dirty: bool,
    /// A snapshot of this partition was written since it was assigned (commits start after it).
    snapshotted: bool,
}

/// Builds a pipeline with the rule library, sharing the process-wide alert flags.
fn new_pipeline(s: &WorkerSetup, callers_only: bool) -> Pipeline {
    let mut state = s.config.state.clone();
    if s.callers.is_some() && !callers_only {
        state.calling_numbers = CallingNumbers::Off;
    }
    if callers_only {
        // Partitions progress at their own pace (a backlog is read a partition at a time): the
        // shard takes every call its partition accepted, whatever the other partitions' time.
        state.allowed_lateness = state.max_window;
    }
    let mut store = WindowStore::new(state);
    store.callers_only = callers_only;
    let mut p = Pipeline::new(s.classifier.clone(), store);
    p.high_risk_from_rules = s.config.reference.high_risk_prefixes.is_none();
    // The library was validated before the workers started; a failure here is a bug.
    p.enable_rules(
        &s.sources,
        &s.config.rules.sandbox,
        s.config.rules.quarantine_after,
    )
    .expect("rule library validated at startup");
    if let Some(e) = &mut p.rules {
        e.mode = s.mode;
        *e.shared().global_flags.borrow_mut() = Some(s.flags.clone());
        if callers_only {
            e.only_entity = Some(EntityType::CallingNumber);
        } else if s.callers.is_some() {
            e.skip_entity = Some(EntityType::CallingNumber);
        }
    }
    p
}

pub fn run(setup: WorkerSetup, rx: Receiver<Work>) {
    let interval = Duration::from_secs(setup.config.durability.snapshot_interval.0.max(1) as u64);
    let mut w = Worker {
        decoder: setup.config.decoder(),
        setup,
        partitions: AHashMap::new(),
        scratch: Vec::with_capacity(1024),
    };
    let mut next_tick = Instant::now();
    let mut next_snapshot = Instant::now() + interval;
    loop {
        if w.setup.abort.load(Ordering::Relaxed) {
            return;
        }
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Work::Records(batch)) => {
                for m in batch {
                    w.record(m);
                }
                // Heads waiting for the other topic are rechecked on every batch, not only when
                // their own partition gets a record: a quiet partition must not stall.
                w.drain_all(false);
            }
            Ok(Work::Reload(sources)) => w.reload(sources),
            Ok(Work::Assign {
                partition,
                state,
                resume,
            }) => w.assign(partition, state, resume),
            Ok(Work::Release { partitions, reply }) => {
                let done = w.release(&partitions);
                let _ = reply.send(done);
            }
            Ok(Work::Stop) | Err(RecvTimeoutError::Disconnected) => {
                w.drain_all(true);
                w.publish_view();
                let parts: Vec<i32> = w.partitions.keys().copied().collect();
                for p in parts {
                    w.snapshot(p, None, false);
                }
                return;
            }
            Err(RecvTimeoutError::Timeout) => w.drain_all(false),
        }
        if Instant::now() >= next_tick {
            w.tick();
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

/// The caller shard's loop: calling-number state and rules for every partition's MT calls.
pub fn run_callers(setup: WorkerSetup, rx: Receiver<CallerWork>, restored: Option<CallerState>) {
    let interval = Duration::from_secs(setup.config.durability.snapshot_interval.0.max(1) as u64);
    let mut w = Worker {
        decoder: setup.config.decoder(),
        setup,
        partitions: AHashMap::new(),
        scratch: Vec::with_capacity(1024),
    };
    let mut pipeline = new_pipeline(&w.setup, true);
    // Per usage partition, the last offset applied here.
    let mut applied: BTreeMap<i32, i64> = BTreeMap::new();
    if let Some(state) = restored {
        restore_into(&mut pipeline, state.store, state.memory);
        applied = state.applied;
    }
    let mut dirty = false;
    let mut next_view = Instant::now();
    let mut next_snapshot = Instant::now() + interval;
    loop {
        if w.setup.abort.load(Ordering::Relaxed) {
            return;
        }
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(CallerWork::Record {
                record,
                ticket,
                replayed,
                done,
            }) => {
                let (input, partition, offset) = ticket;
                if applied.get(&partition).is_some_and(|&a| offset <= a) {
                    // Already in the restored state.
                    w.setup
                        .metrics
                        .snapshots
                        .records_skipped
                        .fetch_add(1, Ordering::Relaxed);
                } else {
                    pipeline.process(Decoded {
                        source: "callers",
                        line: offset as u64,
                        raw: &[],
                        truncated: 0,
                        item: Ok(Item::Usage(*record)),
                    });
                    // Late and duplicate verdicts of copies are the partition's business, not dead
                    // letters.
                    let alerts = take_alerts(&mut pipeline);
                    if replayed {
                        w.setup
                            .metrics
                            .snapshots
                            .outputs_suppressed
                            .fetch_add(alerts.len() as u64, Ordering::Relaxed);
                    } else {
                        let t = Ticket {
                            input: Some(ticket),
                        };
                        send_alerts(&w.setup, &mut w.scratch, alerts, t);
                    }
                    applied.insert(partition, offset);
                    dirty = true;
                    if w.setup.snapshots.is_some() {
                        // Not committable until a snapshot of the shard holds this call.
                        w.setup.tracker.hold(input, partition, offset);
                    }
                }
                // Release the hold the partition worker put on the record's offset.
                w.setup.tracker.ack(input, partition, offset, true);
                let _ = done.send(());
            }
            Ok(CallerWork::Reload(sources)) => {
                let _ = pipeline.reload_rules(&sources);
            }
            Ok(CallerWork::Snapshot { done }) => {
                snapshot_callers(&w.setup, &pipeline, &applied, done);
                dirty = false;
                next_snapshot = Instant::now() + interval;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                if !w.setup.abort.load(Ordering::Relaxed) {
                    snapshot_callers(&w.setup, &pipeline, &applied, None);
                }
                break;
            }
        }
        if dirty && Instant::now() >= next_snapshot {
            snapshot_callers(&w.setup, &pipeline, &applied, None);
            dirty = false;
            next_snapshot = Instant::now() + interval;
        }
        if Instant::now() >= next_view {
            // The shard reports like a worker with one partition.
            w.partitions.clear();
            next_view = Instant::now() + Duration::from_secs(1);
            let mut view = WorkerView::default();
            add_to_view(&mut view, &pipeline);
            w.store_view(view);
        }
    }
}

/// Puts a restored store and alert memory into a fresh pipeline, keeping the pipeline's own
/// configuration, and re-flags its alerts process-wide (`alerted` in other partitions).
fn restore_into(
    pipeline: &mut Pipeline,
    store: WindowStore,
    memory: crate::alert::memory::AlertMemory,
) {
    let (cfg, callers_only) = {
        let s = pipeline.store.borrow();
        (s.config().clone(), s.callers_only)
    };
    let mut store = store.restored(cfg);
    store.callers_only = callers_only;
    *pipeline.store.borrow_mut() = store;
    if let Some(e) = &mut pipeline.rules {
        let shared = e.shared();
        if let Some(flags) = shared.global_flags.borrow().as_ref() {
            let mut flags = flags.lock().expect("flags lock");
            for (key, at) in memory.alerts() {
                let t = flags.entry(key).or_insert(at);
                *t = (*t).max(at);
            }
        }
        *shared.memory.borrow_mut() = memory;
    }
}

/// Encodes the caller shard's state and hands it to the writer.
fn snapshot_callers(
    setup: &WorkerSetup,
    pipeline: &Pipeline,
    applied: &BTreeMap<i32, i64>,
    done: Option<SyncSender<bool>>,
) {
    let Some(sink) = &setup.snapshots else {
        if let Some(d) = done {
            let _ = d.send(true);
        }
        return;
    };
    let started = Instant::now();
    let store = pipeline.store.borrow();
    let default_memory = crate::alert::memory::AlertMemory::default();
    let memory_ref = pipeline.rules.as_ref().map(|e| e.shared().memory.borrow());
    let memory = memory_ref.as_deref().unwrap_or(&default_memory);
    let flags: Vec<((u64, u64), i64)> = setup
        .flags
        .lock()
        .expect("flags lock")
        .iter()
        .map(|(k, v)| (*k, *v))
        .collect();
    let topic = &setup.config.kafka.usage_topic;
    let positions = applied
        .iter()
        .map(|(&p, &o)| Position {
            topic: topic.clone(),
            partition: p,
            next: o + 1,
        })
        .collect();
    let header = ckpt::header(SnapshotKind::Callers, positions, &store);
    let payload = ckpt::CallerStateRef {
        store: &store,
        memory,
        flags,
        applied,
    };
    match snapshot::encode(&header, &payload) {
        Ok(bytes) => {
            let job = Job {
                kind: SnapshotKind::Callers,
                bytes,
                covers: applied
                    .iter()
                    .map(|(&p, &o)| (Input::Usage, p, o))
                    .collect(),
                started,
                done,
            };
            let _ = sink.send(job);
        }
        Err(e) => {
            tracing::error!(error = %e, "Caller shard state not encodable; no snapshot.");
            if let Some(d) = done {
                let _ = d.send(false);
            }
        }
    }
}

fn take_alerts(pipeline: &mut Pipeline) -> Vec<Alert> {
    pipeline
        .rules
        .as_mut()
        .map(|e| e.take_alerts().collect())
        .unwrap_or_default()
}

/// Produces each alert to each of its departments' topics.
fn send_alerts(setup: &WorkerSetup, scratch: &mut Vec<u8>, alerts: Vec<Alert>, ticket: Ticket) {
    for alert in alerts {
        scratch.clear();
        if let Err(e) = serde_json::to_writer(&mut *scratch, &alert) {
            tracing::error!(error = %e, "Alert not serializable.");
            continue;
        }
        let severity = serde_json::to_value(alert.severity)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        for dept in &alert.departments {
            let topic = setup.config.kafka.alert_topics.of(*dept);
            let dept_name = serde_json::to_value(dept)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let h = headers(&[
                ("cdrguard.alert_id", &alert.alert_id),
                ("cdrguard.rule", &alert.rule.id),
                ("cdrguard.severity", &severity),
                ("cdrguard.ruleset_version", &alert.rule.ruleset_version),
                ("cdrguard.department", &dept_name),
            ]);
            match setup
                .producer
                .send(topic, alert.entity.key.as_bytes(), scratch, h, ticket)
            {
                Ok(()) => setup.metrics.count_alert(&alert.rule.id, &dept_name),
                Err(e) => {
                    tracing::error!(error = %e, topic, alert = %alert.alert_id, "Alert not sent; the offset stays uncommitted.")
                }
            }
        }
    }
}

struct Worker {
    setup: WorkerSetup,
    decoder: Decoder,
    partitions: AHashMap<i32, Partition>,
    scratch: Vec<u8>,
}

impl Worker {
    /// Starts a partition: restored from its snapshot, or kept (snapshots off, reassigned), or new.
    fn assign(&mut self, partition: i32, state: Option<Box<PartitionState>>, resume: Resume) {
        let covered = resume.apply_from;
        if let (None, Some(part)) = (&state, self.partitions.get_mut(&partition)) {
            // Snapshots off and the partition stayed here through an eager rebalance: keep its state.
            part.resume = resume;
            return;
        }
        let mut pipeline = new_pipeline(&self.setup, false);
        if let Some(state) = state {
            let state = *state;
            restore_into(&mut pipeline, state.store, state.memory);
        }
        tracing::debug!(
            worker = self.setup.index,
            partition,
            ?resume,
            "Partition started."
        );
        self.partitions.insert(
            partition,
            Partition {
                pipeline,
                last_record: Instant::now(),
                usage: VecDeque::new(),
                events: VecDeque::new(),
                resume,
                covered,
                dirty: false,
                snapshotted: false,
            },
        );
    }

    /// Processes what is queued for the partitions, then snapshots and drops them (snapshots on) or
    /// keeps them (off: they usually come straight back in an eager rebalance).
    fn release(&mut self, partitions: &[i32]) -> Vec<Receiver<bool>> {
        let mut done = Vec::new();
        for &p in partitions {
            self.drain(p, true);
            if self.setup.snapshots.is_some() {
                let (tx, rx) = sync_channel(1);
                self.snapshot(p, Some(tx), true);
                done.push(rx);
                self.partitions.remove(&p);
            }
        }
        done
    }

    /// Encodes a partition's state and hands it to the writer; `force` even if nothing changed.
    fn snapshot(&mut self, partition: i32, done: Option<SyncSender<bool>>, force: bool) {
        let reply = |done: Option<SyncSender<bool>>, ok: bool| {
            if let Some(d) = done {
                let _ = d.send(ok);
            }
        };
        let (Some(sink), Some(part)) = (&self.setup.snapshots, self.partitions.get_mut(&partition))
        else {
            return reply(done, self.setup.snapshots.is_none());
        };
        if !part.dirty && !force {
            return reply(done, true);
        }
        let started = Instant::now();
        let cfg = &self.setup.config.kafka;
        let mut positions = Vec::new();
        let mut covers = Vec::new();
        for (input, topic) in [
            (Input::Usage, &cfg.usage_topic),
            (Input::Events, &cfg.events_topic),
        ] {
            if let Some(next) = part.covered[index(input)] {
                positions.push(Position {
                    topic: topic.clone(),
                    partition,
                    next,
                });
                covers.push((input, partition, next - 1));
            }
        }
        let encoded = {
            let store = part.pipeline.store.borrow();
            let default_memory = crate::alert::memory::AlertMemory::default();
            let memory_ref = part
                .pipeline
                .rules
                .as_ref()
                .map(|e| e.shared().memory.borrow());
            let memory = memory_ref.as_deref().unwrap_or(&default_memory);
            let header = ckpt::header(SnapshotKind::Partition(partition), positions, &store);
            snapshot::encode(
                &header,
                &ckpt::PartitionStateRef {
                    store: &store,
                    memory,
                },
            )
        };
        match encoded {
            Ok(bytes) => {
                part.dirty = false;
                part.snapshotted = true;
                let job = Job {
                    kind: SnapshotKind::Partition(partition),
                    bytes,
                    covers,
                    started,
                    done,
                };
                let _ = sink.send(job);
            }
            Err(e) => {
                tracing::error!(partition, error = %e, "Partition state not encodable; no snapshot.");
                reply(done, false);
            }
        }
    }

    fn record(&mut self, m: InputMessage) {
        self.setup.board.transit(m.input, m.partition, -1);
        if !self.partitions.contains_key(&m.partition) {
            // Polled before a rebalance took the partition away: its next owner reads it again.
            tracing::debug!(
                partition = m.partition,
                offset = m.offset,
                "Record of a partition not held here dropped."
            );
            return;
        }
        let counter = match m.input {
            Input::Usage => &self.setup.metrics.usage_in,
            Input::Events => &self.setup.metrics.events_in,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let item = match m.input {
            Input::Usage => self.decoder.usage(&m.payload).map(Item::Usage),
            Input::Events => self.decoder.account_event(&m.payload).map(Item::Event),
        };
        let time = item.as_ref().map_or(i64::MIN, |i| i.time());
        let now = crate::telemetry::metrics::now_ms();
        let produced_ms = m.timestamp_ms.map_or(now, |t| t.min(now));
        let partition = m.partition;
        let input = m.input;
        let part = self.partitions.get_mut(&partition).expect("checked above");
        part.last_record = Instant::now();
        let pending = Pending {
            msg: m,
            item,
            time,
            arrived: Instant::now(),
            produced_ms,
        };
        match input {
            Input::Usage => part.usage.push_back(pending),
            Input::Events => part.events.push_back(pending),
        }
        self.drain(partition, false);
    }

    fn drain_all(&mut self, force: bool) {
        let parts: Vec<i32> = self.partitions.keys().copied().collect();
        for p in parts {
            self.drain(p, force);
        }
    }

    /// Processes the partition's queued records in event-time order, as far as it can tell.
    fn drain(&mut self, partition: i32, force: bool) {
        let max_wait = Duration::from_secs(self.setup.config.daemon.align_max_wait.0.max(0) as u64);
        let board = self.setup.board.clone();
        loop {
            let Some(part) = self.partitions.get_mut(&partition) else {
                return;
            };
            let next = match (part.usage.front(), part.events.front()) {
                (Some(u), Some(e)) => Some(if e.time <= u.time {
                    Input::Events
                } else {
                    Input::Usage
                }),
                (Some(u), None) => {
                    may_go_alone(&board, Input::Events, partition, u, max_wait, force)
                        .then_some(Input::Usage)
                }
                (None, Some(e)) => {
                    may_go_alone(&board, Input::Usage, partition, e, max_wait, force)
                        .then_some(Input::Events)
                }
                (None, None) => None,
            };
            let Some(which) = next else {
                return;
            };
            let pending = match which {
                Input::Usage => part.usage.pop_front(),
                Input::Events => part.events.pop_front(),
            }
            .expect("head checked");
            self.process(pending);
        }
    }

    fn process(&mut self, p: Pending) {
        let m = p.msg;
        let source = match m.input {
            Input::Usage => self.setup.config.kafka.usage_topic.clone(),
            Input::Events => self.setup.config.kafka.events_topic.clone(),
        };
        let ticket = Ticket {
            input: Some((m.input, m.partition, m.offset)),
        };
        // An MT call that gives its caller state goes to the caller shard too.
        let for_callers = match (&p.item, &self.setup.callers) {
            (Ok(Item::Usage(r)), Some(_)) => self.tracks_caller(r).then(|| Box::new(r.clone())),
            _ => None,
        };
        let snapshots = &self.setup.metrics.snapshots;
        let part = self.partitions.get_mut(&m.partition).expect("queued here");
        let emit = part.resume.emits(m.input, m.offset);
        let k = index(m.input);
        let accepted = if part.resume.applies(m.input, m.offset) {
            let verdict = part.pipeline.process(Decoded {
                source: &source,
                line: m.offset as u64,
                raw: &m.payload,
                truncated: 0,
                item: p.item,
            });
            part.covered[k] = Some(m.offset + 1);
            part.dirty = true;
            let accepted = matches!(verdict, Verdict::Applied);
            let alerts = take_alerts(&mut part.pipeline);
            if emit {
                if let Verdict::Reject(reject) = verdict {
                    self.dead_letter(&m, &source, &reject, ticket);
                }
                send_alerts(&self.setup, &mut self.scratch, alerts, ticket);
            } else {
                // Re-read after a rebuild: delivered before the crash, not sent again.
                let dead = matches!(verdict, Verdict::Reject(_)) as u64;
                snapshots
                    .outputs_suppressed
                    .fetch_add(alerts.len() as u64 + dead, Ordering::Relaxed);
            }
            accepted
        } else {
            // Already in the restored snapshot; the caller shard decides for itself.
            snapshots.records_skipped.fetch_add(1, Ordering::Relaxed);
            true
        };
        if let (Some(record), Some(callers), true) = (for_callers, &self.setup.callers, accepted) {
            // Hold the offset until the shard has handed its alerts to the producer.
            self.setup.tracker.add(m.input, m.partition, m.offset);
            let (done, wait) = sync_channel(1);
            let sent = callers.send(CallerWork::Record {
                record,
                ticket: (m.input, m.partition, m.offset),
                replayed: !emit,
                done,
            });
            if sent.is_err() || wait.recv().is_err() {
                tracing::error!("The caller shard stopped; the offset stays uncommitted.");
            }
        }
        self.setup.tracker.processed(m.input, m.partition, m.offset);
    }

    /// Whether the store would give this record's caller state (MT voice, and international unless
    /// `state.calling_numbers = "all"`).
    fn tracks_caller(&self, r: &UsageRecord) -> bool {
        let mt_voice = r.record_type == RecordType::Voice && r.direction == Some(Direction::Mt);
        let Some(caller) = r.other_party.number else {
            return false;
        };
        mt_voice
            && match self.setup.config.state.calling_numbers {
                CallingNumbers::Off => false,
                CallingNumbers::All => true,
                CallingNumbers::International => {
                    self.setup
                        .classifier
                        .classify(r)
                        .has(crate::classify::INTERNATIONAL)
                        || self.setup.classifier.is_international(caller)
                }
            }
    }

    fn dead_letter(&mut self, m: &InputMessage, source: &str, reject: &Reject, ticket: Ticket) {
        let reason = reject.reason.as_str();
        self.setup.metrics.count_reject(reason);
        let (partition, offset) = (m.partition.to_string(), m.offset.to_string());
        let h = headers(&[
            ("cdrguard.reason", reason),
            ("cdrguard.field", reject.field.as_deref().unwrap_or("")),
            ("cdrguard.detail", &reject.detail),
            ("cdrguard.source.topic", source),
            ("cdrguard.source.partition", &partition),
            ("cdrguard.source.offset", &offset),
        ]);
        let key = m.key.as_deref().unwrap_or(&[]);
        match self.setup.producer.send(
            &self.setup.config.kafka.dead_letter_topic,
            key,
            &m.payload,
            h,
            ticket,
        ) {
            Ok(()) => {
                self.setup
                    .metrics
                    .dead_letters
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(error = %e, source, offset = m.offset, "Dead letter not sent; the offset stays uncommitted.")
            }
        }
    }

    fn reload(&mut self, sources: Arc<RuleSources>) {
        for part in self.partitions.values_mut() {
            // A failure is logged by the engine; the set stays as it was.
            let _ = part.pipeline.reload_rules(&sources);
        }
        self.setup.sources = sources;
    }

    fn tick(&mut self) {
        let idle = self.setup.config.daemon.idle_watermark_after.0;
        if idle > 0 {
            let now = crate::telemetry::metrics::now_ms() / 1000;
            let quiet: Vec<i32> = self
                .partitions
                .iter()
                .filter(|(_, p)| {
                    p.usage.is_empty()
                        && p.events.is_empty()
                        && p.last_record.elapsed() >= Duration::from_secs(idle as u64)
                })
                .map(|(&k, _)| k)
                .collect();
            for partition in quiet {
                let Some(part) = self.partitions.get_mut(&partition) else {
                    continue;
                };
                part.pipeline.advance_idle(now);
                let alerts = take_alerts(&mut part.pipeline);
                send_alerts(
                    &self.setup,
                    &mut self.scratch,
                    alerts,
                    Ticket { input: None },
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
        for part in self.partitions.values() {
            add_to_view(&mut view, &part.pipeline);
        }
        self.store_view(view);
    }

    fn store_view(&self, view: WorkerView) {
        let mut workers = self.setup.metrics.workers.lock().expect("metrics lock");
        if workers.len() <= self.setup.index {
            workers.resize(self.setup.index + 1, WorkerView::default());
        }
        workers[self.setup.index] = view;
    }
}

/// Adds a pipeline's state size and rule statistics to a worker's metrics view.
fn add_to_view(view: &mut WorkerView, pipeline: &Pipeline) {
    let size = pipeline.store.borrow().size();
    view.entities += (size.subscribers + size.accounts + size.calling_numbers + size.imeis) as u64;
    view.state_bytes += size.estimated_bytes as u64;
    view.timers_pending += size.timers_pending as u64;
    let Some(engine) = &pipeline.rules else {
        return;
    };
    view.ruleset_version = engine.version().to_string();
    // Every pipeline reloads the same library: a reload counts once, not once per partition.
    view.reloads_ok = view.reloads_ok.max(engine.counters.reloads_ok);
    view.reloads_failed = view.reloads_failed.max(engine.counters.reloads_failed);
    for s in engine.stats() {
        match view.rules.get_mut(&s.id) {
            Some(r) => {
                let _ = r.latency.add(&s.latency);
                r.evaluations += s.evaluations;
                r.errors += s.errors;
                r.quarantined |= s.quarantined;
            }
            None => {
                view.rules.insert(
                    s.id.clone(),
                    RuleView {
                        evaluations: s.evaluations,
                        errors: s.errors,
                        quarantined: s.quarantined,
                        latency: s.latency.clone(),
                    },
                );
            }
        }
    }
}

/// Whether a queue head may be processed while the other input's queue is empty: when nothing
/// of the other input is on its way (messages polled but not queued yet: always wait for them),
/// and nothing is unread on the broker (or the head has waited `max_wait`, for a slow topic).
fn may_go_alone(
    board: &LagBoard,
    other: Input,
    partition: i32,
    head: &Pending,
    max_wait: Duration,
    force: bool,
) -> bool {
    if force || head.time == i64::MIN {
        return true;
    }
    if board.in_transit(other, partition) > 0 {
        return false;
    }
    // "Nothing unread" counts only from statistics taken after the head was produced (plus the few
    // ms a record takes to reach the broker and a fetch response to report it): older ones cannot
    // know of an earlier record of the other topic produced just before it.
    const IN_FLIGHT_MS: i64 = 10;
    let fresh = board.updated_ms() >= head.produced_ms + IN_FLIGHT_MS;
    (fresh && board.lag(other, partition) == Some(0)) || head.arrived.elapsed() >= max_wait
}
