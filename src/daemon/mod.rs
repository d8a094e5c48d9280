//! The daemon (`cdrguard run`): Kafka in, the same pipeline as `replay`, sinks out, at least once.
//!
//! ```text
//!  usage / events / calls topics ─► poll (one thread) ─► worker p % N: pipelines of its
//!        ▲                  + end offsets         partitions, each merging its usage and events in
//!        │                                        event time; its calls lane apart
//!        │                                          │ MT calls, callbacks, markers ─► calls
//!        │                                          │   repartition topic ─► sequencer ─► calls topic
//!        │                                          ▼ alerts, dead letters
//!        │                                        sinks: Kafka department topics, webhooks
//!        └── store_offset ◄── ack tracker ◄── acknowledgements ◄─┘
//!  rule watcher (files, SIGHUP) ─► validate once ─► every worker swaps its rule sets
//!  workers ─► snapshot writer ─► checkpoint store ─► (caps the commits; read back at assignment)
//!  metrics: /metrics, /health          status line every `daemon.status_interval`
//! ```
//!
//! Threads, not async tasks: the Rhai engine is not `Send`, so each worker builds and keeps its own
//! engines, and a blocking poll loop is all the consumer needs. Partitions are the unit of
//! parallelism: a partition's state lives in exactly one worker.
//!
//! Rooms: `poll` (the consumer loop and end offsets), `worker` (partition lifecycle and processing),
//! `rebalance` (state handover at assignment changes), `status` (the status line); the calls topic
//! is `repartition::calls`.

pub mod feedback;
pub mod poll;
pub mod rebalance;
pub mod status;
pub mod worker;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, sync_channel, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{CommitMode, Consumer};

use crate::config::{CallingNumbers, Config};
use crate::durability::checkpoint;
use crate::durability::layout::Checkpoints;
use crate::durability::store::Store;
use crate::record::Input;
use crate::repartition::Stages;
use crate::rules::{Library, Reloader};
use crate::sink::kafka::KafkaOutput;
use crate::sink::webhook::WebhookOutput;
use crate::sink::{Output, Tracker};
use crate::source::kafka as kafka_in;
use crate::telemetry::metrics::Metrics;

use poll::{Assignment, Poller, QueuedBytes};
use status::Status;
use worker::{WorkerContext, WorkerMessage};

/// How a run is controlled from outside (signals, tests).
#[derive(Clone, Default)]
pub struct Control {
    /// Graceful stop: stop consuming, deliver, commit.
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
    /// Times fetching of a partition was paused (read-ahead bound).
    pub fetch_pauses: u64,
    /// Offsets skipped because their records were gone from the broker (`record::gap`).
    pub records_skipped: u64,
    /// Records not keyed by their account (`cdrguard_input_miskeyed_total`).
    pub miskeyed: u64,
    /// Partitions started, by how their state started (`cdrguard_partition_restores_total`).
    pub restores: std::collections::BTreeMap<String, u64>,
}

pub fn run(
    cfg: Config,
    base: &std::path::Path,
    brokers: &str,
    opts: RunOptions,
) -> anyhow::Result<RunSummary> {
    // Input keyed other than by account goes through the repartition stages; the workers read
    // their by-account topics.
    let source_cfg = cfg;
    let cfg = Arc::new(crate::repartition::worker_view(&source_cfg));
    let library = Library::load(&opts.rules_dir, &cfg)?;
    let candidate =
        match &cfg.rules.shadow_dir {
            Some(d) => Some(Library::load(&base.join(d), &cfg).with_context(|| {
                format!("the candidate library rules.shadow_dir {}", d.display())
            })?),
            None => None,
        };
    let classifier = cfg.classifier(base).context("loading reference data")?;
    let metrics = Arc::new(Metrics::new(Input::LANES.map(|i| cfg.kafka.topic(i))));
    let d = &cfg.durability;
    let store = if !d.store.is_empty() {
        Some(Store::open(
            &d.store,
            std::path::Path::new(""),
            &d.store_options,
        )?)
    } else {
        opts.state_dir.as_deref().map(Store::dir)
    };
    let dir = match store {
        Some(store) => {
            tracing::info!(store = store.describe(), "Checkpoints.");
            Some(Arc::new(Checkpoints::open(store, &d.instance)?))
        }
        None => {
            tracing::warn!(
                "No durability.dir or durability.store: state is not snapshotted and is lost on restart."
            );
            None
        }
    };
    let with_calls = cfg.state.calling_numbers != CallingNumbers::Off;
    let tracker = Arc::new(if dir.is_some() {
        Tracker::durable()
    } else {
        Tracker::default()
    });
    let (snapshot_tx, writer) = match &dir {
        Some(dir) => {
            let (tx, rx) = sync_channel(64);
            let handle = checkpoint::spawn_writer(
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

    // Sinks: the Kafka topics always, webhooks where configured.
    let kafka_out = Arc::new(
        KafkaOutput::new(brokers, &cfg.kafka, base, tracker.clone(), metrics.clone())
            .context("creating the Kafka producer")?,
    );
    let webhook =
        WebhookOutput::start(&cfg.webhook, tracker.clone(), metrics.clone())?.map(Arc::new);
    let mut outputs: Vec<Arc<dyn Output + Send + Sync>> = vec![kafka_out.clone()];
    if let Some(w) = &webhook {
        outputs.push(w.clone());
    }

    let stages = crate::repartition::start(
        &source_cfg,
        brokers,
        base,
        metrics.clone(),
        opts.control.stop.clone(),
    )
    .context("starting the repartition stages")?;
    let (calls_out, calls_stage) = match with_calls {
        true => {
            let (out, stage) = crate::repartition::start_calls(
                &cfg,
                brokers,
                base,
                metrics.clone(),
                tracker.clone(),
                opts.control.stop.clone(),
            )
            .context("starting the calls topic")?;
            (Some(Arc::new(out)), Some(stage))
        }
        false => (None, None),
    };
    let consumer = kafka_in::consumer(&cfg.kafka, brokers, base, metrics.clone())
        .context("creating the consumer")?;
    let stop_metrics = Arc::new(AtomicBool::new(false));
    let metrics_thread = if cfg.daemon.metrics_address.is_empty() {
        None
    } else {
        Some(
            crate::telemetry::http::serve(
                &cfg.daemon.metrics_address,
                metrics.clone(),
                stop_metrics.clone(),
            )
            .with_context(|| format!("binding {}", cfg.daemon.metrics_address))?,
        )
    };

    let queued = Arc::new(QueuedBytes::new(metrics.clone()));
    let assignment = Arc::new(Assignment::default());
    let desk = Arc::new(feedback::Desk::new(
        &cfg.kafka.feedback_topic,
        assignment.clone(),
    ));
    let feedback_reader = feedback::Reader::open(&cfg, brokers, base, desk.clone())?;
    let ctx = WorkerContext {
        index: cfg.daemon.workers,
        config: cfg.clone(),
        classifier,
        sources: library.sources.clone(),
        candidate: candidate.as_ref().map(|c| c.sources.clone()),
        outputs,
        tracker: tracker.clone(),
        metrics: metrics.clone(),
        calls: calls_out.clone(),
        queued: queued.clone(),
        abort: opts.control.abort.clone(),
        snapshots: snapshot_tx,
        miskeyed_log: Default::default(),
        feedback: feedback_reader.is_some().then_some(desk),
    };
    let mut senders: Vec<Sender<WorkerMessage>> = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..cfg.daemon.workers {
        let (tx, rx) = channel();
        senders.push(tx);
        receivers.push(rx);
    }
    let mut threads = Vec::new();
    for (index, rx) in receivers.into_iter().enumerate() {
        let ctx = WorkerContext {
            index,
            ..ctx.clone()
        };
        threads.push(
            std::thread::Builder::new()
                .name(format!("worker-{index}"))
                .spawn(move || worker::run(ctx, rx))?,
        );
    }
    let rebalancer = Arc::new(rebalance::Rebalancer {
        cfg: cfg.clone(),
        dir: dir.clone(),
        tracker: tracker.clone(),
        metrics: metrics.clone(),
        assignment: assignment.clone(),
        workers: std::sync::Mutex::new(senders.clone()),
        stopped: AtomicBool::new(false),
    });
    drop(dir);
    if consumer.context().hook.set(rebalancer.clone()).is_err() {
        unreachable!("the hook is set once");
    }
    // A partition's calls topic is co-partitioned with its inputs: the range assignor
    // (`source::kafka`) hands partition p of each topic to the same member.
    let mut topics = vec![
        cfg.kafka.topic(Input::Usage),
        cfg.kafka.topic(Input::Events),
    ];
    if with_calls {
        topics.push(cfg.kafka.topic(Input::Calls));
    }
    consumer.subscribe(&topics).context("subscribing")?;
    tracing::info!(
        brokers,
        security = %crate::client::describe(&cfg.kafka),
        group = %cfg.kafka.group_id,
        usage = %cfg.kafka.topic(Input::Usage),
        events = %cfg.kafka.topic(Input::Events),
        workers = cfg.daemon.workers,
        "Consuming."
    );
    let reloader = match opts.watch_rules {
        true => Some(Reloader::spawn(&library, &cfg, opts.sighup)?),
        false => None,
    };

    let control = opts.control.clone();
    let mut poller = Poller::new(
        &consumer,
        &cfg,
        &senders,
        &tracker,
        &metrics,
        &queued,
        &assignment,
        reloader,
        Status::new(&cfg, opts.status),
    );
    poller.feedback = feedback_reader;
    poller.candidate_reloader = match (&candidate, opts.watch_rules) {
        // SIGHUP is the live library's watcher's.
        (Some(c), true) => Some(Reloader::spawn(c, &cfg, false)?),
        _ => None,
    };
    let polled = poller.run(&control.stop, &control.abort);
    drop(poller);

    // Stopping. Workers snapshot what they processed; what they still held unprocessed is read again
    // after the restart (it is not committed).
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
        tracing::info!("Stopping: snapshotting and delivering in-flight alerts.");
        for s in &senders {
            let _ = s.send(WorkerMessage::Stop);
        }
    }
    // The close-time revoke finds nothing to hand over, and the workers see their channels close.
    rebalancer.shutdown();
    drop(rebalancer);
    drop(senders);
    for t in threads {
        let _ = t.join();
    }
    drop(ctx);
    // Every snapshot queued becomes durable (or fails) before the last commit.
    if let Some(w) = writer {
        let _ = w.join();
    }
    let snapshots_failing = metrics.snapshots.failing_since_ms.load(Ordering::Relaxed) > 0;
    if let Some(t) = metrics_thread {
        let _ = t.join();
    }
    // The stages flush and commit what they passed on (at least once: a crash re-sends, and what
    // was sent twice is recognised downstream).
    let staged = stages.stop();
    if let (Some(out), false) = (&calls_out, aborted) {
        out.flush(Duration::from_secs(10));
    }
    let calls_staged = calls_stage.map_or(Ok(()), Stages::stop);
    polled?;
    staged?;
    calls_staged?;
    if aborted {
        return Ok(RunSummary {
            in_flight_at_exit: tracker.in_flight(),
            ..Default::default()
        });
    }
    // However long the stop took, in-flight alerts get a moment: their acks may be milliseconds away.
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    let sinks: Vec<&dyn Output> = match &webhook {
        Some(w) => vec![kafka_out.as_ref(), w.as_ref()],
        None => vec![kafka_out.as_ref()],
    };
    if let Err(e) = crate::sink::Outputs::new(sinks).flush(left) {
        tracing::error!(error = %e, in_flight = tracker.in_flight(), "Not every alert was acknowledged before the shutdown timeout; their records will be redelivered.");
    }
    poll::store_offsets(&consumer, &tracker);
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        // Nothing stored since the last auto-commit is not an error worth more than a note.
        tracing::debug!(error = %e, "Final commit.");
    }
    let summary = RunSummary {
        records: metrics.records_total(),
        alerts: metrics.alerts.total(),
        dead_letters: metrics.dead_letters.load(Ordering::Relaxed),
        in_flight_at_exit: tracker.in_flight(),
        fetch_pauses: metrics.align.pauses.load(Ordering::Relaxed),
        records_skipped: metrics.gaps_total().skipped,
        miskeyed: metrics.miskeyed_total(),
        restores: metrics
            .snapshots
            .restores
            .lock()
            .expect("metrics lock")
            .iter()
            .map(|(o, n)| (o.label(), *n))
            .collect(),
    };
    tracing::info!(
        records = summary.records,
        alerts = summary.alerts,
        dead_letters = summary.dead_letters,
        "Stopped."
    );
    if snapshots_failing {
        // Offsets were committed only as far as the last snapshot written: nothing is lost, but the
        // next start re-reads (or rebuilds) more than it should, and an orchestrator must know.
        let why = metrics
            .snapshots
            .last_error
            .lock()
            .expect("metrics lock")
            .clone();
        anyhow::bail!(
            "the last snapshots could not be written ({}); offsets are committed only up to the last one written",
            why.unwrap_or_default()
        );
    }
    Ok(summary)
}
