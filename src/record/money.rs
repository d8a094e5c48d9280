//! Exact money: signed integer micro-units (10⁻⁶ of the currency unit).
//!
//! Rated CDR charges carry up to 4–6 decimals (per-second rating), so cents are too coarse; f64 sums drift.
//! An `i64` of micro-units holds ±9.2 × 10¹² currency units, far beyond any account's exposure. Inputs
//! with more than 6 decimals are rejected, never rounded silently.

use std::fmt;
use std::ops::{Add, AddAssign, Neg, Sub, SubAssign};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(pub i64);

pub const MICROS: i64 = 1_000_000;

impl Money {
    pub const ZERO: Money = Money(0);

    pub fn micros(self) -> i64 {
        self.0
    }

    pub fn from_units(units: i64) -> Money {
        Money(units * MICROS)
    }

    /// Parses `12`, `12.5`, `-0.000125`. At most 6 decimals.
    pub fn parse(s: &str) -> Result<Money, &'static str> {
        let (neg, body) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (int, frac) = match body.split_once('.') {
            Some((i, f)) => (i, f),
            None => (body, ""),
        };
        if int.is_empty() || !int.bytes().all(|c| c.is_ascii_digit()) {
            return Err("not a decimal number");
        }
        if body.contains('.') && (frac.is_empty() || !frac.bytes().all(|c| c.is_ascii_digit())) {
            return Err("not a decimal number");
        }
        if frac.len() > 6 {
            return Err("more than 6 decimal places");
        }
        if int.len() > 12 {
            return Err("amount too large");
        }
        let mut v: i64 = int.parse().map_err(|_| "not a decimal number")?;
        v *= MICROS;
        let mut f: i64 = 0;
        for (i, c) in frac.bytes().enumerate() {
            f += (c - b'0') as i64 * 10i64.pow(5 - i as u32);
        }
        v += f;
        Ok(Money(if neg { -v } else { v }))
    }

    pub fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// For display and for rules that compare ratios; sums stay in integers.
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / MICROS as f64
    }
}

impl fmt::Display for Money {
    /// Always at least two decimals, trailing zeros beyond that trimmed: `1.25`, `0.000125`, `-3.00`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let a = self.0.unsigned_abs();
        let int = a / MICROS as u64;
        let mut frac = format!("{:06}", a % MICROS as u64);
        while frac.len() > 2 && frac.ends_with('0') {
            frac.pop();
        }
        // `pad`, so that widths and alignment in format strings apply (report columns).
        f.pad(&format!("{sign}{int}.{frac}"))
    }
}

impl Add for Money {
    type Output = Money;
    fn add(self, o: Money) -> Money {
        Money(self.0.saturating_add(o.0))
    }
}
impl Sub for Money {
    type Output = Money;
    fn sub(self, o: Money) -> Money {
        Money(self.0.saturating_sub(o.0))
    }
}
impl AddAssign for Money {
    fn add_assign(&mut self, o: Money) {
        *self = *self + o;
    }
}
impl SubAssign for Money {
    fn sub_assign(&mut self, o: Money) {
        *self = *self - o;
    }
}
impl Neg for Money {
    type Output = Money;
    fn neg(self) -> Money {
        Money(-self.0)
    }
}
impl std::iter::Sum for Money {
    fn sum<I: Iterator<Item = Money>>(it: I) -> Money {
        it.fold(Money::ZERO, |a, b| a + b)
    }
}

impl serde::Serialize for Money {
    /// Serialized as a decimal string, the way it is accepted: consumers keep it exact.
    /// Binary formats (state snapshots) carry the micro-units as an integer.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_i64(self.0)
        }
    }
}

impl<'de> serde::Deserialize<'de> for Money {
    /// Accepts a decimal string or a JSON number. A JSON number arrives as f64; its shortest round-trip
    /// text (`1.25`, not `1.2499999…`) is exactly what the producer wrote for ≤ 15 significant digits.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if !d.is_human_readable() {
            return <i64 as serde::Deserialize>::deserialize(d).map(Money);
        }
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Money;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a decimal amount as a string or number")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Money, E> {
                Money::parse(s)
                    .map_err(|why| E::custom(format_args!("invalid amount {s:?}: {why}")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Money, E> {
                // The same bound as for strings: at most 12 integer digits.
                if v.unsigned_abs() >= 1_000_000_000_000 {
                    return Err(E::custom("invalid amount: too large"));
                }
                Ok(Money(v * MICROS))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Money, E> {
                i64::try_from(v)
                    .map_err(|_| E::custom("invalid amount: too large"))
                    .and_then(|v| self.visit_i64(v))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Money, E> {
                if !v.is_finite() {
                    return Err(E::custom("invalid amount: not finite"));
                }
                self.visit_str(&format!("{v}"))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exactly() {
        assert_eq!(Money::parse("1.25"), Ok(Money(1_250_000)));
        assert_eq!(Money::parse("80"), Ok(Money(80_000_000)));
        assert_eq!(Money::parse("-0.000125"), Ok(Money(-125)));
        assert_eq!(Money::parse("0.1234567"), Err("more than 6 decimal places"));
        assert!(Money::parse("1e3").is_err());
        assert!(Money::parse("1.").is_err());
        assert!(Money::parse(".5").is_err());
    }

    #[test]
    fn json_numbers_are_exact() {
        let m: Money = serde_json::from_str("0.1").unwrap();
        assert_eq!(m, Money(100_000));
        let sum: Money = (0..10).map(|_| m).sum();
        assert_eq!(sum, Money::from_units(1));
        let s: Money = serde_json::from_str("\"12.50\"").unwrap();
        assert_eq!(s.to_string(), "12.50");
        assert_eq!(Money(125).to_string(), "0.000125");
    }
}
