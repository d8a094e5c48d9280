//! Analysts' feedback (`alert::feedback`): a snooze holds back its rule on its entity until it
//! ends, dispositions are counted per rule, and decisions that are not decisions or name no alert
//! are dead-lettered, the good ones around them applied. In a replay (`--feedback`), in `inspect`,
//! and in the daemon (mock cluster; see `feedback_in_the_daemon` in `tests/daemon_feedback.rs`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use cdrguard::modes::replay::{self, ReplayOptions, RulesChoice};
use cdrguard::record::Alert;
use serde_json::{json, Value};

use common::{voice_mo, ROOT};

const BIN: &str = env!("CARGO_BIN_EXE_cdrguard");
const LINE: &str = "33612000999";

/// One subscriber pumping a satellite range, three calls a day at 10:00, on four days: one IRSF
/// alert a day.
fn usage() -> String {
    let mut lines = Vec::new();
    for day in 10..14 {
        for (i, min) in ["00", "10", "20"].iter().enumerate() {
            lines.push(voice_mo(
                &format!("c-{day}-{i}"),
                &format!("2026-11-{day}T10:{min}:00+01:00"),
                LINE,
                "8816000000",
                120,
            ));
        }
    }
    lines.join("\n") + "\n"
}

struct Run {
    alerts: Vec<Alert>,
    report: replay::ReplayReport,
    dead_letters: Vec<Value>,
}

fn replay(dir: &Path, feedback: Option<&Path>) -> Run {
    let u = dir.join("u.ndjson");
    std::fs::write(&u, usage()).unwrap();
    let dl = dir.join(format!("dl-{}.ndjson", fastrand::u32(..)));
    let opts = ReplayOptions {
        usage: u,
        dead_letter: Some(dl.clone()),
        rules: RulesChoice::Dir(Path::new(ROOT).join("rules")),
        feedback: feedback.map(Path::to_path_buf),
        ..Default::default()
    };
    let mut out = Vec::new();
    let (report, _) = replay::run_to(&opts, &mut out).unwrap();
    let alerts = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let dead_letters = std::fs::read_to_string(&dl)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    Run {
        alerts,
        report,
        dead_letters,
    }
}

fn day(a: &Alert) -> String {
    a.trigger_event_time.to_string()[..10].to_string()
}

/// The decisions: a snooze of day 1's alert to the start of day 3, the same snooze again, a
/// confirmation of day 3's alert, a decision naming no alert, and a line that is not a decision.
fn decisions(dir: &Path, plain: &[Alert]) -> PathBuf {
    let lines = [
        json!({"alert_id": plain[0].alert_id, "disposition": "snooze",
               "until": "2026-11-12T00:00:00+01:00", "analyst": "m.durand",
               "note": "maritime customer, checking"})
        .to_string(),
        json!({"alert_id": plain[0].alert_id, "disposition": "snooze",
               "until": "2026-11-12T00:00:00+01:00", "analyst": "m.durand",
               "note": "maritime customer, checking"})
        .to_string(),
        "{\"alert_id\": 12".to_string(),
        json!({"alert_id": "0123456789abcdef0123456789abcdef", "disposition": "confirmed",
               "analyst": "a.okafor"})
        .to_string(),
        json!({"alert_id": plain[2].alert_id, "disposition": "confirmed",
               "analyst": "a.okafor"})
        .to_string(),
    ];
    let p = dir.join("feedback.ndjson");
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

#[test]
fn in_a_replay_a_snooze_suppresses_until_it_ends_and_bad_decisions_are_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let plain = replay(dir.path(), None);
    let days: Vec<String> = plain.alerts.iter().map(day).collect();
    assert_eq!(
        days,
        ["2026-11-10", "2026-11-11", "2026-11-12", "2026-11-13"],
        "one IRSF alert a day without feedback"
    );
    let fb = decisions(dir.path(), &plain.alerts);
    let run = replay(dir.path(), Some(&fb));

    // Day 2 is snoozed; day 3 is past the snooze; the same alerts, ids and all, otherwise.
    let ids = |v: &[Alert]| v.iter().map(|a| a.alert_id.clone()).collect::<Vec<_>>();
    let expect: Vec<Alert> = [0, 2, 3].iter().map(|&i| plain.alerts[i].clone()).collect();
    assert_eq!(ids(&run.alerts), ids(&expect));

    let f = run.report.feedback.as_ref().unwrap();
    assert_eq!(
        (f.read, f.applied, f.again, f.unknown_alert, f.malformed),
        (5, 2, 1, 1, 1),
        "{f:?}"
    );
    let irsf = &f.by_rule["irsf_high_risk_destination"];
    assert_eq!((irsf["snooze"], irsf["confirmed"]), (1, 1));
    let row = run
        .report
        .rules
        .as_ref()
        .unwrap()
        .rules
        .iter()
        .find(|r| r.id == "irsf_high_risk_destination")
        .unwrap();
    assert_eq!(row.snoozed, 1, "day 2's third call, held back");

    // The two bad lines are dead-lettered with their reasons and line numbers, in file order.
    let reasons: Vec<(&str, u64)> = run
        .dead_letters
        .iter()
        .map(|d| (d["reason"].as_str().unwrap(), d["line"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        reasons,
        [("invalid_json", 3), ("unknown_alert", 4)],
        "{:#?}",
        run.dead_letters
    );
    assert!(run
        .report
        .render()
        .contains("2 applied, 1 again, 1 unknown alert, 1 malformed"));

    // The summary with its feedback block validates against the schema.
    common::assert_summary_valid(&run.report);
}

/// `inspect --feedback` shows the snooze while it holds and the decisions in order.
#[test]
fn inspect_shows_snoozes_and_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let plain = replay(dir.path(), None);
    let fb = decisions(dir.path(), &plain.alerts);
    std::fs::write(dir.path().join("u.ndjson"), usage()).unwrap();
    let inspect = |at: &str| {
        let out = Command::new(BIN)
            .current_dir(ROOT)
            .args(["inspect", "--usage"])
            .arg(dir.path().join("u.ndjson"))
            .arg("--feedback")
            .arg(&fb)
            .args(["--msisdn", LINE, "--at", at, "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let during = inspect("2026-11-11T12:00:00+01:00");
    assert_eq!(during["snoozes"][0]["rule"], "irsf_high_risk_destination");
    assert_eq!(during["snoozes"][0]["analyst"], "m.durand");
    assert_eq!(
        during["decisions"].as_array().unwrap().len(),
        1,
        "{during:#}"
    );
    assert_eq!(
        during["decisions"][0]["alert_id"],
        plain.alerts[0].alert_id.as_str()
    );

    let after = inspect("2026-11-13T12:00:00+01:00");
    assert!(after.get("snoozes").is_none(), "ended: {after:#}");
    let d: Vec<&str> = after["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["disposition"].as_str().unwrap())
        .collect();
    assert_eq!(d, ["snooze", "confirmed"]);
}

/// A counter of the daemon's `/metrics`, 0 until it is served.
fn metric(address: &str, line: &str) -> u64 {
    let (_, body) = common::http_get(address, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
        .unwrap_or(0)
}

fn wait_for(what: &str, timeout: std::time::Duration, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The daemon reads decisions from `kafka.feedback_topic`: a snooze holds back the rule on its
/// subscriber, the malformed and the unknown decision are dead-lettered with their reasons, and
/// the disposition is counted per rule. After a restart it re-reads the topic: the snooze, in the
/// checkpoint already, counts as `again`, and nothing is dead-lettered twice.
#[test]
fn in_the_daemon_decisions_come_from_the_feedback_topic() {
    use common::kafka::*;
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let plain = replay(dir.path(), None).alerts;
    let usage = usage();
    let lines: Vec<&str> = usage.lines().collect();
    let (day1, rest) = (lines[..3].join("\n") + "\n", lines[3..].join("\n") + "\n");

    let k = Kafka::start(2);
    let mut cfg = common::durable(&k.cfg);
    let address = format!("127.0.0.1:{}", common::free_port());
    cfg.daemon.metrics_address = address.clone();
    let state = dir.path().join("state");
    let rules = Path::new(ROOT).join("rules");
    let (fraud, dl, fb) = (
        cfg.kafka.alert_topics.fraud.clone(),
        cfg.kafka.dead_letter_topic.clone(),
        cfg.kafka.feedback_topic.clone(),
    );
    let count = |m: &[Read], t: &str| m.iter().filter(|m| m.topic == t).count();

    k.produce(day1.as_bytes(), b"");
    let c = control();
    let daemon = k.daemon_with_state(cfg.clone(), &rules, c.clone(), Some(&state));
    let mut reader = k.reader(&[&fraud, &dl]);
    assert!(
        reader.read_until(Duration::from_secs(90), |m| count(m, &fraud) >= 1),
        "day 1's alert"
    );
    let first: Alert = parse(&reader.messages[0]);
    assert_eq!(first.alert_id, plain[0].alert_id, "the replay's id");

    let snooze = json!({"alert_id": first.alert_id, "disposition": "snooze",
                        "until": "2026-11-12T00:00:00+01:00", "analyst": "m.durand"})
    .to_string();
    let unknown = json!({"alert_id": "0123456789abcdef0123456789abcdef",
                         "disposition": "false_positive", "analyst": "a.okafor"})
    .to_string();
    // In this order: a worker answers the unknown decision after the snooze, so its dead letter
    // says the snooze has been applied.
    k.produce_raw(
        &fb,
        &[snooze.as_bytes(), b"{\"alert_id\": 12", unknown.as_bytes()],
    );
    assert!(
        reader.read_until(Duration::from_secs(60), |m| count(m, &dl) >= 2),
        "two dead letters"
    );
    let mut reasons: Vec<String> = reader
        .messages
        .iter()
        .filter(|m| m.topic == dl)
        .map(|m| m.headers["cdrguard.reason"].clone())
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["invalid_json", "unknown_alert"]);
    assert_eq!(
        metric(
            &address,
            "cdrguard_alert_dispositions_total{rule=\"irsf_high_risk_destination\",disposition=\"snooze\"}"
        ),
        1
    );

    k.produce(rest.as_bytes(), b"");
    assert!(
        reader.read_until(Duration::from_secs(90), |m| count(m, &fraud) >= 3),
        "days 3 and 4"
    );
    stop(&c, daemon);
    reader.read_until(Duration::from_secs(2), |_| false);
    let got: Vec<String> = reader
        .messages
        .iter()
        .filter(|m| m.topic == fraud)
        .map(|m| parse(m).alert_id)
        .collect();
    let want: Vec<String> = [0, 2, 3]
        .iter()
        .map(|&i| plain[i].alert_id.clone())
        .collect();
    assert_eq!(got, want, "day 2 snoozed, nothing else changed");

    // Restarted on its checkpoints: the decisions are read again; none is dead-lettered again.
    let c = control();
    let daemon = k.daemon_with_state(cfg.clone(), &rules, c.clone(), Some(&state));
    let outcome = |o: &str| {
        metric(
            &address,
            &format!("cdrguard_feedback_total{{outcome=\"{o}\"}}"),
        )
    };
    wait_for("the decisions re-read", Duration::from_secs(60), || {
        outcome("again") >= 1 && outcome("unknown_alert") >= 1 && outcome("malformed") >= 1
    });
    assert_eq!(outcome("applied"), 0, "the snooze was in the checkpoint");
    reader.read_until(Duration::from_secs(2), |_| false);
    stop(&c, daemon);
    assert_eq!(count(&reader.messages, &dl), 2, "no dead letter twice");
    assert_eq!(count(&reader.messages, &fraud), 3, "no alert again");
}
