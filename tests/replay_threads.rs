//! `replay --threads N` gives the alerts, dead letters and counts of a one-thread replay, for every
//! N, on traffic with every story, Wangiri waves whose victims are spread over every worker, and the
//! dirt of a real feed (malformed lines, resends, a conflicting resend, a late record, lines that
//! name no account). Its alert file is the same for every N, order included.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use cdrguard::demo::gen::{generate, GenConfig};
use cdrguard::modes::replay::{self, ReplayOptions, ReplayReport, RulesChoice};
use cdrguard::modes::replay_split;
use serde_json::Value;

use common::ROOT;

/// Generated traffic with every story and Wangiri waves, made dirty.
fn input(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut inject: Vec<(String, u32)> = cdrguard::demo::gen::stories::STORY_RULES
        .iter()
        .map(|r| (r.to_string(), 1))
        .collect();
    inject.push(("wangiri_inbound".into(), 3));
    inject.push(("wangiri_callback".into(), 2));
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
    let lines: Vec<&str> = std::str::from_utf8(&u).unwrap().lines().collect();
    let mut out = String::new();
    let mut known = std::collections::HashSet::new();
    for (i, line) in lines.iter().enumerate() {
        let mut v: Value = serde_json::from_str(line).unwrap();
        // Every 40th line of a line seen before names no account: it is placed by the account its
        // line was last seen on. (A line whose first records name no account is placed by its
        // msisdn until one does, as in the daemon: the module docs of `replay_split`.)
        // (An inbound roamer's line is named by its IMSI alone.)
        let served = &v["served"];
        let line = served["msisdn"]
            .as_str()
            .or(served["imsi"].as_str())
            .unwrap();
        let seen = !known.insert(line.to_string());
        if i % 40 == 7 && seen {
            v["served"].as_object_mut().unwrap().remove("account_id");
        }
        let text = v.to_string();
        out.push_str(&text);
        out.push('\n');
        match i % 1000 {
            // A resend: the same record again.
            100 => {
                out.push_str(&text);
                out.push('\n');
            }
            // A resend with other content: dead-lettered as a conflict.
            200 => {
                v["duration_s"] = Value::from(v["duration_s"].as_u64().unwrap_or(0) + 1);
                out.push_str(&v.to_string());
                out.push('\n');
            }
            300 => out.push_str("{\"record_id\": \"broken\", \"record_type\": \n"),
            _ => {}
        }
    }
    // A record of the first hour, arriving at the end: late.
    let mut late: Value = serde_json::from_str(lines[0]).unwrap();
    late["record_id"] = Value::from("late-1");
    out.push_str(&late.to_string());
    out.push('\n');
    let (usage, events) = (dir.join("usage.ndjson"), dir.join("events.ndjson"));
    std::fs::write(&usage, out).unwrap();
    std::fs::write(&events, e).unwrap();
    (usage, events)
}

/// Alerts without `detected_at` (the wall clock), in file order; the dead letters; the report.
fn run(
    dir: &Path,
    usage: &Path,
    events: &Path,
    threads: Option<usize>,
) -> (Vec<Value>, String, ReplayReport) {
    let name = threads.map_or("one".to_string(), |n| n.to_string());
    let dead_letter = dir.join(format!("rejected-{name}.ndjson"));
    let opts = ReplayOptions {
        usage: usage.to_path_buf(),
        events: Some(events.to_path_buf()),
        dead_letter: Some(dead_letter.clone()),
        rules: RulesChoice::Dir(Path::new(ROOT).join("rules")),
        ..Default::default()
    };
    let mut out = Vec::new();
    let report = match threads {
        None => replay::run_to(&opts, &mut out).unwrap().0,
        Some(n) => replay_split::run_to(&opts, n, &mut out).unwrap(),
    };
    let alerts = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("detected_at");
            v
        })
        .collect();
    (
        alerts,
        std::fs::read_to_string(dead_letter).unwrap(),
        report,
    )
}

fn by_id(alerts: &[Value]) -> BTreeMap<String, Value> {
    alerts
        .iter()
        .map(|a| (a["alert_id"].as_str().unwrap().to_string(), a.clone()))
        .collect()
}

/// Only what differs, by alert id.
fn assert_same(got: &BTreeMap<String, Value>, want: &BTreeMap<String, Value>, n: usize) {
    let differ: Vec<String> = got
        .keys()
        .chain(want.keys())
        .filter(|k| got.get(*k) != want.get(*k))
        .map(|k| {
            format!(
                "{k}:\n  {n} threads: {}\n  one thread: {}",
                got.get(k).map_or("-".into(), Value::to_string),
                want.get(k).map_or("-".into(), Value::to_string)
            )
        })
        .collect();
    assert!(
        differ.is_empty(),
        "{n} threads: alerts differ from one thread's:\n{}",
        differ.join("\n")
    );
}

#[test]
fn every_thread_count_gives_the_alerts_of_one_thread() {
    let dir = tempfile::tempdir().unwrap();
    let (usage, events) = input(dir.path());
    let (alerts, rejected, report) = run(dir.path(), &usage, &events, None);

    let rules = |id: &str| alerts.iter().filter(|a| a["rule"]["id"] == id).count();
    assert!(
        rules("wangiri_inbound") >= 3 && rules("wangiri_callback") >= 2,
        "the one-thread replay raises the waves and callbacks: {} waves, {} callbacks",
        rules("wangiri_inbound"),
        rules("wangiri_callback")
    );
    let c = &report.counts;
    assert!(c.duplicates > 0, "resends are counted: {c:?}");
    for reason in ["conflicting_duplicate", "invalid_json", "late"] {
        assert!(
            rejected.contains(&format!("\"{reason}\"")),
            "the dirty input is dead-lettered as {reason}"
        );
    }

    let mut first: Option<Vec<Value>> = None;
    // 64: most workers see a line now and then, so timers fire far from their own lines.
    for n in [1, 2, 3, 5, 64] {
        let (got, got_rejected, got_report) = run(dir.path(), &usage, &events, Some(n));
        assert_same(&by_id(&got), &by_id(&alerts), n);
        assert_eq!(
            got_rejected, rejected,
            "{n} threads: the dead letters of one thread"
        );
        let g = &got_report.counts;
        assert_eq!(
            (
                g.lines,
                g.usage_accepted,
                g.events_accepted,
                g.duplicates,
                &g.rejected
            ),
            (
                c.lines,
                c.usage_accepted,
                c.events_accepted,
                c.duplicates,
                &c.rejected
            ),
            "{n} threads: the counts of one thread"
        );
        assert_eq!(got_report.alerts, report.alerts);
        let (r1, rn) = (
            report.rules.as_ref().unwrap(),
            got_report.rules.as_ref().unwrap(),
        );
        let rules = |r: &cdrguard::rules::RulesReport| {
            let c = &r.counters;
            (
                c.usage_records,
                c.usage_without_rules,
                c.events,
                c.timers,
                c.evaluations,
                c.alerts,
            )
        };
        assert_eq!(
            rules(rn),
            rules(r1),
            "{n} threads: the rule counts of one thread"
        );
        match &first {
            None => first = Some(got),
            Some(f) => assert_eq!(
                &got, f,
                "{n} threads: the alert file of one worker, in order"
            ),
        }
    }
}
