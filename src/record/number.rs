//! E.164 numbers packed into a `u64`.
//!
//! Every subscriber, calling number and IMEI is a key in a hash map that is touched once per record, so
//! keys are integers, not strings (a `String` key costs an allocation and a slower hash). Up to 15 digits
//! fit in 50 bits; the digit count goes in the top bits so that leading zeros survive (`0044…` ≠ `44…`)
//! and two numbers are equal exactly when their digit strings are.

use std::fmt;

const VALUE_BITS: u32 = 50;
const VALUE_MASK: u64 = (1 << VALUE_BITS) - 1;
/// Set on a line known only by its IMSI (an inbound roamer in a TAP file without MSISDN): its key
/// can never equal a phone number's, and it prints as `imsi:<digits>`.
const IMSI_BIT: u64 = 1 << 60;
const IMSI_PREFIX: &str = "imsi:";

/// A digit string of 1..=15 digits (E.164 without `+`, an IMEI, or a short code).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Number(u64);

pub const POW10: [u64; 16] = {
    let mut p = [1u64; 16];
    let mut i = 1;
    while i < 16 {
        p[i] = p[i - 1] * 10;
        i += 1;
    }
    p
};

impl Number {
    pub const MAX_DIGITS: usize = 15;

    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if let Some(imsi) = s.strip_prefix(IMSI_PREFIX) {
            return Number::parse(imsi).map(Number::as_imsi_line);
        }
        let b = s.as_bytes();
        if b.is_empty() {
            return Err("empty number");
        }
        if b.len() > Self::MAX_DIGITS {
            return Err("more than 15 digits");
        }
        let mut v = 0u64;
        for &c in b {
            if !c.is_ascii_digit() {
                return Err(if c == b'+' {
                    "must be digits without '+'"
                } else {
                    "must contain digits only"
                });
            }
            v = v * 10 + (c - b'0') as u64;
        }
        Ok(Number(((b.len() as u64) << VALUE_BITS) | v))
    }

    pub fn digits(self) -> usize {
        ((self.0 >> VALUE_BITS) & 0xF) as usize
    }

    /// The key of a line known only by this IMSI.
    pub fn as_imsi_line(self) -> Number {
        Number(self.0 | IMSI_BIT)
    }

    /// A line known only by its IMSI (`as_imsi_line`).
    pub fn is_imsi_line(self) -> bool {
        self.0 & IMSI_BIT != 0
    }

    pub fn value(self) -> u64 {
        self.0 & VALUE_MASK
    }

    /// The packed key; stable across runs and processes (used in state keys and snapshots).
    pub fn key(self) -> u64 {
        self.0
    }

    pub fn from_key(key: u64) -> Self {
        Number(key)
    }

    /// The first `n` digits as a number of their own (`n` ≤ digits).
    pub fn prefix(self, n: usize) -> Number {
        let len = self.digits();
        debug_assert!(n <= len);
        Number(((n as u64) << VALUE_BITS) | (self.value() / POW10[len - n]))
    }

    pub fn starts_with(self, p: Number) -> bool {
        p.digits() <= self.digits() && self.prefix(p.digits()) == p
    }

    /// The i-th digit from the left.
    pub fn digit(self, i: usize) -> u8 {
        (self.value() / POW10[self.digits() - 1 - i] % 10) as u8
    }

    /// A 32-bit fingerprint for distinct-count sets (collisions among a subscriber's few hundred
    /// contacts are ~1e-5 likely and only ever undercount by one).
    pub fn hash32(self) -> u32 {
        let x = self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (x >> 32) as u32 ^ x as u32
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_imsi_line() {
            f.write_str(IMSI_PREFIX)?;
        }
        write!(f, "{:0width$}", self.value(), width = self.digits())
    }
}

impl fmt::Debug for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Number({self})")
    }
}

/// Text in JSON; the packed key in binary formats (state snapshots), where it is smaller and needs no
/// parsing on restore.
impl serde::Serialize for Number {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_u64(self.0)
        }
    }
}

impl<'de> serde::Deserialize<'de> for Number {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if !d.is_human_readable() {
            return <u64 as serde::Deserialize>::deserialize(d).map(Number);
        }
        let s: super::Text<'de> = serde::Deserialize::deserialize(d)?;
        Number::parse(&s).map_err(|why| {
            serde::de::Error::custom(format_args!("invalid number {:?}: {why}", &*s))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_leading_zeros_and_length() {
        let a = Number::parse("0044123").unwrap();
        let b = Number::parse("44123").unwrap();
        assert_ne!(a, b);
        assert_eq!(a.to_string(), "0044123");
        assert_eq!(
            Number::parse("999999999999999").unwrap().to_string(),
            "999999999999999"
        );
    }

    #[test]
    fn prefixes() {
        let n = Number::parse("33612345678").unwrap();
        assert!(n.starts_with(Number::parse("33").unwrap()));
        assert!(!n.starts_with(Number::parse("34").unwrap()));
        assert!(!n.starts_with(Number::parse("336123456789").unwrap()));
        assert_eq!(n.digit(0), 3);
        assert_eq!(n.digit(10), 8);
        assert_eq!(n.prefix(3).to_string(), "336");
    }

    #[test]
    fn a_line_known_by_its_imsi_is_no_phone_number() {
        let imsi = Number::parse("208011234567890").unwrap();
        let line = imsi.as_imsi_line();
        assert_ne!(line, imsi);
        assert_ne!(line.key(), imsi.key());
        assert_eq!(line.to_string(), "imsi:208011234567890");
        assert_eq!(Number::parse(&line.to_string()), Ok(line));
        assert_eq!((line.digits(), line.value()), (imsi.digits(), imsi.value()));
    }

    #[test]
    fn rejects_non_digits() {
        assert_eq!(
            Number::parse("+33612345678"),
            Err("must be digits without '+'")
        );
        assert_eq!(
            Number::parse("3361234567a"),
            Err("must contain digits only")
        );
        assert_eq!(
            Number::parse("1234567890123456"),
            Err("more than 15 digits")
        );
        assert_eq!(Number::parse(""), Err("empty number"));
    }
}
