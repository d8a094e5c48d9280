//! The binary as users run it: arguments, stdin, exit codes, files it writes, messages it prints.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::copy_tree;

const BIN: &str = env!("CARGO_BIN_EXE_cdrguard");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn run(args: &[&str], stdin: Option<&[u8]>) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(ROOT)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// `cdrguard replay --usage - --out <out> --config <config> --quiet <extra>` with `input` on stdin.
fn replay_stdin(
    out: &std::path::Path,
    config: &str,
    extra: &[&str],
    input: &[u8],
) -> (i32, String, String) {
    let mut args = vec![
        "replay",
        "--usage",
        "-",
        "--out",
        out.to_str().unwrap(),
        "--config",
        config,
        "--quiet",
    ];
    args.extend(extra);
    run(&args, Some(input))
}

#[test]
fn replay_from_stdin_dead_letters_next_to_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("alerts.ndjson");
    let input = std::fs::read(format!(
        "{ROOT}/fixtures/scenarios/malformed_input/usage.ndjson"
    ))
    .unwrap();
    let (code, _, err) = replay_stdin(
        &out,
        "fixtures/scenarios/malformed_input/config.toml",
        &[],
        &input,
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("usage accepted                30"), "{err}");
    assert!(err.contains("location.lat_lon             1"), "{err}");
    assert!(err.contains("late                         1"), "{err}");
    let dl = std::fs::read_to_string(dir.path().join("alerts.ndjson.rejected.ndjson")).unwrap();
    // 26 malformed lines, one late, one reusing a good line's id with another start time (the
    // line with a position off the globe is kept without it).
    assert_eq!(dl.lines().count(), 28);
    assert!(dl.lines().all(|l| l.contains("\"source\":\"stdin\"")));
    assert!(out.exists(), "alerts file is created even when empty");
}

/// Garbage replayed by mistake (a binary file) fills the dead-letter file only up to its cap; the
/// rest is counted and the summary says so.
#[test]
fn the_dead_letter_file_has_a_cap() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("alerts.ndjson");
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[input]\ndead_letter_file_max_mib = 1\n").unwrap();
    let garbage: Vec<u8> = (0..20_000)
        .flat_map(|i| format!("not json {i} {}\n", "x".repeat(100)).into_bytes())
        .collect();
    let (code, _, err) = replay_stdin(&out, config.to_str().unwrap(), &["--no-rules"], &garbage);
    assert_eq!(code, 0, "{err}");
    let dl = dir.path().join("alerts.ndjson.rejected.ndjson");
    let size = std::fs::metadata(&dl).unwrap().len();
    assert!(size <= 1 << 20 && size > 900_000, "{size} bytes");
    let written = std::fs::read_to_string(&dl).unwrap().lines().count() as u64;
    let not_written = 20_000 - written;
    assert!(
        err.contains(&format!(
            "rejected                  20,000   → {} ({},{:03} NOT WRITTEN: the file reached input.dead_letter_file_max_mib)",
            dl.display(),
            not_written / 1000,
            not_written % 1000
        )),
        "{written} written\n{err}"
    );
}

#[test]
fn summary_json_is_machine_readable() {
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("summary.json");
    let (code, _, err) = run(
        &[
            "replay",
            "--usage",
            "fixtures/scenarios/account_aggregation/usage.ndjson",
            "--events",
            "fixtures/scenarios/account_aggregation/events.ndjson",
            "--out",
            dir.path().join("a.ndjson").to_str().unwrap(),
            "--summary-json",
            summary.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(summary).unwrap()).unwrap();
    assert_eq!(v["counts"]["usage_accepted"], 5);
    assert_eq!(v["counts"]["events_accepted"], 3);
    assert_eq!(v["size"]["subscribers"], 3);
}

#[test]
fn inspect_prints_features_and_account_view() {
    let (code, out, err) = run(
        &[
            "inspect",
            "--usage",
            "fixtures/scenarios/timers_on_watermark/usage.ndjson",
            "--events",
            "fixtures/scenarios/timers_on_watermark/events.ndjson",
            "--account",
            "A-3",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("invoice INV-1"), "{out}");
    assert!(
        out.contains("timer fired    2026-11-12T00:00:00+01:00"),
        "{out}"
    );
    assert!(
        out.contains("timer pending  2026-12-05T00:00:00+01:00"),
        "{out}"
    );
}

#[test]
fn errors_are_clear_and_exit_non_zero() {
    let (code, _, err) = run(
        &["replay", "--usage", "no/such/file.ndjson", "--quiet"],
        None,
    );
    assert_eq!(code, 1);
    assert!(err.contains("no/such/file.ndjson: No such file"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[state]\nallowed_lateness = \"6h\"\ndistinct_horizon = \"1m\"\n[input]\ncurrency = \"euro\"\n").unwrap();
    let (code, _, err) = run(
        &[
            "replay",
            "--usage",
            "fixtures/demo/usage.ndjson",
            "--config",
            cfg.to_str().unwrap(),
            "--quiet",
        ],
        None,
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("input.currency") && err.contains("state.distinct_horizon"),
        "every problem at once: {err}"
    );

    let (code, _, err) = run(
        &[
            "inspect",
            "--usage",
            "fixtures/demo/usage.ndjson",
            "--msisdn",
            "33999999999",
        ],
        None,
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("subscriber 33999999999 does not appear in the input"),
        "{err}"
    );

    let (code, _, err) = run(
        &[
            "inspect",
            "--usage",
            "fixtures/demo/usage.ndjson",
            "--msisdn",
            "33600000001",
            "--filter",
            "voice.outgoing",
        ],
        None,
    );
    assert_eq!(code, 1);
    assert!(err.contains("unknown filter token \"outgoing\""), "{err}");
}

#[test]
fn check_and_test_report_the_rule_library_and_exit_non_zero_on_problems() {
    let (code, _, err) = run(&["check"], None);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("rules OK"), "{err}");
    let (code, out, _) = run(&["test"], None);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(" 0 failed"), "{out}");

    // A broken copy: a typo in a parameter name and an unknown filter token, each with its position.
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("rules");
    copy_tree(format!("{ROOT}/rules").as_ref(), &lib);
    let irsf = lib.join("fraud/irsf_high_risk_destination.rhai");
    let text = std::fs::read_to_string(&irsf)
        .unwrap()
        .replace("calls < params.min_calls", "calls < params.min_cals")
        .replace(
            "sub.minutes(\"voice.mo.high_risk\"",
            "sub.minutes(\"voice.mo.hirisk\"",
        );
    std::fs::write(&irsf, text).unwrap();
    // Values of the wrong type, which used to pass (a quoted number made IRSF fire 24x more, a NaN
    // distance made impossible_travel fire on every located call), and a parameter nobody declared.
    let params = std::fs::read_to_string(lib.join("params.toml"))
        .unwrap()
        .replace("min_calls = 3 ", "min_calls = \"3\" ")
        .replace("min_km = 50.0", "min_km = nan")
        .replace("lookback = \"72h\"", "lookback = \"72 hours\"")
        .replace(
            "[segments.vip.roaming_high_usage]\nmin_charges = 500.0",
            "[segments.vip.roaming_high_usage]\nmin_charges = [500.0]",
        )
        + "unused_knob = 1\n";
    std::fs::write(lib.join("params.toml"), params).unwrap();
    let (code, out, _) = run(&["check", "--rules", lib.to_str().unwrap()], None);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "irsf_high_risk_destination.rhai:27:23: error: parameter \"min_cals\" is not defined"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "irsf_high_risk_destination.rhai:26:32: error: unknown filter token \"hirisk\""
        ),
        "{out}"
    );
    assert!(
        out.contains("warning: parameter bill_shock.unused_knob is not read"),
        "{out}"
    );
    for said in [
        "params.toml:9:1: error: irsf_high_risk_destination.min_calls: \"3\" (a string) is not an integer of at least 1",
        "params.toml:38:1: error: impossible_travel.min_km: nan is not a finite number",
        "params.toml:21:1: error: wangiri_callback.lookback: \"72 hours\": unknown unit",
        "params.toml:47:1: error: segments.vip.roaming_high_usage.min_charges: an array is not a number of at least 0",
        "error: bill_shock.unused_knob: not declared in the rule's RULE.params",
    ] {
        assert!(out.contains(said), "{said:?} in\n{out}");
    }
}

/// One mistake, one error: a params.toml that does not parse is reported once (not once per
/// parameter every script reads), and every bad line of a list is reported.
#[test]
fn check_reports_one_error_per_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("rules");
    copy_tree(format!("{ROOT}/rules").as_ref(), &lib);
    let params = std::fs::read_to_string(lib.join("params.toml"))
        .unwrap()
        .replace("min_calls = 3 ", "min_calls = 3\nmin_calls = 4 ");
    std::fs::write(lib.join("params.toml"), params).unwrap();
    let list = lib.join("lists/sms_whitelist.txt");
    let text = std::fs::read_to_string(&list).unwrap() + "+4412\nnot-a-prefix\n";
    std::fs::write(&list, text).unwrap();
    let (code, out, _) = run(&["check", "--rules", lib.to_str().unwrap()], None);
    assert_eq!(code, 1, "{out}");
    let errors: Vec<&str> = out.lines().filter(|l| l.contains(": error: ")).collect();
    assert_eq!(errors.len(), 3, "{out}");
    assert!(
        errors
            .iter()
            .any(|l| l.contains("params.toml:9:1: error: duplicate key")),
        "{out}"
    );
    assert_eq!(
        errors
            .iter()
            .filter(|l| l.contains("sms_whitelist.txt"))
            .count(),
        2,
        "{out}"
    );
}

/// A mistake that only shows at run time (a method of the subscriber view called on the record:
/// it exists, so `check` cannot tell statically) fails the rule's cases with the script error and
/// its position, not only as "expected, not raised". A method that exists nowhere is refused by
/// `check` (`rules::lint`, tests/sandbox.rs).
#[test]
fn test_fails_a_case_with_the_script_error() {
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("rules");
    copy_tree(format!("{ROOT}/rules").as_ref(), &lib);
    let irsf = lib.join("fraud/irsf_high_risk_destination.rhai");
    let text = std::fs::read_to_string(&irsf).unwrap().replace(
        "sub.minutes(\"voice.mo.high_risk\"",
        "rec.minutes(\"voice.mo.high_risk\"",
    );
    std::fs::write(&irsf, text).unwrap();
    let (code, out, _) = run(&["test", "--rules", lib.to_str().unwrap()], None);
    assert_eq!(code, 1, "{out}");
    let near_miss = out
        .lines()
        .skip_while(|l| !l.contains("irsf_high_risk_destination/two_calls_eight_minutes_near_miss"))
        .take(2)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        near_miss.starts_with("FAIL"),
        "a near miss fails too:\n{out}"
    );
    assert!(
        near_miss.contains("script error: irsf_high_risk_destination failed")
            && near_miss
                .contains("irsf_high_risk_destination.rhai:26:23: Function not found: minutes"),
        "{near_miss}"
    );
}

#[test]
fn the_readme_configuration_loads_as_written_from_the_repository_root() {
    let blocks = common::readme_toml("## Configuration");
    assert_eq!(blocks.len(), 1);
    // A config file at the repository root: its relative paths resolve from there.
    let cfg: cdrguard::config::Config = toml::from_str(&blocks[0]).unwrap();
    cfg.validate().unwrap();
    cfg.classifier(std::path::Path::new(ROOT)).unwrap();
    // The secured example: valid, and it says how it connects without a secret.
    let secured = common::readme_toml("### Secured Kafka");
    assert_eq!(secured.len(), 1);
    let cfg: cdrguard::config::Config = toml::from_str(&secured[0]).unwrap();
    cfg.validate().unwrap();
    assert_eq!(
        cdrguard::client::describe(&cfg.kafka),
        "sasl_ssl, CA /etc/cdrguard/kafka-ca.pem, SCRAM-SHA-512 as \"cdrguard\" (secret from /run/secrets/kafka-password)"
    );
}

#[test]
fn version_names_the_build_and_json_logs_start_with_json() {
    let (code, out, _) = run(&["--version"], None);
    assert_eq!(code, 0);
    assert!(out.contains("(commit "), "{out}");
    assert!(out.contains("librdkafka 2."), "{out}");
    assert!(out.contains("ssl") && out.contains("sasl_scram"), "{out}");

    // `run` on the embedded broker with JSON logs: every stderr line is a JSON object, the banner too.
    let mut child = Command::new(BIN)
        .args([
            "--log-format",
            "json",
            "run",
            "--no-demo",
            "--metrics-address",
            "",
        ])
        .current_dir(ROOT)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut lines = Vec::new();
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0 {
        lines.push(std::mem::take(&mut line));
        if lines.last().unwrap().contains("Consuming.") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines.iter().any(|l| l.contains("Embedded Kafka broker")),
        "{lines:#?}"
    );
    for l in &lines {
        assert!(
            serde_json::from_str::<serde_json::Value>(l).is_ok(),
            "not JSON: {l}"
        );
    }
}

/// Hostile rules beside a good one, run as users run them: a print flood (200 lines of 4 KB per
/// record) reaches the log at the rate limit, not as hundreds of megabytes; a rule throwing on 2% of
/// records is counted and stays on; the replay gives exactly the good rule's alerts.
#[test]
fn a_print_flood_and_a_rare_throw_leave_the_log_small_and_the_good_alerts_whole() {
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("rules");
    std::fs::create_dir_all(&lib).unwrap();
    for name in ["print_flood", "rare_throw", "good"] {
        std::fs::copy(
            format!("{ROOT}/fixtures/sandbox/{name}.rhai"),
            lib.join(format!("{name}.rhai")),
        )
        .unwrap();
    }
    // 500 calls of 500 subscribers lasting 1..=50 s: the 10 of 13 s throw; 480 last 3 s or more.
    let usage: String = (0..500)
        .map(|i| {
            common::voice_mo(
                &format!("r{i}"),
                &format!("2026-11-10T10:{:02}:{:02}+01:00", i / 60, i % 60),
                &format!("33612{i:06}"),
                "33145000000",
                (i % 50 + 1) as u32,
            ) + "\n"
        })
        .collect();
    let out = dir.path().join("alerts.ndjson");
    let (code, _, err) = run(
        &[
            "replay",
            "--usage",
            "-",
            "--rules",
            lib.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ],
        Some(usage.as_bytes()),
    );
    assert_eq!(code, 0, "{}", &err[err.len().saturating_sub(3000)..]);
    let flood_lines = err.lines().filter(|l| l.contains("flood xxx")).count();
    assert!(flood_lines >= 1, "script output reaches the log");
    assert!(
        err.len() < 2 << 20,
        "{} bytes of log for 100,000 prints ({flood_lines} lines)",
        err.len()
    );
    let alerts = std::fs::read_to_string(&out).unwrap();
    let rules: Vec<&str> = alerts
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            if v["rule"]["id"] == "good" {
                "good"
            } else {
                "other"
            }
        })
        .collect();
    assert_eq!(rules.len(), 480, "{err}");
    assert!(rules.iter().all(|r| *r == "good"));
    let rare = err
        .lines()
        .find(|l| l.contains("rare_throw"))
        .unwrap_or_default();
    assert!(!rare.contains("QUARANTINED"), "{rare}");
}

/// One library with one mistake of each kind an analyst makes: `check` prints exactly one error per
/// mistake, each with file:line:col, and nothing that merely follows from another.
#[test]
fn check_prints_one_error_per_mistake_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("rules");
    copy_tree(format!("{ROOT}/rules").as_ref(), &lib);
    let edit = |rel: &str, from: &str, to: &str| {
        let path = lib.join(rel);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{rel}: {from}");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    };
    // A method that exists nowhere.
    edit(
        "fraud/irsf_high_risk_destination.rhai",
        "sub.minutes(",
        "sub.minutez(",
    );
    // A verdict key the policy does not know.
    edit(
        "fraud/impossible_travel.rhai",
        "explanation: `Consecutive",
        "explaination: `Consecutive",
    );
    // A record class that does not exist.
    edit(
        "fraud/simbox_behaviour.rhai",
        "sub.count(\"voice.mt\", \"24h\")",
        "sub.count(\"voice.mtt\", \"24h\")",
    );
    // An undeclared variable (a compile error).
    edit(
        "customer/bill_shock.rhai",
        "let recent = sub.charges(\"all\", \"30m\");",
        "let recent = sub.charges(\"all\", \"30m\") + shock;",
    );
    // A quoted number where the rule declares an integer.
    edit("params.toml", "min_calls = 3 ", "min_calls = \"3\" ");
    // A property the record view does not have.
    edit(
        "fraud/wangiri_callback.rhai",
        "duration_s: rec.duration_s",
        "duration_s: rec.duration",
    );
    let (code, out, err) = run(&["check", "--rules", lib.to_str().unwrap()], None);
    assert_eq!(code, 1, "{out}{err}");
    let errors: Vec<&str> = out.lines().filter(|l| l.contains(": error: ")).collect();
    for (file, what) in [
        ("irsf_high_risk_destination.rhai:", "minutez"),
        ("impossible_travel.rhai:", "explaination"),
        ("simbox_behaviour.rhai:", "voice.mtt"),
        ("bill_shock.rhai:", "shock"),
        ("params.toml:", "min_calls"),
        ("wangiri_callback.rhai:", "duration"),
    ] {
        let found: Vec<&&str> = errors
            .iter()
            .filter(|l| l.contains(file) && l.contains(what))
            .collect();
        assert_eq!(found.len(), 1, "{file} {what}:\n{out}");
        let at = found[0].split(file).nth(1).unwrap();
        let place: Vec<&str> = at.splitn(3, ':').take(2).collect();
        assert!(
            place.iter().all(|n| n.parse::<u32>().is_ok()),
            "{file} line:col in {}",
            found[0]
        );
    }
    assert_eq!(errors.len(), 6, "one error per mistake:\n{out}");
}

/// A resend (same record, written differently) is a counted duplicate; a record reusing an id with
/// other content is dead-lettered as `conflicting_duplicate` and the first copy is the one kept.
#[test]
fn a_reused_id_with_other_content_is_dead_lettered_as_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let usage = dir.path().join("usage.ndjson");
    let events = dir.path().join("events.ndjson");
    let first = r#"{"record_id":"c-1","record_type":"voice","direction":"mo","event_start":"2026-11-21T09:00:00+01:00","duration_s":60,"served":{"msisdn":"33600000021","account_id":"A-2"},"other_party":{"number":"33633333301"},"charge":{"amount":"0.10","currency":"EUR"}}"#;
    let resend = r#"{ "served": {"account_id": "A-2", "msisdn": "33600000021"}, "record_id": "c-1", "record_type": "voice", "direction": "mo", "event_start": "2026-11-21T09:00:00+01:00", "duration_s": 60, "other_party": {"number": "33633333301"}, "charge": {"amount": "0.1", "currency": "EUR"} }"#;
    let other = first.replace("\"duration_s\":60", "\"duration_s\":3600");
    let next = first.replace("c-1", "c-2");
    std::fs::write(&usage, [first, resend, &other, &next].join("\n")).unwrap();
    let payment = r#"{"event_id":"p-1","event_type":"payment_received","occurred_at":"2026-11-21T10:00:00+01:00","account_id":"A-2","payment":{"payment_id":"P-1"},"amount":{"value":"20.00","currency":"EUR"}}"#;
    std::fs::write(
        &events,
        [payment, &payment.replace("20.00", "200.00")].join("\n"),
    )
    .unwrap();
    let summary = dir.path().join("summary.json");
    let out = dir.path().join("alerts.ndjson");
    let (code, _, err) = run(
        &[
            "replay",
            "--usage",
            usage.to_str().unwrap(),
            "--events",
            events.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--summary-json",
            summary.to_str().unwrap(),
            "--quiet",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(summary).unwrap()).unwrap();
    assert_eq!(v["counts"]["usage_accepted"], 2, "{v}");
    assert_eq!(v["counts"]["events_accepted"], 1, "{v}");
    assert_eq!(v["counts"]["duplicates"], 1, "{v}");
    assert_eq!(v["counts"]["rejected"]["conflicting_duplicate"], 2, "{v}");
    let dl = std::fs::read_to_string(dir.path().join("alerts.ndjson.rejected.ndjson")).unwrap();
    let lines: Vec<serde_json::Value> = dl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{dl}");
    assert!(
        lines.iter().all(|l| l["reason"] == "conflicting_duplicate"),
        "{dl}"
    );
    assert!(dl.contains("3600") && dl.contains("200.00"), "{dl}");
}
