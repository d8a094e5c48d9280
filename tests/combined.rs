//! The combined scenario (fixtures/combined/): stories for every rule over calm generated traffic
//! raise exactly their labelled alerts — every story's alert, nothing else.

mod common;

use std::collections::BTreeMap;

use cdrguard::demo::gen::{generate, GenConfig};
use common::*;

fn config(inject: bool) -> GenConfig {
    let mut stories: Vec<(String, u32)> = cdrguard::demo::gen::stories::STORY_RULES
        .iter()
        .map(|r| (r.to_string(), 1))
        .collect();
    for r in [
        "irsf_high_risk_destination",
        "wangiri_inbound",
        "credit_limit_exceeded",
    ] {
        stories.push((r.to_string(), 2));
    }
    GenConfig {
        subscribers: 1_500,
        records: 40_000,
        days: 4,
        seed: 1,
        inject: if inject { stories } else { Vec::new() },
        ..GenConfig::default()
    }
}

/// (rule, entity, severity) → how many.
type Tally = BTreeMap<(String, String, String), u32>;

fn replay(cfg: &GenConfig) -> (Tally, Vec<cdrguard::demo::gen::stories::Label>, String) {
    let dir = tempfile::tempdir().unwrap();
    let (mut usage, mut events) = (Vec::new(), Vec::new());
    let summary = generate(cfg, &mut usage, &mut events).unwrap();
    std::fs::write(dir.path().join("u.ndjson"), usage).unwrap();
    std::fs::write(dir.path().join("e.ndjson"), events).unwrap();
    let (report, _, alerts) = replay_with(
        &fixture("rules"),
        &dir.path().join("u.ndjson"),
        Some(&dir.path().join("e.ndjson")),
        None,
    );
    assert_eq!(report.counts.rejected_total(), 0, "{}", report.render());
    let mut tally = Tally::new();
    for a in &alerts {
        let severity = serde_json::to_value(a.severity).unwrap();
        *tally
            .entry((
                a.rule.id.clone(),
                a.entity.key.clone(),
                severity.as_str().unwrap().into(),
            ))
            .or_default() += 1;
    }
    (tally, summary.labels, report.render())
}

#[test]
fn the_background_alone_is_calm() {
    let (tally, labels, summary) = replay(&config(false));
    assert!(labels.is_empty());
    assert!(tally.is_empty(), "background alerts: {tally:?}\n{summary}");
}

#[test]
fn every_story_raises_its_alerts_and_nothing_else() {
    let (tally, labels, summary) = replay(&config(true));
    // The stories are the ones the fixture documents.
    let expect: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("fixtures/combined/expect.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        serde_json::to_value(&labels).unwrap(),
        expect["alerts"],
        "the generator's stories changed: update fixtures/combined/expect.json"
    );
    let mut expected = Tally::new();
    for l in &labels {
        let severity = serde_json::to_value(l.severity).unwrap();
        *expected
            .entry((
                l.rule.clone(),
                l.entity.clone(),
                severity.as_str().unwrap().into(),
            ))
            .or_default() += 1;
    }
    assert_eq!(tally, expected, "\n{summary}");
    // Every rule of the library is in the scenario.
    let rules: std::collections::BTreeSet<&str> = labels.iter().map(|l| l.rule.as_str()).collect();
    assert_eq!(rules.len(), 17, "{rules:?}");
}

#[test]
fn injecting_an_unknown_rule_or_into_a_short_period_is_a_clear_error() {
    let mut cfg = config(false);
    cfg.inject = vec![("wangiri".into(), 1)];
    let e = generate(&cfg, &mut Vec::new(), &mut Vec::new()).unwrap_err();
    assert!(
        e.to_string().contains("no story for rule \"wangiri\""),
        "{e}"
    );
    cfg.inject = vec![("bill_shock".into(), 1)];
    cfg.days = 3;
    let e = generate(&cfg, &mut Vec::new(), &mut Vec::new()).unwrap_err();
    assert!(e.to_string().contains("at least 4 days"), "{e}");
}
