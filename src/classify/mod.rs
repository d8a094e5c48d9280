//! Classify: a decoded record plus reference data (home country, high-risk ranges, local hours) gives
//! the record's class, the key every window feature is filtered by.

mod class;
mod prefixes;

pub use class::{
    is_possible, ClassFilter, RecordClass, ANSWERED, CLASS_COUNT, FILTER_TOKENS, HIGH_RISK,
    INTERNATIONAL, OFF_HOURS, ROAMING, SHORT,
};
pub use prefixes::{ListError, PrefixList};

use crate::record::{Number, NumberKind, Numbering, RecordType, UsageRecord};

/// Reference data for classification. Cheap to clone (the trie is small).
#[derive(Clone, Debug)]
pub struct Classifier {
    pub home_cc: Number,
    pub high_risk: PrefixList,
    /// Ranges inside the home country code that are abroad all the same: in the North American
    /// plan (`+1`) Jamaica (1876) or the Dominican Republic (1809) are dialled like a US area code,
    /// and one-ring scams use exactly that (`numbering.foreign_prefixes`).
    pub foreign: PrefixList,
    /// The plan numbers were made canonical by at decode, for text that did not go through the
    /// decoder (a message key naming a line).
    pub numbering: Numbering,
    /// Local hours [start, end) that count as off-hours; wraps midnight when start > end.
    pub off_hours: (u8, u8),
    /// Voice calls up to this many seconds are `short` (Wangiri rings last 1–3 s).
    pub short_call_s: u32,
}

impl Classifier {
    pub fn new(home_cc: Number, high_risk: PrefixList) -> Self {
        Classifier {
            home_cc,
            high_risk,
            foreign: PrefixList::new(),
            numbering: Numbering {
                country_code: home_cc.to_string(),
                ..Numbering::default()
            },
            off_hours: (20, 7),
            short_call_s: 3,
        }
    }

    /// Only E.164 numbers are ever international: a short code, a sender name or a withheld number
    /// is not, whatever its digits.
    pub fn is_international(&self, n: Number, kind: NumberKind) -> bool {
        kind == NumberKind::E164 && (!n.starts_with(self.home_cc) || self.foreign.matches(n))
    }

    /// The line a message key names, in any form a producer writes it (`+33…`, `0033…`, national,
    /// `imsi:…`, or an IMSI-only line's bare IMSI when `imsi_line` says the line is one).
    pub fn line_of_key(&self, key: &str, imsi_line: bool) -> Option<Number> {
        if let Ok(n) = Number::parse(key) {
            if n.is_imsi_line() {
                return Some(n);
            }
            if imsi_line {
                return Some(n.as_imsi_line());
            }
        }
        self.numbering.normalise_line(key).ok()?.number
    }

    pub fn is_off_hours(&self, local_hour: u8) -> bool {
        let (s, e) = self.off_hours;
        if s <= e {
            (s..e).contains(&local_hour)
        } else {
            local_hour >= s || local_hour < e
        }
    }

    pub fn classify(&self, r: &UsageRecord) -> RecordClass {
        let mut flags = 0u16;
        if let Some((n, kind)) = r.destination_party() {
            if self.is_international(n, kind) {
                flags |= INTERNATIONAL;
            }
            if self.high_risk.matches_kind(n, kind) {
                flags |= HIGH_RISK;
            }
        }
        if r.roaming.is_roaming {
            flags |= ROAMING;
        }
        if self.is_off_hours(r.event_start.local_hour()) {
            flags |= OFF_HOURS;
        }
        if r.answered {
            flags |= ANSWERED;
        }
        if r.record_type == RecordType::Voice && r.duration_s <= self.short_call_s {
            flags |= SHORT;
        }
        let direction = if r.is_forwarded() {
            Some(crate::record::Direction::Forwarded)
        } else {
            r.direction
        };
        RecordClass::new(r.record_type, direction, flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Decoder;

    fn classifier() -> Classifier {
        let l = PrefixList::parse("882\n33899\n", "t").unwrap();
        Classifier::new(Number::parse("33").unwrap(), l)
    }

    fn rec(json: &str) -> UsageRecord {
        Decoder::default().usage(json.as_bytes()).unwrap()
    }

    #[test]
    fn destination_classes() {
        let c = classifier();
        let intl_hr = rec(
            r#"{"record_id":"a","record_type":"voice","direction":"mo","event_start":"2026-11-21T03:17:05+01:00","duration_s":2,"served":{"msisdn":"33612345678"},"other_party":{"number":"88213000123"}}"#,
        );
        assert_eq!(
            format!("{:?}", c.classify(&intl_hr)),
            "voice.mo.international.high_risk.off_hours.answered.short"
        );
        let dom_premium = rec(
            r#"{"record_id":"b","record_type":"voice","direction":"mo","event_start":"2026-11-21T12:00:00+01:00","duration_s":60,"answered":false,"served":{"msisdn":"33612345678"},"other_party":{"number":"33899123456"}}"#,
        );
        assert_eq!(
            format!("{:?}", c.classify(&dom_premium)),
            "voice.mo.high_risk"
        );
        let short_code = rec(
            r#"{"record_id":"c","record_type":"sms","direction":"mo","event_start":"2026-11-21T12:00:00+01:00","served":{"msisdn":"33612345678"},"other_party":{"number":"3244"}}"#,
        );
        assert!(!c.classify(&short_code).has(INTERNATIONAL));
    }

    #[test]
    fn forwarded_calls_are_classed_by_forward_target() {
        let c = classifier();
        let fwd = rec(
            r#"{"record_id":"f","record_type":"voice","direction":"mt","event_start":"2026-11-21T12:00:00+01:00","duration_s":60,"served":{"msisdn":"33612345678"},"other_party":{"number":"33611111111"},"forwarding":{"forwarded_to_number":"88299999999"}}"#,
        );
        let class = c.classify(&fwd);
        assert_eq!(
            format!("{class:?}"),
            "voice.forwarded.international.high_risk.answered"
        );
    }

    #[test]
    fn a_message_key_names_its_line_in_any_form() {
        let c = classifier();
        let line = Number::parse("33612345678").unwrap();
        for key in ["33612345678", "+33612345678", "0612345678", "0033612345678"] {
            assert_eq!(c.line_of_key(key, false), Some(line), "{key}");
        }
        let imsi = Number::parse("310260123456789").unwrap().as_imsi_line();
        assert_eq!(c.line_of_key("310260123456789", true), Some(imsi));
        assert_eq!(c.line_of_key("imsi:310260123456789", true), Some(imsi));
        assert_eq!(c.line_of_key("A-1001", false), None);
    }

    #[test]
    fn off_hours_wrap_midnight() {
        let c = classifier();
        assert!(
            c.is_off_hours(20) && c.is_off_hours(3) && !c.is_off_hours(7) && !c.is_off_hours(19)
        );
    }
}
