//! Declared parameter types: what a rule says each of its `params.toml` values must be.
//!
//! ```rhai
//! const RULE = #{
//!     ...
//!     params: #{
//!         min_calls: "int 1..",          // an integer, at least 1
//!         min_minutes: "float 0..",      // a number (integers are read as floats), at least 0
//!         min_share: "float 0..1",       // between 0 and 1
//!         lookback: "duration",          // a positive duration string: "72h", "30m", "7d"
//!         strict: "bool",
//!         label: "string",
//!         prefixes: "list",              // an array of strings
//!     },
//! };
//! ```
//!
//! A value of the wrong type is a mistake that moves thresholds silently: `min_calls = "3"` compares a
//! string with a number in the script, `min_km = nan` makes every comparison false. So every value in
//! `params.toml` — defaults and segment overrides — is checked against the declaration by `check`, at
//! start-up and at every reload; NaN and infinities are refused for any number.

use std::fmt;

use rhai::Dynamic;

use crate::record::time::parse_duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Int,
    Float,
    Bool,
    Duration,
    Str,
    List,
}

/// A declared type with an optional inclusive range (numbers only).
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub kind: Kind,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl fmt::Display for ParamSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.kind {
            Kind::Int => "an integer",
            Kind::Float => "a number",
            Kind::Bool => "true or false",
            Kind::Duration => "a duration such as \"72h\"",
            Kind::Str => "a string",
            Kind::List => "a list of strings",
        };
        f.write_str(name)?;
        match (self.min, self.max) {
            (Some(a), Some(b)) => write!(f, " between {a} and {b}"),
            (Some(a), None) => write!(f, " of at least {a}"),
            (None, Some(b)) => write!(f, " of at most {b}"),
            (None, None) => Ok(()),
        }
    }
}

impl ParamSpec {
    /// Reads `"<type>"` or `"<type> <min>..<max>"` (either bound may be left out).
    pub fn parse(text: &str) -> Result<ParamSpec, String> {
        let mut parts = text.split_whitespace();
        let kind = match parts.next() {
            Some("int") => Kind::Int,
            Some("float") => Kind::Float,
            Some("bool") => Kind::Bool,
            Some("duration") => Kind::Duration,
            Some("string") => Kind::Str,
            Some("list") => Kind::List,
            _ => {
                return Err(format!(
                    "{text:?}: the type must be int, float, bool, duration, string or list"
                ))
            }
        };
        let (mut min, mut max) = (None, None);
        if let Some(range) = parts.next() {
            if !matches!(kind, Kind::Int | Kind::Float) {
                return Err(format!("{text:?}: only int and float take a range"));
            }
            let Some((a, b)) = range.split_once("..") else {
                return Err(format!(
                    "{text:?}: a range is written min..max, min.. or ..max"
                ));
            };
            let bound = |s: &str| -> Result<Option<f64>, String> {
                if s.is_empty() {
                    return Ok(None);
                }
                match s.parse::<f64>() {
                    Ok(v) if v.is_finite() => Ok(Some(v)),
                    _ => Err(format!("{text:?}: {s:?} is not a number")),
                }
            };
            (min, max) = (bound(a)?, bound(b)?);
            if let (Some(a), Some(b)) = (min, max) {
                if a > b {
                    return Err(format!("{text:?}: the range is empty"));
                }
            }
        }
        if parts.next().is_some() {
            return Err(format!("{text:?}: write the type, then at most a range"));
        }
        Ok(ParamSpec { kind, min, max })
    }

    /// The value as the script sees it, if it is what the declaration says.
    pub fn value(&self, v: &toml::Value) -> Result<Dynamic, String> {
        let wrong = || Err(format!("{} is not {self}", show(v)));
        let number = |x: f64| -> Result<f64, String> {
            if !x.is_finite() {
                return Err(format!("{} is not a finite number", show(v)));
            }
            if self.min.is_some_and(|m| x < m) || self.max.is_some_and(|m| x > m) {
                return Err(format!("{} is out of range: must be {self}", show(v)));
            }
            Ok(x)
        };
        Ok(match (self.kind, v) {
            (Kind::Int, toml::Value::Integer(i)) => {
                number(*i as f64)?;
                (*i).into()
            }
            (Kind::Float, toml::Value::Float(x)) => number(*x)?.into(),
            (Kind::Float, toml::Value::Integer(i)) => number(*i as f64)?.into(),
            (Kind::Bool, toml::Value::Boolean(b)) => (*b).into(),
            (Kind::Duration, toml::Value::String(s)) => match parse_duration(s) {
                Ok(d) if d > 0 => s.clone().into(),
                Ok(_) => return Err(format!("{} must be a positive duration", show(v))),
                Err(e) => return Err(e.to_string()),
            },
            (Kind::Str, toml::Value::String(s)) => s.clone().into(),
            (Kind::List, toml::Value::Array(a)) => {
                let mut out = rhai::Array::new();
                for item in a {
                    match item {
                        toml::Value::String(s) => out.push(s.clone().into()),
                        _ => return wrong(),
                    }
                }
                out.into()
            }
            _ => return wrong(),
        })
    }
}

/// A value as written in TOML, for messages.
fn show(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("{s:?} (a string)"),
        toml::Value::Array(_) => "an array".into(),
        toml::Value::Table(_) => "a table".into(),
        toml::Value::Datetime(d) => format!("{d} (a date)"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(spec: &str, toml_value: &str) -> Result<Dynamic, String> {
        let t: toml::Table = format!("v = {toml_value}").parse().unwrap();
        ParamSpec::parse(spec).unwrap().value(&t["v"])
    }

    #[test]
    fn values_are_checked_against_their_declaration() {
        assert_eq!(check("int 1..", "3").unwrap().as_int().unwrap(), 3);
        let e = check("int 1..", "\"3\"").unwrap_err();
        assert_eq!(e, "\"3\" (a string) is not an integer of at least 1");
        assert!(check("int 1..", "0").unwrap_err().contains("out of range"));
        assert_eq!(check("float 0..", "10").unwrap().as_float().unwrap(), 10.0);
        assert!(check("float", "nan")
            .unwrap_err()
            .contains("not a finite number"));
        assert!(check("float", "inf")
            .unwrap_err()
            .contains("not a finite number"));
        assert!(check("float 0..1", "1.5")
            .unwrap_err()
            .contains("between 0 and 1"));
        assert!(check("float", "[1.0, 2.0]")
            .unwrap_err()
            .contains("an array"));
        assert!(check("duration", "\"72h\"").is_ok());
        assert!(check("duration", "\"72 hours\"").is_err());
        assert!(check("duration", "\"0s\"")
            .unwrap_err()
            .contains("positive"));
        assert!(check("list", "[\"a\", \"b\"]").is_ok());
        assert!(check("list", "[1]").is_err());
        assert!(check("bool", "1").is_err());
    }

    #[test]
    fn declarations_are_parsed_or_refused_with_the_reason() {
        assert_eq!(
            ParamSpec::parse("float ..100").unwrap(),
            ParamSpec {
                kind: Kind::Float,
                min: None,
                max: Some(100.0)
            }
        );
        for bad in [
            "number",
            "int 5..1",
            "duration 1..",
            "int 1-5",
            "int 1.. extra",
            "float nan..",
        ] {
            assert!(ParamSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
