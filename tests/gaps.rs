//! Records gone from the broker before the daemon read them never pass in silence: the daemon,
//! stopped while librdkafka's mock cluster dropped the oldest records of a partition (it keeps at
//! most 5 MB per partition, like a broker's retention by size), finds the gap on restart, counts
//! exactly the offsets jumped, marks the partition's state, and loses nothing else; with
//! `kafka.on_gap = "stop"` it exits with an error and commits nothing past the gap.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use cdrguard::config::{OnGap, Secs};
use cdrguard::demo::gen::{generate, GenConfig};
use cdrguard::record::{GapReason, Input};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use common::kafka::*;
use common::*;

/// About 14 MB of usage for one partition: the mock cluster keeps the newest 5 MB.
fn traffic() -> (Vec<u8>, Vec<u8>) {
    let cfg = GenConfig {
        subscribers: 2_000,
        records: 30_000,
        days: 2,
        seed: 18,
        ..GenConfig::default()
    };
    let (mut u, mut e) = (Vec::new(), Vec::new());
    generate(&cfg, &mut u, &mut e).unwrap();
    (u, e)
}

fn watermarks(k: &Kafka, topic: &str) -> (i64, i64) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &k.brokers)
        .create()
        .unwrap();
    c.fetch_watermarks(topic, 0, Duration::from_secs(10))
        .unwrap()
}

/// A daemon that read a first day of traffic and was then stopped: its state and commits are
/// there. Returns the usage offset it committed.
fn first_run(k: &Kafka, cfg: &cdrguard::config::Config, state: &Path) -> i64 {
    let day = GenConfig {
        subscribers: 200,
        records: 500,
        days: 1,
        seed: 1,
        ..GenConfig::default()
    };
    let (mut u, mut e) = (Vec::new(), Vec::new());
    generate(&day, &mut u, &mut e).unwrap();
    k.produce(&u, &e);
    let (_, u_high) = watermarks(k, &k.cfg.kafka.usage_topic);
    let (_, e_high) = watermarks(k, &k.cfg.kafka.events_topic);
    let c = control();
    let t = k.daemon_with_state(cfg.clone(), &fixture("rules"), c.clone(), Some(state));
    let deadline = Instant::now() + Duration::from_secs(60);
    let kc = &k.cfg.kafka;
    while k.committed(&kc.group_id, &kc.usage_topic, 1).get(&0) != Some(&u_high)
        || k.committed(&kc.group_id, &kc.events_topic, 1).get(&0) != Some(&e_high)
    {
        assert!(Instant::now() < deadline, "the first day not committed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = stop(&c, t);
    assert_eq!(s.records_skipped, 0);
    u_high
}

#[test]
fn records_dropped_while_the_daemon_was_stopped_are_counted_marked_and_nothing_else_is_lost() {
    let k = Kafka::start(1);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut cfg = durable(&k.cfg);
    cfg.durability.snapshot_interval = Secs(1);
    let committed = first_run(&k, &cfg, &state);
    let (_, e_first) = watermarks(&k, &k.cfg.kafka.events_topic);

    let (usage, events) = traffic();
    k.produce(&usage, &events);
    let (u_low, u_high) = watermarks(&k, &k.cfg.kafka.usage_topic);
    let (e_low, e_high) = watermarks(&k, &k.cfg.kafka.events_topic);
    assert!(
        u_low > committed,
        "the broker dropped usage records the daemon had not read"
    );
    assert_eq!(e_low, 0, "the events fit");

    let c = control();
    let t = k.daemon_with_state(cfg.clone(), &fixture("rules"), c.clone(), Some(&state));
    let kc = &k.cfg.kafka;
    let deadline = Instant::now() + Duration::from_secs(120);
    while k.committed(&kc.group_id, &kc.usage_topic, 1).get(&0) != Some(&u_high)
        || k.committed(&kc.group_id, &kc.events_topic, 1).get(&0) != Some(&e_high)
    {
        assert!(Instant::now() < deadline, "not everything committed");
        std::thread::sleep(Duration::from_millis(200));
    }
    let summary = stop(&c, t);
    // Exactly the offsets jumped, and every record the broker still had was read.
    assert_eq!(summary.records_skipped, (u_low - committed) as u64);
    assert_eq!(summary.records, (u_high - u_low + e_high - e_first) as u64);

    // The partition's state says which offsets and which event-time span.
    let stores = snapshot_stores(&state);
    assert_eq!(stores.len(), 1);
    let gaps = stores[0].gaps();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    let g = &gaps[0];
    assert_eq!(
        (g.input, g.partition, g.from, g.to, g.reason),
        (Input::Usage, 0, committed, u_low, GapReason::Deleted)
    );
    assert!(
        g.before.is_some(),
        "the first record after the gap dates it"
    );
    // `state inspect` of a subscriber of that partition shows it.
    let last = usage
        .split(|&b| b == b'\n')
        .rfind(|l| !l.is_empty())
        .unwrap();
    // Decoded: the line is named in any form a feed writes (`+33…`, by IMSI alone).
    let msisdn = cdrguard::record::Decoder::default()
        .usage(last)
        .unwrap()
        .served
        .msisdn;
    let report = cdrguard::modes::inspect::report(
        &stores[0],
        &[],
        &cdrguard::modes::inspect::Target::Subscriber(msisdn),
        cdrguard::record::EventTime {
            utc: g.before.unwrap(),
            offset_min: 0,
        },
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(report.gaps.len(), 1);
    let text = cdrguard::modes::inspect::render_text(&report);
    assert!(
        text.contains(&format!("skipped offsets {committed}..{u_low} (deleted)")),
        "{text}"
    );
}

#[test]
fn with_on_gap_stop_the_daemon_exits_with_an_error_and_commits_nothing_past_the_gap() {
    let k = Kafka::start(1);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut cfg = durable(&k.cfg);
    cfg.kafka.on_gap = OnGap::Stop;
    let committed = first_run(&k, &cfg, &state);

    let (usage, events) = traffic();
    k.produce(&usage, &events);
    let (u_low, _) = watermarks(&k, &k.cfg.kafka.usage_topic);
    assert!(u_low > committed);

    let c = control();
    let t = k.daemon_with_state(cfg.clone(), &fixture("rules"), c.clone(), Some(&state));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !t.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the daemon did not stop on the gap"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let err = t.join().unwrap().expect_err("the daemon stops on the gap");
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&format!("offsets {committed}..{u_low}"))
            && msg.contains("kafka.on_gap = stop"),
        "{msg}"
    );
    let kc = &k.cfg.kafka;
    assert_eq!(
        k.committed(&kc.group_id, &kc.usage_topic, 1).get(&0),
        Some(&committed),
        "nothing committed past the gap"
    );
}
