//! The published JSON Schemas (docs/schema/) agree with the Rust decoder (src/record/).
//!
//! Every fixture under fixtures/schema/ is checked twice: against the schema and against the decoder, and
//! the two verdicts must match. Lines of the invalid fixtures carry `_case` (what is wrong) and `_expect`
//! (the decoder's reject reason); being unknown fields, both are ignored by schema and decoder. Each
//! schema is compiled twice: as most consumers run it (`format` is an annotation, the default for draft
//! 2020-12) and with `format` asserted; both must give the same verdict.
//!
//! Known differences, where JSON Schema cannot say what the decoder checks (or the decoder is stricter):
//! - Money: the decoder accepts `"-0"`/`"-0.00"` where a non-negative amount is required (it is zero).
//! - JSON Schema's `integer` accepts `95.0`; the decoder's integer fields do not.
//! - The currency must be the deployment's (configuration); the schema only checks the code's shape.

use std::fs;
use std::path::PathBuf;

use cdrguard::record::{Alert, Decoder};
use jsonschema::Validator;
use serde_json::{json, Value};

const USAGE: &str = "usage_record.schema.json";
const ACCOUNT: &str = "account_event.schema.json";
const ALERT: &str = "alert.schema.json";
const SUMMARY: &str = "replay-summary.schema.json";
const FEEDBACK: &str = "feedback.schema.json";

/// The usage record example from the wire-contract issue, byte for byte (not produced by any generator).
const ISSUE_USAGE: &str = r#"{"record_id":"msc1-729081236-0","record_type":"voice","direction":"mo",
 "event_start":"2026-11-21T03:17:05+01:00","duration_s":95,"answered":true,
 "served":{"msisdn":"33612345678","imsi":"208011234567890","imei":"35698701234567","account_id":"A-1001"},
 "other_party":{"number":"88213000123"},
 "location":{"cell_id":4353,"lat":48.85,"lon":2.35},
 "roaming":{"is_roaming":false,"visited_plmn":null},
 "forwarding":{"forwarded_to_number":null},
 "volume":{"bytes_up":0,"bytes_down":0},
 "charge":{"amount":"1.25","currency":"EUR"}}"#;

/// The account event example from the wire-contract issue.
const ISSUE_ACCOUNT: &str = r#"{"event_id":"inv-77","event_type":"invoice_issued","occurred_at":"2026-11-01T00:00:00+01:00",
 "account_id":"A-1001","msisdn":null,
 "invoice":{"invoice_id":"INV-77","due_date":"2026-11-15","amount_due":"80.00"}}"#;

fn path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn load_schema(name: &str) -> Value {
    let p = path(&format!("docs/schema/{name}"));
    let text = fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", p.display()))
}

/// A schema compiled as consumers usually run it, and with `format` asserted.
struct Schema {
    name: &'static str,
    plain: Validator,
    formats: Validator,
}

impl Schema {
    fn load(name: &'static str) -> Schema {
        let schema = load_schema(name);
        let plain = jsonschema::draft202012::new(&schema)
            .unwrap_or_else(|e| panic!("{name} does not compile: {e}"));
        let formats = jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&schema)
            .unwrap_or_else(|e| panic!("{name} does not compile with formats asserted: {e}"));
        Schema {
            name,
            plain,
            formats,
        }
    }

    /// Errors from both validators, each with the JSON pointer of the offending value.
    fn errors(&self, instance: &Value) -> Vec<String> {
        let mut out = Vec::new();
        for (label, v) in [("", &self.plain), ("[format] ", &self.formats)] {
            for e in v.iter_errors(instance) {
                out.push(format!("{label}{} at '{}'", e, e.instance_path()));
            }
        }
        out
    }

    /// Whether the instance is valid, after checking that both validators agree on it.
    fn is_valid(&self, instance: &Value) -> bool {
        let plain = self.plain.is_valid(instance);
        let formats = self.formats.is_valid(instance);
        assert_eq!(
            plain,
            formats,
            "{}: format assertion changes the verdict on {instance}: {:?}",
            self.name,
            self.errors(instance)
        );
        plain
    }
}

/// Non-blank lines of a fixture file with their 1-based line numbers.
fn fixture(name: &str) -> Vec<(usize, String)> {
    let p = path(&format!("fixtures/schema/{name}"));
    let text = fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l.to_string()))
        .collect()
}

fn parse(name: &str, line_no: usize, line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{name}:{line_no}: not JSON: {e}"))
}

#[derive(Clone, Copy)]
enum Kind {
    Usage,
    Account,
}

impl Kind {
    fn schema(self) -> &'static str {
        match self {
            Kind::Usage => USAGE,
            Kind::Account => ACCOUNT,
        }
    }

    /// The decoder's verdict: `Ok(())` or the reject, as text.
    fn decode(self, bytes: &[u8]) -> Result<(), String> {
        let d = Decoder::default();
        match self {
            Kind::Usage => d.usage(bytes).map(drop),
            Kind::Account => d.account_event(bytes).map(drop),
        }
        .map_err(|r| r.to_string())
    }

    /// The decoder's reject reason (`missing_field`, ...), if it rejects.
    fn reason(self, bytes: &[u8]) -> Option<String> {
        let d = Decoder::default();
        match self {
            Kind::Usage => d.usage(bytes).err(),
            Kind::Account => d.account_event(bytes).err(),
        }
        .map(|r| r.reason.as_str().to_string())
    }
}

/// The schema for `kind` and the lines of a fixture that must hold at least `min_lines`.
fn load_fixture(file: &str, kind: Kind, min_lines: usize) -> (Schema, Vec<(usize, String)>) {
    let schema = Schema::load(kind.schema());
    let lines = fixture(file);
    assert!(
        lines.len() >= min_lines,
        "{file}: {} lines, want ≥ {min_lines}",
        lines.len()
    );
    (schema, lines)
}

/// "<context>: schema rejects: <errors>" when `schema` rejects `value`.
fn schema_rejection(schema: &Schema, value: &Value, context: &str) -> Option<String> {
    let errors = schema.errors(value);
    (!errors.is_empty())
        .then(|| format!("{context}: schema rejects:\n    {}", errors.join("\n    ")))
}

fn check_valid_fixture(file: &str, kind: Kind, min_lines: usize) {
    let (schema, lines) = load_fixture(file, kind, min_lines);
    let mut failures = Vec::new();
    for (n, line) in &lines {
        let value = parse(file, *n, line);
        failures.extend(schema_rejection(&schema, &value, &format!("{file}:{n}")));
        if let Err(r) = kind.decode(line.as_bytes()) {
            failures.push(format!("{file}:{n}: decoder rejects: {r}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

fn check_invalid_fixture(file: &str, kind: Kind, min_lines: usize) {
    let (schema, lines) = load_fixture(file, kind, min_lines);
    let mut failures = Vec::new();
    for (n, line) in &lines {
        let value = parse(file, *n, line);
        let case = value["_case"].as_str().unwrap_or("?");
        if schema.plain.is_valid(&value) {
            failures.push(format!("{file}:{n} ({case}): schema accepts it"));
        }
        if schema.formats.is_valid(&value) {
            failures.push(format!(
                "{file}:{n} ({case}): schema with formats asserted accepts it"
            ));
        }
        match (kind.reason(line.as_bytes()), value["_expect"].as_str()) {
            (None, _) => failures.push(format!("{file}:{n} ({case}): decoder accepts it")),
            (Some(got), Some(want)) if got != want => failures.push(format!(
                "{file}:{n} ({case}): decoder rejects with {got}, fixture expects {want}: {}",
                kind.decode(line.as_bytes()).unwrap_err()
            )),
            _ => {}
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn schemas_are_valid_documented_draft_2020_12() {
    for name in [USAGE, ACCOUNT, ALERT, SUMMARY, FEEDBACK] {
        let schema = load_schema(name);
        if let Err(e) = jsonschema::draft202012::meta::validate(&schema) {
            panic!("{name} is not a valid draft 2020-12 schema: {e}");
        }
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{name}"
        );
        let id = schema["$id"].as_str().unwrap_or_default();
        assert!(id.ends_with(name), "{name}: $id {id:?}");
        for key in ["title", "description"] {
            assert!(schema[key].is_string(), "{name}: no {key}");
        }
        let mut undocumented = Vec::new();
        undocumented_properties(&schema, "", &mut undocumented);
        assert!(
            undocumented.is_empty(),
            "{name}: properties without a description: {undocumented:?}"
        );
    }
}

/// Walks `properties` recursively (the documented shape, not the `allOf` conditions).
fn undocumented_properties(schema: &Value, at: &str, out: &mut Vec<String>) {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (name, sub) in props {
        let here = if at.is_empty() {
            name.clone()
        } else {
            format!("{at}.{name}")
        };
        match sub.get("description").and_then(Value::as_str) {
            Some(d) if !d.trim().is_empty() => {}
            _ => out.push(here.clone()),
        }
        undocumented_properties(sub, &here, out);
    }
}

#[test]
fn issue_examples_validate_and_decode() {
    for (kind, text) in [(Kind::Usage, ISSUE_USAGE), (Kind::Account, ISSUE_ACCOUNT)] {
        let schema = Schema::load(kind.schema());
        let value: Value = serde_json::from_str(text).unwrap();
        let errors = schema.errors(&value);
        assert!(errors.is_empty(), "{}: {errors:#?}", schema.name);
        kind.decode(text.as_bytes()).unwrap();
    }
    let r = Decoder::default().usage(ISSUE_USAGE.as_bytes()).unwrap();
    assert_eq!(r.charge.amount.micros(), 1_250_000);
    assert_eq!(r.event_start.local_hour(), 3);
}

#[test]
fn schema_examples_validate_and_decode() {
    for (name, kind) in [
        (USAGE, Some(Kind::Usage)),
        (ACCOUNT, Some(Kind::Account)),
        (ALERT, None),
    ] {
        let schema = Schema::load(name);
        let examples = load_schema(name)["examples"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(!examples.is_empty(), "{name}: no examples");
        for ex in examples {
            let errors = schema.errors(&ex);
            assert!(errors.is_empty(), "{name}: example {ex}: {errors:#?}");
            let bytes = serde_json::to_vec(&ex).unwrap();
            match kind {
                Some(k) => k.decode(&bytes).unwrap(),
                None => drop(serde_json::from_slice::<Alert>(&bytes).unwrap()),
            }
        }
    }
}

/// The decision schema and its decoder agree: the examples pass both; each common mistake fails
/// both.
#[test]
fn feedback_schema_and_decoder_agree() {
    use cdrguard::alert::feedback;
    let schema = Schema::load(FEEDBACK);
    let examples = load_schema(FEEDBACK)["examples"]
        .as_array()
        .cloned()
        .unwrap();
    for ex in &examples {
        assert!(
            schema.errors(ex).is_empty(),
            "{ex}: {:#?}",
            schema.errors(ex)
        );
        feedback::decode(&serde_json::to_vec(ex).unwrap()).unwrap();
    }
    let snooze = &examples[0];
    let fp = &examples[1];
    for (what, bad) in [
        ("no alert id", without(fp, "/alert_id")),
        ("short alert id", with(fp, "/alert_id", json!("8c1f"))),
        (
            "unknown disposition",
            with(fp, "/disposition", json!("maybe")),
        ),
        ("snooze without until", without(snooze, "/until")),
        ("until on a false positive", {
            let mut v = fp.clone();
            v["until"] = json!("2026-12-24T00:00:00Z");
            v
        }),
        ("no analyst", without(fp, "/analyst")),
        ("empty analyst", with(fp, "/analyst", json!(""))),
        ("numeric analyst", with(fp, "/analyst", json!(7))),
        (
            "until without offset",
            with(snooze, "/until", json!("2026-12-24T00:00:00")),
        ),
    ] {
        let bytes = serde_json::to_vec(&bad).unwrap();
        assert!(
            feedback::decode(&bytes).is_err(),
            "decoder accepts {what}: {bad}"
        );
        // The schema's `format` is an annotation: the offset is the decoder's to check.
        if what != "until without offset" {
            assert!(!schema.is_valid(&bad), "schema accepts {what}: {bad}");
        }
    }
}

#[test]
fn valid_usage_records_validate_and_decode() {
    check_valid_fixture("usage_valid.ndjson", Kind::Usage, 8);
}

#[test]
fn valid_account_events_validate_and_decode() {
    check_valid_fixture("account_events_valid.ndjson", Kind::Account, 9);
    // At least one line per event type.
    let seen: Vec<Value> = fixture("account_events_valid.ndjson")
        .iter()
        .map(|(n, l)| parse("account_events_valid.ndjson", *n, l)["event_type"].clone())
        .collect();
    let schema = load_schema(ACCOUNT);
    let types = schema["properties"]["event_type"]["enum"]
        .as_array()
        .unwrap();
    let missing: Vec<&Value> = types.iter().filter(|t| !seen.contains(t)).collect();
    assert!(missing.is_empty(), "no valid fixture for {missing:?}");
}

#[test]
fn invalid_usage_records_fail_schema_and_decoder() {
    check_invalid_fixture("usage_invalid.ndjson", Kind::Usage, 6);
}

#[test]
fn invalid_account_events_fail_schema_and_decoder() {
    check_invalid_fixture("account_events_invalid.ndjson", Kind::Account, 6);
}

#[test]
fn alerts_round_trip_through_the_rust_type_and_validate() {
    let file = "alerts_valid.ndjson";
    let schema = Schema::load(ALERT);
    let lines = fixture(file);
    assert!(lines.len() >= 2, "{file}: want ≥ 2 alerts");
    let mut failures = Vec::new();
    for (n, line) in &lines {
        let value = parse(file, *n, line);
        failures.extend(schema_rejection(&schema, &value, &format!("{file}:{n}")));
        let alert: Alert = match serde_json::from_str(line) {
            Ok(a) => a,
            Err(e) => {
                failures.push(format!("{file}:{n}: does not deserialize into Alert: {e}"));
                continue;
            }
        };
        let out = serde_json::to_value(&alert).unwrap();
        failures.extend(schema_rejection(
            &schema,
            &out,
            &format!("{file}:{n}: re-serialized alert {out}"),
        ));
        if out != value {
            failures.push(format!(
                "{file}:{n}: re-serialization differs:\n    in:  {value}\n    out: {out}"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn alert_schema_rejects_common_mistakes() {
    let schema = Schema::load(ALERT);
    let good = parse(
        "alerts_valid.ndjson",
        1,
        &fixture("alerts_valid.ndjson")[0].1,
    );
    assert!(schema.is_valid(&good));
    // (what, JSON pointer, replacement; `None` removes the member)
    let cases = [
        ("missing alert_id", "/alert_id", None),
        ("score above 100", "/score", Some(json!(101))),
        ("fractional score", "/score", Some(json!(87.5))),
        ("unknown severity", "/severity", Some(json!("urgent"))),
        (
            "lower-case department",
            "/departments",
            Some(json!(["fraud"])),
        ),
        ("unknown entity type", "/entity/type", Some(json!("cell"))),
        (
            "msisdn with +",
            "/entity/msisdn",
            Some(json!("+33612345678")),
        ),
        (
            "timestamp without offset",
            "/detected_at",
            Some(json!("2026-11-21T03:17:06")),
        ),
        ("unknown mode", "/mode", Some(json!("test"))),
        ("window without end", "/window/end", None),
        (
            "window size without unit",
            "/window/size",
            Some(json!("3600")),
        ),
        (
            "record_ids not strings",
            "/evidence/record_ids",
            Some(json!([1, 2])),
        ),
        ("missing evidence", "/evidence", None),
    ];
    for (what, ptr, replacement) in cases {
        let bad = match replacement {
            Some(v) => with(&good, ptr, v),
            None => without(&good, ptr),
        };
        assert!(!schema.is_valid(&bad), "alert schema accepts: {what}");
    }
}

/// Shapes serde alone would tolerate but the contract does not allow: arrays for objects (serde reads
/// them as positional structs), a space for `T`, over-large JSON-number amounts. Schema and decoder both
/// reject them.
#[test]
fn schema_and_decoder_keep_the_documented_shapes() {
    let usage = Schema::load(USAGE);
    let account = Schema::load(ACCOUNT);
    let record: Value = serde_json::from_str(ISSUE_USAGE).unwrap();
    let cases = [
        (
            &usage,
            json!([
                "r1",
                "data",
                null,
                "2026-11-21T03:17:05Z",
                0,
                true,
                ["33612345678"]
            ]),
        ),
        (
            &account,
            json!(["e1", "deactivation", "2026-11-21T03:17:05Z", "A-1"]),
        ),
        (&usage, with(&record, "/served", json!(["33612345678"]))),
        (&usage, with(&record, "/charge", json!(["1.25", "EUR"]))),
        (
            &usage,
            with(&record, "/event_start", json!("2026-11-21 03:17:05+01:00")),
        ),
        (
            &usage,
            with(&record, "/charge/amount", json!(5_000_000_000_000u64)),
        ),
        (
            &usage,
            with(&record, "/event_start", json!("2026-11-21T03:17:60+01:00")),
        ),
    ];
    for (schema, doc) in cases {
        let errors = schema.errors(&doc);
        assert!(!errors.is_empty(), "{} accepts {doc}", schema.name);
        let bytes = serde_json::to_vec(&doc).unwrap();
        let kind = if schema.name.contains("account") {
            Kind::Account
        } else {
            Kind::Usage
        };
        assert!(kind.decode(&bytes).is_err(), "decoder accepts {doc}");
    }
    // Zero written as "-0.00" is still zero: the schema's pattern rejects it, the decoder takes it.
    let neg_zero = with(&record, "/charge/amount", json!("-0.00"));
    assert!(!usage.errors(&neg_zero).is_empty());
}

fn with(doc: &Value, ptr: &str, v: Value) -> Value {
    let mut d = doc.clone();
    *d.pointer_mut(ptr).unwrap() = v;
    d
}

fn without(doc: &Value, ptr: &str) -> Value {
    let (parent, key) = ptr.rsplit_once('/').unwrap();
    let mut d = doc.clone();
    d.pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap()
        .remove(key);
    d
}

/// Systematic cross-check: mutate every field of the issue examples (and of a few per-type account
/// events) into common wrong shapes, and require the schema and the decoder to give the same verdict.
#[test]
fn schema_and_decoder_agree_on_mutations() {
    let mut disagreements = Vec::new();
    let usage_bases: Vec<String> = std::iter::once(ISSUE_USAGE.to_string())
        .chain(fixture("usage_valid.ndjson").into_iter().map(|(_, l)| l))
        .collect();
    let account_bases: Vec<String> = fixture("account_events_valid.ndjson")
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    for (kind, bases) in [(Kind::Usage, usage_bases), (Kind::Account, account_bases)] {
        let schema = Schema::load(kind.schema());
        for base in bases {
            let base: Value = serde_json::from_str(&base).unwrap();
            for (ptr, _, mutant) in mutants(&base) {
                let bytes = serde_json::to_vec(&mutant).unwrap();
                let decoded = kind.decode(&bytes);
                let valid = schema.is_valid(&mutant);
                // The deployment currency is configuration; the schema only knows it is a code.
                let known = matches!(&decoded, Err(r) if r.starts_with("currency_mismatch"));
                if valid != decoded.is_ok() && !known {
                    disagreements.push(format!(
                        "{}: {ptr}: schema says {}, decoder says {decoded:?}\n    {mutant}",
                        schema.name,
                        if valid { "valid" } else { "invalid" },
                    ));
                }
            }
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} disagreements:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
}

/// Replacement values tried at every position: the usual producer mistakes, and edge values.
///
/// Deliberately absent, because schema and decoder are known to differ on them (see the module docs):
/// integral floats such as `95.0` for integer fields and `"-0"` amounts.
fn replacements() -> Vec<Value> {
    vec![
        Value::Null,
        json!(""),
        json!("x"),
        json!("EUR"),
        json!("0"),
        json!("33612345678"),
        json!("+33612345678"),
        json!("3361234567812345"),
        json!("３３６"),
        json!("2026-11-21T03:17:05"),
        json!("2026-11-21T03:17:05.Z"),
        json!("2026-11-21T03:17:05+01"),
        json!("2026-02-29T00:00:00Z"),
        json!("2028-02-29T00:00:00.5-03:30"),
        json!("2026-11-21t03:17:05z"),
        json!("1999-12-31T12:00:00Z"),
        json!("2026-11-15"),
        json!("2026-02-30"),
        json!("2100-01-01"),
        json!("-1.5"),
        json!("1.5"),
        json!("0.1234567"),
        json!("1."),
        json!(".5"),
        json!("1e3"),
        json!("999999999999.999999"),
        json!("1000000000000"),
        json!("voice"),
        json!("sms"),
        json!("data"),
        json!("mo"),
        json!("forwarded"),
        json!("vip"),
        json!("payment_reversed"),
        json!(0),
        json!(-1),
        json!(1),
        json!(90),
        json!(-180.5),
        json!(604800),
        json!(604801),
        json!(1.5),
        json!(0.0000001),
        json!(1e20),
        json!(true),
        json!([1]),
        json!({}),
        json!({"x": 1}),
    ]
}

/// (description, JSON pointer, mutated document) for every member: removed, and replaced by each
/// replacement value.
fn mutants(base: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    let mut pointers = Vec::new();
    collect_pointers(base, String::new(), &mut pointers);
    for ptr in pointers {
        out.push((format!("{ptr} removed"), ptr.clone(), without(base, &ptr)));
        for r in replacements() {
            let mut m = base.clone();
            *m.pointer_mut(&ptr).unwrap() = r.clone();
            out.push((format!("{ptr} = {r}"), ptr.clone(), m));
        }
    }
    out
}

fn collect_pointers(v: &Value, at: String, out: &mut Vec<String>) {
    if let Value::Object(map) = v {
        for (k, sub) in map {
            let p = format!("{at}/{k}");
            out.push(p.clone());
            collect_pointers(sub, p, out);
        }
    }
}

/// Summaries of real replays (`replay --summary-json`): with rules and labels (a missed and an
/// unexpected case listed), with a rejected line, without rules. Each must validate; a summary in
/// the old shape (`elapsed` as `{secs, nanos}`) or with a precision above 1 must not.
#[test]
fn replay_summaries_validate_against_their_schema() {
    use cdrguard::demo::gen::{generate, GenConfig};
    use cdrguard::modes::backtest::{Labels, Score};
    use cdrguard::modes::replay::{self, ReplayOptions, RulesChoice, Summary};

    let schema = Schema::load(SUMMARY);
    let dir = tempfile::tempdir().unwrap();
    let cfg = GenConfig {
        subscribers: 300,
        records: 6_000,
        days: 4,
        inject: vec![
            ("irsf_high_risk_destination".into(), 2),
            ("invoice_overdue".into(), 1),
        ],
        ..GenConfig::default()
    };
    let (mut usage, mut events) = (Vec::new(), Vec::new());
    let g = generate(&cfg, &mut usage, &mut events).unwrap();
    usage.extend_from_slice(b"{\"record_id\": 1}\n");
    let (u, e) = (dir.path().join("u.ndjson"), dir.path().join("e.ndjson"));
    fs::write(&u, usage).unwrap();
    fs::write(&e, events).unwrap();
    let l = &g.labels[0];
    let csv = format!(
        "{},{},{}\nirsf_high_risk_destination,subscriber,33700000000\n",
        l.rule,
        l.entity_type.as_str(),
        l.entity
    );
    let labels = Labels::parse(std::path::Path::new("confirmed.csv"), &csv).unwrap();

    let mut checked = Vec::new();
    for rules in [RulesChoice::Dir(path("rules")), RulesChoice::Off] {
        let with_rules = matches!(rules, RulesChoice::Dir(_));
        let opts = ReplayOptions {
            usage: u.clone(),
            events: Some(e.clone()),
            dead_letter: Some(dir.path().join("rejected.ndjson")),
            rules,
            tally: true,
            ..Default::default()
        };
        let (report, _) = replay::run_to(&opts, &mut std::io::sink()).unwrap();
        let score = Score::new(&labels, &report.tally.as_ref().unwrap().alerts, 10);
        let summary = serde_json::to_value(Summary {
            report: &report,
            labels: with_rules.then_some(&score),
        })
        .unwrap();
        let errors = schema.errors(&summary);
        assert!(errors.is_empty(), "{errors:#?}\n{summary:#}");
        assert!(schema.is_valid(&summary));
        checked.push(summary);
    }
    let with = &checked[0];
    assert_eq!(with["counts"]["rejected"]["wrong_type"], 1, "{with:#}");
    assert!(with["dead_letter"].is_string());
    assert!(with["elapsed_s"].as_f64().unwrap() > 0.0);
    let irsf = with["labels"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == "irsf_high_risk_destination")
        .unwrap();
    assert_eq!(irsf["missed"][0]["entity_key"], "33700000000", "{irsf:#}");
    assert!(irsf["unexpected"][0]["first"].is_string(), "{irsf:#}");
    assert!(checked[1]["rules"].is_null());

    let mut old = with.clone();
    let secs = old.as_object_mut().unwrap().remove("elapsed_s").unwrap();
    old["elapsed"] = json!({"secs": secs.as_f64().unwrap() as u64, "nanos": 0});
    assert!(
        !schema.is_valid(&old),
        "the old `elapsed` shape must not validate"
    );
    let mut over = with.clone();
    over["labels"]["overall"]["precision"] = json!(1.5);
    assert!(
        !schema.is_valid(&over),
        "a precision above 1 must not validate"
    );
}
