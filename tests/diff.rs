//! `cdrguard diff` on two libraries that differ by one change lists what that change does to the
//! alerts, and nothing else: a lower count threshold raises alerts earlier or adds some (each alert
//! of either side counted once); a lower severity threshold changes severities (no alert only on one
//! side); a rule put in shadow changes where its alerts go.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use cdrguard::demo::gen::{generate, GenConfig};
use cdrguard::modes::diff::{self, DiffOptions, DiffReport, RuleDiff};
use cdrguard::modes::replay::{self, ReplayOptions, RulesChoice};
use cdrguard::record::Alert;

use common::{copy_tree, ROOT};

const IRSF: &str = "irsf_high_risk_destination";

struct Input {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    usage: PathBuf,
    events: PathBuf,
}

fn input() -> Input {
    let dir = tempfile::tempdir().unwrap();
    let cfg = GenConfig {
        subscribers: 2_000,
        records: 40_000,
        days: 4,
        seed: 11,
        inject: vec![
            (IRSF.into(), 4),
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
    Input {
        dir: dir.path().to_path_buf(),
        _dir: dir,
        usage,
        events,
    }
}

fn shipped() -> PathBuf {
    Path::new(ROOT).join("rules")
}

/// A copy of the shipped library named `name`, with `edit` applied to the text of `file`.
fn library(input: &Input, name: &str, file: &str, edit: impl Fn(&str) -> String) -> PathBuf {
    let b = input.dir.join(name);
    copy_tree(&shipped(), &b);
    let text = std::fs::read_to_string(b.join(file)).unwrap();
    let changed = edit(&text);
    assert_ne!(changed, text, "the edit of {file} applies");
    std::fs::write(b.join(file), changed).unwrap();
    b
}

fn diff_against(input: &Input, b: &Path) -> DiffReport {
    diff::run(&DiffOptions {
        usage: input.usage.clone(),
        events: Some(input.events.clone()),
        config: None,
        rules: shipped(),
        against: b.to_path_buf(),
        examples: usize::MAX,
        progress: false,
    })
    .unwrap()
}

fn replayed(rules: &Path, input: &Input) -> Vec<Alert> {
    let opts = ReplayOptions {
        usage: input.usage.clone(),
        events: Some(input.events.clone()),
        no_dead_letter: true,
        rules: RulesChoice::Dir(rules.to_path_buf()),
        shadow_in_alerts: true,
        ..Default::default()
    };
    let mut out = Vec::new();
    replay::run_to(&opts, &mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn rule<'a>(report: &'a DiffReport, id: &str) -> &'a RuleDiff {
    report.rules.iter().find(|r| r.rule == id).unwrap()
}

/// Every rule of the library is listed, and only `changed_rule` differs.
fn only_differs(report: &DiffReport, changed_rule: &str) {
    let scripts = walk(&shipped())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rhai"))
        .count();
    assert_eq!(report.rules.len(), scripts, "every rule is listed");
    let differing: Vec<&str> = report.differing().map(|r| r.rule.as_str()).collect();
    assert_eq!(differing, [changed_rule], "only the changed rule differs");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_lower_count_threshold_adds_alerts_and_each_is_counted_once() {
    let input = input();
    let b = library(&input, "rules-b", "params.toml", |t| {
        t.replacen("\nmin_calls = 3 ", "\nmin_calls = 2 ", 1)
    });
    let report = diff_against(&input, &b);
    only_differs(&report, IRSF);

    // Each side's alerts, as separate replays give them, each counted once.
    let (ra, rb) = (replayed(&shipped(), &input), replayed(&b, &input));
    for r in &report.rules {
        let count = |v: &[Alert]| v.iter().filter(|x| x.rule.id == r.rule).count() as u64;
        assert_eq!((r.a, r.b), (count(&ra), count(&rb)), "{}", r.rule);
        assert_eq!(r.both + r.only_a, r.a, "{}", r.rule);
        assert_eq!(r.both + r.only_b, r.b, "{}", r.rule);
    }
    let irsf = rule(&report, IRSF);
    assert!(
        irsf.only_b + irsf.changed > 0,
        "two calls raise alerts three did not, or raise them earlier: {irsf:?}"
    );
    for c in &irsf.changed_examples {
        // The same alert of the window, from the second call instead of the third.
        assert_eq!(c.a.entity, c.b.entity);
        assert!(c.b.time < c.a.time, "{c:?}");
    }
    let ids = |v: &[Alert]| -> BTreeSet<String> { v.iter().map(|x| x.alert_id.clone()).collect() };
    let (ia, ib) = (ids(&ra), ids(&rb));
    for e in &irsf.only_b_examples {
        assert!(ib.contains(&e.alert_id) && !ia.contains(&e.alert_id));
    }
    for e in &irsf.only_a_examples {
        assert!(ia.contains(&e.alert_id) && !ib.contains(&e.alert_id));
    }

    // The command: text by default, JSON with --json, exit 0.
    let bin = env!("CARGO_BIN_EXE_cdrguard");
    let run = |json: bool| {
        let mut c = std::process::Command::new(bin);
        c.args(["diff", "--quiet", "--rules"])
            .arg(shipped())
            .arg("--against")
            .arg(&b)
            .arg("--usage")
            .arg(&input.usage)
            .arg("--events")
            .arg(&input.events);
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
    assert!(text.contains(&format!("\n{IRSF}\n")), "{text}");
    let json: serde_json::Value = serde_json::from_str(&run(true)).unwrap();
    let row = json["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == IRSF)
        .unwrap();
    assert_eq!(
        (row["only_b"].as_u64(), row["changed"].as_u64()),
        (Some(irsf.only_b), Some(irsf.changed))
    );
}

#[test]
fn a_lower_severity_threshold_changes_severities_and_adds_no_alert() {
    let input = input();
    // The IRSF stories run 12 minutes: critical from 11 minutes on instead of 60.
    let b = library(&input, "rules-b", "params.toml", |t| {
        t.replacen(
            "\ncritical_minutes = 60.0 ",
            "\ncritical_minutes = 11.0 ",
            1,
        )
    });
    let report = diff_against(&input, &b);
    only_differs(&report, IRSF);
    let irsf = rule(&report, IRSF);
    assert_eq!((irsf.only_a, irsf.only_b), (0, 0), "{irsf:?}");
    assert!(irsf.changed > 0);
    for c in &irsf.changed_examples {
        assert_eq!(
            (c.a.severity.as_str(), c.b.severity.as_str()),
            ("high", "critical")
        );
        assert_eq!((&c.a.entity, &c.a.time), (&c.b.entity, &c.b.time));
    }
}

#[test]
fn a_rule_put_in_shadow_changes_where_its_alerts_go() {
    let input = input();
    let b = library(&input, "rules-b", &format!("fraud/{IRSF}.rhai"), |t| {
        t.replacen(
            "version: \"1.0.0\",",
            "version: \"1.0.0\",\n    mode: \"shadow\",",
            1,
        )
    });
    let report = diff_against(&input, &b);
    only_differs(&report, IRSF);
    let irsf = rule(&report, IRSF);
    assert_eq!((irsf.only_a, irsf.only_b), (0, 0), "{irsf:?}");
    assert_eq!(irsf.changed, irsf.a);
    for c in &irsf.changed_examples {
        assert_eq!((c.a.mode.as_str(), c.b.mode.as_str()), ("replay", "shadow"));
    }
}
