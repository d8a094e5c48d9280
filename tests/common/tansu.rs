//! A real Kafka-protocol broker for tests: tansu (Apache Kafka compatible, in-memory storage) run as a
//! child process on a free 127.0.0.1 port, the daemon run as a process of its own against it, and
//! readers of its topics. Unlike the mock cluster, the broker is another program: group coordination,
//! commits and fetches go over the wire to an implementation librdkafka did not write.
//!
//! The broker binary is found at `$TANSU`, else `tansu` on PATH, else the cache `.ci/run` installs it
//! to; when there is none, the first test installs it there with `cargo install` (once, about 8 min on
//! 2 cores), so that `cargo test` stays the one test command on a fresh machine. If that fails (no
//! registry access), the tests fail and say how to install it.
//!
//! Where tansu 0.6.0 is not Kafka (what works: the admin API's CreateTopics, consumer groups with
//! range assignment, commits and committed offsets, headers, CreateTime timestamps, a dead member
//! evicted after `session.timeout.ms`):
//! - A fetch from an offset inside a record batch returns only the batches that start at or after
//!   it (`offsets.split_off(&offset)` in its dynostore): the rest of that batch is skipped, so a
//!   consumer resuming from a commit inside a batch loses records. Found when the crash test moved to
//!   a backlog produced in bulk (large batches); the tests write one record per batch (`produce`),
//!   and so do the daemons' own producers (`daemon_config`): a calls sequencer that took over a
//!   partition from its commit inside a batch lost the rings of a Wangiri wave that way.
//! - The high watermark (ListOffsets latest, `fetch_watermarks`, the fetch statistics) is the last
//!   record batch's base offset + 1, short of the end by the rest of that batch; see `end_offsets`.
//!   With one record per batch it is the end.
//!   The daemon checks a snapshot that has no committed offset against it; it commits the start
//!   offset of every partition new to the group at assignment, so that case stays rare (expired
//!   commits, another cluster) and the crash test does not meet it.
//! - `offsets_for_times` answers the first offset whatever the timestamp (a rebuild re-reads the whole
//!   partition rather than `durability.rebuild_window`).
//! - A second member joining a group waits about 3 s for the rebalance.

use std::collections::BTreeMap;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use cdrguard::config::Config;

use super::free_port;
use super::process::log_tail;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::kafka::Reader;

/// The tansu release the tests are written against (and `.ci/run` installs).
pub const TANSU_VERSION: &str = "0.6.0";
/// Its storage engines: `memory://` (dynostore) for most tests, `sqlite://` (libsql) where SCRAM
/// users must be kept (`secured`).
pub const TANSU_FEATURES: &str = "dynostore,libsql";

/// Where `.ci/run` caches its tansu install: `${CDRGUARD_TOOLS:-$HOME/.cache/cdrguard-tools}/tansu-sql`
/// (built with the `dynostore` and `libsql` features: memory and SQLite storage).
fn cached_tansu() -> Option<PathBuf> {
    let tools = match std::env::var_os("CDRGUARD_TOOLS") {
        Some(t) => PathBuf::from(t),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/cdrguard-tools"),
    };
    Some(tools.join("tansu-sql/bin/tansu"))
}

fn executable(p: &Path) -> bool {
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The tansu binary: `$TANSU`, else `tansu` on PATH, else the `.ci/run` cache. Panics with how to
/// install it when there is none: these tests must not pass by not running.
pub fn tansu_binary() -> PathBuf {
    if let Some(t) = std::env::var_os("TANSU") {
        let t = PathBuf::from(t);
        assert!(
            executable(&t),
            "TANSU={} is not an executable file",
            t.display()
        );
        return t;
    }
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("tansu")).collect())
        .unwrap_or_default();
    if let Some(t) = on_path
        .into_iter()
        .chain(cached_tansu())
        .find(|p| executable(p))
    {
        return t;
    }
    if let Some(t) = install_tansu() {
        return t;
    }
    panic!(
        "tansu (a Kafka-compatible broker) is needed by the real-broker tests and was not found: \
         not in $TANSU, not on PATH, not at {}. Install it with\n  \
         cargo install tansu --version {TANSU_VERSION} --locked --features {TANSU_FEATURES} --root \
         ~/.cache/cdrguard-tools/tansu-sql\n(about 8 min on 2 cores; `.ci/run` does this), or set \
         TANSU=/path/to/tansu.",
        cached_tansu().map_or("the cache".into(), |p| p.display().to_string())
    );
}

/// Installs tansu into the cache, once per test process (tests run in threads).
fn install_tansu() -> Option<PathBuf> {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _once = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let bin = cached_tansu()?;
    if executable(&bin) {
        return Some(bin);
    }
    let root = bin.parent()?.parent()?.to_path_buf();
    eprintln!(
        "tansu not found: installing it into {} (once, about 8 min on 2 cores)",
        root.display()
    );
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["install", "tansu", "--version", TANSU_VERSION, "--locked"])
        .args(["--features", TANSU_FEATURES, "--root"])
        .arg(&root)
        .status()
        .ok()?;
    (status.success() && executable(&bin)).then_some(bin)
}

/// Runs a future to completion on this thread (the admin client's futures need no runtime).
pub fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(Duration::from_millis(50));
    }
}

/// How a broker is started beyond the defaults.
#[derive(Clone, Default)]
pub struct Launch {
    /// Storage engine URL; default `memory://tansu/`. `sqlite://tansu.db` is a file in its folder
    /// (needs a tansu built with the `libsql` feature; it keeps SCRAM users).
    pub storage: Option<String>,
    /// The port the broker tells clients to connect to (a TLS terminator in front of it); default
    /// its own.
    pub advertised_port: Option<u16>,
    /// Require SASL authentication (SCRAM users stored by the storage engine).
    pub authentication: bool,
    /// Client settings to see it answer with, e.g. TLS and SASL to the advertised address; without
    /// `bootstrap.servers`, its own address. Must reach the advertised address: librdkafka leaves
    /// the bootstrap connection for the brokers the metadata names.
    pub ready: Option<ClientConfig>,
}

/// Waits until the broker answers a metadata request through `client` (or exits, or the time
/// runs out).
fn wait_ready(
    child: &mut Child,
    client: ClientConfig,
    brokers: &str,
    timeout: Duration,
) -> Result<(), String> {
    let client: BaseConsumer = client.create().map_err(|e| e.to_string())?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Err(format!("tansu exited: {status}"));
        }
        match client.fetch_metadata(None, Duration::from_millis(500)) {
            Ok(m) if !m.brokers().is_empty() => return Ok(()),
            _ if Instant::now() >= deadline => {
                return Err(format!("no metadata from {brokers} after {timeout:?}"))
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A tansu broker with the daemon's topics; killed on drop.
pub struct Tansu {
    child: Child,
    pub port: u16,
    pub brokers: String,
    /// The default topics and group, `demo.partitions` = the input topics' partition count.
    pub cfg: Config,
    /// Scratch space of the test: the broker log, daemon configs, logs and state directories.
    pub dir: tempfile::TempDir,
}

impl Tansu {
    /// A broker with the input topics (`partitions` each, co-partitioned), the four alert topics and
    /// the dead-letter topic (one partition each), as `cdrguard::demo::embedded::start` makes them.
    pub fn start(partitions: i32) -> Tansu {
        let mut t = Tansu::start_empty();
        t.create_daemon_topics(partitions);
        t
    }

    /// The daemon's topics: the inputs with `partitions` each, the alert and dead-letter topics with
    /// one; `cfg.demo.partitions` records the count.
    pub fn create_daemon_topics(&mut self, partitions: i32) {
        self.cfg.demo.partitions = partitions;
        let k = &self.cfg.kafka;
        let mut topics = vec![
            (k.usage_topic.as_str(), partitions),
            (k.events_topic.as_str(), partitions),
            (k.dead_letter_topic.as_str(), 1),
        ];
        for a in [
            &k.alert_topics.fraud,
            &k.alert_topics.collections,
            &k.alert_topics.key_accounts,
            &k.alert_topics.care,
        ] {
            topics.push((a.as_str(), 1));
        }
        self.create_topics(&topics);
    }

    /// A broker with no topic.
    pub fn start_empty() -> Tansu {
        Tansu::launch(Launch::default(), tempfile::tempdir().unwrap(), None)
    }

    /// A broker as `l` says, running in `dir` (its log, and a file storage's database), on `port`
    /// or a free one.
    pub fn launch(l: Launch, dir: tempfile::TempDir, port: Option<u16>) -> Tansu {
        let bin = tansu_binary();
        let log = dir.path().join("tansu.log");
        let mut last_failure = String::new();
        let fixed_port = port.is_some();
        // A port found free can be taken before the broker binds it: try another (unless asked
        // for that port: a restart).
        for _attempt in 0..3 {
            let port = port.unwrap_or_else(free_port);
            let url = format!("tcp://127.0.0.1:{port}");
            let advertised = format!("tcp://127.0.0.1:{}", l.advertised_port.unwrap_or(port));
            let brokers = format!("127.0.0.1:{port}");
            let out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap();
            let mut cmd = Command::new(&bin);
            cmd.arg("broker")
                .args(["--listener-url", &url])
                .args(["--advertised-listener-url", &advertised])
                .args([
                    "--storage-engine",
                    l.storage.as_deref().unwrap_or("memory://tansu/"),
                ]);
            if l.authentication {
                cmd.arg("--authentication");
            }
            let mut child = cmd
                .current_dir(dir.path())
                // Its flags read these too; an inherited value must not win over nothing.
                .env_remove("CLUSTER_ID")
                .env_remove("SCHEMA_REGISTRY")
                .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
            let mut ready = l.ready.clone().unwrap_or_default();
            if ready.get("bootstrap.servers").is_none() {
                ready.set("bootstrap.servers", &brokers);
            }
            match wait_ready(&mut child, ready, &brokers, Duration::from_secs(30)) {
                Ok(()) => {
                    return Tansu {
                        child,
                        port,
                        brokers,
                        cfg: Config::default(),
                        dir,
                    }
                }
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_failure = format!("{why}\n--- tansu log ---\n{}", log_tail(&log, 40));
                    if fixed_port {
                        break;
                    }
                }
            }
        }
        panic!("tansu did not come up: {last_failure}");
    }

    /// Stops the broker and starts it again as `l` says, on the same port and folder (a file
    /// storage keeps its topics, offsets and users).
    pub fn relaunch(mut self, l: Launch) -> Tansu {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (port, cfg) = (self.port, self.cfg.clone());
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let mut t = Tansu::launch(l, dir, Some(port));
        t.cfg = cfg;
        t
    }

    /// Creates topics (name, partitions) through the Kafka admin API, then waits until the
    /// metadata shows each with its partitions.
    pub fn create_topics(&self, topics: &[(&str, i32)]) {
        let admin: AdminClient<DefaultClientContext> = self.client().create().unwrap();
        let new: Vec<NewTopic> = topics
            .iter()
            .map(|(name, p)| NewTopic::new(name, *p, TopicReplication::Fixed(1)))
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = block_on(admin.create_topics(&new, &opts))
            .unwrap_or_else(|e| panic!("create_topics: {e}\n{}", self.log_tail()));
        for r in results {
            if let Err((name, code)) = r {
                panic!("creating topic {name}: {code:?}\n{}", self.log_tail());
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (name, want) in topics {
            loop {
                let got = self.partitions(name);
                if got == *want {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "topic {name}: {got} partitions in the metadata, want {want}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Partitions of a topic in the broker's metadata (0: no such topic).
    pub fn partitions(&self, topic: &str) -> i32 {
        let client: BaseConsumer = self.client().create().unwrap();
        let m = client
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .unwrap();
        m.topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len() as i32)
    }

    /// Client settings for this broker: its address and the TLS/SASL settings of `cfg.kafka`.
    pub fn client(&self) -> ClientConfig {
        cdrguard::client::client_config(&self.cfg.kafka, &self.brokers, self.dir.path()).unwrap()
    }

    /// The broker's log so far (its last lines).
    pub fn log_tail(&self) -> String {
        format!(
            "--- tansu log (last lines) ---\n{}",
            log_tail(&self.dir.path().join("tansu.log"), 40)
        )
    }

    /// Produces NDJSON usage and events as the producers are asked to (keyed, in time order), one
    /// record per batch (see the module doc: tansu loses the rest of a batch fetched from inside it).
    pub fn produce(&self, usage: &[u8], events: &[u8]) -> u64 {
        let producer: rdkafka::producer::ThreadedProducer<_> = self
            .client()
            .set("batch.num.messages", "1")
            .set("linger.ms", "0")
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .unwrap();
        cdrguard::demo::embedded::produce_input(
            &producer,
            &self.cfg,
            usage,
            events,
            0,
            &std::sync::atomic::AtomicBool::new(false),
        )
        .unwrap()
    }

    /// A reader of whole topics from their first offset: every partition assigned, no group.
    pub fn reader(&self, topics: &[&str]) -> Reader {
        let consumer: BaseConsumer = self
            .client()
            .set("group.id", format!("test-reader-{}", fastrand::u64(..)))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for t in topics {
            let n = self.partitions(t);
            assert!(n > 0, "topic {t} does not exist");
            for p in 0..n {
                tpl.add_partition_offset(t, p, Offset::Beginning).unwrap();
            }
        }
        consumer.assign(&tpl).unwrap();
        Reader::new(consumer)
    }

    /// Offsets committed by a consumer group, per partition of `topic` (partitions without one are
    /// left out).
    pub fn committed(&self, group: &str, topic: &str) -> BTreeMap<i32, i64> {
        super::kafka::committed_offsets_with(self.client(), group, topic, self.partitions(topic))
    }

    /// The alerts on the four department topics, by id, once every alert of `expected` is among
    /// them (or `wait` passed) and nothing more comes for 2 s. Waits on ids, not on message
    /// counts: at-least-once delivery repeats some. The calls topic trails the inputs by two hops,
    /// so a test that stops daemons waits here first, not only for the inputs' commits.
    pub fn alerts(
        &self,
        cfg: &Config,
        expected: &BTreeMap<String, cdrguard::record::Alert>,
        wait: Duration,
    ) -> BTreeMap<String, serde_json::Value> {
        let t = &cfg.kafka.alert_topics;
        let topics = [&t.fraud, &t.collections, &t.key_accounts, &t.care];
        let mut reader = self.reader(&topics.map(String::as_str));
        reader.read_until(wait, |m| {
            let got = super::kafka::alerts_by_id(m);
            expected.keys().all(|id| got.contains_key(id))
        });
        reader.read_until(Duration::from_secs(2), |_| false);
        super::kafka::alerts_by_id(&reader.messages)
    }

    /// Records committed by the daemon's group on both input topics.
    pub fn committed_total(&self) -> i64 {
        let k = &self.cfg.kafka;
        [&k.usage_topic, &k.events_topic]
            .iter()
            .map(|t| self.committed(&k.group_id, t).values().sum::<i64>())
            .sum()
    }

    /// Each partition's end: the offset its next record will get.
    ///
    /// Not the high watermark tansu 0.6.0 reports (ListOffsets latest, and `fetch_watermarks`): that
    /// is the last record *batch*'s base offset + 1, short of the end by the rest of that batch, and
    /// it stays so. The end is found by reading from there until nothing more comes.
    pub fn end_offsets(&self, topic: &str) -> BTreeMap<i32, i64> {
        let consumer: BaseConsumer = self
            .client()
            .set("group.id", format!("test-end-{}", fastrand::u64(..)))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .unwrap();
        let mut end = BTreeMap::new();
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions(topic) {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .unwrap();
            end.insert(p, high);
            tpl.add_partition_offset(topic, p, Offset::Offset((high - 1).max(0)))
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let mut idle_since = Instant::now();
        while idle_since.elapsed() < Duration::from_millis(1000) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
                let e = end.entry(m.partition()).or_default();
                *e = (*e).max(m.offset() + 1);
                idle_since = Instant::now();
            }
        }
        end
    }

    /// Waits until the daemon's group has committed `total` input records.
    pub fn wait_committed(&self, total: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.committed_total() as u64 >= total {
                return true;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        false
    }

    /// The config of a daemon against this broker: the topics and group of `cfg`, no metrics port,
    /// snapshots every second to `state_dir`, a crashed member noticed in seconds.
    pub fn daemon_config(&self, state_dir: &Path) -> Config {
        let mut cfg = super::durable(&self.cfg);
        cfg.kafka.brokers = Some(self.brokers.clone());
        cfg.daemon.metrics_address = String::new();
        cfg.daemon.workers = 2;
        cfg.daemon.status_interval = cdrguard::config::Secs(5);
        cfg.rules.watch_interval = cdrguard::config::Secs(1);
        cfg.durability.dir = state_dir.to_str().unwrap().to_string();
        // The daemon's own producers (calls and by-account topics, alerts) write one record per
        // batch too: a stage or worker resuming from a commit inside a batch would lose the rest
        // of it on tansu (module doc).
        cfg.kafka
            .options
            .insert("batch.num.messages".into(), "1".into());
        cfg
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
    }
}
