//! Numbering (issue "Real mediation feeds", part 1): every number form of `fixtures/numbering/cases.toml`
//! through the real decoder and classifier of a deployment's config, and the forms `gen` writes.

use std::path::Path;

use cdrguard::config::Config;
use cdrguard::record::{NumberKind, UsageRecord};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[derive(serde::Deserialize)]
struct Cases {
    case: Vec<Case>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    plan: String,
    #[serde(default = "other_party")]
    field: String,
    #[serde(default = "voice_mo")]
    record: String,
    written: String,
    ton: Option<String>,
    expect: Expect,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    number: String,
    kind: String,
    class: String,
}

fn other_party() -> String {
    "other_party".into()
}

fn voice_mo() -> String {
    "voice.mo".into()
}

/// A record of the case's type and direction, with the case's number in its field; the other
/// number is a domestic one of the plan.
fn record_json(c: &Case, home: &str) -> String {
    let (kind, direction) = c.record.split_once('.').unwrap();
    let ton = c
        .ton
        .as_ref()
        .map(|t| format!(r#","type_of_number":"{t}""#))
        .unwrap_or_default();
    let written = serde_json::to_string(&c.written).unwrap();
    let (served, other) = if c.field == "served" {
        (written, format!(r#"{{"number":"{home}145000000"{ton}}}"#))
    } else {
        (
            format!(r#""{home}612000001""#),
            format!(r#"{{"number":{written}{ton}}}"#),
        )
    };
    format!(
        r#"{{"record_id":"n1","record_type":"{kind}","direction":"{direction}","event_start":"2026-11-10T12:00:00+01:00","duration_s":60,"served":{{"msisdn":{served}}},"other_party":{other}}}"#
    )
}

#[test]
fn every_number_form_of_the_table() {
    let dir = Path::new(ROOT).join("fixtures/numbering");
    let cases: Cases =
        toml::from_str(&std::fs::read_to_string(dir.join("cases.toml")).unwrap()).unwrap();
    assert!(cases.case.len() >= 25, "the table lost cases");
    let mut failures = Vec::new();
    for c in &cases.case {
        let (cfg, base) = Config::load(Some(&dir.join(format!("{}.toml", c.plan)))).unwrap();
        let (decoder, classifier) = (cfg.decoder(), cfg.classifier(&base).unwrap());
        let json = record_json(c, &cfg.reference.home_country_code);
        let rec: UsageRecord = match decoder.usage(json.as_bytes()) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{:?}: rejected: {e}", c.written));
                continue;
            }
        };
        let (number, kind) = if c.field == "served" {
            (Some(rec.served.msisdn), NumberKind::E164)
        } else {
            (rec.other_party.number, rec.other_party.kind)
        };
        let got = (
            number.map(|n| n.to_string()).unwrap_or_default(),
            kind.to_string(),
            format!("{:?}", classifier.classify(&rec)),
        );
        let want = (
            c.expect.number.clone(),
            c.expect.kind.clone(),
            c.expect.class.clone(),
        );
        if got != want {
            failures.push(format!(
                "{:?} ({} {}, ton {:?}): got {got:?}, want {want:?}",
                c.written, c.plan, c.field, c.ton
            ));
        }
        // What the feed wrote is kept exactly when it differs from the canonical digits.
        let written = if c.field == "served" {
            rec.served.msisdn_written.as_deref()
        } else {
            rec.other_party.written.as_deref()
        };
        let expect_written = (c.written != c.expect.number).then_some(c.written.as_str());
        if written != expect_written {
            failures.push(format!(
                "{:?}: kept {written:?} as written, want {expect_written:?}",
                c.written
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_served_line_needs_a_number_and_a_bad_plan_is_refused() {
    let d = Config::default().decoder();
    let rec = r#"{"record_id":"n1","record_type":"voice","direction":"mo","event_start":"2026-11-10T12:00:00+01:00","served":{"msisdn":"MYBANK"}}"#;
    let e = d.usage(rec.as_bytes()).unwrap_err();
    assert_eq!(
        (e.reason.as_str(), e.field.as_deref()),
        ("invalid_value", Some("served.msisdn")),
        "{e}"
    );
    assert!(e.detail.contains("alphanumeric"), "{e}");
    let e = Config::parse("[numbering]\ntrunk_prefix = \"00\"\n")
        .unwrap()
        .validate()
        .unwrap_err();
    assert!(
        e.to_string().contains("also an international prefix"),
        "{e}"
    );
    let e = Config::parse(
        "[reference]\nhome_country_code = \"1\"\n[numbering]\nforeign_prefixes = [\"44\"]\n",
    )
    .unwrap()
    .validate()
    .unwrap_err();
    assert!(e.to_string().contains("numbering.foreign_prefixes"), "{e}");
}
