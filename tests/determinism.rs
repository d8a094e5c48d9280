//! The same input topics give the same alerts — ids and contents, `detected_at` aside — whatever the
//! number of workers, the batch sizes, the load on the machine, and crashes with restarts; and they
//! are the alerts of a `replay` of the same data, Wangiri waves that ring subscribers of every
//! partition and their callbacks included.
//!
//! Regression: the daemon once decided which topic's record went next from how fresh a lag statistic
//! was, so under CPU load a record could overtake the account event before it, and the caller shard
//! applied calls in arrival order (a Wangiri alert fired on the 20th to 22nd victim from run to run).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cdrguard::config::{Config, Secs};
use cdrguard::demo::gen::{generate, GenConfig};
use cdrguard::record::Input;
use serde_json::Value;

use common::kafka::*;
use common::process::{log_tail, write_config, DaemonProcess};
use common::*;

const PARTITIONS: i32 = 6;
const WAVES: u32 = 4;
const CALLBACKS: u32 = 3;

/// Every story, plus Wangiri waves and callbacks whose 25 victims are spread over every partition.
fn input() -> (Vec<u8>, Vec<u8>) {
    let mut inject: Vec<(String, u32)> = cdrguard::demo::gen::stories::STORY_RULES
        .iter()
        .map(|r| (r.to_string(), 1))
        .collect();
    inject.push(("wangiri_inbound".into(), WAVES - 1));
    inject.push(("wangiri_callback".into(), CALLBACKS - 1));
    let cfg = GenConfig {
        subscribers: 1_200,
        records: 24_000,
        days: 4,
        seed: 77,
        inject,
        ..GenConfig::default()
    };
    let (mut u, mut e) = (Vec::new(), Vec::new());
    generate(&cfg, &mut u, &mut e).unwrap();
    (u, e)
}

fn lines(b: &[u8]) -> u64 {
    b.iter().filter(|&&c| c == b'\n').count() as u64
}

/// An alert as compared with a replay's: without `detected_at` (wall clock) and `mode` (`live` vs
/// `replay`).
fn comparable(mut v: Value) -> Value {
    let o = v.as_object_mut().unwrap();
    o.remove("detected_at");
    o.remove("mode");
    v
}

/// The alerts read, by id, as compared with a replay's.
fn comparable_alerts(messages: &[Read]) -> BTreeMap<String, Value> {
    alerts_by_id(messages)
        .into_iter()
        .map(|(id, v)| (id, comparable(v)))
        .collect()
}

fn expected(usage: &[u8], events: &[u8]) -> BTreeMap<String, Value> {
    let alerts = replayed(usage, events);
    let waves = alerts
        .values()
        .filter(|a| a.rule.id == "wangiri_inbound")
        .count();
    let callbacks = alerts
        .values()
        .filter(|a| a.rule.id == "wangiri_callback")
        .count();
    assert!(
        waves >= WAVES as usize && callbacks >= CALLBACKS as usize,
        "the replay raises every wave and callback: {waves} waves, {callbacks} callbacks"
    );
    alerts
        .into_iter()
        .map(|(id, a)| (id, comparable(serde_json::to_value(a).unwrap())))
        .collect()
}

/// Two threads spinning beside the test, as a loaded machine.
struct Burners {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Burners {
    fn start(n: usize) -> Burners {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        for i in 0..100_000u64 {
                            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
                        }
                        std::hint::black_box(x);
                    }
                })
            })
            .collect();
        Burners { stop, threads }
    }
}

impl Drop for Burners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Reads every alert topic until `total` input records are committed and no more alerts come.
fn read_alerts(
    k: &Kafka,
    reader: &mut Reader,
    total: u64,
    want: &BTreeMap<String, Value>,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    while (k.committed_total(PARTITIONS) as u64) < total {
        if Instant::now() > deadline {
            return false;
        }
        reader.read_until(Duration::from_millis(500), |_| false);
    }
    // The calls topic trails the inputs by two hops (calling numbers, `repartition::calls`): its
    // alerts may still be on their way when the last input offset is committed. Wait for what a
    // replay raises (a missing one is reported by `compare` after the wait).
    let left = deadline.saturating_duration_since(Instant::now());
    reader.read_until(left.max(Duration::from_secs(60)), |m| {
        let got = alerts_by_id(m);
        want.keys().all(|id| got.contains_key(id))
    });
    // What was acknowledged before the commit is on the topics; read it all.
    let mut seen = usize::MAX;
    while seen != reader.messages.len() {
        seen = reader.messages.len();
        reader.read_until(Duration::from_secs(2), |_| false);
    }
    true
}

fn compare(label: &str, got: &BTreeMap<String, Value>, want: &BTreeMap<String, Value>) {
    let missing: Vec<_> = want
        .iter()
        .filter(|(id, _)| !got.contains_key(*id))
        .map(|(_, a)| format!("{} {}", a["rule"]["id"], a["entity"]["key"]))
        .collect();
    let extra: Vec<_> = got
        .iter()
        .filter(|(id, _)| !want.contains_key(*id))
        .map(|(_, a)| format!("{} {}", a["rule"]["id"], a["entity"]["key"]))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{label}: {} alerts missing {missing:?}, {} extra {extra:?}",
        missing.len(),
        extra.len()
    );
    for (id, a) in want {
        assert_eq!(&got[id], a, "{label}: alert {id} has other content");
    }
}

#[test]
fn the_same_topics_give_the_same_alerts_whatever_the_workers_batches_and_load() {
    let (usage, events) = input();
    let total = lines(&usage) + lines(&events);
    let want = expected(&usage, &events);
    let _load = Burners::start(2);
    // (workers, messages per poll round, librdkafka options): one worker and tiny fetches, several
    // workers and large batches.
    type Run<'a> = (usize, usize, &'a [(&'a str, &'a str)]);
    let runs: [Run; 3] = [
        (1, 256, &[]),
        (
            3,
            7,
            &[
                ("max.partition.fetch.bytes", "2048"),
                ("fetch.wait.max.ms", "20"),
            ],
        ),
        (4, 5000, &[("fetch.min.bytes", "65536")]),
    ];
    let mut first: Option<BTreeMap<String, Value>> = None;
    for (workers, batch, options) in runs {
        let label = format!("{workers} workers, batches of {batch}, {options:?}");
        let k = Kafka::start(PARTITIONS);
        assert_eq!(k.produce(&usage, &events), total);
        let mut cfg = k.cfg.clone();
        cfg.daemon.workers = workers;
        cfg.daemon.poll_batch = batch;
        for (key, v) in options {
            cfg.kafka.options.insert(key.to_string(), v.to_string());
        }
        let topics = alert_topics(&k);
        let mut reader = k.reader(&topics.iter().map(String::as_str).collect::<Vec<_>>());
        let started = Instant::now();
        let c = control();
        let daemon = k.daemon(cfg, &fixture("rules"), c.clone());
        let done = read_alerts(&k, &mut reader, total, &want, Duration::from_secs(240));
        stop(&c, daemon);
        assert!(done, "{label}: not every record committed");
        let got = alerts_by_id(&reader.messages);
        eprintln!(
            "{label}: {} alerts in {:.1} s",
            got.len(),
            started.elapsed().as_secs_f64()
        );
        // Alert for alert, and the same content as the first run (mode and all).
        if let Some(first) = &first {
            assert_eq!(&got, first, "{label}: not the first run's alerts");
        }
        let cmp: BTreeMap<String, Value> = got
            .iter()
            .map(|(id, v)| (id.clone(), comparable(v.clone())))
            .collect();
        compare(&label, &cmp, &want);
        first = Some(got);
    }
}

/// What a test that kills daemon processes needs: a scratch folder with the state directory, a
/// config file and the log, and a reader of the alert topics.
struct Crashable {
    dir: tempfile::TempDir,
    state: std::path::PathBuf,
    config: std::path::PathBuf,
    log: std::path::PathBuf,
    reader: Reader,
}

fn crashable(k: &Kafka) -> Crashable {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("cdrguard.toml");
    write_config(&daemon_config(k, &state), &config);
    let log = dir.path().join("daemon.log");
    let topics = alert_topics(k);
    let reader = k.reader(&topics.iter().map(String::as_str).collect::<Vec<_>>());
    Crashable {
        dir,
        state,
        config,
        log,
        reader,
    }
}

/// A daemon process against the mock cluster of this test.
fn daemon_config(k: &Kafka, state: &Path) -> Config {
    let mut cfg = durable(&k.cfg);
    cfg.kafka.brokers = Some(k.brokers.clone());
    cfg.daemon.workers = 3;
    cfg.daemon.status_interval = Secs(5);
    cfg.durability.dir = state.to_str().unwrap().to_string();
    cfg
}

#[test]
fn sigkills_and_restarts_in_the_middle_change_no_alert_and_no_state() {
    const KILLS: usize = 4;
    let (usage, events) = input();
    let total = lines(&usage) + lines(&events);
    let want = expected(&usage, &events);
    let (_, features, at) = replay_state(&usage, &events);
    let _load = Burners::start(2);
    let k = Kafka::start(PARTITIONS);
    assert_eq!(k.produce(&usage, &events), total);
    let Crashable {
        dir: _dir,
        state,
        config,
        log,
        mut reader,
    } = crashable(&k);

    let mut rng = fastrand::Rng::with_seed(0xdec1de);
    let mut daemon = DaemonProcess::spawn(&config, &log);
    let mut kills = Vec::new();
    for kill in 0..KILLS {
        daemon.expect_assigned(kill);
        // Some progress (a commit after a snapshot), then the kill a random moment later.
        wait_for_progress(
            || k.committed_total(PARTITIONS),
            total,
            Duration::from_secs(60),
        );
        std::thread::sleep(Duration::from_millis(rng.u64(0..1_500)));
        daemon.kill_and_restart(&config);
        kills.push(k.committed_total(PARTITIONS));
    }
    let done = read_alerts(&k, &mut reader, total, &want, Duration::from_secs(240));
    daemon.sigterm();
    assert!(daemon.wait(Duration::from_secs(30)).success());
    assert!(done, "not every record committed:\n{}", log_tail(&log, 30));
    eprintln!("{KILLS} SIGKILLs; records committed at each: {kills:?} of {total}");

    // Each id with one content (`alerts_by_id` checks every redelivered copy), and exactly the replay's.
    let got = comparable_alerts(&reader.messages);
    compare("with SIGKILLs", &got, &want);
    eprintln!(
        "{} alert messages for {} alerts ({} redelivered copies)",
        reader.messages.len(),
        got.len(),
        reader.messages.len()
            - want
                .values()
                .map(|a| a["departments"].as_array().unwrap().len())
                .sum::<usize>()
    );
    // No record counted twice or missed in any window.
    assert_same_state(&state, &features, at);
}

/// The usage records without their `served.account_id`: every line's account then comes from its
/// `activation` only.
fn without_accounts(usage: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in usage.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let mut v: Value = serde_json::from_slice(l).unwrap();
        v["served"].as_object_mut().unwrap().remove("account_id");
        serde_json::to_writer(&mut out, &v).unwrap();
        out.push(b'\n');
    }
    out
}

/// Input keyed by the line, or not keyed at all, read through the repartition stages
/// (`kafka.usage_keyed_by`, `kafka.events_keyed_by`; README "Keying") gives the alerts of a replay,
/// ids and contents, as input keyed by account does: the order the stages restore depends on the
/// records, not on which partition's records were read first. Usage records that name no account
/// go to the partition of the account their line's `activation` gave (the line table), as a
/// replay attributes them.
#[test]
fn input_keyed_by_the_line_or_not_at_all_gives_the_alerts_of_a_replay_once_repartitioned() {
    use cdrguard::config::KeyedBy;
    let (named, events) = input();
    let unnamed = without_accounts(&named);
    let total = lines(&named) + lines(&events);
    let want_named = expected(&named, &events);
    let want_unnamed = expected(&unnamed, &events);
    let _load = Burners::start(2);
    for (usage_by, events_by, usage, want) in [
        (KeyedBy::Msisdn, KeyedBy::Account, &named, &want_named),
        (KeyedBy::Any, KeyedBy::Any, &named, &want_named),
        (KeyedBy::Any, KeyedBy::Account, &unnamed, &want_unnamed),
    ] {
        let label = format!(
            "usage keyed by {usage_by:?}{}, events by {events_by:?}",
            if std::ptr::eq(usage, &unnamed) {
                " naming no account"
            } else {
                ""
            }
        );
        let mut cfg = test_config();
        cfg.demo.partitions = PARTITIONS;
        cfg.daemon.workers = 3;
        cfg.kafka.usage_keyed_by = usage_by;
        cfg.kafka.events_keyed_by = events_by;
        let k = Kafka::start_with(cfg);
        assert_eq!(k.produce(usage, &events), total);
        let topics = alert_topics(&k);
        let mut reader = k.reader(&topics.iter().map(String::as_str).collect::<Vec<_>>());
        let started = Instant::now();
        let c = control();
        let daemon = k.daemon(k.cfg.clone(), &fixture("rules"), c.clone());
        let all = reader.read_until(Duration::from_secs(240), |m| {
            alerts_by_id(m).len() >= want.len()
        });
        // Anything extra would come right behind.
        reader.read_until(Duration::from_secs(3), |_| false);
        let summary = stop(&c, daemon);
        let got = comparable_alerts(&reader.messages);
        eprintln!(
            "{label}: {} alerts in {:.1} s",
            got.len(),
            started.elapsed().as_secs_f64()
        );
        compare(&label, &got, want);
        assert!(all, "{label}");
        assert_eq!(summary.records, total, "{label}: every record read once");
        assert_eq!(summary.miskeyed, 0, "{label}");
    }
}

/// The same through the repartition stages, with SIGKILLs of the whole daemon (stages included) in
/// the middle: every stage resumes from its commit and its metadata (running maximum, release
/// bound), the line table from its compacted topic, what is passed on twice is recognised, and the
/// alerts and the state are the replay's.
#[test]
fn repartitioned_input_survives_sigkills_with_the_alerts_and_state_of_a_replay() {
    use cdrguard::config::KeyedBy;
    const KILLS: usize = 3;
    let (named, events) = input();
    // Naming no account: the line table is restored from its topic after each kill.
    let usage = without_accounts(&named);
    let total = lines(&usage) + lines(&events);
    let want = expected(&usage, &events);
    let (_, features, at) = replay_state(&usage, &events);
    let _load = Burners::start(2);
    let mut cfg = test_config();
    cfg.demo.partitions = PARTITIONS;
    cfg.kafka.usage_keyed_by = KeyedBy::Any;
    cfg.kafka.events_keyed_by = KeyedBy::Any;
    let k = Kafka::start_with(cfg);
    assert_eq!(k.produce(&usage, &events), total);
    let Crashable {
        dir: _dir,
        state,
        config,
        log,
        mut reader,
    } = crashable(&k);
    let by_account: Vec<String> = [Input::Usage, Input::Events]
        .iter()
        .map(|&i| cdrguard::repartition::topics(&k.cfg.kafka.group_id, i).1)
        .collect();
    // Records read by the first stage (its own group), the measure of progress between kills.
    let rekeyed = || {
        [Input::Usage, Input::Events]
            .iter()
            .map(|&i| {
                let group = format!("{}-{i}-rekey", k.cfg.kafka.group_id);
                k.committed(&group, k.cfg.kafka.source_topic(i), PARTITIONS)
                    .values()
                    .sum::<i64>()
            })
            .sum::<i64>()
    };

    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let mut daemon = DaemonProcess::spawn(&config, &log);
    let mut kills = Vec::new();
    for kill in 0..KILLS {
        assert!(
            daemon.wait_for_log("Assignment prepared.", kill + 1, Duration::from_secs(60)),
            "run {kill} joined its group:\n{}",
            log_tail(&log, 30)
        );
        wait_for_progress(rekeyed, total, Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(rng.u64(0..1_500)));
        daemon.kill_and_restart(&config);
        kills.push(rekeyed());
    }
    // Done when every record of the by-account topics is committed by the daemon's group (commits
    // follow snapshots) and every alert is out.
    let mut records = k.reader(&by_account.iter().map(String::as_str).collect::<Vec<_>>());
    let deadline = Instant::now() + Duration::from_secs(240);
    let done = loop {
        records.read_until(Duration::from_millis(500), |_| false);
        reader.read_until(Duration::from_millis(500), |_| false);
        let mut last: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for m in records.messages.iter().filter(|m| !m.payload.is_empty()) {
            let e = last.entry((m.topic.clone(), m.partition)).or_default();
            *e = (*e).max(m.offset);
        }
        let committed = by_account.iter().all(|t| {
            let c = k.committed(&k.cfg.kafka.group_id, t, PARTITIONS);
            last.iter()
                .filter(|((topic, _), _)| topic == t)
                .all(|((_, p), &o)| c.get(p).is_some_and(|&n| n > o))
        });
        let read = last.len() == 2 * PARTITIONS as usize
            && records
                .messages
                .iter()
                .filter(|m| !m.payload.is_empty())
                .count() as u64
                >= total;
        if (committed && read && alerts_by_id(&reader.messages).len() >= want.len())
            || Instant::now() > deadline
        {
            break committed && read;
        }
    };
    reader.read_until(Duration::from_secs(2), |_| false);
    daemon.sigterm();
    assert!(daemon.wait(Duration::from_secs(30)).success());
    assert!(done, "not every record committed:\n{}", log_tail(&log, 30));
    eprintln!("{KILLS} SIGKILLs; records read by the first stage at each: {kills:?} of {total}");
    let got = comparable_alerts(&reader.messages);
    compare("repartitioned, with SIGKILLs", &got, &want);
    assert_same_state(&state, &features, at);
}
