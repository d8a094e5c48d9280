//! Kafka for tests: librdkafka's in-process mock cluster (a real Kafka-protocol endpoint on
//! 127.0.0.1), the daemon run in a thread against it, and readers of its output topics.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cdrguard::config::Config;
use cdrguard::demo::gen::{generate, GenConfig};
use cdrguard::record::{Alert, EventTime};

use super::{fixture, replay_with};
use cdrguard::daemon::{self, Control, RunOptions, RunSummary};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

pub struct Kafka {
    _broker: cdrguard::demo::embedded::Embedded,
    pub brokers: String,
    pub cfg: Config,
}

/// A config for tests: no metrics port, quick rule watching, no idle watermark.
pub fn test_config() -> Config {
    let mut cfg = Config::default();
    cfg.daemon.metrics_address = String::new();
    cfg.daemon.idle_watermark_after = cdrguard::config::Secs(0);
    cfg.daemon.workers = 2;
    cfg.rules.watch_interval = cdrguard::config::Secs(1);
    cfg
}

impl Kafka {
    /// A one-broker cluster with the input topics (`partitions` each), the alert topics and the
    /// dead-letter topic: the embedded broker of `cdrguard run`.
    pub fn start(partitions: i32) -> Kafka {
        let mut cfg = test_config();
        cfg.demo.partitions = partitions;
        Kafka::start_with(cfg)
    }

    /// The same for a config of the test's (its repartition stages' topics too).
    pub fn start_with(cfg: Config) -> Kafka {
        // The daemon's log in the test output (`RUST_LOG=cdrguard=debug` for more).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .with_test_writer()
            .try_init();
        let broker = cdrguard::demo::embedded::start(&cfg).unwrap();
        Kafka {
            brokers: broker.bootstrap.clone(),
            _broker: broker,
            cfg,
        }
    }

    /// Takes the broker down or brings it back.
    pub fn set_broker_up(&self, up: bool) {
        self._broker.set_broker_up(up).unwrap();
    }

    /// Records committed by the daemon's group on both input topics.
    pub fn committed_total(&self, partitions: i32) -> i64 {
        let k = &self.cfg.kafka;
        self.committed(&k.group_id, &k.usage_topic, partitions)
            .values()
            .sum::<i64>()
            + self
                .committed(&k.group_id, &k.events_topic, partitions)
                .values()
                .sum::<i64>()
    }

    /// Produces NDJSON usage and events as the producers are asked to (keyed, in time order).
    pub fn produce(&self, usage: &[u8], events: &[u8]) -> u64 {
        produce_now(&self.brokers, &self.cfg, usage, events)
    }

    /// Produces raw payloads to a topic (bad input).
    pub fn produce_raw(&self, topic: &str, payloads: &[&[u8]]) {
        let producer = cdrguard::demo::embedded::input_producer(
            &Default::default(),
            &self.brokers,
            std::path::Path::new(""),
        )
        .unwrap();
        for p in payloads {
            producer
                .send(
                    rdkafka::producer::BaseRecord::to(topic)
                        .key("k")
                        .payload(*p),
                )
                .map_err(|(e, _)| e)
                .unwrap();
        }
        rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10)).unwrap();
    }

    /// Runs the daemon in a thread until its control stops it (no state snapshots).
    pub fn daemon(
        &self,
        cfg: Config,
        rules: &Path,
        control: Control,
    ) -> std::thread::JoinHandle<anyhow::Result<RunSummary>> {
        self.daemon_with_state(cfg, rules, control, None)
    }

    /// Runs the daemon in a thread, snapshotting its state to `state_dir`.
    pub fn daemon_with_state(
        &self,
        cfg: Config,
        rules: &Path,
        control: Control,
        state_dir: Option<&Path>,
    ) -> std::thread::JoinHandle<anyhow::Result<RunSummary>> {
        let brokers = self.brokers.clone();
        let rules = rules.to_path_buf();
        let state_dir = state_dir.map(Path::to_path_buf);
        std::thread::spawn(move || {
            daemon::run(
                cfg,
                Path::new(env!("CARGO_MANIFEST_DIR")),
                &brokers,
                RunOptions {
                    rules_dir: rules,
                    watch_rules: true,
                    sighup: false,
                    status: false,
                    control,
                    state_dir,
                },
            )
        })
    }

    /// A reader of topics from the beginning, in a group of its own.
    pub fn reader(&self, topics: &[&str]) -> Reader {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", format!("test-reader-{}", fastrand::u64(..)))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .unwrap();
        consumer.subscribe(topics).unwrap();
        Reader {
            consumer,
            messages: Vec::new(),
        }
    }

    /// Offsets committed by a consumer group, per (topic, partition).
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
        committed_offsets(&self.brokers, group, topic, partitions)
    }
}

/// A message read back: topic, key, payload and headers.
#[derive(Clone, Debug)]
pub struct Read {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

pub struct Reader {
    consumer: BaseConsumer,
    pub messages: Vec<Read>,
}

impl Reader {
    pub fn new(consumer: BaseConsumer) -> Reader {
        Reader {
            consumer,
            messages: Vec::new(),
        }
    }

    /// Reads until `done(messages)` or the timeout; returns whether `done` was reached.
    pub fn read_until(&mut self, timeout: Duration, done: impl Fn(&[Read]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if done(&self.messages) {
                return true;
            }
            let m = match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    eprintln!("reader: {e}");
                    continue;
                }
                None => continue,
            };
            {
                let mut headers = BTreeMap::new();
                if let Some(h) = m.headers() {
                    for i in 0..h.count() {
                        let hd = h.get(i);
                        headers.insert(
                            hd.key.to_string(),
                            String::from_utf8_lossy(hd.value.unwrap_or_default()).into(),
                        );
                    }
                }
                self.messages.push(Read {
                    topic: m.topic().to_string(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().unwrap_or_default().to_vec(),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
        }
        done(&self.messages)
    }
}

/// Stops a daemon thread gracefully and returns its summary.
pub fn stop(
    control: &Control,
    t: std::thread::JoinHandle<anyhow::Result<RunSummary>>,
) -> RunSummary {
    control.stop.store(true, Ordering::Relaxed);
    t.join().unwrap().unwrap()
}

pub fn control() -> Control {
    Control {
        stop: Arc::new(AtomicBool::new(false)),
        abort: Arc::new(AtomicBool::new(false)),
    }
}

/// Stories for every rule over a small calm background: input bytes and the labels.
pub fn stories(seed: u64) -> (Vec<u8>, Vec<u8>, Vec<cdrguard::demo::gen::stories::Label>) {
    stories_sized(seed, 400, 8_000)
}

/// Stories for every rule over a calm background of `records` usage records.
pub fn stories_sized(
    seed: u64,
    subscribers: u32,
    records: u64,
) -> (Vec<u8>, Vec<u8>, Vec<cdrguard::demo::gen::stories::Label>) {
    stories_except(seed, subscribers, records, &[])
}

/// The same, without the stories of the rules in `except`.
pub fn stories_except(
    seed: u64,
    subscribers: u32,
    records: u64,
    except: &[&str],
) -> (Vec<u8>, Vec<u8>, Vec<cdrguard::demo::gen::stories::Label>) {
    let cfg = GenConfig {
        subscribers,
        records,
        days: 4,
        seed,
        inject: cdrguard::demo::gen::stories::STORY_RULES
            .iter()
            .filter(|r| !except.contains(r))
            .map(|r| (r.to_string(), 1))
            .collect(),
        ..GenConfig::default()
    };
    let (mut u, mut e) = (Vec::new(), Vec::new());
    let s = generate(&cfg, &mut u, &mut e).unwrap();
    (u, e, s.labels)
}

/// A replay of the input with the shipped rules: its pipeline and the alerts by id.
fn replay_bytes(
    usage: &[u8],
    events: &[u8],
) -> (cdrguard::pipeline::Pipeline, BTreeMap<String, Alert>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("u.ndjson"), usage).unwrap();
    std::fs::write(dir.path().join("e.ndjson"), events).unwrap();
    let (_, pipeline, alerts) = replay_with(
        &fixture("rules"),
        &dir.path().join("u.ndjson"),
        Some(&dir.path().join("e.ndjson")),
        None,
    );
    let alerts = alerts
        .into_iter()
        .map(|a| (a.alert_id.clone(), a))
        .collect();
    (pipeline, alerts)
}

/// The alerts a replay of the same input raises, by id.
pub fn replayed(usage: &[u8], events: &[u8]) -> BTreeMap<String, Alert> {
    replay_bytes(usage, events).1
}

pub fn alert_topics(k: &Kafka) -> Vec<String> {
    let t = &k.cfg.kafka.alert_topics;
    vec![
        t.fraud.clone(),
        t.collections.clone(),
        t.key_accounts.clone(),
        t.care.clone(),
    ]
}

pub fn parse(m: &Read) -> Alert {
    serde_json::from_slice(&m.payload).unwrap()
}

/// Alert ids seen on the topics (each id once).
pub fn ids(messages: &[Read]) -> BTreeSet<String> {
    messages.iter().map(|m| parse(m).alert_id).collect()
}

/// Every subscriber's features (default windows and filters) and account view as of `at`: what a
/// restarted daemon must agree on with a clean replay.
pub fn state_features(
    stores: &[&cdrguard::state::WindowStore],
    at: cdrguard::record::EventTime,
) -> BTreeMap<String, serde_json::Value> {
    use cdrguard::modes::inspect;
    let windows: Vec<_> = inspect::DEFAULT_WINDOWS
        .iter()
        .map(|w| inspect::WindowSpec::parse(w).unwrap())
        .collect();
    let filters: Vec<_> = inspect::DEFAULT_FILTERS
        .iter()
        .map(|f| cdrguard::classify::ClassFilter::parse(f).unwrap())
        .collect();
    let mut out = BTreeMap::new();
    for store in stores {
        for n in store.subscriber_numbers() {
            let target = inspect::Target::Subscriber(n);
            let v = inspect::report(store, &[], &target, at, &windows, &filters).unwrap();
            let kept = serde_json::json!({"features": v.features, "account": v.account});
            assert!(
                out.insert(n.to_string(), kept).is_none(),
                "subscriber {n} in two partitions' state"
            );
        }
    }
    out
}

/// The partition stores in a daemon's checkpoint store (after it stopped): each partition's
/// newest generation, its chain applied.
pub fn snapshot_stores(dir: &Path) -> Vec<cdrguard::state::WindowStore> {
    stores_in(cdrguard::durability::store::Store::dir(dir))
}

/// The same, from any store (a directory or S3).
pub fn stores_in(store: cdrguard::durability::store::Store) -> Vec<cdrguard::state::WindowStore> {
    use cdrguard::durability::{checkpoint, layout};
    let cp = layout::Checkpoints::open_for_tools(store, false).unwrap();
    let (links, _) = cp.contents().unwrap();
    let partitions: std::collections::BTreeSet<i32> = links.iter().map(|l| l.partition).collect();
    partitions
        .into_iter()
        .map(|p| {
            let chain = layout::chains(&links, p).remove(0);
            let newest = checkpoint::read_newest(&cp, &chain).unwrap();
            checkpoint::restore_chain(&cp, &chain, &newest)
                .unwrap()
                .0
                .store
        })
        .collect()
}

/// Each partition's newest checkpoint file in a state directory.
pub fn partition_snapshots(dir: &Path) -> std::collections::BTreeMap<i32, std::path::PathBuf> {
    use cdrguard::durability::layout;
    let cp =
        layout::Checkpoints::open_for_tools(cdrguard::durability::store::Store::dir(dir), false)
            .unwrap();
    let (links, _) = cp.contents().unwrap();
    let partitions: std::collections::BTreeSet<i32> = links.iter().map(|l| l.partition).collect();
    partitions
        .into_iter()
        .map(|p| (p, dir.join(layout::chains(&links, p)[0].newest().key())))
        .collect()
}

/// Both inputs split at one instant (usage at its middle line), so that two runs, one after the
/// other, see them merged as one replay does: `[(usage, events) before, (usage, events) after]`.
pub fn split_in_time(usage: &[u8], events: &[u8]) -> [(Vec<u8>, Vec<u8>); 2] {
    let time = |line: &[u8], key: &str| {
        let v: serde_json::Value = serde_json::from_slice(line).unwrap();
        EventTime::parse(v[key].as_str().unwrap()).unwrap().utc
    };
    let half = usage.len() / 2;
    let cut = half + usage[half..].iter().position(|&b| b == b'\n').unwrap() + 1;
    let line_start = usage[..cut - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let split_at = time(&usage[line_start..cut - 1], "event_start");
    let (mut events_1, mut events_2) = (Vec::new(), Vec::new());
    for l in events.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let to = if time(l, "occurred_at") < split_at {
            &mut events_1
        } else {
            &mut events_2
        };
        to.extend_from_slice(l);
        to.push(b'\n');
    }
    [
        (usage[..cut].to_vec(), events_1),
        (usage[cut..].to_vec(), events_2),
    ]
}

/// What a clean replay of the same input gives: its alerts by id, the state's features and the
/// time to compare features at.
pub fn replay_state(
    usage: &[u8],
    events: &[u8],
) -> (
    BTreeMap<String, Alert>,
    BTreeMap<String, serde_json::Value>,
    EventTime,
) {
    let (pipeline, alerts) = replay_bytes(usage, events);
    let store = pipeline.store.borrow();
    let at = EventTime {
        utc: store.newest_event_time().unwrap(),
        offset_min: 0,
    };
    let features = state_features(&[&store], at);
    (alerts, features, at)
}

pub fn assert_same_state(
    dir: &Path,
    expected: &BTreeMap<String, serde_json::Value>,
    at: EventTime,
) {
    assert_same_stores(snapshot_stores(dir), expected, at);
}

/// Every subscriber's features in `stores` (each partition's) are a clean replay's.
pub fn assert_same_stores(
    stores: Vec<cdrguard::state::WindowStore>,
    expected: &BTreeMap<String, serde_json::Value>,
    at: EventTime,
) {
    let refs: Vec<_> = stores.iter().collect();
    let got = state_features(&refs, at);
    assert_eq!(got.len(), expected.len(), "subscribers in state");
    let mut differ = Vec::new();
    for (n, v) in expected {
        if got.get(n) != Some(v) {
            differ.push(n.clone());
        }
    }
    if !differ.is_empty() {
        let _ = std::fs::write(
            std::env::temp_dir().join("cdrguard-state-diff.json"),
            format!(
                "{}\n{}\n",
                serde_json::to_string(&got.get(&differ[0])).unwrap(),
                serde_json::to_string(&expected[&differ[0]]).unwrap()
            ),
        );
    }
    assert!(
        differ.is_empty(),
        "{} of {} subscribers' features differ from a clean replay, e.g. {}:\n got {}\nwant {}",
        differ.len(),
        expected.len(),
        differ[0],
        serde_json::to_string(&got.get(&differ[0])).unwrap(),
        serde_json::to_string(&expected[&differ[0]]).unwrap(),
    );
}

/// Every alert of a clean replay (`expected`) is among those delivered (`got`, by id), and
/// nothing else is; `context` is added to a failure's message (logs of the daemons, say).
pub fn assert_alerts_of_replay(
    expected: &BTreeMap<String, Alert>,
    got: &BTreeMap<String, serde_json::Value>,
    context: &dyn Fn() -> String,
) {
    let missing: Vec<_> = expected
        .iter()
        .filter(|(id, _)| !got.contains_key(*id))
        .map(|(_, a)| format!("{} {} {}", a.rule.id, a.entity.key, a.trigger_event_time))
        .collect();
    let extra: Vec<_> = got
        .iter()
        .filter(|(id, _)| !expected.contains_key(*id))
        .map(|(_, v)| {
            format!(
                "{} {} {}",
                v["rule"]["id"], v["entity"]["key"], v["trigger_event_time"]
            )
        })
        .collect();
    // Both lists at once: an alert raised at another record shows as one missing and one extra.
    assert!(
        missing.is_empty() && extra.is_empty(),
        "expected alerts never delivered: {missing:?}; alerts a clean replay does not raise: \
         {extra:?}{}",
        context()
    );
}

/// The checkpoint store a daemon configuration names.
pub fn store_of(cfg: &cdrguard::config::Config) -> cdrguard::durability::store::Store {
    cdrguard::durability::store::Store::open(
        &cfg.durability.store,
        Path::new(&cfg.durability.dir),
        &cfg.durability.store_options,
    )
    .unwrap()
}

/// Alerts read, by id (without `detected_at`); fails if an id came with two contents.
pub fn alerts_by_id(messages: &[Read]) -> BTreeMap<String, serde_json::Value> {
    let mut by_id: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for m in messages {
        let mut v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        v.as_object_mut().unwrap().remove("detected_at");
        let id = v["alert_id"].as_str().unwrap().to_string();
        if let Some(prev) = by_id.insert(id.clone(), v.clone()) {
            assert_eq!(prev, v, "alert {id} delivered twice with different content");
        }
    }
    by_id
}

/// Offsets committed by a consumer group on `brokers`, per partition of `topic`.
pub fn committed_offsets(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> BTreeMap<i32, i64> {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", brokers);
    committed_offsets_with(client, group, topic, partitions)
}

/// Offsets committed by a consumer group, per partition of `topic`, through `client` settings.
pub fn committed_offsets_with(
    mut client: ClientConfig,
    group: &str,
    topic: &str,
    partitions: i32,
) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = client.set("group.id", group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    got.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// Produces NDJSON input to `brokers` at `rate` records/s in a thread, as a daemon runs and crashes.
pub fn produce_in_thread(
    brokers: &str,
    cfg: &Config,
    usage: Vec<u8>,
    events: Vec<u8>,
    rate: u32,
) -> std::thread::JoinHandle<u64> {
    let brokers = brokers.to_string();
    let cfg = cfg.clone();
    std::thread::spawn(move || {
        let producer =
            cdrguard::demo::embedded::input_producer(&cfg.kafka, &brokers, Path::new("")).unwrap();
        cdrguard::demo::embedded::produce_input(
            &producer,
            &cfg,
            &usage,
            &events,
            rate,
            &AtomicBool::new(false),
        )
        .unwrap()
    })
}

/// Produces NDJSON usage and events to `brokers` as the producers are asked to (keyed, in time order).
pub fn produce_now(brokers: &str, cfg: &Config, usage: &[u8], events: &[u8]) -> u64 {
    let producer =
        cdrguard::demo::embedded::input_producer(&cfg.kafka, brokers, Path::new("")).unwrap();
    cdrguard::demo::embedded::produce_input(
        &producer,
        cfg,
        usage,
        events,
        0,
        &AtomicBool::new(false),
    )
    .unwrap()
}
