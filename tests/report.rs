//! The back-test (`replay --report`, `replay --labels`) end to end through the binary, on generated
//! stories for every rule of the shipped library (`gen --inject all=3 --labels`):
//! - the labels `gen` writes score 100% precision and recall for every rule, in the summary JSON;
//!   a CSV of confirmed cases scores the same, and a wrong one lists what it missed and what it
//!   did not expect;
//! - the HTML page loads in a real headless Chromium from a `file://` URL with no console message,
//!   no exception, no request but the page itself, and a full-page screenshot is taken.
//!
//! Chromium is required, not optional: without it the page test fails and says how to install it.
//! `CDRGUARD_UPDATE_SCREENSHOT=1` also copies the screenshot to docs/report.png (the README's).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use cdrguard::demo::gen::stories::STORY_RULES;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cdrguard");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn cdrguard(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(ROOT)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "cdrguard {args:?}:\n{stderr}");
    stderr
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Files of one generated back-test: 4 days of 1,500 subscribers with 3 stories per rule.
struct Stories {
    dir: tempfile::TempDir,
    usage: PathBuf,
    events: PathBuf,
    labels: PathBuf,
}

fn stories() -> Stories {
    let dir = tempfile::tempdir().unwrap();
    let (usage, events, labels) = (
        dir.path().join("usage.ndjson"),
        dir.path().join("events.ndjson"),
        dir.path().join("labels.json"),
    );
    cdrguard(&[
        "gen",
        "--usage",
        p(&usage),
        "--events",
        p(&events),
        "--labels",
        p(&labels),
        "--days",
        "4",
        "--subscribers",
        "1500",
        "--records",
        "40000",
        "--inject",
        "all=3",
    ]);
    Stories {
        dir,
        usage,
        events,
        labels,
    }
}

/// `replay` with the shipped rules; returns the summary JSON and the text summary.
fn replay(s: &Stories, extra: &[&str]) -> (Value, String) {
    let summary = s.dir.path().join("summary.json");
    let alerts = s.dir.path().join("alerts.ndjson");
    let mut args = vec![
        "replay",
        "--usage",
        p(&s.usage),
        "--events",
        p(&s.events),
        "--out",
        p(&alerts),
        "--rules",
        "rules",
        "--quiet",
        "--summary-json",
        p(&summary),
    ];
    args.extend(extra);
    let text = cdrguard(&args);
    let json = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    (json, text)
}

fn rule<'a>(summary: &'a Value, id: &str) -> &'a Value {
    summary["labels"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == id)
        .unwrap_or_else(|| panic!("no score for {id}: {:#}", summary["labels"]))
}

#[test]
fn gen_labels_score_full_precision_and_recall_for_every_rule() {
    let s = stories();
    let (summary, text) = replay(&s, &["--labels", p(&s.labels)]);
    let labels = &summary["labels"];
    for id in STORY_RULES {
        let r = rule(&summary, id);
        assert_eq!(
            (r["precision"].as_f64(), r["recall"].as_f64()),
            (Some(1.0), Some(1.0)),
            "{id}: {r:#}\n{text}"
        );
        assert!(r["labelled"].as_u64().unwrap() >= 3, "{id}: {r:#}");
    }
    assert_eq!(labels["overall"]["precision"], 1.0, "{text}");
    assert_eq!(labels["overall"]["recall"], 1.0, "{text}");
    assert!(
        text.contains("precision 100.0%") && text.contains("recall 100.0%"),
        "{text}"
    );

    // The same cases as CSV (with its header) score the same; then one case swapped for a wrong
    // one: its rule misses the wrong case and did not expect the alert it raised.
    let gen: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&s.labels).unwrap()).unwrap();
    let mut cases: BTreeSet<String> = gen
        .iter()
        .map(|l| {
            format!(
                "{},{},{}",
                l["rule"].as_str().unwrap(),
                l["entity_type"].as_str().unwrap(),
                l["entity"].as_str().unwrap()
            )
        })
        .collect();
    let csv = s.dir.path().join("confirmed.csv");
    let write = |cases: &BTreeSet<String>| {
        let body: Vec<&str> = cases.iter().map(String::as_str).collect();
        std::fs::write(
            &csv,
            format!("rule,entity_type,entity_key\n{}\n", body.join("\n")),
        )
        .unwrap();
    };
    write(&cases);
    let (from_csv, _) = replay(&s, &["--labels", p(&csv)]);
    assert_eq!(from_csv["labels"]["rules"], labels["rules"]);

    let dropped = cases
        .iter()
        .find(|c| c.starts_with("irsf_high_risk_destination,"))
        .unwrap()
        .clone();
    cases.remove(&dropped);
    cases.insert("irsf_high_risk_destination,subscriber,33700000000".into());
    write(&cases);
    let (wrong, text) = replay(&s, &["--labels", p(&csv)]);
    let r = rule(&wrong, "irsf_high_risk_destination");
    let third = 2.0 / 3.0;
    assert_eq!(
        (r["precision"].as_f64(), r["recall"].as_f64()),
        (Some(third), Some(third)),
        "{r:#}"
    );
    assert_eq!(r["missed"][0]["entity_key"], "33700000000");
    let key = dropped.rsplit(',').next().unwrap();
    assert_eq!(r["unexpected"][0]["entity_key"], key);
    assert!(
        text.contains("missed      irsf_high_risk_destination subscriber 33700000000"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "unexpected  irsf_high_risk_destination subscriber {key}"
        )),
        "{text}"
    );
}

#[test]
fn report_loads_in_chromium_without_console_errors_or_network() {
    // Fail before the replay, not after it, when there is no browser.
    common::chromium::binary();
    let s = stories();
    let html = s.dir.path().join("report.html");
    replay(&s, &["--labels", p(&s.labels), "--report", p(&html)]);
    let page = std::fs::read_to_string(&html).unwrap();

    // Self-contained by construction: nothing that could fetch, nothing that runs.
    for needle in [
        "http://", "https://", "src=", "href=", "url(", "<script", "<link", "@import",
    ] {
        assert!(!page.contains(needle), "the page holds {needle:?}");
    }
    for id in [
        "labels",
        "alerts-by-rule",
        "alerts-by-department",
        "severity",
        "entities",
        "timing",
        "rejects",
        "volume",
    ] {
        assert!(
            page.contains(&format!("<section id=\"{id}\">")),
            "no section {id}"
        );
    }

    // The detector sees what it must: a page that logs, throws and fetches is caught on all three.
    let work = s.dir.path().join("browser");
    std::fs::create_dir_all(work.join("canary")).unwrap();
    let canary = work.join("canary.html");
    std::fs::write(
        &canary,
        r#"<!DOCTYPE html><title>canary</title><img src="http://198.51.100.1/x.png"><script>console.error("canary"); missing();</script>"#,
    )
    .unwrap();
    let seen = common::chromium::visit(&canary, &work.join("canary.png"), &work.join("canary"));
    assert!(
        seen.console.iter().any(|c| c.contains("canary")),
        "{seen:?}"
    );
    assert!(
        seen.errors.iter().any(|e| e.contains("missing")),
        "{seen:?}"
    );
    assert!(
        seen.requests
            .iter()
            .any(|r| r.starts_with("http://198.51.100.1/")),
        "{seen:?}"
    );

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report.png");
    std::fs::create_dir_all(work.join("report")).unwrap();
    let v = common::chromium::visit(&html, &screenshot, &work.join("report"));
    let url = format!("file://{}", html.canonicalize().unwrap().display());
    assert_eq!(v.requests, [url], "requests other than the page itself");
    assert!(v.console.is_empty(), "console: {:?}", v.console);
    assert!(v.errors.is_empty(), "errors: {:?}", v.errors);
    assert!(
        v.title.starts_with("cdrguard back-test"),
        "title {:?}",
        v.title
    );
    // Alerts by rule and by department, severity, timing, input volume: each an inline SVG.
    assert!(v.svgs >= 5, "{} charts", v.svgs);
    let png = std::fs::read(&screenshot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    println!("screenshot of the back-test page: {}", screenshot.display());
    if std::env::var_os("CDRGUARD_UPDATE_SCREENSHOT").is_some() {
        std::fs::copy(&screenshot, Path::new(ROOT).join("docs/report.png")).unwrap();
        println!("copied to docs/report.png");
    }
}
