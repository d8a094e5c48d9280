//! Scenario tests are data: each folder under `fixtures/scenarios/` holds `usage.ndjson`, optionally
//! `events.ndjson` and `config.toml`, and `expect.json`:
//!
//! ```json
//! { "summary": { "usage_accepted": 4, "duplicates": 1, "rejected": { "late": 1 }, "timers_fired": 2 },
//!   "checks": [ { "at": "…", "target": { "msisdn": "…" }, "windows": ["10m"], "filters": ["voice.mo"],
//!                 "expect": { …a subset of the `inspect --json` report… } } ] }
//! ```
//!
//! `expect` is matched as a subset: every key it names must be present with an equal value; arrays must
//! have the same length and match element-wise. Each check replays the input with `--at` semantics.

use std::path::{Path, PathBuf};

use cdrguard::classify::ClassFilter;
use cdrguard::modes::inspect::{self, Target, WindowSpec};
use cdrguard::modes::replay;
use cdrguard::record::{EventTime, Number};
use serde_json::Value;

fn subset(expected: &Value, actual: &Value, path: &str, errors: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, v) in e {
                match a.get(k) {
                    Some(av) => subset(v, av, &format!("{path}.{k}"), errors),
                    None => errors.push(format!("{path}.{k}: missing (expected {v})")),
                }
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                errors.push(format!(
                    "{path}: expected {} elements, got {}: {actual}",
                    e.len(),
                    a.len()
                ));
                return;
            }
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                subset(ev, av, &format!("{path}[{i}]"), errors);
            }
        }
        (Value::Number(e), Value::Number(a)) if e.as_f64() == a.as_f64() => {}
        (e, a) if e == a => {}
        (e, a) => errors.push(format!("{path}: expected {e}, got {a}")),
    }
}

fn target(t: &Value) -> Target {
    let s = |k: &str| t[k].as_str().map(str::to_string);
    if let Some(m) = s("msisdn") {
        Target::Subscriber(Number::parse(&m).unwrap())
    } else if let Some(a) = s("account") {
        Target::Account(a)
    } else if let Some(c) = s("calling_number") {
        Target::CallingNumber(Number::parse(&c).unwrap())
    } else {
        panic!("unknown target {t}")
    }
}

fn inputs(dir: &Path) -> (PathBuf, Option<PathBuf>, Option<PathBuf>) {
    let ev = dir.join("events.ndjson");
    let cfg = dir.join("config.toml");
    (
        dir.join("usage.ndjson"),
        ev.exists().then_some(ev),
        cfg.exists().then_some(cfg),
    )
}

fn run_scenario(dir: &Path) -> Vec<String> {
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
    let expect: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expect.json")).unwrap()).unwrap();
    let (usage, events, config) = inputs(dir);
    let tmp = tempfile::tempdir().unwrap();
    let mut errors = Vec::new();

    let (report, _) = replay::run_quiet(
        &usage,
        events.as_deref(),
        config.as_deref(),
        None,
        Some(tmp.path().join("dl.ndjson")),
    )
    .unwrap();
    if let Some(s) = expect.get("summary") {
        let mut actual = serde_json::to_value(&report.counts).unwrap();
        actual["timers_fired"] = report.store.timers_fired.into();
        actual["timers_pending"] = report.size.timers_pending.into();
        actual["blank_lines"] = report.blank_lines.into();
        actual["subscribers"] = report.size.subscribers.into();
        actual["accounts"] = report.size.accounts.into();
        actual["calling_numbers"] = report.size.calling_numbers.into();
        let mut s = s.clone();
        // `rejected` must match exactly, not as a subset: an unexpected reason is a failure.
        if let (Some(e), Some(a)) = (s.get("rejected"), actual.get("rejected")) {
            if e != a {
                errors.push(format!("{name}: summary.rejected: expected {e}, got {a}"));
            }
            s.as_object_mut().unwrap().remove("rejected");
        }
        subset(&s, &actual, &format!("{name}: summary"), &mut errors);
    }
    if let Some(dl) = expect.get("dead_letter") {
        let text = std::fs::read_to_string(tmp.path().join("dl.ndjson")).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        subset(
            dl,
            &Value::Array(lines),
            &format!("{name}: dead_letter"),
            &mut errors,
        );
    }
    for (i, check) in expect["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = check["at"].as_str().map(|s| EventTime::parse(s).unwrap());
        let (_, p) =
            replay::run_quiet(&usage, events.as_deref(), config.as_deref(), at, None).unwrap();
        let as_of = at.unwrap_or_else(|| EventTime {
            utc: p.store.borrow().watermark().unwrap(),
            offset_min: p.display_offset,
        });
        let strs = |k: &str, d: &[&str]| -> Vec<String> {
            check[k]
                .as_array()
                .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
                .unwrap_or_else(|| d.iter().map(|s| s.to_string()).collect())
        };
        let windows: Vec<WindowSpec> = strs("windows", &["1h"])
            .iter()
            .map(|w| WindowSpec::parse(w).unwrap())
            .collect();
        let filters: Vec<ClassFilter> = strs("filters", &["all"])
            .iter()
            .map(|f| ClassFilter::parse(f).unwrap())
            .collect();
        let report = inspect::report(
            &p.store.borrow(),
            &p.fired,
            &target(&check["target"]),
            as_of,
            &windows,
            &filters,
        );
        match report {
            Ok(r) => subset(
                &check["expect"],
                &serde_json::to_value(r).unwrap(),
                &format!(
                    "{name}: check {i} ({})",
                    check["why"].as_str().unwrap_or("")
                ),
                &mut errors,
            ),
            Err(e) => errors.push(format!("{name}: check {i}: {e}")),
        }
    }
    errors
}

#[test]
fn every_scenario_matches_its_expectations() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/scenarios");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 7, "expected the scenario set, found {dirs:?}");
    let mut errors = Vec::new();
    for d in &dirs {
        errors.extend(run_scenario(d));
    }
    assert!(
        errors.is_empty(),
        "{} scenario mismatches:\n{}",
        errors.len(),
        errors.join("\n")
    );
}
