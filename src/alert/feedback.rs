//! Analysts' feedback: one JSON object per decision about one alert, on the `cdrguard.feedback` topic
//! (daemon) or in a file (`replay --feedback`), as `docs/schema/feedback.schema.json` describes:
//!
//! ```json
//! {"alert_id": "3f…", "disposition": "snooze", "until": "2026-12-24T00:00:00Z",
//!  "note": "travelling, confirmed by phone", "analyst": "m.durand"}
//! ```
//!
//! - `confirmed` and `false_positive` are counted per rule (`cdrguard_alert_dispositions_total`), the
//!   precision of a rule as the desk sees it, and listed under the entity (`inspect`).
//! - `snooze` also holds back that alert's (rule, entity) until `until`, in event time: positive
//!   verdicts of the rule on that entity before then raise nothing (counted as `snoozed`). It lives
//!   in the alert memory, checkpointed with it.
//!
//! A decision names an alert by id; the alert memory that issued it resolves the id to its rule and
//! entity (`AlertMemory::judge`). An id no memory knows — mistyped, never issued, or pruned with its
//! entry after `state.max_window` — is dead-lettered as `unknown_alert`; a malformed message as its
//! decoding fault. Neither stops anything. Who may write decisions is Kafka's business: grant
//! `WRITE` on the topic to the case-management desk only (ACLs), and `READ` to cdrguard.

use serde::Deserialize;

use super::memory::{Disposition, Judgement};
use crate::record::EventTime;
use crate::record::{Reject, RejectReason};

/// A decision is a few hundred bytes; anything much larger is not one.
pub const MAX_BYTES: usize = 8 * 1024;
/// Notes are for people, not for attachments.
const MAX_NOTE: usize = 2048;

#[derive(Deserialize)]
struct Wire {
    alert_id: Option<serde_json::Value>,
    disposition: Option<serde_json::Value>,
    until: Option<serde_json::Value>,
    note: Option<serde_json::Value>,
    analyst: Option<serde_json::Value>,
}

/// A decoded decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Feedback {
    pub alert_id: u128,
    pub disposition: Disposition,
    /// Snooze end, UTC seconds (required for `snooze`, refused otherwise).
    pub until: Option<i64>,
    pub note: Option<String>,
    pub analyst: String,
}

impl Feedback {
    /// As the alert memory keeps it (`rule` and `at` are filled in where it is applied).
    pub fn judgement(&self) -> Judgement {
        Judgement {
            alert_id: self.alert_id,
            rule: String::new(),
            disposition: self.disposition,
            until: self.until,
            analyst: self.analyst.clone(),
            note: self.note.clone(),
            at: 0,
        }
    }

    /// The alert id as it appears on alerts.
    pub fn alert_id_hex(&self) -> String {
        format!("{:032x}", self.alert_id)
    }
}

fn bad(reason: RejectReason, field: &str, detail: impl Into<String>) -> Reject {
    Reject::new(reason, Some(field.to_string()), detail)
}

fn string(v: Option<serde_json::Value>, field: &str) -> Result<Option<String>, Reject> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(bad(
            RejectReason::WrongType,
            field,
            format!("expected a string, got {other}"),
        )),
    }
}

fn required(v: Option<serde_json::Value>, field: &str) -> Result<String, Reject> {
    string(v, field)?.ok_or_else(|| bad(RejectReason::MissingField, field, "required"))
}

/// Decodes one decision, or says why it is not one.
pub fn decode(bytes: &[u8]) -> Result<Feedback, Reject> {
    if bytes.len() > MAX_BYTES {
        return Err(Reject::new(
            RejectReason::Oversized,
            None,
            format!("{} bytes; a decision is at most {MAX_BYTES}", bytes.len()),
        ));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| Reject::new(RejectReason::InvalidUtf8, None, e.to_string()))?;
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| Reject::new(RejectReason::InvalidJson, None, e.to_string()))?;
    if !value.is_object() {
        return Err(Reject::new(
            RejectReason::NotAnObject,
            None,
            "a decision is a JSON object",
        ));
    }
    let w: Wire = serde_json::from_value(value)
        .map_err(|e| Reject::new(RejectReason::InvalidJson, None, e.to_string()))?;

    let id = required(w.alert_id, "alert_id")?;
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(
            RejectReason::InvalidValue,
            "alert_id",
            format!("{id:?} is not an alert id (32 hex digits)"),
        ));
    }
    let alert_id = u128::from_str_radix(&id, 16).expect("32 hex digits");
    let disposition = match required(w.disposition, "disposition")?.as_str() {
        "confirmed" => Disposition::Confirmed,
        "false_positive" => Disposition::FalsePositive,
        "snooze" => Disposition::Snooze,
        other => {
            return Err(bad(
                RejectReason::UnknownVariant,
                "disposition",
                format!("{other:?}; expected confirmed, false_positive or snooze"),
            ))
        }
    };
    let until = match string(w.until, "until")? {
        None => None,
        Some(s) => Some(
            EventTime::parse(&s)
                .map_err(|e| bad(RejectReason::BadTimestamp, "until", format!("{s:?}: {e}")))?
                .utc,
        ),
    };
    match (disposition, until) {
        (Disposition::Snooze, None) => {
            return Err(bad(
                RejectReason::MissingField,
                "until",
                "a snooze needs the time it ends",
            ))
        }
        (Disposition::Confirmed | Disposition::FalsePositive, Some(_)) => {
            return Err(bad(
                RejectReason::InvalidValue,
                "until",
                "only a snooze has an end",
            ))
        }
        _ => {}
    }
    let analyst = required(w.analyst, "analyst")?;
    if analyst.trim().is_empty() || analyst.len() > 256 {
        return Err(bad(
            RejectReason::InvalidValue,
            "analyst",
            "who decided: 1 to 256 bytes",
        ));
    }
    let note = string(w.note, "note")?;
    if note.as_ref().is_some_and(|n| n.len() > MAX_NOTE) {
        return Err(bad(
            RejectReason::InvalidValue,
            "note",
            format!("longer than {MAX_NOTE} bytes"),
        ));
    }
    Ok(Feedback {
        alert_id,
        disposition,
        until,
        note,
        analyst,
    })
}

/// The dead letter of a decision no alert memory here knows.
pub fn unknown(f: &Feedback) -> Reject {
    bad(
        RejectReason::UnknownAlert,
        "alert_id",
        format!(
            "no alert {} here: never issued, or forgotten with its entity after state.max_window",
            f.alert_id_hex()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn decodes_each_disposition_and_refuses_what_is_not_one() {
        let f = decode(
            format!(
                r#"{{"alert_id":"{ID}","disposition":"snooze","until":"2026-12-24T00:00:00Z","analyst":"m","note":"n","case":7}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(f.disposition, Disposition::Snooze);
        assert_eq!(f.alert_id_hex(), ID);
        assert_eq!(
            f.until,
            Some(EventTime::parse("2026-12-24T00:00:00Z").unwrap().utc)
        );
        let ok = decode(
            format!(r#"{{"alert_id":"{ID}","disposition":"false_positive","analyst":"m"}}"#)
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(ok.disposition, Disposition::FalsePositive);

        let reason = |s: &str| decode(s.as_bytes()).unwrap_err().reason;
        assert_eq!(reason("{"), RejectReason::InvalidJson);
        assert_eq!(reason("[1]"), RejectReason::NotAnObject);
        assert_eq!(
            reason(r#"{"disposition":"confirmed","analyst":"m"}"#),
            RejectReason::MissingField
        );
        assert_eq!(
            reason(r#"{"alert_id":"xyz","disposition":"confirmed","analyst":"m"}"#),
            RejectReason::InvalidValue
        );
        assert_eq!(
            reason(&format!(
                r#"{{"alert_id":"{ID}","disposition":"maybe","analyst":"m"}}"#
            )),
            RejectReason::UnknownVariant
        );
        assert_eq!(
            reason(&format!(
                r#"{{"alert_id":"{ID}","disposition":"snooze","analyst":"m"}}"#
            )),
            RejectReason::MissingField
        );
        assert_eq!(
            reason(&format!(
                r#"{{"alert_id":"{ID}","disposition":"snooze","until":"tomorrow","analyst":"m"}}"#
            )),
            RejectReason::BadTimestamp
        );
        assert_eq!(
            reason(&format!(
                r#"{{"alert_id":"{ID}","disposition":"confirmed","analyst":7}}"#
            )),
            RejectReason::WrongType
        );
        assert_eq!(reason(&"x".repeat(MAX_BYTES + 1)), RejectReason::Oversized);
    }
}
