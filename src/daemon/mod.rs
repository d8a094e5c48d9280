//! The daemon (`cdrguard run`): Kafka in, the same pipeline as `replay`, Kafka out, at least once.
//!
//! ```text
//!  usage / events topics ─► consumer thread ─► worker p % N (pipelines of its partitions)
//!        ▲  store_offset (only behind acks)        │ alerts ─► department topics ─┐
//!        └──── offset tracker ◄──── acks ◄──── producer ◄── dead letters ◄────────┘
//!  rule watcher (files, SIGHUP) ─► validate once ─► every worker swaps its rule sets
//!  metrics thread: /metrics, /health        status line every `daemon.status_interval`
//!  workers ─► snapshot writer ─► durability.dir ─► (caps the commits; read back at assignment)
//! ```
//!
//! Threads, not async tasks: the Rhai engine is not `Send`, so each worker builds and keeps its own
//! engines, and a blocking poll loop is all the consumer needs. Partitions are the unit of
//! parallelism: a partition's state lives in exactly one worker.

pub mod rebalance;
pub mod worker;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::Message;

use crate::config::Config;
use crate::rules::watch::RuleWatcher;
use crate::rules::{RuleSet, RuleSources, Shared};
use crate::sink::kafka::OutputProducer;
use crate::source::kafka::{self as kafka_in, ConsumerCtx, InputMessage};

use crate::sink::ack::{Input, Tracker};
use crate::telemetry::metrics::{self, Metrics};
use worker::{Work, WorkerSetup};

/// How a run is controlled from outside (signals, tests).
#[derive(Clone, Default)]
pub struct Control {
    /// Graceful stop: stop consuming, drain, deliver, commit.
    pub stop: Arc<AtomicBool>,
    /// Crash-like stop for tests: stop at once, no flush, no final commit.
    pub abort: Arc<AtomicBool>,
}

pub struct RunOptions {
    pub rules_dir: PathBuf,
    /// Watch the rule library for changes (and SIGHUP when `sighup`).
    pub watch_rules: bool,
    pub sighup: bool,
    /// Log a status line every `daemon.status_interval`.
    pub status: bool,
    pub control: Control,
    /// Where state snapshots live; `None`: no snapshots (state is lost on restart).
    pub state_dir: Option<PathBuf>,
}

/// What a run did, when it ends.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub records: u64,
    pub alerts: u64,
    pub dead_letters: u64,
    pub in_flight_at_exit: u64,
}

/// Validates the rule library the way a worker will load it, naming every problem.
pub fn validate_rules(cfg: &Config, sources: &RuleSources) -> anyhow::Result<RuleSet> {
    let store = std::rc::Rc::new(std::cell::RefCell::new(crate::state::WindowStore::new(
        cfg.state.clone(),
    )));
    RuleSet::build(
        sources,
        &cfg.rules.sandbox,
        &Shared::new(store, Default::default()),
    )
    .map_err(anyhow::Error::new)
}

pub fn run(
    cfg: Config,
    base: &std::path::Path,
    brokers: &str,
    opts: RunOptions,
) -> anyhow::Result<RunSummary> {
    let cfg = Arc::new(cfg);
    let sources = Arc::new(RuleSources::read(&opts.rules_dir)?);
    let set = validate_rules(&cfg, &sources)?;
    for w in &set.warnings {
        tracing::warn!("{w}");
    }
    tracing::info!(
        dir = %opts.rules_dir.display(),
        rules = set.rules.len(),
        version = %sources.version,
        "Rules loaded."
    );
    drop(set);
    let classifier = cfg.classifier(base).context("loading reference data")?;
    let metrics = Arc::new(Metrics::default());
    metrics
        .last_poll_ms
        .store(metrics::now_ms(), Ordering::Relaxed);
    let dir = match &opts.state_dir {
        Some(d) => Some(Arc::new(crate::durability::checkpoint::StateDir::open(d)?)),
        None => {
            tracing::warn!("No durability.dir: state is not snapshotted and is lost on restart.");
            None
        }
    };
    let tracker = Arc::new(if dir.is_some() {
        Tracker::durable()
    } else {
        Tracker::default()
    });
    let callers_on = cfg.state.calling_numbers != crate::config::CallingNumbers::Off;
    let (callers_restored, callers_rebuild) = match (&dir, callers_on) {
        (Some(dir), true) => load_callers(dir),
        _ => (None, false),
    };
    let (snapshot_tx, writer) = match &dir {
        Some(dir) => {
            let (tx, rx) = sync_channel(64);
            let handle = crate::durability::checkpoint::spawn_writer(
                dir.clone(),
                tracker.clone(),
                metrics.clone(),
                Duration::from_secs(cfg.durability.delivery_timeout.0.max(1) as u64),
                opts.control.abort.clone(),
                rx,
            )?;
            (Some(tx), Some(handle))
        }
        None => (None, None),
    };
    let producer = Arc::new(
        OutputProducer::new(
            brokers,
            &cfg.kafka.options,
            tracker.clone(),
            metrics.clone(),
        )
        .context("creating the Kafka producer")?,
    );
    let board = Arc::new(kafka_in::LagBoard::default());
    let consumer = kafka_in::consumer(&cfg.kafka, brokers, metrics.clone(), board.clone())
        .context("creating the consumer")?;

    let stop_metrics = Arc::new(AtomicBool::new(false));
    let metrics_thread = if cfg.daemon.metrics_address.is_empty() {
        None
    } else {
        Some(
            metrics::serve(
                &cfg.daemon.metrics_address,
                metrics.clone(),
                stop_metrics.clone(),
            )
            .with_context(|| format!("binding {}", cfg.daemon.metrics_address))?,
        )
    };

    let mut senders: Vec<SyncSender<Work>> = Vec::new();
    let mut threads = Vec::new();
    let mut setup = WorkerSetup {
        index: cfg.daemon.workers,
        config: cfg.clone(),
        classifier: classifier.clone(),
        sources: sources.clone(),
        producer: producer.clone(),
        tracker: tracker.clone(),
        metrics: metrics.clone(),
        board: board.clone(),
        flags: Default::default(),
        callers: None,
        mode: crate::record::Mode::Live,
        abort: opts.control.abort.clone(),
        snapshots: snapshot_tx,
    };
    // The caller shard: calling numbers ring subscribers of every partition.
    let mut callers = None;
    if callers_on {
        if let Some(state) = &callers_restored {
            let mut flags = setup.flags.lock().expect("flags lock");
            flags.extend(state.flags.iter().copied());
        }
        let (tx, rx) = sync_channel(1024);
        let shard = setup.clone();
        callers = Some((
            tx.clone(),
            std::thread::Builder::new()
                .name("caller-shard".into())
                .spawn(move || worker::run_callers(shard, rx, callers_restored))?,
        ));
        setup.callers = Some(tx);
    }
    for index in 0..cfg.daemon.workers {
        let (tx, rx) = sync_channel(64);
        let setup = WorkerSetup {
            index,
            ..setup.clone()
        };
        senders.push(tx);
        threads.push(
            std::thread::Builder::new()
                .name(format!("worker-{index}"))
                .spawn(move || worker::run(setup, rx))?,
        );
    }
    let rebalancer = Arc::new(rebalance::Rebalancer {
        cfg: cfg.clone(),
        dir: dir.clone(),
        tracker: tracker.clone(),
        metrics: metrics.clone(),
        board: board.clone(),
        workers: std::sync::Mutex::new(senders.clone()),
        callers: std::sync::Mutex::new(callers.as_ref().map(|c| c.0.clone())),
        callers_rebuild: AtomicBool::new(callers_rebuild),
        stopped: AtomicBool::new(false),
    });
    drop(dir);
    if consumer.context().hook.set(rebalancer.clone()).is_err() {
        unreachable!("the hook is set once");
    }
    consumer
        .subscribe(&[&cfg.kafka.usage_topic, &cfg.kafka.events_topic])
        .context("subscribing")?;
    tracing::info!(
        brokers,
        group = %cfg.kafka.group_id,
        usage = %cfg.kafka.usage_topic,
        events = %cfg.kafka.events_topic,
        workers = cfg.daemon.workers,
        "Consuming."
    );
    let watcher = if opts.watch_rules {
        Some(RuleWatcher::spawn(
            opts.rules_dir.clone(),
            sources.version.clone(),
            Duration::from_secs(cfg.rules.watch_interval.0.max(1) as u64),
            opts.sighup,
        )?)
    } else {
        None
    };

    let mut status = Status::new(&cfg, opts.status);
    let mut batches: Vec<Vec<InputMessage>> = (0..senders.len()).map(|_| Vec::new()).collect();
    let mut next_store = Instant::now();
    let control = opts.control.clone();
    while !control.stop.load(Ordering::Relaxed) && !control.abort.load(Ordering::Relaxed) {
        // Batches per worker: one channel send (and one wake-up) per up to 256 messages, not per
        // message. A batch is cut when the poll comes back empty, so a quiet stream waits for nothing.
        let mut timeout = Duration::from_millis(100);
        let mut polled = 0;
        while polled < 256 * batches.len() {
            let generation = consumer.context().generation.load(Ordering::SeqCst);
            let polled_msg = consumer.poll(timeout);
            if consumer.context().generation.load(Ordering::SeqCst) != generation {
                // A rebalance ran inside that poll: what was polled before it may belong to
                // partitions given away (their next owner reads them from the committed offset).
                for b in &mut batches {
                    for m in b.drain(..) {
                        board.transit(m.input, m.partition, -1);
                    }
                }
            }
            let Some(m) = polled_msg else {
                break;
            };
            timeout = Duration::ZERO;
            polled += 1;
            match m {
                Ok(m) => {
                    let input = if m.topic() == cfg.kafka.usage_topic {
                        Input::Usage
                    } else {
                        Input::Events
                    };
                    let msg = InputMessage {
                        input,
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().unwrap_or_default().to_vec(),
                        timestamp_ms: m.timestamp().to_millis(),
                    };
                    let w = (m.partition().unsigned_abs() as usize) % senders.len();
                    board.transit(input, m.partition(), 1);
                    batches[w].push(msg);
                }
                Err(e) => {
                    metrics.kafka_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "Consume error; retrying.");
                }
            }
        }
        for (w, batch) in batches.iter_mut().enumerate() {
            if !batch.is_empty()
                && senders[w]
                    .send(Work::Records(std::mem::take(batch)))
                    .is_err()
            {
                anyhow::bail!("worker {w} stopped unexpectedly");
            }
        }
        metrics
            .last_poll_ms
            .store(metrics::now_ms(), Ordering::Relaxed);
        if Instant::now() >= next_store {
            store_offsets(&consumer, &cfg, &tracker);
            next_store = Instant::now() + Duration::from_millis(100);
        }
        if let Some((cause, read)) = watcher.as_ref().and_then(RuleWatcher::poll) {
            if !reload(&cfg, cause, read, &senders, callers.as_ref().map(|c| &c.0)) {
                metrics.reloads_refused.fetch_add(1, Ordering::Relaxed);
            }
        }
        status.maybe_log(&cfg, &metrics, &tracker, &board);
    }

    stop_metrics.store(true, Ordering::Relaxed);
    let aborted = control.abort.load(Ordering::Relaxed);
    let deadline =
        Instant::now() + Duration::from_secs(cfg.daemon.shutdown_timeout.0.max(1) as u64);
    if aborted {
        // Like a crash: queued records are dropped unprocessed, nothing is flushed. Only offsets
        // already stored — whose output was acknowledged — can be committed as the consumer closes,
        // as auto-commit would have done before a real crash.
        tracing::warn!("Aborted: no drain, no flush.");
    } else {
        tracing::info!("Stopping: draining workers and in-flight alerts.");
        for s in &senders {
            let _ = s.send(Work::Stop);
        }
    }
    drop(senders);
    // The close-time revoke finds nothing to hand over, and the workers see their channels close.
    rebalancer.shutdown();
    drop(rebalancer);
    for t in threads {
        let _ = t.join();
    }
    // The workers held the other senders to the caller shard.
    drop(setup);
    if let Some((tx, t)) = callers {
        drop(tx);
        let _ = t.join();
    }
    // Every snapshot the workers queued becomes durable (or fails) before the last commit.
    if let Some(w) = writer {
        let _ = w.join();
    }
    if let Some(t) = metrics_thread {
        let _ = t.join();
    }
    if aborted {
        return Ok(RunSummary {
            in_flight_at_exit: tracker.in_flight(),
            ..Default::default()
        });
    }
    // However long the drain took, in-flight alerts get a moment: their acks may be milliseconds away.
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    if let Err(e) = producer.flush(left) {
        tracing::error!(error = %e, in_flight = producer.in_flight(), "Not every alert was acknowledged before the shutdown timeout; their records will be redelivered.");
    }
    store_offsets(&consumer, &cfg, &tracker);
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        // Nothing stored since the last auto-commit is not an error worth more than a note.
        tracing::debug!(error = %e, "Final commit.");
    }
    let summary = RunSummary {
        records: metrics.usage_in.load(Ordering::Relaxed)
            + metrics.events_in.load(Ordering::Relaxed),
        alerts: metrics.alerts_total(),
        dead_letters: metrics.dead_letters.load(Ordering::Relaxed),
        in_flight_at_exit: tracker.in_flight(),
    };
    tracing::info!(
        records = summary.records,
        alerts = summary.alerts,
        dead_letters = summary.dead_letters,
        "Stopped."
    );
    Ok(summary)
}

/// Reads the caller shard's snapshot; the flag says whether its state must be rebuilt (none usable).
fn load_callers(
    dir: &crate::durability::checkpoint::StateDir,
) -> (Option<crate::durability::checkpoint::CallerState>, bool) {
    use crate::durability::snapshot::{Loaded, SnapshotError};
    let path = dir.callers();
    let read = Loaded::read(&path).and_then(|l| {
        if l.header.kind != crate::durability::snapshot::SnapshotKind::Callers {
            return Err(SnapshotError::Incompatible {
                path: path.clone(),
                why: format!("holds {:?}", l.header.kind),
            });
        }
        l.payload::<crate::durability::checkpoint::CallerState>()
    });
    match read {
        Ok(state) => {
            tracing::info!(
                calling_numbers = state.store.size().calling_numbers,
                partitions = state.applied.len(),
                "Caller shard state restored from its snapshot."
            );
            (Some(state), false)
        }
        Err(SnapshotError::Missing(_)) => (None, true),
        Err(e) => {
            tracing::error!(error = %e, "No usable caller shard snapshot: its state is rebuilt by re-reading the rebuild window of every usage partition.");
            if !matches!(e, SnapshotError::Io { .. }) {
                dir.set_aside(&path);
            }
            (None, true)
        }
    }
}

/// Stores the offsets the tracker has cleared. `store_offset(o)` makes the next commit `o + 1`: the
/// next record to read.
pub(crate) fn store_offsets(consumer: &BaseConsumer<ConsumerCtx>, cfg: &Config, tracker: &Tracker) {
    for (input, partition, offset) in tracker.committable() {
        let topic = match input {
            Input::Usage => &cfg.kafka.usage_topic,
            Input::Events => &cfg.kafka.events_topic,
        };
        match consumer.store_offset(topic, partition, offset) {
            Ok(()) => tracker.stored(input, partition, offset),
            // A partition moving in a rebalance: retried while it is ours; otherwise its next owner
            // re-reads from the last commit.
            Err(e) => tracing::debug!(error = %e, topic, partition, offset, "Offset not stored."),
        }
    }
}

fn reload(
    cfg: &Config,
    cause: crate::rules::watch::ReloadCause,
    read: Result<RuleSources, crate::rules::library::LibraryError>,
    senders: &[SyncSender<Work>],
    callers: Option<&SyncSender<worker::CallerWork>>,
) -> bool {
    let sources = match read {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "Rule library unreadable; the previous rules stay active.");
            return false;
        }
    };
    match validate_rules(cfg, &sources) {
        Ok(set) => {
            tracing::info!(?cause, version = %sources.version, rules = set.rules.len(), "Rule library changed; reloading in every worker.");
            let sources = Arc::new(sources);
            for s in senders {
                let _ = s.send(Work::Reload(sources.clone()));
            }
            if let Some(c) = callers {
                let _ = c.send(worker::CallerWork::Reload(sources.clone()));
            }
            true
        }
        Err(e) => {
            tracing::error!(
                ?cause,
                "Rule reload refused; the previous rules stay active. {e:#}"
            );
            false
        }
    }
}

/// The periodic status line: throughput, alerts by department, lag, in flight.
struct Status {
    enabled: bool,
    every: Duration,
    next: Instant,
    last_records: u64,
    last_at: Instant,
}

impl Status {
    fn new(cfg: &Config, enabled: bool) -> Self {
        let every = Duration::from_secs(cfg.daemon.status_interval.0.max(1) as u64);
        Status {
            enabled,
            every,
            next: Instant::now() + every,
            last_records: 0,
            last_at: Instant::now(),
        }
    }

    fn maybe_log(
        &mut self,
        cfg: &Config,
        metrics: &Metrics,
        tracker: &Tracker,
        board: &kafka_in::LagBoard,
    ) {
        if Instant::now() < self.next {
            return;
        }
        self.next = Instant::now() + self.every;
        update_lag(cfg, metrics, board);
        if !self.enabled {
            return;
        }
        let records =
            metrics.usage_in.load(Ordering::Relaxed) + metrics.events_in.load(Ordering::Relaxed);
        let rate = (records - self.last_records) as f64 / self.last_at.elapsed().as_secs_f64();
        self.last_records = records;
        self.last_at = Instant::now();
        let by_dept: Vec<String> = metrics
            .alerts_by_department()
            .iter()
            .map(|(d, n)| format!("{d} {n}"))
            .collect();
        let version = metrics
            .workers
            .lock()
            .expect("metrics lock")
            .iter()
            .map(|w| w.ruleset_version.clone())
            .find(|v| !v.is_empty())
            .unwrap_or_default();
        tracing::info!(
            "status: {:.0} records/s, {} records, {} alerts ({}), {} dead letters, lag {}, in flight {}, rules {}",
            rate,
            records,
            metrics.alerts_total(),
            if by_dept.is_empty() { "none yet".into() } else { by_dept.join(", ") },
            metrics.dead_letters.load(Ordering::Relaxed),
            metrics.lag_total(),
            tracker.in_flight(),
            version
        );
    }
}

/// Consumer lag per partition (unread messages on the broker), from librdkafka's statistics.
fn update_lag(cfg: &Config, metrics: &Metrics, board: &kafka_in::LagBoard) {
    let lag = board
        .snapshot()
        .into_iter()
        .map(|((input, p), n)| {
            let topic = match input {
                Input::Usage => cfg.kafka.usage_topic.clone(),
                Input::Events => cfg.kafka.events_topic.clone(),
            };
            ((topic, p), n)
        })
        .collect();
    *metrics.lag.lock().expect("metrics lock") = lag;
}
