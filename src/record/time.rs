//! Event time: RFC 3339 timestamps with their UTC offset, and calendar dates.
//!
//! The offset is kept because it is data, not formatting: it gives the subscriber's local hour, which the
//! off-hours record class depends on (a PBX pumping minutes at 03:00 local). Parsing is hand-written for
//! the hot path (one timestamp per record, ~20 ns) and strict: a timestamp without an offset is rejected
//! rather than guessed.

use std::fmt;

/// Seconds since the Unix epoch (UTC) plus the UTC offset the producer wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventTime {
    /// Seconds since 1970-01-01T00:00:00Z. Sub-second digits are accepted and truncated.
    pub utc: i64,
    /// Offset from UTC in minutes (e.g. +60 for `+01:00`).
    pub offset_min: i16,
}

/// 2000-01-01T00:00:00Z. Years as written must be 2000..2099 (anything else is a producer bug); the window
/// state counts time in ticks from here (clamping the few hours an offset can reach before it).
pub const MIN_UTC: i64 = 946_684_800;

impl EventTime {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let b = s.as_bytes();
        if b.len() < 20 {
            return Err("too short for YYYY-MM-DDTHH:MM:SS+HH:MM");
        }
        let year = digits(b, 0, 4)?;
        expect(b, 4, b'-')?;
        let month = digits(b, 5, 2)?;
        expect(b, 7, b'-')?;
        let day = digits(b, 8, 2)?;
        if !matches!(b[10], b'T' | b't') {
            return Err("expected 'T' between date and time");
        }
        let hour = digits(b, 11, 2)?;
        expect(b, 13, b':')?;
        let minute = digits(b, 14, 2)?;
        expect(b, 16, b':')?;
        let second = digits(b, 17, 2)?;
        let mut i = 19;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i == start {
                return Err("empty fraction of a second");
            }
        }
        let offset_min: i32 = match b.get(i) {
            Some(b'Z' | b'z') => {
                i += 1;
                0
            }
            Some(&sign @ (b'+' | b'-')) => {
                if b.len() < i + 6 {
                    return Err("offset must be ±HH:MM");
                }
                let oh = digits(b, i + 1, 2)?;
                expect(b, i + 3, b':')?;
                let om = digits(b, i + 4, 2)?;
                if oh > 23 || om > 59 {
                    return Err("offset out of range");
                }
                i += 6;
                let m = (oh * 60 + om) as i32;
                if sign == b'-' {
                    -m
                } else {
                    m
                }
            }
            _ => return Err("missing UTC offset (Z or ±HH:MM)"),
        };
        if i != b.len() {
            return Err("trailing characters after the offset");
        }
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year as i32, month) {
            return Err("no such calendar date");
        }
        if hour > 23 || minute > 59 || second > 60 || (second == 60 && minute != 59) {
            return Err("time of day out of range");
        }
        if !(2000..2100).contains(&year) {
            return Err("outside the accepted years 2000..2099");
        }
        // A leap second is folded onto :59 (we count seconds, not SI seconds).
        let second = second.min(59);
        let days = days_from_civil(year as i32, month, day);
        let local = days * 86_400 + (hour * 3600 + minute * 60 + second) as i64;
        let utc = local - offset_min as i64 * 60;
        Ok(EventTime {
            utc,
            offset_min: offset_min as i16,
        })
    }

    /// Local wall-clock seconds since the epoch (UTC instant shifted by the record's own offset).
    pub fn local_secs(self) -> i64 {
        self.utc + self.offset_min as i64 * 60
    }

    /// Local hour of day 0..=23.
    pub fn local_hour(self) -> u8 {
        (self.local_secs().rem_euclid(86_400) / 3600) as u8
    }

    pub fn from_utc(utc: i64) -> Self {
        EventTime { utc, offset_min: 0 }
    }
}

impl fmt::Display for EventTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let local = self.local_secs();
        let (y, m, d) = civil_from_days(local.div_euclid(86_400));
        let sod = local.rem_euclid(86_400);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
            sod / 3600,
            sod / 60 % 60,
            sod % 60
        )?;
        if self.offset_min == 0 {
            f.write_str("Z")
        } else {
            let sign = if self.offset_min < 0 { '-' } else { '+' };
            let a = self.offset_min.unsigned_abs();
            write!(f, "{sign}{:02}:{:02}", a / 60, a % 60)
        }
    }
}

/// RFC 3339 text in JSON; `(utc, offset_min)` in binary formats (state snapshots).
impl serde::Serialize for EventTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            serde::Serialize::serialize(&(self.utc, self.offset_min), s)
        }
    }
}

impl<'de> serde::Deserialize<'de> for EventTime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if !d.is_human_readable() {
            let (utc, offset_min) = <(i64, i16) as serde::Deserialize>::deserialize(d)?;
            return Ok(EventTime { utc, offset_min });
        }
        let s: super::Text<'de> = serde::Deserialize::deserialize(d)?;
        EventTime::parse(&s).map_err(|why| {
            serde::de::Error::custom(format_args!("{TIMESTAMP_ERROR}: {why} in {:?}", &*s))
        })
    }
}

/// Marker the decoder uses to classify a serde error as `bad_timestamp`.
pub const TIMESTAMP_ERROR: &str = "invalid RFC 3339 timestamp";

/// A calendar date (`YYYY-MM-DD`), as days since 1970-01-01.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date(pub i32);

impl Date {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let b = s.as_bytes();
        if b.len() != 10 {
            return Err("expected YYYY-MM-DD");
        }
        let y = digits(b, 0, 4)? as i32;
        expect(b, 4, b'-')?;
        let m = digits(b, 5, 2)?;
        expect(b, 7, b'-')?;
        let d = digits(b, 8, 2)?;
        if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
            return Err("no such calendar date");
        }
        if !(2000..2100).contains(&y) {
            return Err("outside the accepted years 2000..2099");
        }
        Ok(Date(days_from_civil(y, m, d) as i32))
    }

    /// Midnight starting this date at the given UTC offset.
    pub fn midnight(self, offset_min: i16) -> EventTime {
        EventTime {
            utc: self.0 as i64 * 86_400 - offset_min as i64 * 60,
            offset_min,
        }
    }

    pub fn plus_days(self, n: i32) -> Date {
        Date(self.0 + n)
    }

    /// The local calendar date of an instant.
    pub fn of(t: EventTime) -> Date {
        Date(t.local_secs().div_euclid(86_400) as i32)
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = civil_from_days(self.0 as i64);
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

impl serde::Serialize for Date {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_i32(self.0)
        }
    }
}

impl<'de> serde::Deserialize<'de> for Date {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if !d.is_human_readable() {
            return <i32 as serde::Deserialize>::deserialize(d).map(Date);
        }
        let s: super::Text<'de> = serde::Deserialize::deserialize(d)?;
        Date::parse(&s).map_err(|why| {
            serde::de::Error::custom(format_args!("invalid date: {why} in {:?}", &*s))
        })
    }
}

fn digits(b: &[u8], at: usize, n: usize) -> Result<u32, &'static str> {
    let mut v = 0u32;
    for &c in b.get(at..at + n).ok_or("truncated")? {
        if !c.is_ascii_digit() {
            return Err("expected a digit");
        }
        v = v * 10 + (c - b'0') as u32;
    }
    Ok(v)
}

fn expect(b: &[u8], at: usize, c: u8) -> Result<(), &'static str> {
    if b.get(at) == Some(&c) {
        Ok(())
    } else {
        Err("misplaced separator")
    }
}

fn is_leap(y: i32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i32, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i32, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y } as i64;
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn civil_from_days(z: i64) -> (i32, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = (yoe + era * 400 + if m <= 2 { 1 } else { 0 }) as i32;
    (y, m, d)
}

/// Parses a window or horizon length such as `20s`, `10m`, `1h`, `35d`, `2w` into seconds.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?}: missing unit (s, m, h, d, w)"))?;
    let (n, unit) = s.split_at(split);
    let n: i64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a number before the unit"))?;
    let mult = match unit {
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use s, m, h, d or w)"
            ))
        }
    };
    // An overflow used to wrap: "1152921504606846977h" became 1 h.
    match n.checked_mul(mult) {
        Some(secs) if secs <= MAX_DURATION_S => Ok(secs),
        _ => Err(format!("{s:?}: longer than 100 years")),
    }
}

/// The longest duration accepted anywhere (windows, cooldowns, config): 100 years.
pub const MAX_DURATION_S: i64 = 100 * 365 * 86_400 + 25 * 86_400;

/// Formats seconds back to the shortest exact unit (`3600` → `1h`).
pub fn format_duration(secs: i64) -> String {
    for (unit, mult) in [("w", 604_800), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs != 0 && secs % mult == 0 {
            return format!("{}{unit}", secs / mult);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_that_overflow_are_refused_not_wrapped() {
        assert_eq!(parse_duration("72h"), Ok(72 * 3600));
        let e = parse_duration("1152921504606846977h").unwrap_err();
        assert!(e.contains("longer than 100 years"), "{e}");
        assert!(parse_duration("9223372036854775807d").is_err());
        assert!(parse_duration("36500d").is_ok());
        assert!(parse_duration("40000d").is_err());
    }

    #[test]
    fn offset_gives_local_hour_and_utc_instant() {
        let t = EventTime::parse("2026-11-21T03:17:05+01:00").unwrap();
        assert_eq!(t.utc, 1_795_227_425);
        assert_eq!(t.local_hour(), 3);
        assert_eq!(t.to_string(), "2026-11-21T03:17:05+01:00");
        let z = EventTime::parse("2026-11-21T02:17:05.250Z").unwrap();
        assert_eq!(z.utc, t.utc);
        assert_eq!(z.local_hour(), 2);
    }

    #[test]
    fn same_instant_across_dst_change_keeps_each_records_local_hour() {
        // Paris: 2026-03-29 02:00 CET jumps to 03:00 CEST. Both records are the same instant + 1 h.
        let before = EventTime::parse("2026-03-29T01:30:00+01:00").unwrap();
        let after = EventTime::parse("2026-03-29T03:30:00+02:00").unwrap();
        assert_eq!(after.utc - before.utc, 3600);
        assert_eq!((before.local_hour(), after.local_hour()), (1, 3));
        let west = EventTime::parse("2026-03-29T20:30:00-05:00").unwrap();
        assert_eq!(west.local_hour(), 20);
    }

    #[test]
    fn rejects_what_is_not_rfc3339_with_offset() {
        for bad in [
            "2026-11-21T03:17:05",
            "2026-11-21 03:17",
            "2026-11-21 03:17:05Z",
            "2026-11-21T03:17:60Z",
            "2026-02-30T00:00:00Z",
            "2026-11-21T25:00:00Z",
            "2026-11-21T03:17:05+0100",
            "1999-12-31T23:59:59Z",
            "2026-11-21T03:17:05Zjunk",
            "yesterday",
        ] {
            assert!(EventTime::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn dates_round_trip() {
        let d = Date::parse("2024-02-29").unwrap();
        assert_eq!(d.to_string(), "2024-02-29");
        assert_eq!(d.plus_days(1).to_string(), "2024-03-01");
        assert!(Date::parse("2023-02-29").is_err());
        assert_eq!(
            Date::parse("1970-01-01").err(),
            Some("outside the accepted years 2000..2099")
        );
        let m = Date::parse("2026-11-15").unwrap().midnight(60);
        assert_eq!(m.to_string(), "2026-11-15T00:00:00+01:00");
    }

    #[test]
    fn durations_parse_and_format() {
        assert_eq!(parse_duration("10m"), Ok(600));
        assert_eq!(parse_duration("35d"), Ok(35 * 86_400));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("1y").is_err());
        assert_eq!(format_duration(3600), "1h");
        assert_eq!(format_duration(90), "90s");
        assert_eq!(format_duration(1_209_600), "2w");
    }
}
