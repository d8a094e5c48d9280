//! Repartitioning by account, for input whose producers key it otherwise (`kafka.usage_keyed_by`,
//! `kafka.events_keyed_by` = `msisdn` or `any`): before any state sees a record, it is moved to the
//! partition of its account, as Kafka Streams does when a stream's key changes — through Kafka
//! topics, so that every instance of the group takes part and nothing is held only in memory.
//!
//! ```text
//!  input topic (keyed anyhow) ─► rekey (group <g>-<input>-rekey): key = account, else msisdn;
//!        lane header (source partition, offset, running max event time); markers to every partition
//!  <g>-<input>-repartition ─► sequence (group <g>-<input>-sequence): per partition, merge the
//!        source partitions' records by their keys; markers (merge bound, all ended) go on
//!  <g>-<input>-by-account ─► the workers, exactly as a topic keyed by account, co-partitioned
//!        with the other input
//! ```
//!
//! **Why two hops.** One account's records come from many source partitions, written to the
//! repartition topic by whichever instance owns each, at its own pace: their order there depends on
//! load. The sequencer puts them back in an order that depends only on the records — the same k-way
//! merge by event time the workers use (`source::align`), each record keyed by its source
//! partition's running maximum — and writes that order out. The workers then read an ordinary,
//! ordered, account-keyed topic, and everything downstream (snapshots, commits, the calls topic,
//! rebuilds) is the same as for input keyed right. A merge inside the worker would save the second
//! write but give each worker partition as many positions as there are source partitions.
//!
//! **What decides the order** is the records and the markers' positions, never timing: a marker
//! states a bound every later record of its lane keeps. The one exception is the one every input has
//! (README "Order"): when every source partition has reached its end, the sequencer releases what it
//! holds and tells the workers so; a record produced after that is merged as it becomes visible.
//!
//! **Co-partitioning.** The by-account topic has the partition count of the input read directly
//! (both inputs repartitioned: the usage topic's) and its records are placed by librdkafka's
//! partitioner on the account key — the same as the producers of a topic keyed by account must
//! use (`kafka.options.partitioner` when they are Java clients: `murmur2_random`).
//!
//! **Account of a usage record**: its `served.account_id`; a record that names none goes by its
//! msisdn (counted: `cdrguard_repartition_by_msisdn_total`), as the keying contract says. Lines
//! whose account only an `activation` gives are not looked up here (README "Keying").

pub mod calls;
mod lines;
mod rekey;
mod sequence;
mod stage;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;

use crate::config::{Config, KeyedBy};
use crate::record::Input;
use crate::telemetry::metrics::Metrics;

pub use crate::source::lane_header::LaneHeader;
pub use stage::marker_due;

/// The inputs read through the repartition stages.
pub fn inputs(cfg: &Config) -> Vec<Input> {
    Input::ALL
        .iter()
        .copied()
        .filter(|&i| cfg.kafka.keyed_by(i) != KeyedBy::Account)
        .collect()
}

/// The repartition topic and the by-account topic of `input`.
pub fn topics(group: &str, input: Input) -> (String, String) {
    (
        format!("{group}-{input}-repartition"),
        format!("{group}-{input}-by-account"),
    )
}

/// The compacted topic of the line table (`lines`), when usage is repartitioned.
pub fn lines_topic(group: &str) -> String {
    format!("{group}-lines")
}

/// The configuration the workers read with: a repartitioned input's topic is its by-account topic,
/// and the calls topic is named (`repartition::calls`). (`keyed_by` stays, so the workers know to read
/// the markers.)
pub fn worker_view(cfg: &Config) -> Config {
    let mut view = cfg.clone();
    let k = &cfg.kafka;
    view.kafka.read_topics = Some(Input::LANES.map(|i| match (i, k.keyed_by(i)) {
        (Input::Calls, _) => calls::topics(&k.group_id).1,
        (_, KeyedBy::Account) => k.source_topic(i).to_string(),
        _ => topics(&k.group_id, i).1,
    }));
    view
}

/// Partition counts of the input topics, from the brokers.
fn partition_counts(
    cfg: &Config,
    brokers: &str,
    base: &std::path::Path,
    metrics: Arc<Metrics>,
) -> anyhow::Result<BTreeMap<String, i32>> {
    let consumer = crate::source::kafka::consumer(&cfg.kafka, brokers, base, metrics)?;
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(30))
        .context("reading topic metadata")?;
    Ok(md
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_string(), t.partitions().len() as i32))
        .collect())
}

/// Creates the internal topics if they are missing, and checks their partition counts: the
/// by-account topics have the partition count of the input read directly (or of the usage topic),
/// so that they meet it partition for partition. Returns the count of each input's source topic,
/// and the internal topics'.
pub fn ensure_topics(
    cfg: &Config,
    brokers: &str,
    base: &std::path::Path,
    metrics: Arc<Metrics>,
) -> anyhow::Result<([i32; 2], i32)> {
    let k = &cfg.kafka;
    let counts = partition_counts(cfg, brokers, base, metrics.clone())?;
    let count = |topic: &str| {
        counts.get(topic).copied().with_context(|| {
            format!("topic {topic:?} does not exist (or is not readable with these credentials)")
        })
    };
    let sources = [count(&k.usage_topic)?, count(&k.events_topic)?];
    let direct = Input::ALL
        .iter()
        .find(|&&i| k.keyed_by(i) == KeyedBy::Account)
        .copied()
        .unwrap_or(Input::Usage);
    let n = sources[direct.index()];
    let mut missing = Vec::new();
    let lines = lines_topic(&k.group_id);
    let with_lines = k.usage_keyed_by != KeyedBy::Account;
    if with_lines && !counts.contains_key(&lines) {
        missing.push(lines.clone());
    }
    for input in inputs(cfg) {
        let (repartition, by_account) = topics(&k.group_id, input);
        for t in [repartition, by_account] {
            match counts.get(&t) {
                Some(&c) if c == n => {}
                Some(&c) => anyhow::bail!(
                    "internal topic {t:?} has {c} partitions; it needs {n} (the partitions of {:?}). Delete it (it is rebuilt from the input) or give it {n}",
                    k.source_topic(direct)
                ),
                None => missing.push(t),
            }
        }
    }
    create(cfg, brokers, base, &missing, n, Some(&lines))?;
    Ok((sources, n))
}

/// Creates the internal topics `missing`: `n` partitions kept `kafka.internal_retention`, but the
/// line table (`lines`): one partition, compacted.
fn create(
    cfg: &Config,
    brokers: &str,
    base: &std::path::Path,
    missing: &[String],
    n: i32,
    lines: Option<&str>,
) -> anyhow::Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    let k = &cfg.kafka;
    let retention = (k.internal_retention.0.saturating_mul(1000)).to_string();
    let admin: AdminClient<DefaultClientContext> =
        crate::client::client_config(k, brokers, base)?.create()?;
    let new: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|t| match Some(t.as_str()) == lines {
            // One partition, read whole by every instance; compacted: the latest per line.
            true => {
                NewTopic::new(t, 1, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact")
            }
            false => {
                NewTopic::new(t, n, TopicReplication::Fixed(-1)).set("retention.ms", &retention)
            }
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = block_on(admin.create_topics(new.iter(), &opts))
        .with_context(|| format!("creating the internal topics {}", missing.join(", ")))?;
    for r in results {
        match r {
            Ok(t) => tracing::info!(topic = %t, partitions = n, "Internal topic created."),
            Err((t, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic = %t, "Internal topic created meanwhile.")
            }
            Err((t, e)) => anyhow::bail!(
                "creating internal topic {t:?} ({n} partitions): {e}; create it (and its partner) with {n} partitions"
            ),
        }
    }
    Ok(())
}

/// Runs a stage; an error or a panic stops the daemon.
fn failing(run: impl FnOnce() -> anyhow::Result<()>, failed: &AtomicBool) -> anyhow::Result<()> {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run))
        .unwrap_or_else(|_| Err(anyhow::anyhow!("panicked")));
    if let Err(e) = &r {
        tracing::error!("A repartition stage stopped: {e:#}. Stopping.");
        failed.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    r
}

/// Runs a future to completion on this thread (the admin client's futures complete from its own
/// thread; no runtime is needed for one call at start-up).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark()
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(Duration::from_millis(100));
    }
}

/// The running stages: two threads per repartitioned input.
pub struct Stages {
    stop: Arc<AtomicBool>,
    threads: Vec<(String, std::thread::JoinHandle<anyhow::Result<()>>)>,
}

impl Drop for Stages {
    /// A run that fails after starting the stages still stops them.
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Stages {
    /// Stops the stages (each flushes and commits what was delivered) and waits for them.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for (name, t) in std::mem::take(&mut self.threads) {
            match t.join() {
                Ok(r) => r.with_context(|| format!("repartition stage {name}"))?,
                Err(_) => anyhow::bail!("repartition stage {name} panicked"),
            }
        }
        Ok(())
    }
}

/// The calls topics (`calls`), created if missing with the partitions of the topic the workers
/// read usage from, and their sequencer; the writer the workers hand calls to. `cfg`: the workers'
/// view (`worker_view`). `tracker`: the daemon's, which the writer's acknowledgements clear.
pub fn start_calls(
    cfg: &Config,
    brokers: &str,
    base: &std::path::Path,
    metrics: Arc<Metrics>,
    tracker: Arc<crate::sink::Tracker>,
    failed: Arc<AtomicBool>,
) -> anyhow::Result<(calls::CallsOut, Stages)> {
    let k = &cfg.kafka;
    let counts = partition_counts(cfg, brokers, base, metrics.clone())?;
    let usage = k.topic(Input::Usage);
    let n = *counts.get(usage).with_context(|| {
        format!("topic {usage:?} does not exist (or is not readable with these credentials)")
    })?;
    let (repartition, by_number) = calls::topics(&k.group_id);
    let mut missing = Vec::new();
    for t in [&repartition, &by_number] {
        match counts.get(t) {
            Some(&c) if c == n => {}
            Some(&c) => anyhow::bail!(
                "internal topic {t:?} has {c} partitions; it needs {n} (the partitions of {usage:?}). Delete it (it is rebuilt from the input) or give it {n}"
            ),
            None => missing.push(t.clone()),
        }
    }
    create(cfg, brokers, base, &missing, n, None)?;
    let out = calls::CallsOut::new(cfg, brokers, base, n, tracker, metrics.clone())?;
    let c = stage::clients(
        cfg,
        brokers,
        base,
        &format!("{}-calls-sequence", k.group_id),
        crate::config::StartFrom::Earliest,
        Input::Calls,
        metrics.clone(),
    )?;
    let mut sequencer = sequence::Sequencer {
        input: Input::Calls,
        consumer: c.consumer,
        producer: c.producer,
        source: repartition,
        target: by_number,
        lanes: n as u32,
        tracker: c.tracker,
        released: c.released,
        metrics,
        parts: Default::default(),
        generation: u64::MAX,
        touched: Vec::new(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::Builder::new()
        .name("sequence-calls".into())
        .spawn(move || failing(|| sequencer.run(&s), &failed))?;
    Ok((
        out,
        Stages {
            stop,
            threads: vec![("calls sequence".to_string(), thread)],
        },
    ))
}

/// Starts the rekey and sequence stages of every repartitioned input.
/// A stage that fails sets `failed` (the daemon's stop): the daemon stops rather than run on with
/// an input no longer read.
pub fn start(
    cfg: &Config,
    brokers: &str,
    base: &std::path::Path,
    metrics: Arc<Metrics>,
    failed: Arc<AtomicBool>,
) -> anyhow::Result<Stages> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    if inputs(cfg).is_empty() {
        return Ok(Stages { stop, threads });
    }
    let (sources, targets) = ensure_topics(cfg, brokers, base, metrics.clone())?;
    let k = &cfg.kafka;
    let lines = match k.usage_keyed_by != KeyedBy::Account {
        true => {
            let shared = Arc::new(lines::Lines::default());
            let mut stage = lines::LinesStage {
                shared: shared.clone(),
                consumer: stage::consumer(
                    cfg,
                    brokers,
                    base,
                    &format!("{}-lines", k.group_id),
                    crate::config::StartFrom::Earliest,
                    metrics.clone(),
                )?,
                // Idempotent: a retry must not put a position ahead of the entries it covers.
                producer: crate::client::client_config(k, brokers, base)?
                    .set("acks", "all")
                    .set("enable.idempotence", "true")
                    .set("linger.ms", "5")
                    .set("message.timeout.ms", "0")
                    .create()?,
                events: k.source_topic(Input::Events).to_string(),
                partitions: sources[Input::Events.index()],
                topic: lines_topic(&k.group_id),
                decoder: cfg.decoder(),
                metrics: metrics.clone(),
            };
            let (s, f) = (stop.clone(), failed.clone());
            threads.push((
                "line table".to_string(),
                std::thread::Builder::new()
                    .name("lines".into())
                    .spawn(move || failing(|| stage.run(&s), &f))?,
            ));
            Some(shared)
        }
        false => None,
    };
    for input in inputs(cfg) {
        let (repartition, by_account) = topics(&k.group_id, input);
        let group = |stage: &str| format!("{}-{input}-{stage}", k.group_id);

        let c = stage::clients(
            cfg,
            brokers,
            base,
            &group("rekey"),
            k.start_from,
            input,
            metrics.clone(),
        )?;
        let mut rekeyer = rekey::Rekeyer {
            input,
            consumer: c.consumer,
            producer: c.producer,
            source: k.source_topic(input).to_string(),
            source_c: std::ffi::CString::new(k.source_topic(input))?,
            target: repartition.clone(),
            targets,
            tracker: c.tracker,
            decoder: cfg.decoder(),
            metrics: metrics.clone(),
            on_gap: k.on_gap,
            lines: match input {
                Input::Usage => lines.clone(),
                _ => None,
            },
            lanes: Default::default(),
            generation: u64::MAX,
        };
        let c = stage::clients(
            cfg,
            brokers,
            base,
            &group("sequence"),
            crate::config::StartFrom::Earliest,
            input,
            metrics.clone(),
        )?;
        let mut sequencer = sequence::Sequencer {
            input,
            consumer: c.consumer,
            producer: c.producer,
            source: repartition,
            target: by_account,
            lanes: sources[input.index()] as u32,
            tracker: c.tracker,
            released: c.released,
            metrics: metrics.clone(),
            parts: Default::default(),
            generation: u64::MAX,
            touched: Vec::new(),
        };
        let (s, f) = (stop.clone(), failed.clone());
        threads.push((
            format!("{input} rekey"),
            std::thread::Builder::new()
                .name(format!("rekey-{input}"))
                .spawn(move || failing(|| rekeyer.run(&s), &f))?,
        ));
        let (s, f) = (stop.clone(), failed.clone());
        threads.push((
            format!("{input} sequence"),
            std::thread::Builder::new()
                .name(format!("sequence-{input}"))
                .spawn(move || failing(|| sequencer.run(&s), &f))?,
        ));
    }
    Ok(Stages { stop, threads })
}
