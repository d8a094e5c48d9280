//! The record class: the dimensions that window features can be filtered by, packed into 10 bits.
//!
//! Every record has exactly one class. State aggregates per (time bucket, class), so any combination of
//! dimensions can be asked for later without deciding up front which counters to keep. A filter such as
//! `voice.mo.international` compiles to a 1024-bit table of matching classes: matching is one lookup.

use std::fmt;

use crate::record::{Direction, RecordType};

/// Bits: 0–1 record type, 2–3 direction, 4 international, 5 high-risk, 6 roaming, 7 off-hours,
/// 8 answered, 9 short (voice ≤ 3 s).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RecordClass(pub u16);

const TYPE_SHIFT: u16 = 0;
const DIR_SHIFT: u16 = 2;
pub const INTERNATIONAL: u16 = 1 << 4;
pub const HIGH_RISK: u16 = 1 << 5;
pub const ROAMING: u16 = 1 << 6;
pub const OFF_HOURS: u16 = 1 << 7;
pub const ANSWERED: u16 = 1 << 8;
pub const SHORT: u16 = 1 << 9;
pub const CLASS_COUNT: usize = 1 << 10;

/// Directions in the class; data records have none.
const DIR_NONE: u16 = 3;

impl RecordClass {
    pub fn new(t: RecordType, d: Option<Direction>, flags: u16) -> Self {
        let t = match t {
            RecordType::Voice => 0,
            RecordType::Sms => 1,
            RecordType::Data => 2,
        };
        let d = match d {
            Some(Direction::Mo) => 0,
            Some(Direction::Mt) => 1,
            Some(Direction::Forwarded) => 2,
            None => DIR_NONE,
        };
        RecordClass((t << TYPE_SHIFT) | (d << DIR_SHIFT) | flags)
    }

    pub fn has(self, flag: u16) -> bool {
        self.0 & flag != 0
    }

    pub fn bits(self) -> u16 {
        self.0
    }
}

/// Whether a record can have this class: a known type, and a direction exactly when it is not data.
pub fn is_possible(c: RecordClass) -> bool {
    let t = c.0 & 3;
    let d = (c.0 >> DIR_SHIFT) & 3;
    t != 3 && ((t == 2) == (d == DIR_NONE))
}

impl fmt::Debug for RecordClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = ["voice", "sms", "data", "?"][(self.0 & 3) as usize];
        let d = ["mo", "mt", "forwarded", ""][((self.0 >> DIR_SHIFT) & 3) as usize];
        write!(f, "{t}")?;
        if !d.is_empty() {
            write!(f, ".{d}")?;
        }
        for (flag, name) in FLAGS {
            if self.has(flag) {
                write!(f, ".{name}")?;
            }
        }
        Ok(())
    }
}

const FLAGS: [(u16, &str); 6] = [
    (INTERNATIONAL, "international"),
    (HIGH_RISK, "high_risk"),
    (ROAMING, "roaming"),
    (OFF_HOURS, "off_hours"),
    (ANSWERED, "answered"),
    (SHORT, "short"),
];

/// A set of record classes, parsed from a dotted filter such as `voice.mo.international` or
/// `voice.mt.!answered`. Tokens restrict one dimension each and combine with AND; `!` negates a token;
/// `all` (or an empty string) matches every class; `|` joins alternatives.
#[derive(Clone, PartialEq, Eq)]
pub struct ClassFilter {
    bits: [u64; CLASS_COUNT / 64],
    text: String,
}

/// Tokens a filter may use; the error message lists them.
pub const FILTER_TOKENS: &str =
    "voice sms data mo mt forwarded international domestic high_risk roaming home \
     off_hours business_hours answered unanswered short (prefix ! to negate; 'all' for everything)";

impl ClassFilter {
    pub fn all() -> Self {
        ClassFilter {
            bits: [u64::MAX; CLASS_COUNT / 64],
            text: "all".into(),
        }
    }

    /// Parses a filter; `|` joins alternatives (`voice.mt.unanswered|voice.mt.short`).
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.contains('|') {
            let mut f = ClassFilter {
                bits: [0; CLASS_COUNT / 64],
                text: text.to_string(),
            };
            for alt in text.split('|') {
                if alt.trim().is_empty() {
                    return Err(format!("empty alternative in {text:?}"));
                }
                let a = Self::parse_and(alt.trim())?;
                for (x, y) in f.bits.iter_mut().zip(a.bits) {
                    *x |= y;
                }
            }
            return Ok(f);
        }
        Self::parse_and(text)
    }

    fn parse_and(text: &str) -> Result<Self, String> {
        let mut f = ClassFilter::all();
        f.text = if text.is_empty() {
            "all".into()
        } else {
            text.to_string()
        };
        for raw in text.split('.').filter(|t| !t.is_empty() && *t != "all") {
            let (neg, tok) = match raw.strip_prefix('!') {
                Some(t) => (true, t),
                None => (false, raw),
            };
            let pred: Box<dyn Fn(u16) -> bool> = match tok {
                "voice" => Box::new(|c| c & 3 == 0),
                "sms" => Box::new(|c| c & 3 == 1),
                "data" => Box::new(|c| c & 3 == 2),
                "mo" => Box::new(|c| (c >> DIR_SHIFT) & 3 == 0),
                "mt" => Box::new(|c| (c >> DIR_SHIFT) & 3 == 1),
                "forwarded" => Box::new(|c| (c >> DIR_SHIFT) & 3 == 2),
                "international" => Box::new(|c| c & INTERNATIONAL != 0),
                "domestic" => Box::new(|c| c & INTERNATIONAL == 0),
                "high_risk" => Box::new(|c| c & HIGH_RISK != 0),
                "roaming" => Box::new(|c| c & ROAMING != 0),
                "home" => Box::new(|c| c & ROAMING == 0),
                "off_hours" => Box::new(|c| c & OFF_HOURS != 0),
                "business_hours" => Box::new(|c| c & OFF_HOURS == 0),
                "answered" => Box::new(|c| c & ANSWERED != 0),
                "unanswered" => Box::new(|c| c & ANSWERED == 0),
                "short" => Box::new(|c| c & SHORT != 0),
                _ => {
                    return Err(format!(
                        "unknown filter token {raw:?} in {text:?}; tokens: {FILTER_TOKENS}"
                    ))
                }
            };
            for c in 0..CLASS_COUNT as u16 {
                if pred(c) == neg {
                    f.bits[(c / 64) as usize] &= !(1u64 << (c % 64));
                }
            }
        }
        Ok(f)
    }

    #[inline]
    pub fn matches(&self, c: RecordClass) -> bool {
        self.bits[(c.0 as usize) / 64] >> (c.0 % 64) & 1 == 1
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for ClassFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClassFilter({})", self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_by_dimension() {
        let intl_mo = RecordClass::new(
            RecordType::Voice,
            Some(Direction::Mo),
            INTERNATIONAL | ANSWERED,
        );
        let dom_mt_short = RecordClass::new(RecordType::Voice, Some(Direction::Mt), SHORT);
        let data = RecordClass::new(RecordType::Data, None, ROAMING);
        let f = ClassFilter::parse("voice.mo.international").unwrap();
        assert!(f.matches(intl_mo) && !f.matches(dom_mt_short) && !f.matches(data));
        let g = ClassFilter::parse("voice.mt.!answered").unwrap();
        assert!(g.matches(dom_mt_short) && !g.matches(intl_mo));
        assert!(ClassFilter::parse("roaming").unwrap().matches(data));
        assert!(ClassFilter::parse("").unwrap().matches(data));
        assert!(!ClassFilter::parse("!data").unwrap().matches(data));
        assert_eq!(format!("{intl_mo:?}"), "voice.mo.international.answered");
        // Alternatives: a Wangiri ring is unanswered or short.
        let ring = ClassFilter::parse("voice.mt.unanswered|voice.mt.short").unwrap();
        let answered_long = RecordClass::new(RecordType::Voice, Some(Direction::Mt), ANSWERED);
        let answered_short =
            RecordClass::new(RecordType::Voice, Some(Direction::Mt), ANSWERED | SHORT);
        assert!(ring.matches(dom_mt_short) && ring.matches(answered_short));
        assert!(!ring.matches(answered_long) && !ring.matches(intl_mo));
        assert!(ClassFilter::parse("voice|").is_err());
    }

    #[test]
    fn unknown_token_is_a_clear_error() {
        let e = ClassFilter::parse("voice.outgoing").unwrap_err();
        assert!(e.contains("unknown filter token \"outgoing\""), "{e}");
    }
}
