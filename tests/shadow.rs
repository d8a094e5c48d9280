//! Shadow rules (`RULE.mode: "shadow"`) run on the same state and records as the live ones, and
//! their alerts reach no department: in a replay they go to the shadow file, never to the alert
//! file; in the daemon to the shadow topic, never to a department's topic. The live rules' alerts
//! are those of the library without the candidate.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cdrguard::modes::replay::{self, ReplayOptions, RulesChoice};
use cdrguard::record::{Alert, Mode};
use serde_json::Value;

use common::kafka::*;
use common::{copy_tree, ROOT};

const CANDIDATE: &str = "irsf_candidate";

/// The shipped library plus a candidate: IRSF on two calls within the hour, in shadow.
fn library_with_candidate(dir: &Path) -> PathBuf {
    let lib = dir.join("rules");
    copy_tree(&Path::new(ROOT).join("rules"), &lib);
    let irsf = std::fs::read_to_string(lib.join("fraud/irsf_high_risk_destination.rhai")).unwrap();
    let candidate = irsf.replace(
        "id: \"irsf_high_risk_destination\",",
        &format!("id: \"{CANDIDATE}\",\n    mode: \"shadow\","),
    );
    assert_ne!(candidate, irsf);
    std::fs::write(lib.join(format!("fraud/{CANDIDATE}.rhai")), candidate).unwrap();
    let mut params = std::fs::read_to_string(lib.join("params.toml")).unwrap();
    params.push_str(&format!(
        "\n[{CANDIDATE}]\nmin_calls = 2\nmin_minutes = 10.0\ncritical_minutes = 60.0\n"
    ));
    std::fs::write(lib.join("params.toml"), params).unwrap();
    lib
}

/// An alert as compared across libraries: without the wall clock and the library's version.
fn comparable(a: &Alert) -> Value {
    let mut v = serde_json::to_value(a).unwrap();
    let o = v.as_object_mut().unwrap();
    o.remove("detected_at");
    o.remove("mode");
    o["rule"].as_object_mut().unwrap().remove("ruleset_version");
    v
}

fn read_alerts(path: &Path) -> Vec<Alert> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Replays with `rules`; the alert file's alerts and the shadow file's.
fn replay_files(dir: &Path, rules: &Path, usage: &Path, events: &Path) -> (Vec<Alert>, Vec<Alert>) {
    let out = dir.join(format!("alerts-{}.ndjson", fastrand::u32(..)));
    let opts = ReplayOptions {
        usage: usage.to_path_buf(),
        events: Some(events.to_path_buf()),
        out: Some(out.clone()),
        no_dead_letter: true,
        rules: RulesChoice::Dir(rules.to_path_buf()),
        ..Default::default()
    };
    let (report, _) = replay::run(&opts).unwrap();
    let mut shadow = out.into_os_string();
    shadow.push(".shadow.ndjson");
    let shadow = PathBuf::from(shadow);
    let shadow_alerts = read_alerts(&shadow);
    assert_eq!(report.shadow_alerts as usize, shadow_alerts.len());
    let row = report
        .rules
        .as_ref()
        .unwrap()
        .rules
        .iter()
        .find(|r| r.id == CANDIDATE)
        .map(|r| r.mode);
    if rules.join(format!("fraud/{CANDIDATE}.rhai")).exists() {
        assert_eq!(
            row,
            Some("shadow"),
            "the summary says the candidate runs in shadow"
        );
    }
    (read_alerts(&opts.out.unwrap()), shadow_alerts)
}

fn inputs(dir: &Path) -> (PathBuf, PathBuf, Vec<u8>, Vec<u8>) {
    let (usage, events, _) = stories(31);
    let (u, e) = (dir.join("u.ndjson"), dir.join("e.ndjson"));
    std::fs::write(&u, &usage).unwrap();
    std::fs::write(&e, &events).unwrap();
    (u, e, usage, events)
}

#[test]
fn in_a_replay_shadow_alerts_go_to_the_shadow_file_only() {
    let dir = tempfile::tempdir().unwrap();
    let lib = library_with_candidate(dir.path());
    let (u, e, _, _) = inputs(dir.path());
    let (live, shadow) = replay_files(dir.path(), &lib, &u, &e);
    let (plain, none) = replay_files(dir.path(), &Path::new(ROOT).join("rules"), &u, &e);
    assert!(none.is_empty(), "no shadow file without shadow rules");

    assert!(!shadow.is_empty(), "the candidate fires on the IRSF story");
    for a in &shadow {
        assert_eq!(a.mode, Mode::Shadow);
        assert_eq!(a.rule.id, CANDIDATE);
    }
    assert!(
        live.iter()
            .all(|a| a.mode != Mode::Shadow && a.rule.id != CANDIDATE),
        "no shadow alert in the alert file"
    );
    let by_id = |v: &[Alert]| -> BTreeMap<String, Value> {
        v.iter()
            .map(|a| (a.alert_id.clone(), comparable(a)))
            .collect()
    };
    assert_eq!(
        by_id(&live),
        by_id(&plain),
        "the live alerts are those of the library without the candidate"
    );
}

#[test]
fn in_the_daemon_shadow_alerts_go_to_the_shadow_topic_only() {
    let dir = tempfile::tempdir().unwrap();
    let lib = library_with_candidate(dir.path());
    let (u, e, usage, events) = inputs(dir.path());
    let (live, shadow) = replay_files(dir.path(), &lib, &u, &e);
    assert!(!shadow.is_empty());

    let k = Kafka::start(2);
    k.produce(&usage, &events);
    let c = control();
    let daemon = k.daemon(k.cfg.clone(), &lib, c.clone());
    let shadow_topic = k.cfg.kafka.shadow_topic.clone();
    let mut topics = alert_topics(&k);
    topics.push(shadow_topic.clone());
    let mut reader = k.reader(&topics.iter().map(String::as_str).collect::<Vec<_>>());
    let want: usize = live.iter().map(|a| a.departments.len()).sum::<usize>() + shadow.len();
    let complete = reader.read_until(Duration::from_secs(90), |m| m.len() >= want);
    stop(&c, daemon);
    reader.read_until(Duration::from_secs(2), |_| false);
    assert!(
        complete,
        "{} of {want} messages ({} on the shadow topic)",
        reader.messages.len(),
        reader
            .messages
            .iter()
            .filter(|m| m.topic == shadow_topic)
            .count()
    );
    assert_eq!(reader.messages.len(), want, "nothing more");

    let shadow_ids: std::collections::BTreeSet<String> =
        shadow.iter().map(|a| a.alert_id.clone()).collect();
    let mut on_shadow_topic = std::collections::BTreeSet::new();
    for m in &reader.messages {
        let a = parse(m);
        if m.topic == shadow_topic {
            assert_eq!(a.mode, Mode::Shadow);
            assert_eq!(a.rule.id, CANDIDATE);
            assert_eq!(m.headers["cdrguard.mode"], "shadow");
            assert!(!m.headers.contains_key("cdrguard.department"));
            assert_eq!(m.key, a.entity.key.as_bytes());
            on_shadow_topic.insert(a.alert_id);
        } else {
            assert_eq!(a.mode, Mode::Live, "on {}: {a:?}", m.topic);
            assert_ne!(a.rule.id, CANDIDATE, "a shadow alert on {}", m.topic);
        }
    }
    assert_eq!(
        on_shadow_topic, shadow_ids,
        "the replay's shadow alerts, once each"
    );
}

/// A live rule reading a shadow rule's alerts (`alerted`) does not see them: with the Wangiri wave
/// rule in shadow, no callback alert reaches a department.
#[test]
fn a_live_rule_does_not_read_a_shadow_rules_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("rules");
    copy_tree(&Path::new(ROOT).join("rules"), &lib);
    let wave = lib.join("fraud/wangiri_inbound.rhai");
    let text = std::fs::read_to_string(&wave).unwrap();
    let shadowed = text.replacen(
        "version: \"1.0.0\",",
        "version: \"1.0.0\",\n    mode: \"shadow\",",
        1,
    );
    assert_ne!(shadowed, text);
    std::fs::write(&wave, shadowed).unwrap();
    let (u, e, _, _) = inputs(dir.path());

    let count = |v: &[Alert], rule: &str| v.iter().filter(|a| a.rule.id == rule).count();
    let (plain, _) = replay_files(dir.path(), &Path::new(ROOT).join("rules"), &u, &e);
    assert!(
        count(&plain, "wangiri_callback") > 0,
        "with the wave rule live, the callback story alerts"
    );
    let (live, shadow) = replay_files(dir.path(), &lib, &u, &e);
    assert!(
        count(&shadow, "wangiri_inbound") > 0,
        "the waves go to the shadow file"
    );
    assert_eq!(count(&live, "wangiri_inbound"), 0);
    assert_eq!(
        count(&live, "wangiri_callback"),
        0,
        "no callback alert from a wave only a shadow rule saw"
    );
}

/// A copy of the shipped library with IRSF at two calls instead of three: the candidate.
fn candidate_library(dir: &Path) -> PathBuf {
    let lib = dir.join("candidate");
    copy_tree(&Path::new(ROOT).join("rules"), &lib);
    let params = std::fs::read_to_string(lib.join("params.toml")).unwrap();
    let changed = params.replacen(
        "[irsf_high_risk_destination]\nmin_calls = 3",
        "[irsf_high_risk_destination]\nmin_calls = 2",
        1,
    );
    assert_ne!(changed, params);
    std::fs::write(lib.join("params.toml"), changed).unwrap();
    lib
}

/// A candidate library (`replay --shadow-rules`, `rules.shadow_dir`) runs beside the live one on
/// the same records and state: the live alerts are those of the live library alone; every
/// candidate alert goes to the shadow file, with an id of its own; the overlap finds every
/// unchanged rule's alerts in both, and the lowered IRSF threshold catching what the live rule
/// catches and more.
#[test]
fn in_a_replay_a_candidate_library_runs_in_shadow_beside_the_live_one() {
    let dir = tempfile::tempdir().unwrap();
    let cand = candidate_library(dir.path());
    let (u, e, _, _) = inputs(dir.path());
    let rules = Path::new(ROOT).join("rules");
    let (plain, _) = replay_files(dir.path(), &rules, &u, &e);

    let out = dir.path().join("with-candidate.ndjson");
    let opts = ReplayOptions {
        usage: u.clone(),
        events: Some(e.clone()),
        out: Some(out.clone()),
        no_dead_letter: true,
        rules: RulesChoice::Dir(rules.clone()),
        candidate: Some(cand.clone()),
        ..Default::default()
    };
    let (report, _) = replay::run(&opts).unwrap();
    let live = read_alerts(&out);
    let shadow = read_alerts(&dir.path().join("with-candidate.ndjson.shadow.ndjson"));
    let by_id = |v: &[Alert]| -> BTreeMap<String, Value> {
        v.iter()
            .map(|a| (a.alert_id.clone(), comparable(a)))
            .collect()
    };
    assert_eq!(by_id(&live), by_id(&plain), "the live alerts are unchanged");
    assert_eq!(report.shadow_alerts as usize, shadow.len());
    assert!(
        shadow.len() >= plain.len(),
        "the candidate raises what the live rules do"
    );
    for a in &shadow {
        assert_eq!(a.mode, Mode::Shadow);
        assert!(!by_id(&live).contains_key(&a.alert_id), "an id of its own");
    }

    let c = report.candidate.as_ref().expect("the candidate's report");
    assert_eq!(c.rules.rules_active, 17);
    let count = |v: &[Alert], rule: &str| v.iter().filter(|a| a.rule.id == rule).count() as u64;
    for row in &c.overlap {
        let o = row.overlap;
        if row.rule == "irsf_high_risk_destination" {
            assert_eq!(
                o.live_only, 0,
                "the candidate catches what the live rule does"
            );
            assert_eq!(o.both, count(&plain, &row.rule), "{o:?}");
            // Sooner: at the second call, where the live rule fires at the third.
            let first = |v: &[Alert]| {
                v.iter()
                    .filter(|a| a.rule.id == row.rule)
                    .map(|a| a.trigger_event_time.utc)
                    .min()
                    .unwrap()
            };
            assert!(first(&shadow) < first(&plain), "{o:?}");
        } else {
            assert_eq!(
                (o.both, o.live_only, o.shadow_only),
                (count(&plain, &row.rule), 0, 0),
                "{} is unchanged",
                row.rule
            );
        }
    }
    assert_eq!(c.overlap.len(), 17);
    assert!(report.render().contains("overlap with the live rules"));

    // The summary with its candidate block validates against the schema.
    common::assert_summary_valid(&report);
}

/// The daemon with `rules.shadow_dir`: candidate alerts reach the shadow topic only, the live
/// ones the departments as without it, and the overlap is in the metrics.
#[test]
fn in_the_daemon_a_candidate_library_reaches_the_shadow_topic_only() {
    let dir = tempfile::tempdir().unwrap();
    let cand = candidate_library(dir.path());
    let (u, e, usage, events) = inputs(dir.path());
    let rules = Path::new(ROOT).join("rules");
    let (plain, _) = replay_files(dir.path(), &rules, &u, &e);
    let opts = ReplayOptions {
        usage: u,
        events: Some(e),
        no_dead_letter: true,
        rules: RulesChoice::Dir(rules.clone()),
        candidate: Some(cand.clone()),
        shadow_in_alerts: true,
        ..Default::default()
    };
    let mut out = Vec::new();
    replay::run_to(&opts, &mut out).unwrap();
    let shadow_count = String::from_utf8(out)
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"mode\":\"shadow\""))
        .count();
    assert!(shadow_count > 0);

    let k = Kafka::start(2);
    k.produce(&usage, &events);
    let mut cfg = k.cfg.clone();
    cfg.rules.shadow_dir = Some(cand);
    let address = format!("127.0.0.1:{}", common::free_port());
    cfg.daemon.metrics_address = address.clone();
    let c = control();
    let daemon = k.daemon(cfg.clone(), &rules, c.clone());
    let shadow_topic = cfg.kafka.shadow_topic.clone();
    let mut topics = alert_topics(&k);
    topics.push(shadow_topic.clone());
    let mut reader = k.reader(&topics.iter().map(String::as_str).collect::<Vec<_>>());
    let want: usize = plain.iter().map(|a| a.departments.len()).sum::<usize>() + shadow_count;
    let complete = reader.read_until(Duration::from_secs(90), |m| m.len() >= want);
    let (_, metrics) = common::http_get(&address, "/metrics");
    stop(&c, daemon);
    reader.read_until(Duration::from_secs(2), |_| false);
    assert!(complete, "{} of {want} messages", reader.messages.len());
    assert_eq!(reader.messages.len(), want, "nothing more");
    let on_shadow = reader
        .messages
        .iter()
        .filter(|m| m.topic == shadow_topic)
        .count();
    assert_eq!(on_shadow, shadow_count);
    for m in &reader.messages {
        assert_eq!(
            parse(m).mode == Mode::Shadow,
            m.topic == shadow_topic,
            "{}",
            m.topic
        );
    }
    assert!(
        metrics.contains(
            "cdrguard_shadow_overlap_total{rule=\"irsf_high_risk_destination\",side=\"both\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "cdrguard_rule_evaluations_total{rule=\"irsf_high_risk_destination\",mode=\"shadow\"}"
        ),
        "the candidate's rules by mode"
    );
}
