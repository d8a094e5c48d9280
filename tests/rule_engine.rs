//! The rule engine end to end: hot reload (good change, broken change, params change without state
//! loss, file watch, SIGHUP), alert policy (routing, VIP overlay, ids, evidence), replay determinism,
//! and the shipped rules' own test cases.

mod common;

use std::path::Path;
use std::time::Duration;

use cdrguard::config::Config;
use cdrguard::pipeline::{Pipeline, PipelineOptions, RulesOptions};
use cdrguard::record::Mode;
use cdrguard::record::{Alert, Decoder, Department, Segment};
use cdrguard::record::{Decoded, Item};
use cdrguard::rules::watch::{ReloadCause, RuleWatcher};
use cdrguard::rules::RuleSources;
use cdrguard::state::WindowStore;
use common::*;

const IRSF: &str = "fraud/irsf_high_risk_destination.rhai";
const SATELLITE: &str = "88213000111";

/// A library folder holding the shipped IRSF rule and `params`.
fn irsf_library(dir: &Path, params: &str) {
    let text = std::fs::read_to_string(fixture(&format!("rules/{IRSF}"))).unwrap();
    write_files(dir, &[(IRSF, &text), ("params.toml", params)]);
}

const PARAMS: &str =
    "[irsf_high_risk_destination]\nmin_calls = 3\nmin_minutes = 10.0\ncritical_minutes = 60.0\n";

fn pipeline(rules: &Path) -> Pipeline {
    let (cfg, base) = Config::load(None).unwrap();
    let sources = RuleSources::read(rules).unwrap();
    Pipeline::new(PipelineOptions {
        rules: Some(RulesOptions {
            sources: &sources,
            sandbox: &cfg.rules.sandbox,
            quarantine: Default::default(),
            mode: Mode::Replay,
            high_risk_from_rules: false,
            candidate: None,
        }),
        ..PipelineOptions::new(
            cfg.classifier(&Path::new(ROOT).join(base)).unwrap(),
            cfg.state.clone(),
        )
    })
    .unwrap()
}

/// Feeds NDJSON usage lines and returns the alerts they raised.
fn feed(p: &mut Pipeline, lines: &[String]) -> Vec<Alert> {
    let decoder = Decoder::default();
    for (i, l) in lines.iter().enumerate() {
        let r = decoder.usage(l.as_bytes()).unwrap();
        p.process(Decoded {
            source: "usage",
            line: i as u64 + 1,
            raw: l.as_bytes(),
            truncated: 0,
            item: Ok(Item::Usage(r)),
        });
    }
    p.rules.as_mut().unwrap().take_alerts().collect()
}

/// `n` one-minute calls to a satellite number from `msisdn`, a minute apart from `hour:minute`.
fn calls(msisdn: &str, hour: u32, n: u32, tag: &str) -> Vec<String> {
    (0..n)
        .map(|i| {
            voice_mo(
                &format!("{tag}-{i}"),
                &format!("2026-11-10T{hour:02}:{:02}:00+01:00", i),
                msisdn,
                SATELLITE,
                60,
            )
        })
        .collect()
}

#[test]
fn a_good_change_swaps_and_stamps_the_new_version() {
    let dir = tempfile::tempdir().unwrap();
    irsf_library(dir.path(), PARAMS);
    let mut p = pipeline(dir.path());
    let v1 = p.rules.as_ref().unwrap().version().to_string();
    let a = feed(&mut p, &calls("33612000001", 10, 3, "a"));
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].rule.ruleset_version, v1);
    assert_eq!(a[0].rule.version, "1.0.0");

    let edited = std::fs::read_to_string(dir.path().join(IRSF))
        .unwrap()
        .replace("version: \"1.0.0\"", "version: \"1.1.0\"");
    write_files(dir.path(), &[(IRSF, &edited)]);
    p.reload_rules(&RuleSources::read(dir.path()).unwrap())
        .unwrap();
    let v2 = p.rules.as_ref().unwrap().version().to_string();
    assert_ne!(v1, v2);
    let b = feed(&mut p, &calls("33612000002", 10, 3, "b"));
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].rule.ruleset_version, v2);
    assert_eq!(b[0].rule.version, "1.1.0");
    assert_eq!(p.rules.as_ref().unwrap().counters.reloads_ok, 1);
}

#[test]
fn a_broken_change_keeps_the_old_set_and_names_file_line_column() {
    let dir = tempfile::tempdir().unwrap();
    irsf_library(dir.path(), PARAMS);
    let mut p = pipeline(dir.path());
    let v1 = p.rules.as_ref().unwrap().version().to_string();
    let good = std::fs::read_to_string(dir.path().join(IRSF)).unwrap();
    // Line 24 of the rule: an unterminated call.
    let line = good.lines().position(|l| l.contains("let calls")).unwrap() + 1;
    let broken = good.replace(
        "let calls = sub.count(\"voice.mo.high_risk\", \"1h\");",
        "let calls = sub.count(\"voice.mo.high_risk\", \"1h\";",
    );
    write_files(dir.path(), &[(IRSF, &broken)]);
    let err = p
        .reload_rules(&RuleSources::read(dir.path()).unwrap())
        .unwrap_err();
    let shown = err.errors[0].to_string();
    let at = format!("irsf_high_risk_destination.rhai:{line}:");
    assert!(shown.contains(&at), "{shown} (expected {at})");
    assert_eq!(p.rules.as_ref().unwrap().version(), v1, "old set active");
    assert_eq!(p.rules.as_ref().unwrap().counters.reloads_failed, 1);
    // The old rules still run.
    let a = feed(&mut p, &calls("33612000003", 10, 3, "c"));
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].rule.ruleset_version, v1);
}

#[test]
fn a_params_change_applies_without_losing_window_state() {
    let dir = tempfile::tempdir().unwrap();
    irsf_library(
        dir.path(),
        "[irsf_high_risk_destination]\nmin_calls = 5\nmin_minutes = 100.0\ncritical_minutes = 600.0\n",
    );
    let mut p = pipeline(dir.path());
    let all = calls("33612000004", 10, 4, "d");
    assert!(feed(&mut p, &all[..3]).is_empty(), "3 calls < 5");
    // The analyst lowers the threshold to 4; the three calls already seen still count.
    write_files(
        dir.path(),
        &[(
            "params.toml",
            "[irsf_high_risk_destination]\nmin_calls = 4\nmin_minutes = 100.0\ncritical_minutes = 600.0\n",
        )],
    );
    p.reload_rules(&RuleSources::read(dir.path()).unwrap())
        .unwrap();
    let a = feed(&mut p, &all[3..]);
    assert_eq!(a.len(), 1, "the 4th call alerts with the new threshold");
    assert_eq!(a[0].evidence.metrics["calls"], 4);
    assert_eq!(a[0].evidence.thresholds["calls"], 4);
}

#[test]
fn the_watcher_sees_file_changes_and_sighup() {
    let dir = tempfile::tempdir().unwrap();
    irsf_library(dir.path(), PARAMS);
    let v1 = RuleSources::read(dir.path()).unwrap().version;
    let w = RuleWatcher::spawn(
        dir.path().to_path_buf(),
        v1.clone(),
        Duration::from_millis(100),
        true,
    )
    .unwrap();
    // Nothing changed: nothing to reload.
    assert!(w.wait(Duration::from_millis(400)).is_none());
    write_files(
        dir.path(),
        &[(
            "params.toml",
            &PARAMS.replace("min_calls = 3", "min_calls = 4"),
        )],
    );
    let (cause, read) = w.wait(Duration::from_secs(5)).expect("change seen");
    assert_eq!(cause, ReloadCause::Changed);
    let v2 = read.unwrap().version;
    assert_ne!(v2, v1);
    signal_hook::low_level::raise(signal_hook::consts::SIGHUP).unwrap();
    let (cause, read) = w.wait(Duration::from_secs(5)).expect("SIGHUP seen");
    assert_eq!(cause, ReloadCause::Sighup);
    assert_eq!(read.unwrap().version, v2);
}

#[test]
fn key_accounts_are_routed_to_their_manager_instead_of_barred() {
    let dir = tempfile::tempdir().unwrap();
    irsf_library(dir.path(), PARAMS);
    let mut p = pipeline(dir.path());
    let decoder = Decoder::default();
    let ev = r#"{"event_id":"s1","event_type":"segment_changed","occurred_at":"2026-11-10T09:00:00+01:00","account_id":"A-VIP","segment":"vip"}"#;
    p.process(Decoded {
        source: "events",
        line: 1,
        raw: ev.as_bytes(),
        truncated: 0,
        item: Ok(Item::Event(decoder.account_event(ev.as_bytes()).unwrap())),
    });
    let with_account = |l: String, acct: &str| {
        l.replace(
            "\"served\":{",
            &format!("\"served\":{{\"account_id\":\"{acct}\","),
        )
    };
    let vip: Vec<String> = calls("33612000005", 10, 3, "v")
        .into_iter()
        .map(|l| with_account(l, "A-VIP"))
        .collect();
    let plain: Vec<String> = calls("33612000006", 11, 3, "p")
        .into_iter()
        .map(|l| with_account(l, "A-PLAIN"))
        .collect();
    let a = feed(&mut p, &[vip, plain].concat());
    assert_eq!(a.len(), 2);
    let (v, c) = (&a[0], &a[1]);
    assert_eq!(v.departments, [Department::Fraud, Department::KeyAccounts]);
    assert_eq!(v.recommended_actions, ["kam_review", "investigate"]);
    assert_eq!(v.entity.segment, Some(Segment::Vip));
    assert_eq!(v.entity.account_id.as_deref(), Some("A-VIP"));
    assert_eq!(c.departments, [Department::Fraud]);
    assert_eq!(c.recommended_actions, ["bar_international", "investigate"]);
    // The alert explains itself: the window, the trigger, the measured values and thresholds.
    assert_eq!(v.entity.key, "33612000005");
    assert_eq!(
        v.trigger_event_time.to_string(),
        "2026-11-10T10:02:00+01:00"
    );
    let w = v.window.as_ref().unwrap();
    assert_eq!(
        (w.size.as_str(), w.start.to_string().as_str()),
        ("1h", "2026-11-10T09:02:00+01:00")
    );
    assert_eq!(v.evidence.metrics["calls"], 3);
    assert_eq!(v.evidence.record_ids, ["v-2"]);
    assert_eq!(v.alert_id.len(), 32);
    assert_ne!(v.alert_id, c.alert_id);
}

fn replay_to_string(dir: &Path) -> String {
    let (_, _, alerts) = replay_with(
        &fixture("rules"),
        &dir.join("usage.ndjson"),
        Some(&dir.join("events.ndjson")),
        None,
    );
    assert!(alerts.len() >= 3, "the stories alert: {}", alerts.len());
    // Every alert emitted matches the published schema.
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("docs/schema/alert.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    for a in &alerts {
        let v = serde_json::to_value(a).unwrap();
        let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{v}: {errors:?}");
    }
    alerts
        .iter()
        .map(|a| {
            let mut v = serde_json::to_value(a).unwrap();
            v.as_object_mut().unwrap().remove("detected_at");
            v.to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn two_replays_of_the_same_input_give_identical_alerts() {
    // Background traffic with IRSF and Wangiri stories and an overdue invoice mixed in.
    let dir = tempfile::tempdir().unwrap();
    let cfg = cdrguard::demo::gen::GenConfig {
        subscribers: 2_000,
        records: 20_000,
        seed: 7,
        ..Default::default()
    };
    let mut usage = Vec::new();
    let mut events = Vec::new();
    cdrguard::demo::gen::generate(&cfg, &mut usage, &mut events).unwrap();
    for case in [
        "irsf_high_risk_destination/sixty_minutes_escalates_to_critical",
        "wangiri_inbound/twenty_victims_in_ten_minutes",
        "invoice_overdue/unpaid_through_three_stages",
    ] {
        let case = fixture(&format!("fixtures/rules/{case}"));
        usage.extend(std::fs::read(case.join("usage.ndjson")).unwrap());
        if let Ok(e) = std::fs::read(case.join("events.ndjson")) {
            events.extend(e);
        }
    }
    std::fs::write(dir.path().join("usage.ndjson"), &usage).unwrap();
    std::fs::write(dir.path().join("events.ndjson"), &events).unwrap();
    let first = replay_to_string(dir.path());
    let second = replay_to_string(dir.path());
    assert_eq!(first, second);
}

#[test]
fn the_shipped_rules_pass_their_own_test_cases() {
    let report =
        cdrguard::modes::ruletest::run(&fixture("rules"), &fixture("fixtures/rules")).unwrap();
    assert!(report.cases.len() >= 2, "cases found");
    assert_eq!(report.failed(), 0, "\n{}", report.render());
    assert!(report.untested.is_empty(), "{:?}", report.untested);
    assert!(report.orphans.is_empty(), "{:?}", report.orphans);
}

#[test]
fn a_case_whose_expectation_is_wrong_fails_with_a_diff() {
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("rules");
    irsf_library(&lib, PARAMS);
    let case = lib.join("fraud/irsf_high_risk_destination.cases/wrong");
    write_files(
        &case,
        &[
            (
                "usage.ndjson",
                &(calls("33612000007", 10, 3, "w").join("\n") + "\n"),
            ),
            (
                "expect.json",
                r#"{"alerts":[{"rule":"irsf_high_risk_destination","entity":"33612000007","severity":"critical"}]}"#,
            ),
        ],
    );
    let report = cdrguard::modes::ruletest::run(&lib, &dir.path().join("no-such-folder")).unwrap();
    assert_eq!(report.cases.len(), 1);
    assert_eq!(report.failed(), 1);
    let text = report.render();
    assert!(
        text.contains("- expected, not raised: irsf_high_risk_destination 33612000007 critical"),
        "{text}"
    );
    assert!(
        text.contains("+ raised, not expected: irsf_high_risk_destination 33612000007 high"),
        "{text}"
    );
}

#[test]
fn check_warns_about_a_rule_no_record_can_trigger() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixture("fixtures/sandbox/good.rhai"))
        .unwrap()
        .replace("triggers: [\"voice\"]", "triggers: [\"data.mo\"]");
    write_files(dir.path(), &[("good.rhai", &text)]);
    let store = std::rc::Rc::new(std::cell::RefCell::new(
        WindowStore::new(Default::default()),
    ));
    let shared = cdrguard::rules::Shared::new(store, Default::default());
    let set = cdrguard::rules::RuleSet::build(
        &RuleSources::read(dir.path()).unwrap(),
        &Default::default(),
        &shared,
    )
    .unwrap();
    assert_eq!(set.warnings.len(), 1);
    let w = set.warnings[0].to_string();
    assert!(
        w.contains("good.rhai:") && w.contains("can never run"),
        "{w}"
    );
}

/// A subscriber rule reading a calling-number rule's alerts runs where calling numbers are kept (a
/// daemon partition's calls lane), which has no subscriber or account state: a library whose callback rule
/// reads `sub` is refused with one error at the read, in every mode; one that computes the rule id
/// at run time gets a warning; the shipped callback rule is placed there.
#[test]
fn rules_reading_calling_number_alerts_run_beside_them_and_cannot_read_the_subscriber() {
    let shipped = |rel: &str| std::fs::read_to_string(fixture(&format!("rules/{rel}"))).unwrap();
    let inbound = shipped("fraud/wangiri_inbound.rhai");
    let callback = shipped("fraud/wangiri_callback.rhai");
    let params = "[wangiri_inbound]\nmin_victims = 20\n[wangiri_callback]\nlookback = \"72h\"\n";
    let build = |callback: &str| {
        let dir = tempfile::tempdir().unwrap();
        write_files(
            dir.path(),
            &[
                ("fraud/wangiri_inbound.rhai", &inbound),
                ("fraud/wangiri_callback.rhai", callback),
                ("params.toml", params),
            ],
        );
        let sources = RuleSources::read(dir.path()).unwrap();
        let store = std::rc::Rc::new(std::cell::RefCell::new(
            WindowStore::new(Default::default()),
        ));
        let shared = cdrguard::rules::Shared::new(store, Default::default());
        cdrguard::rules::RuleSet::build(&sources, &Default::default(), &shared)
    };
    let set = build(&callback).unwrap_or_else(|e| panic!("shipped pair: {e}"));
    let placed: Vec<(&str, bool)> = set
        .rules
        .iter()
        .map(|r| (r.id(), r.reads_callers))
        .collect();
    assert!(placed.contains(&("wangiri_callback", true)), "{placed:?}");
    assert!(placed.contains(&("wangiri_inbound", false)), "{placed:?}");

    let reads_sub = callback.replace(
        "    if !alerted(",
        "    if sub.count(\"voice.mo\", \"1h\") > 100 { return; }\n    if !alerted(",
    );
    let err = build(&reads_sub).err().expect("refused");
    assert_eq!(err.errors.len(), 1, "{err}");
    let shown = err.errors[0].to_string();
    let line = 1 + reads_sub
        .lines()
        .position(|l| l.contains("sub.count"))
        .unwrap();
    assert!(
        shown.contains(&format!("wangiri_callback.rhai:{line}:8")),
        "{shown}"
    );
    assert!(shown.contains("cannot read `sub`"), "{shown}");

    let dynamic = callback.replace(
        "alerted(\"wangiri_inbound\",",
        "alerted(\"wangiri_\" + rec.kind,",
    );
    let set = build(&dynamic).unwrap_or_else(|e| panic!("dynamic id: {e}"));
    assert!(
        set.warnings
            .iter()
            .any(|w| w.to_string().contains("computed at run time")),
        "{:?}",
        set.warnings
    );
}

/// A rule folder that disappears (a deploy that moves it, a volume unmounted) is a refused reload,
/// counted once and logged, the previous rules staying active; when it is back, the next change
/// reloads as usual.
#[test]
fn a_missing_rule_folder_is_a_counted_refused_reload() {
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("rules");
    irsf_library(&lib, PARAMS);
    let (mut cfg, _) = Config::load(None).unwrap();
    cfg.rules.watch_interval = cdrguard::config::Secs(1);
    let library = cdrguard::rules::Library::load(&lib, &cfg).unwrap();
    let mut reloader = cdrguard::rules::Reloader::spawn(&library, &cfg, false).unwrap();
    let away = dir.path().join("rules.moved");
    std::fs::rename(&lib, &away).unwrap();
    assert!(reloader.wait(Duration::from_secs(5)).is_none());
    assert_eq!(reloader.counts.refused, 1, "the missing folder is counted");
    // Still missing: not counted again at every look.
    assert!(reloader.wait(Duration::from_millis(2500)).is_none());
    assert_eq!(reloader.counts.refused, 1);
    std::fs::rename(&away, &lib).unwrap();
    write_files(
        &lib,
        &[(
            "params.toml",
            &PARAMS.replace("min_calls = 3", "min_calls = 4"),
        )],
    );
    assert!(
        reloader.wait(Duration::from_secs(5)).is_some(),
        "back: reloaded"
    );
    assert_eq!(
        reloader.counts,
        cdrguard::rules::runtime::ReloadCounts { ok: 1, refused: 1 }
    );
}
