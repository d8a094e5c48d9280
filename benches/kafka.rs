//! Throughput and latency through Kafka (librdkafka's mock cluster, in process), with the shipped
//! rules: not a criterion bench — one measured run of each, printed.
//!
//! 1. **Backlog**: a pre-filled input of generated traffic (1M usage records by default, plus their
//!    account events; 128 partitions, because the mock broker keeps at most 100k messages or 5 MB per
//!    partition) consumed by the daemon until every record is committed and every alert delivered:
//!    records per second end to end. Run twice on the same backlog (two consumer groups): without
//!    state snapshots, then with them every second (commits wait for snapshots, so up to a second
//!    more until the last commit).
//! 2. **Steady 20k records/s**: generated traffic produced at a fixed rate for 30 s, with one probe
//!    record in 200 that a bench-only rule turns into an alert; the time from producing a probe to
//!    reading its alert back from the department topic, p50 / p99 / max.
//!
//! 3. **Repartition hop**: the same kind of backlog produced twice — keyed by account and read
//!    directly, then unkeyed and read through the repartition stages (`kafka.usage_keyed_by =
//!    "any"`, `events_keyed_by = "any"`) — consumed until the daemon's group has committed it all:
//!    records per second each way, the ratio is the hop's cost.
//!
//! 4. **Instances**: the backlog of 1. consumed by 1, 2 and 3 daemon processes in one consumer group
//!    (`cdrguard run`, release build, checkpoints every second to one shared store), each time a new
//!    group: records per second until all is committed, and the CPU the daemons used per record. Two
//!    vCPUs cap absolute scaling: the figure that carries over is the CPU per record (what another
//!    instance costs), not the records per second.
//!
//! 5. **Calls topic**: the backlog of 1. consumed with calling numbers off (`state.calling_numbers =
//!    "off"`: no Wangiri rules, no calls topic) and on (the default: MT international calls and
//!    callbacks written to the calls repartition topic, sequenced, read back as each partition's
//!    third topic), snapshots every second, each run a new group, until every input record is
//!    committed: records per second each way, what the calls topic carried per input record, and
//!    how much of it was still uncommitted then (it trails the inputs).
//!
//! The producer, the daemon and the probe reader share this process and the machine's two vCPUs.
//!
//! `cargo bench --bench kafka` (`CDRGUARD_BENCH_RECORDS=200000` for a shorter backlog). For
//! experiments: `CDRGUARD_BENCH_READ_AHEAD_MIB=n` sets `daemon.max_read_ahead_mib`, and
//! `CDRGUARD_BENCH_KAFKA_OPTIONS=k=v,k=v` adds librdkafka options. The backlog line also prints the
//! fetch pauses (read-ahead bound).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cdrguard::config::{Config, Secs};
use cdrguard::daemon::{self, Control, RunOptions};
use cdrguard::demo::gen::{generate, GenConfig};
use cdrguard::record::EventTime;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn config() -> Config {
    let mut cfg = Config::default();
    cfg.daemon.metrics_address = String::new();
    cfg.daemon.idle_watermark_after = Secs(0);
    cfg.daemon.status_interval = Secs(5);
    cfg.state.max_future_skew = Secs(3650 * 86_400);
    if let Some(mib) = std::env::var("CDRGUARD_BENCH_READ_AHEAD_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.daemon.max_read_ahead_mib = mib;
    }
    // Client options for experiments: `k=v,k=v`.
    for kv in std::env::var("CDRGUARD_BENCH_KAFKA_OPTIONS")
        .unwrap_or_default()
        .split(',')
    {
        if let Some((k, v)) = kv.split_once('=') {
            cfg.kafka.options.insert(k.into(), v.into());
        }
    }
    cfg
}

/// The embedded broker of `cdrguard run`, with `partitions` per input topic.
fn cluster(partitions: i32, cfg: &Config) -> (cdrguard::demo::embedded::Embedded, String) {
    let mut cfg = cfg.clone();
    cfg.demo.partitions = partitions;
    let broker = cdrguard::demo::embedded::start(&cfg).unwrap();
    let b = broker.bootstrap.clone();
    (broker, b)
}

fn traffic(records: u64, subscribers: u32, seed: u64, stories: bool) -> (Vec<u8>, Vec<u8>) {
    let now = cdrguard::telemetry::metrics::now_ms() / 1000;
    let gen = GenConfig {
        seed,
        subscribers,
        records,
        start: EventTime {
            utc: (now - 4 * 86_400) / 60 * 60,
            offset_min: 60,
        },
        days: 4,
        inject: if stories {
            cdrguard::demo::gen::stories::STORY_RULES
                .iter()
                .map(|r| (r.to_string(), 2))
                .collect()
        } else {
            Vec::new()
        },
        ..GenConfig::default()
    };
    let (mut u, mut e) = (Vec::new(), Vec::new());
    generate(&gen, &mut u, &mut e).unwrap();
    (u, e)
}

fn committed_total(brokers: &str, cfg: &Config, partitions: i32) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", &cfg.kafka.group_id)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for t in [&cfg.kafka.usage_topic, &cfg.kafka.events_topic] {
        for p in 0..partitions {
            tpl.add_partition(t, p);
        }
    }
    consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .map(|l| {
            l.elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn start_daemon(
    cfg: Config,
    brokers: &str,
    rules: &Path,
    control: Control,
    state_dir: Option<&Path>,
) -> std::thread::JoinHandle<anyhow::Result<daemon::RunSummary>> {
    let brokers = brokers.to_string();
    let rules = rules.to_path_buf();
    let state_dir = state_dir.map(Path::to_path_buf);
    std::thread::spawn(move || {
        daemon::run(
            cfg,
            Path::new(ROOT),
            &brokers,
            RunOptions {
                rules_dir: rules,
                watch_rules: false,
                sighup: false,
                status: true,
                control,
                state_dir,
            },
        )
    })
}

/// The backlog of parts 1 and 4 on a fresh embedded broker with 128 partitions: generated traffic
/// with stories (`CDRGUARD_BENCH_RECORDS` usage records, 1M by default) and its account events.
/// Returns the broker, its address and the records produced.
fn backlog_on_broker(cfg: &Config) -> (cdrguard::demo::embedded::Embedded, String, u64) {
    let records: u64 = std::env::var("CDRGUARD_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let (cluster, brokers) = cluster(128, cfg);
    let (u, e) = traffic(records, (records / 10) as u32, 5, true);
    let producer = cdrguard::demo::embedded::input_producer(
        &Default::default(),
        &brokers,
        std::path::Path::new(""),
    )
    .unwrap();
    let t = Instant::now();
    let total =
        cdrguard::demo::embedded::produce_input(&producer, cfg, &u, &e, 0, &AtomicBool::new(false))
            .unwrap();
    eprintln!(
        "kafka bench: backlog of {total} records ({records} usage) produced in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    (cluster, brokers, total)
}

/// Runs a daemon of `cfg` (snapshots in `dir`, if any) until its group has committed `total` input
/// records, then stops it: the time from its start, and its summary.
fn drain(
    cfg: &Config,
    brokers: &str,
    dir: Option<&Path>,
    total: u64,
    partitions: i32,
) -> (Duration, daemon::RunSummary) {
    let control = Control::default();
    let started = Instant::now();
    let daemon = start_daemon(
        cfg.clone(),
        brokers,
        &Path::new(ROOT).join("rules"),
        control.clone(),
        dir,
    );
    loop {
        std::thread::sleep(Duration::from_millis(500));
        if committed_total(brokers, cfg, partitions) as u64 >= total {
            break;
        }
        // A daemon that stopped (a rule library it refuses, a broker it cannot reach) ends the
        // bench with its reason instead of a 15-minute wait.
        if daemon.is_finished() {
            match daemon.join().unwrap() {
                Ok(_) => panic!("kafka bench: the daemon stopped before the backlog was committed"),
                Err(e) => panic!("kafka bench: the daemon failed: {e:#}"),
            }
        }
        if started.elapsed() > Duration::from_secs(900) {
            eprintln!("kafka bench: backlog not drained in 15 min");
            break;
        }
    }
    let elapsed = started.elapsed();
    control.stop.store(true, Ordering::Relaxed);
    (elapsed, daemon.join().unwrap().unwrap())
}

fn backlog() {
    let cfg = config();
    let partitions = 128;
    let (cluster, brokers, total) = backlog_on_broker(&cfg);
    let state = tempfile::tempdir().unwrap();
    for (label, dir) in [
        ("snapshots off", None),
        ("snapshots on (every 1 s)", Some(state.path())),
    ] {
        let mut cfg = cfg.clone();
        cfg.kafka.group_id = format!("bench-{}", dir.is_some());
        cfg.durability.snapshot_interval = Secs(1);
        cfg.demo.partitions = partitions;
        cluster.create_internal_topics(&cfg).unwrap();
        let (elapsed, summary) = drain(&cfg, &brokers, dir, total, partitions);
        let snap_bytes: u64 = dir
            .map(|d| {
                cdrguard::durability::store::Store::dir(d)
                    .list()
                    .unwrap()
                    .iter()
                    .map(|(_, size)| size)
                    .sum()
            })
            .unwrap_or(0);
        println!(
            "kafka backlog, {label}: {total} records consumed, processed and committed (alerts {} delivered, dead letters {}) in {:.1} s from daemon start (incl. ~3 s group join): {:.0} records/s; snapshot files {:.1} MiB; {} fetch pauses",
            summary.alerts,
            summary.dead_letters,
            elapsed.as_secs_f64(),
            total as f64 / elapsed.as_secs_f64(),
            snap_bytes as f64 / 1048576.0,
            summary.fetch_pauses,
        );
    }
}

/// Part 5: the calls topic's cost (see the module docs).
fn calls() {
    use cdrguard::config::CallingNumbers;
    let cfg = config();
    let partitions = 128;
    let (cluster, brokers, total) = backlog_on_broker(&cfg);
    let state = tempfile::tempdir().unwrap();
    for (label, calling) in [
        ("calling numbers off", CallingNumbers::Off),
        (
            "calling numbers on (calls topic)",
            CallingNumbers::International,
        ),
    ] {
        let mut cfg = cfg.clone();
        cfg.state.calling_numbers = calling;
        cfg.kafka.group_id = format!("bench-calls-{}", calling != CallingNumbers::Off);
        cfg.durability.snapshot_interval = Secs(1);
        cfg.demo.partitions = partitions;
        cluster.create_internal_topics(&cfg).unwrap();
        let (_, by_number) = cdrguard::repartition::calls::topics(&cfg.kafka.group_id);
        let dir = state.path().join(&cfg.kafka.group_id);
        let (elapsed, summary) = drain(&cfg, &brokers, Some(&dir), total, partitions);
        // What the calls topic carried, and how far its reading trailed the inputs' last commit.
        let (calls_committed, calls_read) =
            committed_and_end(&brokers, &cfg.kafka.group_id, &[&by_number], partitions);
        println!(
            "kafka calls, {label}: {total} input records committed (alerts {}) in {:.1} s from daemon start: {:.0} records/s; calls topic {} messages (records and markers, {:.3} per input record), {} of them not yet committed then",
            summary.alerts,
            elapsed.as_secs_f64(),
            total as f64 / elapsed.as_secs_f64(),
            calls_read,
            calls_read as f64 / total as f64,
            calls_read - calls_committed,
        );
    }
}

fn steady() {
    let mut cfg = config();
    cfg.daemon.status_interval = Secs(10);
    let partitions = 16;
    let (_cluster, brokers) = cluster(partitions, &cfg);
    // The shipped rules plus a probe rule that alerts on every probe record.
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("rules");
    copy_tree(&Path::new(ROOT).join("rules"), &lib);
    std::fs::write(
        lib.join("latency_probe.rhai"),
        r#"
const RULE = #{ id: "latency_probe", name: "latency probe", description: "bench", category: "fraud",
    severity: "info", departments: ["FRAUD"], entity: "subscriber", triggers: ["sms.mo"], version: "1" };
fn evaluate(rec, sub, acct, params) {
    if listed("latency_probes", rec.msisdn) { #{ explanation: "probe" } }
}
"#,
    )
    .unwrap();
    std::fs::write(lib.join("lists/latency_probes.txt"), "3379990\n").unwrap();

    let rate = 20_000u32;
    let seconds = 30u64;
    let (u, _) = traffic(rate as u64 * seconds, 30_000, 6, false);
    let lines: Vec<&[u8]> = u.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    let control = Control::default();
    let daemon = start_daemon(cfg.clone(), &brokers, &lib, control.clone(), None);
    std::thread::sleep(Duration::from_secs(4)); // group join

    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "latency-reader")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "1")
        .create()
        .unwrap();
    reader.subscribe(&[&cfg.kafka.alert_topics.fraud]).unwrap();
    // Join the reader's group before measuring: a join takes seconds, which are not the daemon's.
    while reader.assignment().map_or(0, |a| a.count()) == 0 {
        let _ = reader.poll(Duration::from_millis(100));
    }
    let sent: Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>> =
        Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let (sent_r, stop_r) = (sent.clone(), stop.clone());
    let reader_thread = std::thread::spawn(move || {
        let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        while !stop_r.load(Ordering::Relaxed) {
            let Some(Ok(m)) = reader.poll(Duration::from_millis(50)) else {
                continue;
            };
            let Ok(a) =
                serde_json::from_slice::<cdrguard::record::Alert>(m.payload().unwrap_or_default())
            else {
                continue;
            };
            if a.rule.id != "latency_probe" {
                continue;
            }
            if let Some(t0) = a
                .evidence
                .record_ids
                .first()
                .and_then(|id| sent_r.lock().unwrap().get(id).copied())
            {
                h.record(t0.elapsed().as_micros() as u64).unwrap();
            }
        }
        h
    });

    let producer = cdrguard::demo::embedded::input_producer(
        &Default::default(),
        &brokers,
        std::path::Path::new(""),
    )
    .unwrap();
    let now = cdrguard::telemetry::metrics::now_ms() / 1000;
    let started = Instant::now();
    let mut probes = 0u64;
    for (i, line) in lines.iter().enumerate() {
        if i % 200 == 0 {
            probes += 1;
            let id = format!("probe-{probes}");
            let msisdn = format!("3379990{probes:04}");
            let rec = format!(
                r#"{{"record_id":"{id}","record_type":"sms","direction":"mo","event_start":"{}","served":{{"msisdn":"{msisdn}"}},"other_party":{{"number":"33612345678"}}}}"#,
                EventTime {
                    utc: now,
                    offset_min: 60
                }
            );
            sent.lock().unwrap().insert(id, Instant::now());
            let _ = producer.send(
                BaseRecord::to(&cfg.kafka.usage_topic)
                    .key(msisdn.as_str())
                    .payload(rec.as_bytes()),
            );
        }
        let _ = producer.send(
            BaseRecord::to(&cfg.kafka.usage_topic)
                .key(&format!("k{}", i % 4096))
                .payload(*line),
        );
        let due = Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let produced_in = started.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let h = reader_thread.join().unwrap();
    control.stop.store(true, Ordering::Relaxed);
    let _ = daemon.join();
    println!(
        "kafka steady: {} records in {:.1} s ({:.0} records/s offered), {} probes, {} alerts read back: record-to-alert latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lines.len() as u64 + probes,
        produced_in.as_secs_f64(),
        (lines.len() as u64 + probes) as f64 / produced_in.as_secs_f64(),
        probes,
        h.len(),
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn main() {
    // The daemon's warnings and errors (`RUST_LOG=cdrguard=info` for more).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .try_init();
    // `cargo bench` passes `--bench`; a filter argument picks one part.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if filter.as_deref().is_none_or(|f| "backlog".contains(f)) {
        backlog();
    }
    if filter.as_deref().is_none_or(|f| "steady".contains(f)) {
        steady();
    }
    if filter.as_deref().is_none_or(|f| "instances".contains(f)) {
        instances();
    }
    if filter.as_deref().is_none_or(|f| "calls".contains(f)) {
        calls();
    }
    if filter.as_deref().is_none_or(|f| "repartition".contains(f)) {
        repartition();
    }
}

/// (committed, end) summed over the partitions of `topics`, for `group`.
fn committed_and_end(brokers: &str, group: &str, topics: &[&str], partitions: i32) -> (i64, i64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        for p in 0..partitions {
            tpl.add_partition(t, p);
        }
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .map(|l| {
            l.elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .sum()
        })
        .unwrap_or(0);
    let mut end = 0;
    for t in topics {
        for p in 0..partitions {
            end += consumer
                .fetch_watermarks(t, p, Duration::from_secs(10))
                .map_or(0, |(_, h)| h);
        }
    }
    (committed, end)
}

fn repartition() {
    use cdrguard::config::KeyedBy;
    use cdrguard::record::Input;
    let records: u64 = std::env::var("CDRGUARD_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let partitions = 128;
    let (u, e) = traffic(records, (records / 10) as u32, 5, true);
    for keyed in [KeyedBy::Account, KeyedBy::Any] {
        let mut cfg = config();
        cfg.kafka.usage_keyed_by = keyed;
        cfg.kafka.events_keyed_by = keyed;
        let (_cluster, brokers) = cluster(partitions, &cfg);
        let producer = cdrguard::demo::embedded::input_producer(
            &Default::default(),
            &brokers,
            std::path::Path::new(""),
        )
        .unwrap();
        let total = cdrguard::demo::embedded::produce_input(
            &producer,
            &cfg,
            &u,
            &e,
            0,
            &AtomicBool::new(false),
        )
        .unwrap();
        let read = cdrguard::repartition::worker_view(&cfg);
        let topics = [
            read.kafka.topic(Input::Usage),
            read.kafka.topic(Input::Events),
        ];
        let control = Control::default();
        let started = Instant::now();
        let daemon = start_daemon(
            cfg.clone(),
            &brokers,
            &Path::new(ROOT).join("rules"),
            control.clone(),
            None,
        );
        // Everything the daemon reads committed (a sequencer's heartbeat may trail by a marker
        // per partition).
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let (c, end) = committed_and_end(&brokers, &cfg.kafka.group_id, &topics, partitions);
            let rekeyed = match keyed {
                KeyedBy::Account => total as i64,
                _ => [Input::Usage, Input::Events]
                    .iter()
                    .map(|&i| {
                        committed_and_end(
                            &brokers,
                            &format!("{}-{i}-rekey", cfg.kafka.group_id),
                            &[cfg.kafka.source_topic(i)],
                            partitions,
                        )
                        .0
                    })
                    .sum(),
            };
            if rekeyed >= total as i64 && c >= total as i64 && c + 2 * partitions as i64 >= end {
                break;
            }
            if started.elapsed() > Duration::from_secs(900) || daemon.is_finished() {
                eprintln!("kafka bench: repartition backlog not drained");
                break;
            }
        }
        let elapsed = started.elapsed();
        control.stop.store(true, Ordering::Relaxed);
        let summary = daemon.join().unwrap().unwrap();
        println!(
            "kafka backlog, input keyed by {keyed:?}{}: {total} records committed (alerts {}) in {:.1} s from daemon start: {:.0} records/s",
            if keyed == KeyedBy::Account { ", read directly" } else { ", through the repartition stages" },
            summary.alerts,
            elapsed.as_secs_f64(),
            total as f64 / elapsed.as_secs_f64(),
        );
    }
}

/// CPU seconds a process has used (user + system), from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let after = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

fn instances() {
    let cfg = config();
    let partitions = 128;
    let (cluster, brokers, total) = backlog_on_broker(&cfg);
    let scratch = tempfile::tempdir().unwrap();
    for n in 1..=3 {
        let store = scratch.path().join(format!("store-{n}"));
        let mut children = Vec::new();
        let started = Instant::now();
        let mut cfg = cfg.clone();
        cfg.kafka.brokers = Some(brokers.clone());
        cfg.kafka.group_id = format!("bench-instances-{n}");
        cfg.durability.snapshot_interval = Secs(1);
        cfg.durability.dir = store.to_str().unwrap().to_string();
        cfg.demo.partitions = partitions;
        cluster.create_internal_topics(&cfg).unwrap();
        for i in 0..n {
            cfg.durability.instance = format!("i{i}");
            let path = scratch.path().join(format!("{n}-{i}.toml"));
            std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
            let log = std::fs::File::create(scratch.path().join(format!("{n}-{i}.log"))).unwrap();
            children.push(
                std::process::Command::new(env!("CARGO_BIN_EXE_cdrguard"))
                    .args(["--log", "warn", "run", "--config"])
                    .arg(&path)
                    .arg("--rules")
                    .arg(Path::new(ROOT).join("rules"))
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
                    .unwrap(),
            );
        }
        while (committed_total(&brokers, &cfg, partitions) as u64) < total {
            std::thread::sleep(Duration::from_millis(200));
            if started.elapsed() > Duration::from_secs(900) {
                eprintln!("kafka bench: {n} instances did not drain the backlog in 15 min");
                break;
            }
        }
        let elapsed = started.elapsed();
        let cpu: f64 = children.iter().map(|c| cpu_seconds(c.id())).sum();
        for c in &children {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        for mut c in children {
            let _ = c.wait();
        }
        println!(
            "kafka instances: {n} daemon process(es), one group, {total} records committed in {:.1} s \
             from start (group join included): {:.0} records/s; daemons' CPU {:.1} s = {:.1} µs per \
             record",
            elapsed.as_secs_f64(),
            total as f64 / elapsed.as_secs_f64(),
            cpu,
            cpu * 1e6 / total as f64
        );
    }
}
