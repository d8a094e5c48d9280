//! Partial records of one long call (issue "Real mediation feeds", part 2), through the real
//! pipeline and the shipped rules: one call counted once, its minutes and charge added as deltas,
//! one span for concurrency, parts told apart by (call, sequence number).

mod common;

use std::path::Path;

use cdrguard::classify::ClassFilter;
use cdrguard::record::{Alert, Number};
use cdrguard::state::Features;

use common::ROOT;

/// One MO voice part to a high-risk number (`88216000111`), of call `call` of line 33612000001.
fn part(id: &str, start: &str, secs: u32, call: &str, seq: u32, extra: &str) -> String {
    format!(
        r#"{{"record_id":"{id}","record_type":"voice","direction":"mo","event_start":"2026-11-10T{start}+01:00","duration_s":{secs},"served":{{"msisdn":"33612000001","account_id":"A-1"}},"other_party":{{"number":"88216000111"}},"charge":{{"amount":"{}.00","currency":"EUR"}},"call_ref":"{call}","seq":{seq}{extra}}}"#,
        secs / 60
    )
}

struct Run {
    alerts: Vec<Alert>,
    /// The line's voice MO over the hour: (calls, seconds, charge), and the most calls at once.
    line: (u64, u64, String, usize),
    duplicates: u64,
}

fn run(lines: &[String]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let usage = dir.path().join("usage.ndjson");
    std::fs::write(&usage, lines.join("\n") + "\n").unwrap();
    let (report, pipeline, alerts) =
        common::replay_with(&Path::new(ROOT).join("rules"), &usage, None, None);
    let store = pipeline.store.borrow();
    let e = store
        .subscriber(Number::parse("33612000001").unwrap())
        .unwrap();
    let sums = e.sum(
        &ClassFilter::parse("voice.mo").unwrap(),
        3 * 3600,
        e.last_seen,
    );
    Run {
        alerts: alerts
            .into_iter()
            .filter(|a| a.rule.id == "irsf_high_risk_destination")
            .collect(),
        line: (
            sums.count,
            sums.duration_s,
            sums.charge.to_string(),
            e.max_concurrent_calls(e.first_seen, e.last_seen + 7200),
        ),
        duplicates: report.counts.duplicates,
    }
}

fn metric(a: &Alert, name: &str) -> f64 {
    a.evidence.metrics[name].as_f64().unwrap()
}

/// One 11-minute call to a high-risk number in three parts: one call of 11 minutes, whether the
/// parts carry their own minutes or the totals so far, in order or not.
#[test]
fn an_eleven_minute_call_in_three_parts_is_one_call_of_eleven_minutes() {
    let own = [
        part("p1", "10:00:00", 240, "C1", 1, r#","partial":"first""#),
        part(
            "p2",
            "10:04:00",
            240,
            "C1",
            2,
            r#","partial":"intermediate""#,
        ),
        part("p3", "10:08:00", 180, "C1", 3, r#","partial":"last""#),
    ];
    let cumulative = [
        part(
            "q1",
            "10:00:00",
            240,
            "C1",
            1,
            r#","partial":"first","cumulative":true"#,
        ),
        part(
            "q2",
            "10:00:00",
            480,
            "C1",
            2,
            r#","partial":"intermediate","cumulative":true"#,
        ),
        part(
            "q3",
            "10:00:00",
            660,
            "C1",
            3,
            r#","partial":"last","cumulative":true"#,
        ),
    ];
    let shuffled = [own[2].clone(), own[0].clone(), own[1].clone()];
    for (name, lines) in [
        ("own durations", own.to_vec()),
        ("cumulative", cumulative.to_vec()),
        ("out of order", shuffled.to_vec()),
    ] {
        let r = run(&lines);
        assert_eq!(
            r.line,
            (1, 660, "11.00".to_string(), 1),
            "{name}: one call, 660 s, 11.00 charged, one at a time"
        );
        if name == "out of order" {
            // Windows end at the trigger's event time: the part at 10:04, arriving last, does not
            // see the part at 10:08 (its future). The line's totals are whole all the same.
            continue;
        }
        assert_eq!(r.alerts.len(), 1, "{name}: {:#?}", r.alerts);
        let a = &r.alerts[0];
        assert_eq!(a.severity.as_str(), "high", "{name}");
        assert_eq!(metric(a, "calls"), 1.0, "{name}");
        // The alert fires at the part that crosses 10 minutes.
        assert!(
            metric(a, "minutes") >= 10.0,
            "{name}: {}",
            metric(a, "minutes")
        );
    }
}

/// A cumulative part that arrives again, or late with a smaller total, adds nothing; a part resent
/// with its (call, seq) is a duplicate even under another record id.
#[test]
fn repeated_and_stale_parts_add_nothing() {
    let r = run(&[
        part("q1", "10:00:00", 240, "C1", 1, r#","cumulative":true"#),
        part("q2", "10:00:00", 480, "C1", 2, r#","cumulative":true"#),
        part(
            "q2-again",
            "10:00:00",
            480,
            "C1",
            2,
            r#","cumulative":true"#,
        ),
        part("q1-late", "10:00:00", 240, "C1", 9, r#","cumulative":true"#),
    ]);
    assert_eq!(r.line, (1, 480, "8.00".to_string(), 1));
    assert_eq!(
        r.duplicates, 0,
        "q2-again has another id: a conflict, not a duplicate"
    );
    let r = run(&[
        part("q1", "10:00:00", 240, "C1", 1, ""),
        part("q1", "10:00:00", 240, "C1", 1, ""),
    ]);
    assert_eq!((r.line.0, r.line.1, r.duplicates), (1, 240, 1));
}

/// Two calls with references of their own stay two calls, and overlap.
#[test]
fn two_calls_are_two_calls() {
    let r = run(&[
        part("a1", "10:00:00", 600, "A", 1, ""),
        part("b1", "10:05:00", 600, "B", 1, ""),
        part("a2", "10:10:00", 600, "A", 2, ""),
    ]);
    assert_eq!(r.line, (2, 1800, "30.00".to_string(), 2));
}

/// A data session's charging id and a voice call's reference may be the same text: two records,
/// neither a duplicate of the other nor a part of the other. And a reference reused long after its
/// call ended names a new call (decided from the records' times, whatever the store swept).
#[test]
fn a_reference_names_one_call_of_one_kind_at_one_time() {
    let data = r#"{"record_id":"d1","record_type":"data","event_start":"2026-11-10T10:00:00+01:00","duration_s":600,"served":{"msisdn":"33612000001","account_id":"A-1"},"volume":{"bytes_down":1000},"call_ref":"C1","seq":1}"#;
    let r = run(&[part("a1", "10:00:00", 240, "C1", 1, ""), data.to_string()]);
    assert_eq!((r.line.0, r.line.1, r.duplicates), (1, 240, 0));
    // The same reference a day and a half later (state.max_call_duration is 24 h).
    let r = run(&[
        part("a1", "10:00:00", 240, "C1", 1, ""),
        r#"{"record_id":"a2","record_type":"voice","direction":"mo","event_start":"2026-11-11T22:00:00+01:00","duration_s":240,"served":{"msisdn":"33612000001","account_id":"A-1"},"other_party":{"number":"88216000111"},"call_ref":"C1","seq":2}"#.to_string(),
    ]);
    // Merged into the first call it would count 0 in the last 3 h; a call of its own counts 1.
    assert_eq!(r.line.0, 1, "the reused reference is a new call");
}
