//! Bytes → typed record, or a precise, counted reason why not.
//!
//! The fast path is one UTF-8 check of the line and `serde_json::from_str`. Only when it fails do we
//! decode the same bytes again through `serde_path_to_error` to learn the field path: errors are rare,
//! and tracking the path on every record would tax the good ones (~15%) to describe the bad ones.
//!
//! Parser choice, measured (criterion, one run, the full 530-byte voice record of the wire-format
//! example into `UsageRecord`): serde_json 1.06 µs, sonic-rs 0.5 1.31 µs. PERF_NOTES found sonic-rs
//! faster on a flat 300-byte struct; on this nested shape with custom field types it is not, so we stay
//! with serde_json.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::time::TIMESTAMP_ERROR;
use super::{AccountEvent, CostTable, Numbering, Rates, UsageRecord};

/// Why a record was rejected: a small closed set, used as a metric label and dead-letter reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Larger than `max_record_bytes`.
    Oversized,
    /// Not valid UTF-8, so not JSON.
    InvalidUtf8,
    /// Not parseable JSON (syntax error, truncated, trailing garbage).
    InvalidJson,
    /// Valid JSON, but not an object.
    NotAnObject,
    /// A required field is absent (or null).
    MissingField,
    /// A known field holds the wrong JSON type.
    WrongType,
    /// An enumerated field (record_type, direction, event_type, segment) holds an unknown value.
    UnknownVariant,
    /// The right type with an impossible value (non-digit number, negative charge, bad date...).
    InvalidValue,
    /// A timestamp that is not RFC 3339 with an offset, or outside 2000..2099.
    BadTimestamp,
    /// A charge in another currency than the deployment's.
    CurrencyMismatch,
    /// Older than the watermark (max event time − allowed lateness): windows have moved on.
    Late,
    /// Stamped after the real time now plus `state.max_future_skew`: a broken producer clock.
    Future,
    /// The id of a record seen before with other content (`state::dedup`): the first is kept.
    ConflictingDuplicate,
    /// An analyst's decision about an alert no alert memory here knows (`alert::feedback`).
    UnknownAlert,
}

wire_names!(RejectReason {
    Oversized => "oversized",
    InvalidUtf8 => "invalid_utf8",
    InvalidJson => "invalid_json",
    NotAnObject => "not_an_object",
    MissingField => "missing_field",
    WrongType => "wrong_type",
    UnknownVariant => "unknown_variant",
    InvalidValue => "invalid_value",
    BadTimestamp => "bad_timestamp",
    CurrencyMismatch => "currency_mismatch",
    Late => "late",
    Future => "future",
    ConflictingDuplicate => "conflicting_duplicate",
    UnknownAlert => "unknown_alert",
});

/// A rejected record's reason, the field it concerns and a sentence for the operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reject {
    pub reason: RejectReason,
    /// Dotted path such as `served.msisdn`; absent when the record as a whole is at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub detail: String,
}

impl Reject {
    pub fn new(reason: RejectReason, field: Option<String>, detail: impl Into<String>) -> Self {
        Reject {
            reason,
            field,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(p) => write!(f, "{} at {p}: {}", self.reason, self.detail),
            None => write!(f, "{}: {}", self.reason, self.detail),
        }
    }
}

/// Decoding limits and deployment facts the wire format depends on.
#[derive(Clone, Debug)]
pub struct Decoder {
    pub max_record_bytes: usize,
    /// Charges and amounts must be in this ISO 4217 currency (when they name one).
    pub currency: String,
    /// How the parties' numbers are made canonical (`record::numbering`).
    pub numbering: Numbering,
    /// Charges priced in another currency are converted with these (`record::rates`).
    pub rates: Rates,
    /// Unrated records are priced from this (`record::costs`); empty: left unpriced.
    pub costs: std::sync::Arc<CostTable>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            max_record_bytes: 64 * 1024,
            currency: "EUR".into(),
            numbering: Numbering::default(),
            rates: Rates::default(),
            costs: Default::default(),
        }
    }
}

impl Decoder {
    pub fn usage(&self, bytes: &[u8]) -> Result<UsageRecord, Reject> {
        let mut rec: UsageRecord = self.decode(bytes)?;
        let plan = &self.numbering;
        rec.repair_position();
        rec.served
            .normalise(plan, &mut rec.repairs)
            .and_then(|()| rec.other_party.normalise(plan))
            .and_then(|()| rec.forwarding.normalise(plan))
            .map_err(|(path, why)| invalid(path, why))?;
        // Mediation often writes "" for an unknown account: that is no account, not one shared by all.
        if rec.served.account_id.as_deref() == Some("") {
            rec.served.account_id = None;
        }
        // The contract ignores `direction` on data records; keep it out of the record class.
        if rec.record_type == super::RecordType::Data {
            rec.direction = None;
        }
        rec.validate().map_err(|(path, why)| invalid(path, why))?;
        if let Some(c) = rec.charge.currency.take() {
            if c.eq_ignore_ascii_case(&self.currency) {
                rec.charge.currency = Some(c);
            } else {
                // Priced elsewhere (a TAP record in SDR, a visited network's currency): converted
                // at the rate in force on its date, the priced amount kept.
                let at = rec.event_start.utc;
                let Some(amount) = self.rates.get().convert(rec.charge.amount, &c, at) else {
                    return Err(self.mismatch(&c, "charge.currency", true));
                };
                rec.charge.original = Some(Box::new((rec.charge.amount, c)));
                rec.charge.amount = amount;
                rec.charge.currency = Some(self.currency.as_str().into());
            }
        }
        if !rec.charge.rated {
            if let Some(price) = self.costs.price(&rec) {
                rec.charge.amount = price;
                rec.charge.currency = Some(self.currency.as_str().into());
            }
        }
        Ok(rec)
    }

    pub fn account_event(&self, bytes: &[u8]) -> Result<AccountEvent, Reject> {
        let ev: AccountEvent = self.decode(bytes)?;
        ev.validate().map_err(|(path, why)| invalid(path, why))?;
        if let Some(c) = ev.amount.as_ref().and_then(|a| a.currency.as_ref()) {
            self.check_currency(c, "amount.currency")?;
        }
        Ok(ev)
    }

    fn check_currency(&self, c: &str, path: &str) -> Result<(), Reject> {
        if c.eq_ignore_ascii_case(&self.currency) {
            Ok(())
        } else {
            Err(self.mismatch(c, path, false))
        }
    }

    fn mismatch(&self, c: &str, path: &str, convertible: bool) -> Reject {
        let hint = if convertible {
            " and input.exchange_rates has no rate for it on the record's date"
        } else {
            ""
        };
        Reject::new(
            RejectReason::CurrencyMismatch,
            Some(path.into()),
            format!(
                "currency {c:?} is not the deployment currency {:?}{hint}",
                self.currency
            ),
        )
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, Reject> {
        if bytes.len() > self.max_record_bytes {
            return Err(Reject::new(
                RejectReason::Oversized,
                None,
                format!(
                    "{} bytes exceeds the limit of {} bytes",
                    bytes.len(),
                    self.max_record_bytes
                ),
            ));
        }
        // serde's derived structs also accept a JSON array of their fields in order; the contract is
        // objects only, so check the first byte (blocks are checked by `object` in the field types).
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(explain::<T>(bytes));
        }
        // One UTF-8 check of the whole line, then `from_str`, which trusts it: `from_slice` would
        // validate every string field again (measured: ~4% of replay time).
        let Ok(text) = std::str::from_utf8(bytes) else {
            return Err(explain::<T>(bytes));
        };
        match serde_json::from_str::<T>(text) {
            Ok(v) => Ok(v),
            Err(_) => Err(explain::<T>(bytes)),
        }
    }
}

fn invalid(path: &str, why: String) -> Reject {
    let reason = if why.starts_with("missing field") {
        RejectReason::MissingField
    } else {
        RejectReason::InvalidValue
    };
    Reject::new(reason, Some(path.into()), why)
}

/// Second, slow pass over a record that failed: find the reason and the field path.
fn explain<T: DeserializeOwned>(bytes: &[u8]) -> Reject {
    if let Err(e) = std::str::from_utf8(bytes) {
        return Reject::new(RejectReason::InvalidUtf8, None, format!("not UTF-8: {e}"));
    }
    // A syntax error anywhere beats a type error before it: classify the document first.
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
        return Reject::new(RejectReason::InvalidJson, None, e.to_string());
    }
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace()).copied();
    if first != Some(b'{') {
        return Reject::new(RejectReason::NotAnObject, None, "expected a JSON object");
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let err = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(_) => {
            return Reject::new(
                RejectReason::InvalidJson,
                None,
                "decoded on the second pass only (please report)",
            )
        }
        Err(e) => e,
    };
    let path = err.path().to_string();
    let inner = err.into_inner();
    let msg = strip_position(&inner.to_string());
    let (reason, field) = if let Some(rest) = msg.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or("");
        (RejectReason::MissingField, join(&path, name))
    } else if msg.starts_with("invalid type: null") {
        // `"served": null` where an object is required reads as missing, which is what it is.
        (RejectReason::MissingField, path)
    } else if msg.starts_with("invalid type") {
        (RejectReason::WrongType, path)
    } else if msg.starts_with("unknown variant") {
        (RejectReason::UnknownVariant, path)
    } else if msg.starts_with(TIMESTAMP_ERROR) {
        (RejectReason::BadTimestamp, path)
    } else {
        (RejectReason::InvalidValue, path)
    };
    let field = if field == "." || field.is_empty() {
        None
    } else {
        Some(field)
    };
    Reject::new(reason, field, msg)
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() || path == "." {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// serde_json appends " at line 1 column 57"; the dead-letter entry already says which record it was.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Repair;

    const GOOD: &str = r#"{"record_id":"msc1-729081236-0","record_type":"voice","direction":"mo",
 "event_start":"2026-11-21T03:17:05+01:00","duration_s":95,"answered":true,
 "served":{"msisdn":"33612345678","imsi":"208011234567890","imei":"35698701234567","account_id":"A-1001"},
 "other_party":{"number":"88213000123"},
 "location":{"cell_id":4353,"lat":48.85,"lon":2.35},
 "roaming":{"is_roaming":false,"visited_plmn":null},
 "forwarding":{"forwarded_to_number":null},
 "volume":{"bytes_up":0,"bytes_down":0},
 "charge":{"amount":"1.25","currency":"EUR"},"unknown_extra":{"x":[1,2]}}"#;

    fn reject(s: &str) -> Reject {
        Decoder::default().usage(s.as_bytes()).unwrap_err()
    }

    #[test]
    fn decodes_the_documented_example() {
        let r = Decoder::default().usage(GOOD.as_bytes()).unwrap();
        assert_eq!(r.served.msisdn.to_string(), "33612345678");
        assert_eq!(r.charge.amount.micros(), 1_250_000);
        assert_eq!(r.event_start.local_hour(), 3);
        assert_eq!(r.other_party.number.unwrap().to_string(), "88213000123");
    }

    #[test]
    fn minimal_record_gets_defaults() {
        let r = Decoder::default()
            .usage(br#"{"record_id":"d1","record_type":"data","event_start":"2026-11-21T03:17:05Z","served":{"msisdn":"33600000001"}}"#)
            .unwrap();
        assert_eq!(
            (r.duration_s, r.answered, r.charge.amount.micros()),
            (0, true, 0)
        );
    }

    #[test]
    fn each_error_names_reason_and_path() {
        let cases = [
            (
                GOOD.replace("\"33612345678\"", "33612345678"),
                RejectReason::WrongType,
                Some("served.msisdn"),
            ),
            (
                GOOD.replace("\"record_id\":\"msc1-729081236-0\",", ""),
                RejectReason::MissingField,
                Some("record_id"),
            ),
            (
                GOOD.replace("\"voice\"", "\"mms\""),
                RejectReason::UnknownVariant,
                Some("record_type"),
            ),
            (
                GOOD.replace("+01:00", ""),
                RejectReason::BadTimestamp,
                Some("event_start"),
            ),
            (
                GOOD.replace("\"1.25\"", "\"1.2.5\""),
                RejectReason::InvalidValue,
                Some("charge.amount"),
            ),
            (
                GOOD.replace("\"direction\":\"mo\",", ""),
                RejectReason::MissingField,
                Some("direction"),
            ),
            (
                GOOD.replace("\"EUR\"", "\"USD\""),
                RejectReason::CurrencyMismatch,
                Some("charge.currency"),
            ),
            (
                GOOD.replace("95", "-95"),
                RejectReason::InvalidValue,
                Some("duration_s"),
            ),
            (
                GOOD.replace("95", "\"95\""),
                RejectReason::WrongType,
                Some("duration_s"),
            ),
            (GOOD[..40].to_string(), RejectReason::InvalidJson, None),
            ("[1,2]".to_string(), RejectReason::NotAnObject, None),
            // serde would read an array as the struct's fields in order: the contract says objects.
            (r#"["r1","data",null,"2026-11-21T03:17:05Z",0,true,["33612345678"]]"#.to_string(), RejectReason::NotAnObject, None),
            (GOOD.replace(r#"{"msisdn":"33612345678","imsi":"208011234567890","imei":"35698701234567","account_id":"A-1001"}"#, r#"["33612345678"]"#), RejectReason::WrongType, Some("served")),
            (GOOD.replace(r#"{"amount":"1.25","currency":"EUR"}"#, r#"["1.25","EUR"]"#), RejectReason::WrongType, Some("charge")),
        ];
        for (input, reason, field) in cases {
            let r = reject(&input);
            assert_eq!(
                (r.reason, r.field.as_deref()),
                (reason, field),
                "{input}: {r}"
            );
        }
    }

    /// A bad optional field is dropped and noted; the record is kept (issue "Real mediation feeds").
    #[test]
    fn bad_optional_fields_are_dropped_not_the_record() {
        let d = Decoder::default();
        let cases = [
            ("48.85", "148.85", vec![Repair::PositionDropped]),
            (
                "\"35698701234567\"",
                "\"3569870123456712345\"",
                vec![Repair::ImeiDropped],
            ),
            ("\"208011234567890\"", "\"2080\"", vec![Repair::ImsiDropped]),
            ("\"35698701234567\"", "\"35698701234567\"", vec![]),
        ];
        for (from, to, want) in cases {
            let r = d.usage(GOOD.replace(from, to).as_bytes()).unwrap();
            assert_eq!(r.repairs.iter().collect::<Vec<_>>(), want, "{to}");
            assert_eq!(r.served.msisdn.to_string(), "33612345678");
        }
        // An IMEISV (16 digits) and an IMEI with its check digit (15) name the handset of the
        // 14-digit IMEI.
        for imei in ["3569870123456712", "356987012345671", "35698701234567"] {
            let r = d
                .usage(GOOD.replace("35698701234567", imei).as_bytes())
                .unwrap();
            assert!(r.repairs.is_empty());
            assert_eq!(
                r.served.imei.unwrap().to_string(),
                "35698701234567",
                "{imei}"
            );
        }
    }

    /// A TAP record of an inbound roamer may have no MSISDN: the line is keyed by its IMSI.
    #[test]
    fn a_line_without_msisdn_is_keyed_by_its_imsi() {
        let d = Decoder::default();
        let tap = r#"{"record_id":"tap-1","record_type":"data","event_start":"2026-11-21T03:17:05Z","served":{"imsi":"310260123456789"},"roaming":{"is_roaming":true,"visited_plmn":"20801"}}"#;
        let r = d.usage(tap.as_bytes()).unwrap();
        assert!(r.served.msisdn.is_imsi_line());
        assert_eq!(r.served.msisdn.to_string(), "imsi:310260123456789");
        let json = serde_json::to_string(&r.served).unwrap();
        assert!(
            !json.contains("msisdn"),
            "written back without an MSISDN: {json}"
        );
        for served in [
            r#"{"imei":"35698701234567"}"#,
            r#"{"imsi":"3102"}"#,
            r#"{"msisdn":null}"#,
        ] {
            let e = d
                .usage(
                    tap.replace(r#"{"imsi":"310260123456789"}"#, served)
                        .as_bytes(),
                )
                .unwrap_err();
            assert_eq!(
                (e.reason, e.field.as_deref()),
                (RejectReason::MissingField, Some("served.msisdn")),
                "{served}: {e}"
            );
        }
    }

    #[test]
    fn oversized_and_non_utf8() {
        let d = Decoder {
            max_record_bytes: 100,
            ..Decoder::default()
        };
        assert_eq!(
            d.usage(GOOD.as_bytes()).unwrap_err().reason,
            RejectReason::Oversized
        );
        // A raw control character inside a string is a JSON syntax error.
        assert_eq!(
            reject("{\"record_id\":\"\u{1}\"}").reason,
            RejectReason::InvalidJson
        );
        let bad = Decoder::default()
            .usage(b"{\"record_id\":\"\xff\"}")
            .unwrap_err();
        assert_eq!(bad.reason, RejectReason::InvalidUtf8);
    }

    #[test]
    fn account_event_requirements_per_type() {
        let d = Decoder::default();
        let ok = d.account_event(br#"{"event_id":"inv-77","event_type":"invoice_issued","occurred_at":"2026-11-01T00:00:00+01:00","account_id":"A-1001","msisdn":null,"invoice":{"invoice_id":"INV-77","due_date":"2026-11-15","amount_due":"80.00"}}"#).unwrap();
        assert_eq!(ok.invoice.unwrap().due_date.to_string(), "2026-11-15");
        let r = d
            .account_event(br#"{"event_id":"p1","event_type":"payment_received","occurred_at":"2026-11-01T00:00:00Z","account_id":"A","payment":{"payment_id":"P1"}}"#)
            .unwrap_err();
        assert_eq!(
            (r.reason, r.field.as_deref()),
            (RejectReason::MissingField, Some("amount"))
        );
        let r = d
            .account_event(br#"{"event_id":"s","event_type":"segment_changed","occurred_at":"2026-11-01T00:00:00Z","account_id":"A","segment":"gold"}"#)
            .unwrap_err();
        assert_eq!(
            (r.reason, r.field.as_deref()),
            (RejectReason::UnknownVariant, Some("segment"))
        );
    }
}
