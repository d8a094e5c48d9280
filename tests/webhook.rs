//! The webhook sink against a real HTTP server process (`tests/webhook_server.py`, Python's standard
//! library: no code shared with the sink): every alert POSTed to its department's URL with the alert id
//! as idempotency key, under the same at-least-once contract as the Kafka topics — including while the
//! server is down for a while: nothing lost, nothing committed before the server answered.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cdrguard::config::Secs;
use cdrguard::record::Department;
use serde_json::Value;

use common::kafka::*;
use common::*;

/// `python3 tests/webhook_server.py` on a port; killed (SIGKILL) on drop.
struct Server {
    child: Child,
}

impl Server {
    fn start(port: u16, log: &Path) -> Server {
        let child = Command::new("python3")
            .arg(fixture("tests/webhook_server.py"))
            .args(["--port", &port.to_string(), "--log"])
            .arg(log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 (installed by .ci/run) runs the test's HTTP server");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the webhook server did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Server { child }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every POST the server logged.
fn received(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// (alert id, department) of every POST logged.
fn pairs(log: &Path) -> BTreeSet<(String, String)> {
    received(log)
        .iter()
        .map(|r| {
            let h = &r["headers"];
            (
                h["x-cdrguard-alert-id"].as_str().unwrap().to_string(),
                h["x-cdrguard-department"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Where each input record is: record or event id → (topic, partition, offset).
fn positions(k: &Kafka, total: u64) -> BTreeMap<String, (String, i32, i64)> {
    let mut input = k.reader(&[&k.cfg.kafka.usage_topic, &k.cfg.kafka.events_topic]);
    assert!(input.read_until(Duration::from_secs(30), |m| m.len() as u64 >= total));
    let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for m in &input.messages {
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        let id = v["record_id"].as_str().or(v["event_id"].as_str()).unwrap();
        let offset = next.entry((m.topic.clone(), m.partition)).or_default();
        out.insert(id.to_string(), (m.topic.clone(), m.partition, *offset));
        *offset += 1;
    }
    out
}

#[test]
fn alerts_reach_each_department_url_at_least_once_through_a_server_outage() {
    const PARTITIONS: i32 = 2;
    let k = Kafka::start(PARTITIONS);
    let (usage, events, _) = stories(61);
    let expected = replayed(&usage, &events);
    let want: BTreeSet<(String, String)> = expected
        .values()
        .flat_map(|a| {
            a.departments
                .iter()
                .map(|d| (a.alert_id.clone(), d.as_str().to_string()))
        })
        .collect();
    let total = k.produce(&usage, &events);
    let position = positions(&k, total);

    let dir = tempfile::tempdir().unwrap();
    let log: PathBuf = dir.path().join("received.ndjson");
    let port = free_port();
    let mut server = Some(Server::start(port, &log));
    let mut cfg = k.cfg.clone();
    for d in Department::ALL {
        cfg.webhook.urls.insert(
            *d,
            format!("http://127.0.0.1:{port}/{}", d.as_str().to_lowercase()),
        );
    }
    cfg.webhook.max_backoff = Secs(1);
    cfg.webhook.timeout = Secs(2);
    let c = control();
    let daemon = k.daemon(cfg, &fixture("rules"), c.clone());

    // A few alerts arrive, then the server goes away.
    let deadline = Instant::now() + Duration::from_secs(60);
    while received(&log).len() < 3 {
        assert!(Instant::now() < deadline, "no alert reached the webhook");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(server.take());
    std::thread::sleep(Duration::from_secs(4));

    // While it is down, no record is committed past an alert the server has not answered.
    let answered = pairs(&log);
    let committed: BTreeMap<String, BTreeMap<i32, i64>> =
        [&k.cfg.kafka.usage_topic, &k.cfg.kafka.events_topic]
            .into_iter()
            .map(|t| (t.clone(), k.committed(&k.cfg.kafka.group_id, t, PARTITIONS)))
            .collect();
    let mut held = 0;
    for a in expected.values() {
        let unanswered = a
            .departments
            .iter()
            .any(|d| !answered.contains(&(a.alert_id.clone(), d.as_str().to_string())));
        let Some(rid) = a.evidence.record_ids.first() else {
            continue;
        };
        if !unanswered {
            continue;
        }
        held += 1;
        let (topic, p, offset) = &position[rid];
        let c = committed[topic].get(p).copied().unwrap_or(0);
        assert!(
            *offset >= c,
            "{topic}/{p} committed to {c} while the alert of its record at {offset} ({}) was not \
             answered",
            a.rule.id
        );
    }
    assert!(held > 0, "the outage held some alerts back");
    assert!(
        (k.committed_total(PARTITIONS) as u64) < total,
        "nothing is committed past the unanswered alerts"
    );

    // Back on the same port: everything is delivered, then everything committed.
    server = Some(Server::start(port, &log));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !(want.is_subset(&pairs(&log)) && k.committed_total(PARTITIONS) as u64 >= total) {
        assert!(
            Instant::now() < deadline,
            "{} of {} (alert, department) POSTs answered, {} of {total} records committed",
            want.intersection(&pairs(&log)).count(),
            want.len(),
            k.committed_total(PARTITIONS)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let summary = stop(&c, daemon);
    drop(server);
    assert_eq!(summary.in_flight_at_exit, 0);

    // Exactly the replay's alerts, each at least once per department, under its idempotency key.
    assert_eq!(pairs(&log), want);
    for r in received(&log) {
        let h = &r["headers"];
        let body: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
        let id = body["alert_id"].as_str().unwrap();
        assert_eq!(h["idempotency-key"], id);
        assert_eq!(h["x-cdrguard-alert-id"], id);
        assert_eq!(h["content-type"], "application/json");
        let dept = h["x-cdrguard-department"].as_str().unwrap();
        assert_eq!(r["path"], format!("/{}", dept.to_lowercase()));
        let a = &expected[id];
        assert_eq!(body["rule"]["id"], a.rule.id.as_str());
        assert_eq!(h["x-cdrguard-rule"], a.rule.id.as_str());
    }
    eprintln!(
        "{} POSTs for {} (alert, department) pairs; {held} alerts held by the outage",
        received(&log).len(),
        want.len()
    );
}
