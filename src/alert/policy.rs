//! Alert policy: from a rule's verdict (the map its `evaluate` returned) to an `Alert` — or to nothing,
//! when min-hits or the cooldown hold it back.
//!
//! - **Deterministic id**: a stable hash of (rule id, entity key — with its scope, if any — the
//!   rule's key if it gave one, the cooldown bucket of the trigger time, severity). The same input
//!   gives the same ids on every replay and on redelivery after a crash, so consumers can
//!   de-duplicate.
//! - **Cooldown / min-hits** per (rule, entity), or per (rule, entity, scope) for a rule reading
//!   calling-number alerts (`TriggerInfo::scope`): see `memory`.
//! - **Routing and VIP overlay**: see `route`.
//!
//! The rule engine calls `decide` inline, right after each evaluation, rather than handing verdicts on
//! to a later stage: an alert must be in the memory before the next rule of the same record runs
//! (its cooldown, `alerted` and `edge` see it), so the decision cannot wait for the record to finish.

use std::collections::BTreeMap;

use rhai::{Dynamic, Map};

use crate::record::time::{format_duration, parse_duration};
use crate::record::{Alert, AlertWindow, EntityRef, Evidence, Mode, RuleRef, Severity};
use crate::record::{EventTime, Number, Segment};

use super::memory::{key_hash, scoped_key, AlertMemory, Decision, Issued};
use crate::rules::library::StableHash;
use crate::rules::ruleset::Rule;
use crate::rules::sandbox::ScriptError;

/// The verdict fields a rule may return; anything else is an error (a typo must not vanish).
pub const VERDICT_KEYS: &[&str] = &[
    "severity",
    "score",
    "metrics",
    "thresholds",
    "explanation",
    "actions",
    "window",
    "key",
    "record_ids",
];

/// What triggered the evaluation, for the alert's time and evidence.
pub struct TriggerInfo<'a> {
    pub time: EventTime,
    pub record_id: Option<&'a str>,
    pub segment: Option<Segment>,
    /// The number the rule's memory of the entity is kept per, besides the entity: the record's
    /// destination for a rule reading calling-number alerts (`rules::engine`), else none.
    pub scope: Option<Number>,
    /// The triggering record's numbers as its feed wrote them, where that differs (canonical,
    /// written); empty for nearly every record.
    pub written: &'a [(String, String)],
    /// The triggering record's charge as priced in another currency (`record::rates`).
    pub original_charge: Option<String>,
}

fn bad(got: String) -> ScriptError {
    ScriptError::BadReturn {
        expected: "an alert map with keys severity, score, metrics, thresholds, explanation, actions, window, key, record_ids",
        got,
    }
}

fn default_score(s: Severity) -> u8 {
    match s {
        Severity::Info => 10,
        Severity::Low => 30,
        Severity::Medium => 50,
        Severity::High => 75,
        Severity::Critical => 90,
    }
}

fn to_json(v: &Dynamic) -> serde_json::Value {
    // Floats rounded to 4 decimals: evidence is for people, and `0.30000000000000004` helps no one.
    fn round(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Number(n) if n.is_f64() => {
                let x = n.as_f64().unwrap_or(0.0);
                serde_json::Number::from_f64((x * 1e4).round() / 1e4)
                    .map_or(serde_json::Value::Null, serde_json::Value::Number)
            }
            serde_json::Value::Array(a) => a.into_iter().map(round).collect(),
            serde_json::Value::Object(o) => o.into_iter().map(|(k, v)| (k, round(v))).collect(),
            other => other,
        }
    }
    round(serde_json::to_value(v).unwrap_or(serde_json::Value::Null))
}

fn string_of(v: &Dynamic, field: &str) -> Result<String, ScriptError> {
    v.clone()
        .into_string()
        .map_err(|t| bad(format!("{field} of type {t}")))
}

fn map_of(v: &Dynamic, field: &str) -> Result<BTreeMap<String, serde_json::Value>, ScriptError> {
    let m = v
        .read_lock::<Map>()
        .ok_or_else(|| bad(format!("{field} of type {}", v.type_name())))?;
    Ok(m.iter().map(|(k, v)| (k.to_string(), to_json(v))).collect())
}

/// The parsed verdict.
struct Verdict {
    severity: Severity,
    score: u8,
    evidence: Evidence,
    actions: Vec<String>,
    window: Option<(String, i64)>,
    key: Option<String>,
}

fn parse_verdict(rule: &Rule, map: &Map, t: &TriggerInfo) -> Result<Verdict, ScriptError> {
    let meta = rule.meta();
    let mut v = Verdict {
        severity: meta.severity,
        score: 0,
        evidence: Evidence {
            explanation: meta.description.clone(),
            record_ids: t.record_id.map(|r| vec![r.to_string()]).unwrap_or_default(),
            written_numbers: t.written.iter().cloned().collect(),
            original_charge: t.original_charge.clone(),
            ..Default::default()
        },
        actions: meta.actions.clone(),
        window: meta.window.clone().zip(rule.resolved.window_s),
        key: None,
    };
    let mut score = None;
    for (k, val) in map {
        match k.as_str() {
            "severity" => {
                let s = string_of(val, "severity")?;
                v.severity = Severity::parse(&s).ok_or_else(|| {
                    bad(format!(
                        "severity {s:?} (info, low, medium, high, critical)"
                    ))
                })?;
            }
            "score" => {
                let n = val
                    .as_int()
                    .ok()
                    .filter(|n| (0..=100).contains(n))
                    .ok_or_else(|| bad(format!("score {val} (an integer 0-100)")))?;
                score = Some(n as u8);
            }
            "metrics" => v.evidence.metrics = map_of(val, "metrics")?,
            "thresholds" => v.evidence.thresholds = map_of(val, "thresholds")?,
            "explanation" => v.evidence.explanation = string_of(val, "explanation")?,
            "actions" => {
                let a = val
                    .read_lock::<rhai::Array>()
                    .ok_or_else(|| bad(format!("actions of type {}", val.type_name())))?;
                v.actions = a
                    .iter()
                    .map(|x| string_of(x, "actions[]"))
                    .collect::<Result<_, _>>()?;
            }
            "window" => {
                let s = string_of(val, "window")?;
                let w = parse_duration(&s).map_err(|e| bad(format!("window {s:?}: {e}")))?;
                v.window = Some((s, w));
            }
            "key" => v.key = Some(val.to_string()),
            "record_ids" => {
                let a = val
                    .read_lock::<rhai::Array>()
                    .ok_or_else(|| bad(format!("record_ids of type {}", val.type_name())))?;
                v.evidence.record_ids = a.iter().map(|x| x.to_string()).collect();
            }
            other => {
                return Err(bad(format!(
                    "unknown key {other:?} (allowed: {})",
                    VERDICT_KEYS.join(", ")
                )))
            }
        }
    }
    v.score = score.unwrap_or(default_score(v.severity));
    Ok(v)
}

/// Turns a positive verdict into an alert, or nothing when the policy holds it back. `memory_id`
/// is the rule's id in the alert memory, and in alert ids: its id, or the id with a candidate
/// library's namespace (`rules::api::Shared::memory_id`).
#[allow(clippy::too_many_arguments)]
pub fn decide(
    rule: &Rule,
    memory_id: &str,
    ruleset_version: &str,
    map: &Map,
    trigger: &TriggerInfo,
    entity: EntityRef,
    memory: &mut AlertMemory,
    mode: Mode,
    now: i64,
) -> Result<(Decision, Option<Alert>), ScriptError> {
    let v = parse_verdict(rule, map, trigger)?;
    let meta = rule.meta();
    let t = trigger.time.utc;
    let cooldown = rule.resolved.cooldown_s;
    let hit_window = rule.resolved.window_s.unwrap_or(cooldown);
    // Unscoped, the entity's key alone: ids and memory as they always were.
    let entity_key = match trigger.scope {
        Some(n) => scoped_key(&entity.key, n),
        None => entity.key.clone(),
    };
    let memory_key = match &v.key {
        Some(k) => format!("{entity_key}\u{1f}{k}"),
        None => entity_key.clone(),
    };
    let decision = memory.decide(
        memory_id,
        &memory_key,
        t,
        v.severity,
        rule.resolved.min_hits,
        hit_window,
        cooldown,
    );
    if decision != Decision::Emit {
        return Ok((decision, None));
    }

    let mut h = StableHash::new();
    for part in [
        memory_id,
        entity_key.as_str(),
        v.key.as_deref().unwrap_or(""),
        &t.div_euclid(cooldown).to_string(),
        &format!("{:?}", v.severity),
    ] {
        h.write(part.as_bytes());
        h.write(&[0x1f]);
    }
    let id = h.finish();
    let alert_id = format!("{id:032x}");
    memory.issue(
        id,
        Issued {
            entry: (key_hash(memory_id), key_hash(&memory_key)),
            rule: meta.id.clone(),
            entity: entity.key.clone(),
            t,
        },
    );

    let (departments, actions) = super::route::route(&meta.departments, v.actions, trigger.segment);

    let window = v.window.map(|(size, w)| AlertWindow {
        size: if parse_duration(&size).is_ok() {
            size
        } else {
            format_duration(w)
        },
        start: EventTime {
            utc: t - w,
            offset_min: trigger.time.offset_min,
        },
        end: trigger.time,
    });
    let alert = Alert {
        alert_id,
        rule: RuleRef {
            id: meta.id.clone(),
            version: meta.version.clone(),
            ruleset_version: ruleset_version.to_string(),
        },
        category: meta.category,
        severity: v.severity,
        score: v.score,
        entity,
        departments,
        trigger_event_time: trigger.time,
        detected_at: EventTime {
            utc: now,
            offset_min: trigger.time.offset_min,
        },
        window,
        evidence: v.evidence,
        recommended_actions: actions,
        mode,
    };
    Ok((decision, Some(alert)))
}
