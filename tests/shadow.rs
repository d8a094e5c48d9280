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
