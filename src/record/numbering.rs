//! Numbering: what a feed writes for a party → one canonical number and its kind.
//!
//! Mediation, MSC/PGW CDRs (3GPP TS 32.298 `BCDDirectoryNumber` carries a type of number beside the
//! digits), TAP and IMS records write the same party many ways: `33612345678`, `+33612345678`,
//! `0033612345678`, a national `0612345678`, `612345678` with a national type of number, a short code
//! `3244`, `tel:+33-6-12-34-56-78`, `sip:+33612345678@ims.example;user=phone`, an alphanumeric SMS
//! sender `MYBANK` (TS 23.040 §9.1.2.5) or `anonymous`. Classifying any of them by its raw digits
//! misreads it in silence (a national number is "international", `00882…` is not "high-risk"), so
//! every number goes through here once, at decode, and the rest of the system sees canonical E.164
//! digits and a kind. Short codes keep their digits under their own kind: a list entry for a country
//! never matches them, nor they a country.
//!
//! A bare digit string without a type of number is E.164 without `+`, as the wire contract always
//! said; only a recognised prefix (`+`, an international prefix, the trunk prefix), a type of number
//! or a length under `min_international_digits` makes it something else. That keeps every feed that
//! was right before read exactly as before, at the price of one byte check on the common path.

use serde::{Deserialize, Serialize};

use super::Number;

/// What kind of party a number is. Lists and classification work on the kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NumberKind {
    /// An international number in E.164 digits (no `+`).
    #[default]
    E164,
    /// A service or short code inside a network (`112`, `3244`, a premium SMS code).
    ShortCode,
    /// A sender name, or a SIP identity without a number: there are no digits to key on.
    Alphanumeric,
    /// The party hid its number (`anonymous`, `restricted`) or the feed did not know it.
    Withheld,
}

wire_names!(NumberKind {
    E164 => "e164",
    ShortCode => "short_code",
    Alphanumeric => "alphanumeric",
    Withheld => "withheld",
});

/// The type of number a feed may send beside the digits (TS 24.008 §10.5.4.7, as carried in
/// TS 32.298 address fields). `unknown` leaves the decision to the digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TypeOfNumber {
    Unknown,
    International,
    National,
    /// A local number; handled as national (the network's own plan).
    Subscriber,
    /// An operator's service number: a short code.
    NetworkSpecific,
    /// A short code.
    Abbreviated,
}

wire_names!(TypeOfNumber {
    Unknown => "unknown",
    International => "international",
    National => "national",
    Subscriber => "subscriber",
    NetworkSpecific => "network_specific",
    Abbreviated => "abbreviated",
});

/// A number after normalisation. `number` is `None` exactly for the alphanumeric and withheld kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Normalised {
    pub number: Option<Number>,
    pub kind: NumberKind,
}

impl Normalised {
    fn e164(digits: &str) -> Result<Self, String> {
        Ok(Normalised {
            number: Some(Number::parse(digits).map_err(|why| format!("{why} (E.164)"))?),
            kind: NumberKind::E164,
        })
    }

    fn short(digits: &str) -> Result<Self, String> {
        Ok(Normalised {
            number: Some(Number::parse(digits)?),
            kind: NumberKind::ShortCode,
        })
    }

    const WITHHELD: Normalised = Normalised {
        number: None,
        kind: NumberKind::Withheld,
    };

    const ALPHANUMERIC: Normalised = Normalised {
        number: None,
        kind: NumberKind::Alphanumeric,
    };
}

/// Words feeds write for a hidden or unknown party (compared without case).
const WITHHELD: [&str; 6] = [
    "anonymous",
    "withheld",
    "restricted",
    "private",
    "unknown",
    "unavailable",
];

/// An alphanumeric sender has at most 11 characters (TS 23.040 §9.1.2.5): letters, digits, spaces
/// and a little punctuation.
const MAX_SENDER_CHARS: usize = 11;
const SENDER_PUNCTUATION: &[u8] = b" ._&'-";

/// The home numbering plan, from `reference.home_country_code` and `[numbering]`.
#[derive(Clone, Debug)]
pub struct Numbering {
    /// Home country calling code as digits (`33`, `1`).
    pub country_code: String,
    /// Dialled before a country code (`00`, `011`); the longest that matches is stripped.
    pub international_prefixes: Vec<String>,
    /// Dialled before a national number (`0`; NANP `1`); empty when the plan has none.
    pub trunk_prefix: String,
    /// A digit string shorter than this, written without an international marker, is a short code.
    pub min_international_digits: usize,
}

impl Default for Numbering {
    fn default() -> Self {
        Numbering {
            country_code: "33".into(),
            international_prefixes: vec!["00".into()],
            trunk_prefix: "0".into(),
            min_international_digits: 7,
        }
    }
}

impl Numbering {
    /// The canonical number and kind of what a feed wrote, or why it cannot be a number.
    pub fn normalise(
        &self,
        written: &str,
        ton: Option<TypeOfNumber>,
    ) -> Result<Normalised, String> {
        self.normalise_as(written, ton, false)
    }

    /// The same for a served line: always E.164 when it has digits (a short digit string is a short
    /// line number, not a short code: lines do not call from short codes).
    pub fn normalise_line(&self, written: &str) -> Result<Normalised, String> {
        self.normalise_as(written, None, true)
    }

    fn normalise_as(
        &self,
        written: &str,
        ton: Option<TypeOfNumber>,
        line: bool,
    ) -> Result<Normalised, String> {
        let b = written.as_bytes();
        // The common case: E.164 digits as the contract asks, no type of number. One pass.
        if ton.is_none()
            && b.len() >= self.min_international_digits
            && b.iter().all(u8::is_ascii_digit)
            && !self.has_dial_prefix(written)
        {
            return Normalised::e164(written);
        }
        if written.is_empty() || is_withheld(written) {
            return Ok(Normalised::WITHHELD);
        }
        let Some((text, uri)) = strip_uri(written) else {
            return Ok(Normalised::ALPHANUMERIC);
        };
        if is_withheld(text) {
            return Ok(Normalised::WITHHELD);
        }
        if text.bytes().any(|c| c.is_ascii_alphabetic()) {
            // A sender name (TS 23.040: up to 11 characters), or a name in a URI.
            let sender = text.len() <= MAX_SENDER_CHARS
                && text
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || SENDER_PUNCTUATION.contains(&c));
            return if uri || sender {
                Ok(Normalised::ALPHANUMERIC)
            } else {
                Err(format!(
                    "{written:?} is no number, and no sender name either (at most {MAX_SENDER_CHARS} letters, digits, spaces or {:?})",
                    std::str::from_utf8(SENDER_PUNCTUATION).unwrap_or_default()
                ))
            };
        }
        let (plus, rest) = match text.strip_prefix('+') {
            Some(r) => (true, r),
            None => (false, text),
        };
        let mut digits = String::with_capacity(rest.len());
        let mut separators = false;
        for c in rest.chars() {
            match c {
                '0'..='9' => digits.push(c),
                // RFC 3966 visual separators, and the spaces and brackets of printed numbers.
                '-' | '.' | ' ' | '(' | ')' => separators = true,
                _ => return Err(format!("{written:?} is neither a number nor a sender name")),
            }
        }
        // Separators only where a person formatted the number (`+33 6 12…`, a tel URI): a bare
        // `33-600-000` is a mangled field, not a number to guess at.
        if separators && !plus && !uri {
            return Err(format!(
                "{written:?}: separators are accepted after `+` or in a tel/sip URI only"
            ));
        }
        if digits.is_empty() {
            return Err(format!("{written:?} has no digits"));
        }
        if plus {
            return Normalised::e164(&digits);
        }
        if self.international_prefixes.contains(&digits) {
            return Err(format!("{written:?} is only an international prefix"));
        }
        match ton.unwrap_or(TypeOfNumber::Unknown) {
            TypeOfNumber::International => {
                let d = self.strip_international(&digits).unwrap_or(&digits);
                Normalised::e164(d)
            }
            TypeOfNumber::National | TypeOfNumber::Subscriber => self.national(&digits),
            TypeOfNumber::Abbreviated | TypeOfNumber::NetworkSpecific => Normalised::short(&digits),
            TypeOfNumber::Unknown => {
                if let Some(d) = self.strip_international(&digits) {
                    Normalised::e164(d)
                } else if !self.trunk_prefix.is_empty() && digits.starts_with(&self.trunk_prefix) {
                    if digits.len() < self.min_international_digits && !line {
                        Normalised::short(&digits)
                    } else {
                        self.national(&digits)
                    }
                } else if digits.len() < self.min_international_digits && !line {
                    Normalised::short(&digits)
                } else {
                    Normalised::e164(&digits)
                }
            }
        }
    }

    /// A national number (with or without its trunk prefix) as E.164.
    fn national(&self, digits: &str) -> Result<Normalised, String> {
        let nsn = if self.trunk_prefix.is_empty() {
            digits
        } else {
            digits.strip_prefix(&self.trunk_prefix).unwrap_or(digits)
        };
        if nsn.is_empty() {
            return Err(format!("{digits:?} is only a trunk prefix"));
        }
        Normalised::e164(&format!("{}{nsn}", self.country_code))
    }

    /// The digits after the longest international prefix, when one starts them and digits follow.
    fn strip_international<'d>(&self, digits: &'d str) -> Option<&'d str> {
        self.international_prefixes
            .iter()
            .filter(|p| !p.is_empty())
            .filter_map(|p| digits.strip_prefix(p.as_str()).map(|r| (p.len(), r)))
            .max_by_key(|(len, _)| *len)
            .map(|(_, r)| r)
            .filter(|r| !r.is_empty())
    }

    fn has_dial_prefix(&self, digits: &str) -> bool {
        (!self.trunk_prefix.is_empty() && digits.starts_with(&self.trunk_prefix))
            || self
                .international_prefixes
                .iter()
                .any(|p| !p.is_empty() && digits.starts_with(p.as_str()))
    }

    /// Checks the plan itself (config validation): digits only, no prefix shadowing a country code.
    pub fn validate(&self) -> Result<(), String> {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        for p in &self.international_prefixes {
            if !digits(p) || p.len() > 4 {
                return Err(format!(
                    "numbering.international_prefixes: {p:?} must be 1 to 4 digits"
                ));
            }
        }
        if !self.trunk_prefix.is_empty()
            && (!digits(&self.trunk_prefix) || self.trunk_prefix.len() > 2)
        {
            return Err(format!(
                "numbering.trunk_prefix: {:?} must be empty or 1 to 2 digits",
                self.trunk_prefix
            ));
        }
        // A bare E.164 number never starts with 0, and one starting with 1 is North American,
        // which the national reading of a `1` trunk prefix gives back: any other trunk digit
        // would misread international numbers written without `+` (`8` in Russia: `86…` is China).
        if !matches!(self.trunk_prefix.as_str(), "" | "0")
            && self.trunk_prefix != self.country_code
            && !self.international_prefixes.contains(&self.trunk_prefix)
        {
            return Err(format!(
                "numbering.trunk_prefix: {:?} starts country codes, so E.164 numbers written without `+` would read as national; set it to \"\" and send type_of_number = national for national numbers",
                self.trunk_prefix
            ));
        }
        if self.international_prefixes.contains(&self.trunk_prefix) {
            return Err(format!(
                "numbering: the trunk prefix {:?} is also an international prefix",
                self.trunk_prefix
            ));
        }
        Ok(())
    }
}

fn is_withheld(text: &str) -> bool {
    WITHHELD.iter().any(|w| text.eq_ignore_ascii_case(w))
}

/// The number inside a `tel:` or `sip:`/`sips:` URI (the user part, without parameters) and `true`;
/// the text itself and `false` when it is no URI; `None` for a SIP identity whose user part is a name.
fn strip_uri(text: &str) -> Option<(&str, bool)> {
    let lower_starts = |p: &str| {
        text.len() >= p.len() && text.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
    };
    let (rest, sip) = if lower_starts("tel:") {
        (&text[4..], false)
    } else if lower_starts("sips:") {
        (&text[5..], true)
    } else if lower_starts("sip:") {
        (&text[4..], true)
    } else {
        return Some((text, false));
    };
    let user = if sip {
        match rest.split_once('@') {
            Some((user, _)) => user,
            None => return None,
        }
    } else {
        rest
    };
    let user = user.split(';').next().unwrap_or("");
    let is_number = user
        .trim_start_matches('+')
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '-' | '.' | '(' | ')' | ' '));
    if sip && !is_number && !is_withheld(user) {
        return None;
    }
    Some((user, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn france() -> Numbering {
        Numbering::default()
    }

    fn nanp() -> Numbering {
        Numbering {
            country_code: "1".into(),
            international_prefixes: vec!["011".into()],
            trunk_prefix: "1".into(),
            min_international_digits: 7,
        }
    }

    fn norm(n: &Numbering, written: &str, ton: Option<TypeOfNumber>) -> (String, NumberKind) {
        let r = n
            .normalise(written, ton)
            .unwrap_or_else(|e| panic!("{written}: {e}"));
        (r.number.map(|n| n.to_string()).unwrap_or_default(), r.kind)
    }

    /// Every form the issue names: (plan, written, type of number) → (canonical, kind).
    #[test]
    fn every_written_form() {
        use NumberKind::*;
        use TypeOfNumber as T;
        let fr = france();
        let us = nanp();
        let cases: &[(&Numbering, &str, Option<TypeOfNumber>, &str, NumberKind)] = &[
            (&fr, "33612345678", None, "33612345678", E164),
            (&fr, "+33612345678", None, "33612345678", E164),
            (&fr, "0033612345678", None, "33612345678", E164),
            (&fr, "0088213000123", None, "88213000123", E164),
            (&fr, "0140000000", None, "33140000000", E164),
            (&fr, "612345679", Some(T::National), "33612345679", E164),
            (&fr, "0612345679", Some(T::National), "33612345679", E164),
            (&fr, "612345679", None, "612345679", E164),
            (
                &fr,
                "33612345678",
                Some(T::International),
                "33612345678",
                E164,
            ),
            (
                &fr,
                "0033612345678",
                Some(T::International),
                "33612345678",
                E164,
            ),
            (&fr, "3244", None, "3244", ShortCode),
            (&fr, "112", None, "112", ShortCode),
            (&fr, "36665", Some(T::Abbreviated), "36665", ShortCode),
            (&fr, "7000", Some(T::NetworkSpecific), "7000", ShortCode),
            (&fr, "+1234", None, "1234", E164),
            (&fr, "MYBANK", None, "", Alphanumeric),
            (&fr, "Info-SMS", None, "", Alphanumeric),
            (&fr, "anonymous", None, "", Withheld),
            (&fr, "Restricted", None, "", Withheld),
            (&fr, "", None, "", Withheld),
            (&fr, "tel:+33-6-12-34-56-78", None, "33612345678", E164),
            (
                &fr,
                "tel:0140000000;phone-context=+33",
                None,
                "33140000000",
                E164,
            ),
            (
                &fr,
                "sip:+33612345678@ims.mnc001.mcc208.3gppnetwork.org;user=phone",
                None,
                "33612345678",
                E164,
            ),
            (&fr, "SIP:0612345678@ims.example", None, "33612345678", E164),
            (&fr, "sip:anonymous@anonymous.invalid", None, "", Withheld),
            (&fr, "sip:alice@example.com", None, "", Alphanumeric),
            (&fr, "+33 6 12 34 56 78", None, "33612345678", E164),
            (&us, "18765550123", None, "18765550123", E164),
            (&us, "8765550123", Some(T::National), "18765550123", E164),
            (&us, "01144207946000", None, "44207946000", E164),
            (&us, "+1 (876) 555-0123", None, "18765550123", E164),
            (&us, "44207946000", None, "44207946000", E164),
            (&us, "611", None, "611", ShortCode),
        ];
        for &(plan, written, ton, canonical, kind) in cases {
            assert_eq!(
                norm(plan, written, ton),
                (canonical.to_string(), kind),
                "{written:?} with {ton:?} in +{}",
                plan.country_code
            );
        }
    }

    #[test]
    fn impossible_numbers_say_why() {
        let fr = france();
        for (written, ton, why) in [
            ("+", None, "has no digits"),
            ("33-600-000", None, "separators are accepted after `+`"),
            ("3360#000", None, "neither a number nor a sender name"),
            ("2026-11-21T03:17:05", None, "no sender name either"),
            ("00", None, "only an international prefix"),
            ("+3361234567890123", None, "more than 15 digits"),
            ("0", Some(TypeOfNumber::National), "only a trunk prefix"),
            (
                "9912345678901234",
                Some(TypeOfNumber::National),
                "more than 15 digits",
            ),
        ] {
            let e = fr.normalise(written, ton).map(|_| ()).unwrap_err();
            assert!(e.contains(why), "{written:?}: {e}");
        }
        // Short digit strings with a prefix's first digits are short codes, not errors; on a served
        // line they are numbers.
        assert_eq!(
            fr.normalise("01", None).unwrap().kind,
            NumberKind::ShortCode
        );
        assert_eq!(
            fr.normalise_line("1")
                .unwrap()
                .number
                .map(|n| n.to_string()),
            Some("1".into())
        );
        assert_eq!(
            fr.normalise_line("012")
                .unwrap()
                .number
                .map(|n| n.to_string()),
            Some("3312".into())
        );
        assert!(fr.normalise_line("0").is_err());
    }

    #[test]
    fn plan_validation() {
        let mut p = france();
        assert!(p.validate().is_ok());
        p.trunk_prefix = "00".into();
        assert!(p
            .validate()
            .unwrap_err()
            .contains("also an international prefix"));
        p.trunk_prefix = "x".into();
        assert!(p.validate().unwrap_err().contains("trunk_prefix"));
        p.trunk_prefix = "8".into();
        assert!(p.validate().unwrap_err().contains("starts country codes"));
    }
}
