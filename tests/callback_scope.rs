//! A rule reading calling-number alerts keeps its memory per number asked about: `wangiri_callback`
//! run by replay on the shipped library, with no mocks.
//!
//! In the daemon such a rule runs in the partition of the record's destination, beside that
//! number's alerts (`rules::placement`); its cooldown there sees only the callbacks to that number.
//! Replay, the reference the daemon is compared with, keeps it the same way: a victim calling back
//! two flagged numbers is warned about each (each alert names another number to block), while a
//! second callback to one number within the cooldown is held back.

mod common;

use common::*;

const FIRST: &str = "88216000999";
const SECOND: &str = "88216000777";
const VICTIM: &str = "33612000003";

/// `from` rings 22 subscribers (the victim among them) once each, unanswered, 20 s apart from
/// `hh:mm`: over `min_victims` (20) within 10 min.
fn wave(from: &str, tag: &str, hour: u32, minute: u32, first_line: u32) -> Vec<String> {
    (0..22u32)
        .map(|i| {
            let s = 20 * i;
            let start = format!(
                "2026-11-10T{hour:02}:{:02}:{:02}+01:00",
                minute + s / 60,
                s % 60
            );
            format!(
                r#"{{"record_id":"{tag}{i}","record_type":"voice","direction":"mt","event_start":"{start}","duration_s":0,"answered":false,"served":{{"msisdn":"3361200{:04}"}},"other_party":{{"number":"{from}"}}}}"#,
                first_line + i
            )
        })
        .collect()
}

/// Both numbers flagged, then the victim calls back the first, the second, and the first again
/// within 24 h; written to `dir`.
fn two_waves_and_three_callbacks(dir: &std::path::Path) -> std::path::PathBuf {
    let mut usage = wave(FIRST, "a", 10, 0, 0);
    usage.extend(wave(SECOND, "b", 10, 10, 3));
    usage.extend([
        voice_mo("cb-first", "2026-11-10T10:30:00+01:00", VICTIM, FIRST, 45),
        voice_mo("cb-second", "2026-11-10T10:45:00+01:00", VICTIM, SECOND, 45),
        voice_mo(
            "cb-first-again",
            "2026-11-10T14:00:00+01:00",
            VICTIM,
            FIRST,
            45,
        ),
    ]);
    let path = dir.join("usage.ndjson");
    std::fs::write(&path, usage.join("\n") + "\n").unwrap();
    path
}

/// (entity, triggering record) of each `wangiri_callback` alert.
fn callbacks(alerts: &[cdrguard::record::Alert]) -> Vec<(&str, &str)> {
    alerts
        .iter()
        .filter(|a| a.rule.id == "wangiri_callback")
        .map(|a| (a.entity.key.as_str(), a.evidence.record_ids[0].as_str()))
        .collect()
}

#[test]
fn a_victim_calling_back_two_flagged_numbers_gets_one_alert_per_number() {
    let dir = tempfile::tempdir().unwrap();
    let path = two_waves_and_three_callbacks(dir.path());

    let (_, pipeline, alerts) = replay_with(&fixture("rules"), &path, None, None);

    let mut flagged: Vec<&str> = alerts
        .iter()
        .filter(|a| a.rule.id == "wangiri_inbound")
        .map(|a| a.entity.key.as_str())
        .collect();
    flagged.sort_unstable();
    assert_eq!(flagged, [SECOND, FIRST]);

    assert_eq!(
        callbacks(&alerts),
        [(VICTIM, "cb-first"), (VICTIM, "cb-second")]
    );
    let (called, ids): (Vec<_>, Vec<_>) = alerts
        .iter()
        .filter(|a| a.rule.id == "wangiri_callback")
        .map(|a| (a.evidence.metrics["called_number"].clone(), &a.alert_id))
        .unzip();
    assert_eq!(called, [FIRST, SECOND], "each names the number to block");
    assert_ne!(ids[0], ids[1], "two alerts, not one delivered twice");
    let stats = pipeline.rules.as_ref().unwrap().stats();
    let callback = stats.iter().find(|s| s.id == "wangiri_callback").unwrap();
    assert_eq!(
        (callback.alerts, callback.suppressed),
        (2, 1),
        "the second callback to the first number is held back by the cooldown"
    );
}

/// `edge` latches are kept per number too: with a cooldown too short to matter, a callback rule
/// alerting on the first callback to each number (`edge`) still warns about both numbers, and not
/// about the first number twice.
#[test]
fn edge_latches_of_a_callback_rule_are_kept_per_number() {
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("rules");
    copy_tree(&fixture("rules"), &lib);
    let rule = lib.join("fraud/wangiri_callback.rhai");
    let text = std::fs::read_to_string(&rule).unwrap();
    let edited = text
        .replace(r#"cooldown: "24h","#, r#"cooldown: "1m","#)
        .replace(
        "        return;\n    }\n",
        "        return;\n    }\n    if !edge(\"called_back\", true) {\n        return;\n    }\n",
    );
    assert_eq!(edited.matches("edge(").count(), 1, "{edited}");
    assert!(edited.contains(r#"cooldown: "1m""#));
    std::fs::write(&rule, edited).unwrap();
    let path = two_waves_and_three_callbacks(dir.path());

    let (_, _, alerts) = replay_with(&lib, &path, None, None);

    assert_eq!(
        callbacks(&alerts),
        [(VICTIM, "cb-first"), (VICTIM, "cb-second")]
    );
}
