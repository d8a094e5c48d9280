//! Hostile rule scripts (fixtures/sandbox/) are stopped by the sandbox with a precise error, counted
//! against their rule, and quarantined after repeated failures, while the replay goes on and the
//! well-behaved rule beside them keeps alerting. Scripts that cannot load fail the library build with
//! file:line:column.

mod common;

use cdrguard::rules::sandbox::{self, load};
use cdrguard::rules::{
    build_engine, Limit, RuleSet, RuleSources, SandboxLimits, ScriptError, Shared,
};
use common::*;

const RUNTIME_HOSTILE: [(&str, &str, &str); 7] = [
    ("infinite_loop", "limit_operations", "too many operations"),
    // Under the operation limit, over the CPU-time budget.
    (
        "slow_but_legal",
        "limit_time",
        "over the CPU-time budget of one evaluation",
    ),
    (
        "deep_recursion",
        "limit_call_depth",
        "calls nested too deep",
    ),
    (
        "giant_string",
        "limit_data_size",
        "string, array or map too large",
    ),
    (
        "giant_array",
        "limit_data_size",
        "string, array or map too large",
    ),
    // Line 5, column 7: the division in `x / calls`.
    (
        "division_by_zero",
        "runtime",
        "division_by_zero.rhai:5:7: Division by zero",
    ),
    (
        "wrong_return_type",
        "bad_return",
        "returned string, expected () or an object map",
    ),
];

#[test]
fn runtime_failures_are_counted_per_rule_quarantined_and_the_replay_goes_on() {
    let names: Vec<&str> = RUNTIME_HOSTILE
        .iter()
        .map(|h| h.0)
        .chain(["good"])
        .collect();
    // A budget the operation limit is always reached within (100,000 operations of the infinite
    // loop take ~0.1 s in a debug build), and the slow rule never.
    let dir = fixtures_library(
        &names,
        "[rules]\nquarantine_after = 3\n[rules.sandbox]\nmax_eval_ms = 400\n",
    );
    // Five calls from five subscribers: every rule triggers on each, the good rule alerts on each.
    let usage: Vec<String> = (0..5)
        .map(|i| {
            voice_mo(
                &format!("r{i}"),
                &format!("2026-11-10T10:0{i}:00+01:00"),
                &format!("3361200000{i}"),
                "33145000000",
                60,
            )
        })
        .collect();
    let (report, pipeline, alerts) = replay_library(&dir, &usage);
    assert_eq!(report.counts.usage_accepted, 5, "every record applied");
    let good: Vec<_> = alerts.iter().filter(|a| a.rule.id == "good").collect();
    assert_eq!(
        good.len(),
        5,
        "the good rule alerts on every record despite its neighbours"
    );
    assert_eq!(alerts.len(), 5, "hostile rules raise nothing");

    let engine = pipeline.rules.as_ref().unwrap();
    for (name, kind, message) in RUNTIME_HOSTILE {
        let s = engine.stats().iter().find(|s| s.id == name).unwrap();
        assert_eq!(s.errors, 3, "{name}: stopped at the quarantine threshold");
        assert_eq!(s.evaluations, 3, "{name}: not run after quarantine");
        assert!(s.quarantined, "{name}");
        assert_eq!(
            s.errors_by_kind.get(kind),
            Some(&3),
            "{name}: {:?}",
            s.errors_by_kind
        );
        let last = s.last_error.as_deref().unwrap();
        assert!(last.contains(message), "{name}: {last}");
    }
    // The summary lists the quarantined rules.
    let text = report.render();
    for (name, ..) in RUNTIME_HOSTILE {
        assert!(
            text.lines()
                .any(|l| l.contains(name) && l.contains("QUARANTINED")),
            "{name} not listed as quarantined:\n{text}"
        );
    }
    assert_eq!(report.rules.as_ref().unwrap().counters.errors, 21);
}

#[test]
fn scripts_that_cannot_load_fail_the_build_with_file_line_column() {
    let cases = [
        ("uses_eval", "uses_eval.rhai:4:5", "eval"),
        (
            "imports_module",
            "imports_module.rhai:2:8",
            "import of \"hostile_helpers\" is not allowed",
        ),
        (
            "undeclared_variable",
            "undeclared_variable.rhai:5:8",
            "cals",
        ),
        (
            "typo_method",
            "typo_method.rhai:4:37",
            "no method named `minutez` exists",
        ),
        (
            "typo_verdict_key",
            "typo_verdict_key.rhai:5:16",
            "unknown verdict key `explaination`",
        ),
    ];
    for (name, at, message) in cases {
        let dir = tempfile::tempdir().unwrap();
        for n in [name, "good"] {
            let text =
                std::fs::read_to_string(fixture(&format!("fixtures/sandbox/{n}.rhai"))).unwrap();
            write_files(dir.path(), &[(&format!("{n}.rhai"), &text)]);
        }
        let sources = RuleSources::read(dir.path()).unwrap();
        let store = std::rc::Rc::new(std::cell::RefCell::new(cdrguard::state::WindowStore::new(
            Default::default(),
        )));
        let shared = Shared::new(store, Default::default());
        let err = match RuleSet::build(&sources, &SandboxLimits::default(), &shared) {
            Ok(_) => panic!("{name}: built"),
            Err(e) => e,
        };
        assert_eq!(err.errors.len(), 1, "{name}: {err}");
        let shown = err.errors[0].to_string();
        assert!(shown.contains(at), "{name}: {shown}");
        assert!(shown.contains(message), "{name}: {shown}");
    }
}

#[test]
fn limits_are_explicit_not_build_dependent() {
    // Rhai's own defaults differ between debug and release; ours do not, so this holds in both.
    let engine = build_engine(&SandboxLimits {
        max_operations: 50,
        ..SandboxLimits::default()
    });
    let src = "fn evaluate(x) { let n = 0; for i in 0..x { n += i; } n }";
    let (ast, mut scope) = load(&engine, "t.rhai", src).unwrap();
    assert!(sandbox::call(&engine, &ast, &mut scope, "evaluate", (5_i64,)).is_ok());
    let err = sandbox::call(&engine, &ast, &mut scope, "evaluate", (1000_i64,)).unwrap_err();
    assert!(
        matches!(
            err,
            ScriptError::Limit {
                limit: Limit::Operations,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(engine.max_operations(), 50);
    assert_eq!(engine.max_call_levels(), 16);
    assert_eq!(engine.max_string_size(), 4096);
}

/// A rule that throws on a few records keeps running; one that always throws is quarantined, comes
/// back after the cool-down of event time, and is quarantined again if it still fails.
#[test]
fn quarantine_follows_the_recent_error_rate_and_ends_after_a_cool_down() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    let rule = |id: &str, body: &str| {
        format!(
            "fn evaluate(rec, sub, acct, params) {{ {body} }}\nconst RULE = #{{ id: \"{id}\", name: \"{id}\", description: \"test\", category: \"fraud\", severity: \"low\", departments: [\"FRAUD\"], entity: \"subscriber\", triggers: [\"voice\"], version: \"1\", cooldown: \"1s\" }};\n"
        )
    };
    write_files(
        &rules,
        &[
            (
                "rare_throw.rhai",
                &rule(
                    "rare_throw",
                    "if rec.duration_s == 13 { throw \"rare\"; } #{ explanation: \"ok\" }",
                ),
            ),
            (
                "always_throw.rhai",
                &rule("always_throw", "throw \"always\";"),
            ),
        ],
    );
    write_files(
        dir.path(),
        &[(
            "config.toml",
            "[rules]\nquarantine_after = 3\nquarantine_error_rate = 0.05\nquarantine_window = 100\nquarantine_cooldown = \"1h\"\n",
        )],
    );
    // 200 calls a minute apart (3 h 20 min of event time); every 50th lasts 13 s: 4 throws, 2%.
    let (_, pipeline, alerts) = replay_calls(
        dir.path(),
        200,
        60,
        |_| "33612000001".into(),
        |i| (i % 50 + 1) as u32,
    );
    let engine = pipeline.rules.as_ref().unwrap();
    let stats = |id: &str| engine.stats().iter().find(|s| s.id == id).unwrap();
    let rare = stats("rare_throw");
    assert_eq!((rare.evaluations, rare.errors), (200, 4));
    assert!(!rare.quarantined && rare.quarantines == 0);
    assert_eq!(alerts.len(), 196, "every record but the four that threw");
    // Quarantined after 3 evaluations (minutes 0-2), back at minute 62, 64 and 66 quarantined
    // again, back at 126... : 3 evaluations per hour of event time.
    let always = stats("always_throw");
    assert_eq!(always.quarantines, 4, "minutes 2, 64, 126, 188");
    assert_eq!(always.evaluations, 12);
    assert!(always.quarantined);
}

/// `edge` names built from record values are bounded per rule and entity: the memory stays small,
/// each refused name is a counted error, the rule beside it is unaffected.
#[test]
fn edge_names_are_bounded_per_entity() {
    let dir = fixtures_library(
        &["edge_flood", "good"],
        "[rules]\nquarantine_after = 100000\n[state]\nmax_edges_per_entity = 16\n",
    );
    // 2,000 calls of two subscribers.
    let (report, pipeline, alerts) = replay_calls(
        dir.path(),
        2000,
        10,
        |i| format!("3361200000{}", i % 2),
        |_| 60,
    );
    let engine = pipeline.rules.as_ref().unwrap();
    let flood = engine
        .stats()
        .iter()
        .find(|s| s.id == "edge_flood")
        .unwrap();
    assert_eq!(flood.errors, 2000 - 2 * 16, "16 names per subscriber kept");
    let last = flood.last_error.as_deref().unwrap();
    assert!(last.contains("state.max_edges_per_entity"), "{last}");
    let rules_report = report.rules.as_ref().unwrap();
    assert_eq!(rules_report.edges_refused, 2000 - 32);
    assert!(
        rules_report.alert_memory_bytes < 64 * 1024,
        "{} bytes",
        rules_report.alert_memory_bytes
    );
    assert!(report.render().contains("edge() names REFUSED"));
    assert_eq!(
        alerts.iter().filter(|a| a.rule.id == "good").count(),
        alerts.len()
    );
    assert!(!alerts.is_empty());
}

/// Replays `n` MO calls `spacing_s` apart (from 2025-11-10T09:00Z) of the subscriber `msisdn(i)`
/// lasting `duration(i)` seconds, with the library in `dir/rules` and `dir/config.toml`.
fn replay_calls(
    dir: &std::path::Path,
    n: i64,
    spacing_s: i64,
    msisdn: impl Fn(i64) -> String,
    duration: impl Fn(i64) -> u32,
) -> (
    cdrguard::modes::replay::ReplayReport,
    cdrguard::pipeline::Pipeline,
    Vec<cdrguard::record::Alert>,
) {
    let usage: String = (0..n)
        .map(|i| {
            let start = cdrguard::record::EventTime {
                utc: 1_762_765_200 + i * spacing_s,
                offset_min: 0,
            }
            .to_string();
            voice_mo(
                &format!("r{i}"),
                &start,
                &msisdn(i),
                "33145000000",
                duration(i),
            ) + "\n"
        })
        .collect();
    write_files(dir, &[("usage.ndjson", &usage)]);
    replay_with(
        &dir.join("rules"),
        &dir.join("usage.ndjson"),
        None,
        Some(&dir.join("config.toml")),
    )
}

/// A folder with `rules/` holding the named fixtures of `fixtures/sandbox/`, and `config.toml`.
/// Replays `usage` (NDJSON lines) with the library and config `fixtures_library` made in `dir`.
fn replay_library(
    dir: &tempfile::TempDir,
    usage: &[String],
) -> (
    cdrguard::modes::replay::ReplayReport,
    cdrguard::pipeline::Pipeline,
    Vec<cdrguard::record::Alert>,
) {
    write_files(dir.path(), &[("usage.ndjson", &(usage.join("\n") + "\n"))]);
    replay_with(
        &dir.path().join("rules"),
        &dir.path().join("usage.ndjson"),
        None,
        Some(&dir.path().join("config.toml")),
    )
}

fn fixtures_library(names: &[&str], config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in names {
        let text =
            std::fs::read_to_string(fixture(&format!("fixtures/sandbox/{name}.rhai"))).unwrap();
        write_files(
            &dir.path().join("rules"),
            &[(&format!("{name}.rhai"), &text)],
        );
    }
    write_files(dir.path(), &[("config.toml", config)]);
    dir
}

/// A rule slow on 2% of its records stays under the error rate that quarantines failing rules, but
/// its p99 is over the CPU-time budget: it is quarantined at its 10th overrun, and the good rule
/// beside it alerts on every record.
#[test]
fn a_rule_whose_p99_is_over_the_budget_is_quarantined() {
    let dir = fixtures_library(&["sometimes_slow", "good"], "");
    let usage: Vec<String> = (0..1000)
        .map(|i| {
            voice_mo(
                &format!("r{i}"),
                // One a second: the run ends within the quarantine's cool-down (1 h of event time).
                &format!("2026-11-10T10:{:02}:{:02}+01:00", i / 60, i % 60),
                &format!("336120{i:05}"),
                "33145000000",
                if i % 50 == 49 { 59 } else { 60 },
            )
        })
        .collect();
    let (report, pipeline, alerts) = replay_library(&dir, &usage);
    assert_eq!(report.counts.usage_accepted, 1000);
    assert_eq!(alerts.iter().filter(|a| a.rule.id == "good").count(), 1000);
    let engine = pipeline.rules.as_ref().unwrap();
    let s = engine
        .stats()
        .iter()
        .find(|s| s.id == "sometimes_slow")
        .unwrap();
    assert!(s.quarantined, "{} errors", s.errors);
    assert_eq!(s.quarantines, 1);
    assert_eq!(s.errors, 10, "quarantined at its 10th overrun");
    assert_eq!(s.errors_by_kind.get("limit_time"), Some(&10));
    assert_eq!(s.evaluations, 500, "the 10th slow record is the 500th");
}
