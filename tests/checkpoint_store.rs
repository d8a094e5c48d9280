//! Checkpoints in a real S3-compatible server (moto's, `tests/common/s3.rs`) with librdkafka's mock
//! cluster: a machine lost with its local directory is replaced by one with an empty directory that
//! restores every partition from the store (no rebuild), through a store outage on the way — and
//! the result is exactly a clean replay's alerts and state.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::kafka::*;
use common::s3::S3Server;
use common::*;

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn a_lost_machine_is_restored_from_the_object_store_and_an_outage_loses_nothing() {
    // moto accepts any signature; the secret half is read from the environment, as in production
    // (the configuration refuses secrets).
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    const PARTITIONS: i32 = 4;
    let k = Kafka::start(PARTITIONS);
    let scratch = tempfile::tempdir().unwrap();
    let s3 = S3Server::start("cdrguard", scratch.path());
    let (usage, events, _) = stories_sized(43, 2_000, 60_000);
    let (expected, features, at) = replay_state(&usage, &events);
    let total = usage.iter().chain(&events).filter(|&&b| b == b'\n').count() as u64;
    // Two halves at one instant, the second produced while machine 2 runs (`split_in_time`).
    let [(usage_1, events_1), (usage_2, events_2)] = split_in_time(&usage, &events);
    let first = k.produce(&usage_1, &events_1);
    let mut cfg = durable(&k.cfg);
    s3.configure(&mut cfg, "site-a/cdrguard");
    // Event time follows the input only (a quiet stream following the wall clock would fire
    // timers a replay never reaches).
    cfg.daemon.idle_watermark_after = cdrguard::config::Secs(0);
    let address = format!("127.0.0.1:{}", free_port());
    cfg.daemon.metrics_address = address.clone();
    let topics = alert_topics(&k);
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    let mut reader = k.reader(&topic_refs);

    // Machine 1 works through the first half, then is lost: killed (no drain, no final
    // checkpoint), its local directory gone with it.
    let local_1 = tempfile::tempdir().unwrap();
    let c = control();
    let d = k.daemon_with_state(
        cfg.clone(),
        &fixture("rules"),
        c.clone(),
        Some(local_1.path()),
    );
    let wait_committed = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(90);
        while (k.committed_total(PARTITIONS) as u64) < n {
            assert!(Instant::now() < deadline, "machine 1 never committed {n}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_committed(first);
    // Then a few malformed records: dead-lettered, they change no window but move the offsets, so
    // the next checkpoint is a delta on the base (a chain to restore). Records that change windows
    // arriving while a reader is at the end would be merged as they become visible, unlike a replay.
    let bad: [&[u8]; 3] = [b"{not json", b"{\"record_id\":\"x\"}", b"\xff\xfe"];
    k.produce_raw(&k.cfg.kafka.usage_topic, &bad);
    let first = first + bad.len() as u64;
    let total = total + bad.len() as u64;
    wait_committed(first);
    c.abort.store(true, Ordering::Relaxed);
    d.join().unwrap().unwrap();
    let at_loss = k.committed_total(PARTITIONS);
    drop(local_1);
    let keys = s3.keys("site-a/cdrguard/");
    assert!(
        keys.iter().any(|k| k.contains(".base")) && keys.iter().any(|k| k.contains(".delta-")),
        "machine 1 wrote bases and deltas to the store: {keys:?}"
    );

    // The second half arrives while no machine runs: on the broker before machine 2 reads it, so
    // that it is merged as a replay merges it (records arriving while a reader is at the end are
    // merged as they become visible).
    assert_eq!(k.produce(&usage_2, &events_2) + first, total);

    // Machine 2, an empty directory: every partition restored from the store.
    let local_2 = tempfile::tempdir().unwrap();
    let c = control();
    let d = k.daemon_with_state(
        cfg.clone(),
        &fixture("rules"),
        c.clone(),
        Some(local_2.path()),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, m) = http_get(&address, "/metrics");
        if metric(
            &m,
            "cdrguard_partition_restores_total{outcome=\"snapshot\"}",
        ) > 0
        {
            break;
        }
        assert!(Instant::now() < deadline, "no restore from the store:\n{m}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // The store goes down while machine 2 works through the second half: checkpoints fail and
    // retry, commits wait, /health says so.
    s3.pause();
    let deadline = Instant::now() + Duration::from_secs(90);
    let degraded = loop {
        let (status, body) = http_get(&address, "/health");
        if body.contains("snapshots failing") {
            break format!("{status} {body}");
        }
        assert!(
            Instant::now() < deadline,
            "never degraded while the store was down: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let committed_down = k.committed_total(PARTITIONS);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        k.committed_total(PARTITIONS),
        committed_down,
        "no commit while no checkpoint can be written ({degraded})"
    );
    assert!(
        (committed_down as u64) < total,
        "the outage began before the second half was committed"
    );
    let (_, m) = http_get(&address, "/metrics");
    assert!(
        metric(&m, "cdrguard_snapshots_failed_total") > 0,
        "failed checkpoints counted"
    );
    s3.resume();

    // Back up: everything is committed, health is clear again.
    let deadline = Instant::now() + Duration::from_secs(120);
    while (k.committed_total(PARTITIONS) as u64) < total {
        assert!(
            Instant::now() < deadline,
            "{} of {total} committed after the store came back",
            k.committed_total(PARTITIONS)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let (status, body) = http_get(&address, "/health");
    assert!(
        !body.contains("snapshots failing"),
        "health clear after the outage: {status} {body}"
    );
    let summary = stop(&c, d);
    assert_eq!(
        summary.restores.get("snapshot").copied().unwrap_or(0)
            + summary.restores.get("stale_snapshot").copied().unwrap_or(0),
        PARTITIONS as u64,
        "every partition restored from the store, none rebuilt or new: {:?}",
        summary.restores
    );
    assert!(
        std::fs::read_dir(local_2.path()).unwrap().next().is_none(),
        "nothing in the local directory: checkpoints live in the store"
    );

    // Exactly the alerts of a clean replay, each with one content.
    let got = {
        reader.read_until(Duration::from_secs(3), |_| false);
        alerts_by_id(&reader.messages)
    };
    assert_alerts_of_replay(&expected, &got, &String::new);

    // And the state in the store is a clean replay's.
    let store = store_of(&cfg);
    assert_same_stores(stores_in(store), &features, at);

    // `state` reads the same store by its URL, S3 settings from the environment.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cdrguard"))
        .args(["state", "export", "--all", "--dir", &cfg.durability.store])
        .env("AWS_ENDPOINT", s3.endpoint())
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let partitions: Vec<i64> = rows
        .iter()
        .filter_map(|r| r["partition"].as_i64())
        .collect();
    assert_eq!(partitions, [0, 1, 2, 3], "{rows:?}");
    assert!(
        rows.iter().all(|r| r["file"]
            .as_str()
            .is_some_and(|f| f.starts_with("s3://cdrguard/site-a/cdrguard/"))),
        "{rows:?}"
    );
    eprintln!(
        "object store test: machine 1 lost at {at_loss} of {total} records committed; machine 2 \
         restored {:?}; outage held commits at {committed_down}; {} alerts = a replay's; store keys \
         at the end: {}",
        summary.restores,
        got.len(),
        s3.keys("site-a/cdrguard/").len()
    );
}

/// A base larger than two parts goes up as a multipart upload and reads back whole; the listing
/// names it relative to the prefix, one partition's folder apart from its namesakes'.
#[test]
fn a_large_checkpoint_goes_up_in_parts_and_reads_back_whole() {
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    let scratch = tempfile::tempdir().unwrap();
    let s3 = S3Server::start("big", scratch.path());
    let mut cfg = cdrguard::config::Config::default();
    s3.configure(&mut cfg, "deep/prefix");
    let store = store_of(&cfg);
    let mut rng = fastrand::Rng::with_seed(3);
    let big: Vec<u8> = (0..40 << 20).map(|_| rng.u8(..)).collect();
    store
        .put("partition-1/g2/00000000000000000007.base", big.clone())
        .unwrap();
    store
        .put(
            "partition-10/g2/00000000000000000008.base",
            b"small".to_vec(),
        )
        .unwrap();
    assert_eq!(
        store
            .get("partition-1/g2/00000000000000000007.base")
            .unwrap()
            .as_deref(),
        Some(&big[..])
    );
    assert_eq!(
        store.list_under("partition-1").unwrap(),
        [(
            "partition-1/g2/00000000000000000007.base".to_string(),
            big.len() as u64
        )]
    );
    assert_eq!(store.list().unwrap().len(), 2);
    assert!(
        s3.keys("deep/prefix/partition-1/")
            .iter()
            .all(|k| k.starts_with("deep/prefix/")),
        "keys live under the prefix"
    );
    store
        .delete("partition-1/g2/00000000000000000007.base")
        .unwrap();
    assert_eq!(
        store
            .get("partition-1/g2/00000000000000000007.base")
            .unwrap(),
        None
    );
}
