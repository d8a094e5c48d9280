//! Alerts on the wire: the JSON body, encoded once and shared by every sink, and the metadata that
//! travels beside it (Kafka headers, HTTP headers) so consumers can route and de-duplicate without
//! parsing the body.

use crate::record::{Alert, Department, Reject};

/// Kafka header / HTTP header names (HTTP spells them `X-Cdrguard-Alert-Id`...).
pub const ALERT_ID: &str = "cdrguard.alert_id";
pub const RULE: &str = "cdrguard.rule";
pub const SEVERITY: &str = "cdrguard.severity";
pub const RULESET_VERSION: &str = "cdrguard.ruleset_version";
pub const DEPARTMENT: &str = "cdrguard.department";
/// `shadow` on the alerts of shadow rules (their own topic).
pub const MODE: &str = "cdrguard.mode";

/// Appends the alert's JSON (one object, no newline) to `buf`.
pub fn encode(alert: &Alert, buf: &mut Vec<u8>) -> serde_json::Result<()> {
    serde_json::to_writer(buf, alert)
}

/// The metadata of an alert sent to one department.
pub fn alert_headers(alert: &Alert, department: Department) -> [(&'static str, &str); 5] {
    [
        (ALERT_ID, &alert.alert_id),
        (RULE, &alert.rule.id),
        (SEVERITY, alert.severity.as_str()),
        (RULESET_VERSION, &alert.rule.ruleset_version),
        (DEPARTMENT, department.as_str()),
    ]
}

/// The metadata of a shadow rule's alert: no department (it goes to none).
pub fn shadow_headers(alert: &Alert) -> [(&'static str, &str); 5] {
    [
        (ALERT_ID, &alert.alert_id),
        (RULE, &alert.rule.id),
        (SEVERITY, alert.severity.as_str()),
        (RULESET_VERSION, &alert.rule.ruleset_version),
        (MODE, "shadow"),
    ]
}

/// The metadata of a dead letter: why, and where the record came from.
pub fn reject_headers<'a>(
    reject: &'a Reject,
    source: &'a str,
    partition: &'a str,
    offset: &'a str,
) -> [(&'static str, &'a str); 6] {
    [
        ("cdrguard.reason", reject.reason.as_str()),
        ("cdrguard.field", reject.field.as_deref().unwrap_or("")),
        ("cdrguard.detail", &reject.detail),
        ("cdrguard.source.topic", source),
        ("cdrguard.source.partition", partition),
        ("cdrguard.source.offset", offset),
    ]
}
