//! `cdrguard diff` on two libraries that differ by one threshold lists exactly the alerts that
//! change: those two separate replays disagree on, and no other.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use cdrguard::demo::gen::{generate, GenConfig};
use cdrguard::modes::diff::{self, DiffOptions};
use cdrguard::modes::replay::{self, ReplayOptions, RulesChoice};
use cdrguard::record::Alert;

use common::{copy_tree, ROOT};

fn replayed(rules: &Path, usage: &Path, events: &Path) -> BTreeMap<String, Alert> {
    let opts = ReplayOptions {
        usage: usage.to_path_buf(),
        events: Some(events.to_path_buf()),
        no_dead_letter: true,
        rules: RulesChoice::Dir(rules.to_path_buf()),
        ..Default::default()
    };
    let mut out = Vec::new();
    replay::run_to(&opts, &mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| {
            let a: Alert = serde_json::from_str(l).unwrap();
            (a.alert_id.clone(), a)
        })
        .collect()
}

#[test]
fn one_threshold_changed_lists_exactly_the_alerts_that_change() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = GenConfig {
        subscribers: 2_000,
        records: 40_000,
        days: 4,
        seed: 11,
        inject: vec![
            ("irsf_high_risk_destination".into(), 4),
            ("sms_sim_farm".into(), 2),
            ("wangiri_inbound".into(), 1),
        ],
        ..GenConfig::default()
    };
    let (mut u, mut e) = (Vec::new(), Vec::new());
    generate(&cfg, &mut u, &mut e).unwrap();
    let (usage, events) = (dir.path().join("u.ndjson"), dir.path().join("e.ndjson"));
    std::fs::write(&usage, u).unwrap();
    std::fs::write(&events, e).unwrap();

    // B: IRSF on two calls within the hour instead of three.
    let a = Path::new(ROOT).join("rules");
    let b = dir.path().join("rules-b");
    copy_tree(&a, &b);
    let params = std::fs::read_to_string(b.join("params.toml")).unwrap();
    let changed = params.replacen("\nmin_calls = 3 ", "\nmin_calls = 2 ", 1);
    assert_ne!(changed, params, "the threshold is in params.toml");
    std::fs::write(b.join("params.toml"), changed).unwrap();

    let report = diff::run(&DiffOptions {
        usage: usage.clone(),
        events: Some(events.clone()),
        config: None,
        rules: a.clone(),
        against: b.clone(),
        examples: usize::MAX,
        progress: false,
    })
    .unwrap();

    // What two separate replays say.
    let (ra, rb) = (replayed(&a, &usage, &events), replayed(&b, &usage, &events));
    let only = |x: &BTreeMap<String, Alert>, y: &BTreeMap<String, Alert>| -> Vec<String> {
        x.keys().filter(|k| !y.contains_key(*k)).cloned().collect()
    };
    let (only_a, only_b) = (only(&ra, &rb), only(&rb, &ra));
    let changed: Vec<String> = ra
        .iter()
        .filter_map(|(k, x)| {
            let y = rb.get(k)?;
            (x.severity != y.severity
                || x.departments != y.departments
                || x.trigger_event_time != y.trigger_event_time)
                .then(|| k.clone())
        })
        .collect();
    assert!(
        !only_b.is_empty() || !changed.is_empty(),
        "the lower threshold changes something on this traffic"
    );

    let ids = |f: &dyn Fn(&diff::RuleDiff) -> Vec<String>| -> Vec<String> {
        let mut v: Vec<String> = report.rules.iter().flat_map(f).collect();
        v.sort();
        v
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(
        ids(&|r| r
            .only_a_examples
            .iter()
            .map(|e| e.alert_id.clone())
            .collect()),
        sorted(only_a)
    );
    assert_eq!(
        ids(&|r| r
            .only_b_examples
            .iter()
            .map(|e| e.alert_id.clone())
            .collect()),
        sorted(only_b)
    );
    assert_eq!(
        ids(&|r| r
            .changed_examples
            .iter()
            .map(|c| c.a.alert_id.clone())
            .collect()),
        sorted(changed)
    );
    for r in &report.rules {
        assert_eq!(
            r.a as usize,
            ra.values().filter(|x| x.rule.id == r.rule).count()
        );
        assert_eq!(
            r.b as usize,
            rb.values().filter(|x| x.rule.id == r.rule).count()
        );
        if r.rule != "irsf_high_risk_destination" {
            assert_eq!(
                r.only_a + r.only_b + r.changed,
                0,
                "{}: only the changed rule differs",
                r.rule
            );
        }
    }
    assert_eq!(
        report.rules.len(),
        17,
        "every rule is listed, with alerts or not"
    );

    // The command: text by default, JSON with --json, exit 0.
    let bin = env!("CARGO_BIN_EXE_cdrguard");
    let run = |json: bool| {
        let mut c = std::process::Command::new(bin);
        c.args(["diff", "--quiet", "--rules"])
            .arg(&a)
            .arg("--against")
            .arg(&b)
            .arg("--usage")
            .arg(&usage)
            .arg("--events")
            .arg(&events);
        if json {
            c.arg("--json");
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let text = run(false);
    assert!(text.contains("irsf_high_risk_destination\n"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&run(true)).unwrap();
    let irsf = json["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == "irsf_high_risk_destination")
        .unwrap();
    let r = report
        .rules
        .iter()
        .find(|r| r.rule == "irsf_high_risk_destination")
        .unwrap();
    assert_eq!(
        (irsf["only_b"].as_u64(), irsf["changed"].as_u64()),
        (Some(r.only_b), Some(r.changed))
    );
}
