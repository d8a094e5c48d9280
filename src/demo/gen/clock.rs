//! When things happen: the generated period and its diurnal and weekly shape.

use fastrand::Rng;

use super::dist::{chance, weighted};
use crate::record::EventTime;

/// Relative activity per local hour for consumers: near silence 01–06, a late-morning plateau, the
/// evening peak when people are off work, and a long tail to midnight.
const CONSUMER_HOURS: [u32; 24] = [
    14, 7, 4, 3, 3, 5, 12, 28, 42, 52, 60, 64, 58, 54, 55, 56, 60, 68, 74, 70, 58, 46, 34, 22,
];

/// Business lines follow office hours, with a lunch dip and an early evening.
const BUSINESS_HOURS: [u32; 24] = [
    3, 2, 1, 1, 1, 2, 6, 20, 55, 80, 90, 88, 50, 55, 82, 85, 80, 60, 35, 20, 12, 8, 6, 4,
];

/// Share of a weekday's business traffic that still happens on a Saturday or Sunday. Records per line are
/// fixed, so this moves a business line's records to weekdays; a run of weekend days only keeps them all.
const BUSINESS_WEEKEND: f64 = 0.25;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// Private lines: daytime with an evening peak, every day alike.
    Consumer,
    /// Lines of smb/enterprise/government accounts: office hours on weekdays, quiet weekends.
    Business,
}

/// The period `[start, start + days)`, in the start's UTC offset.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: EventTime,
    /// Local seconds since the epoch of the start and end.
    start_local: i64,
    end_local: i64,
    /// Local day index (days since 1970-01-01) of the start, and how many local days the period touches.
    first_day: i64,
    span_days: i64,
}

impl Clock {
    pub fn new(start: EventTime, days: u32) -> Clock {
        let start_local = start.local_secs();
        let end_local = start_local + days as i64 * 86_400;
        let first_day = start_local.div_euclid(86_400);
        let span_days = (end_local - 1).div_euclid(86_400) - first_day + 1;
        Clock {
            start,
            start_local,
            end_local,
            first_day,
            span_days,
        }
    }

    pub fn start(&self) -> EventTime {
        self.start
    }

    /// Length of the period in seconds.
    pub fn len_s(&self) -> i64 {
        self.end_local - self.start_local
    }

    /// The instant `secs` after the start, written in the start's offset.
    pub fn at(&self, secs: i64) -> EventTime {
        EventTime {
            utc: self.start.utc + secs,
            offset_min: self.start.offset_min,
        }
    }

    /// Seconds after the start of one event, drawn from the profile's day and hour shape.
    pub fn sample(&self, rng: &mut Rng, profile: Profile) -> u32 {
        // Rejection keeps the shape exact when the period starts or ends mid-day; a midnight-aligned
        // period never rejects on range. Every hour has weight > 0, so this always ends.
        loop {
            let day = self.first_day + rng.i64(0..self.span_days);
            let hours = match profile {
                Profile::Business if is_weekend(day) => {
                    if !chance(rng, BUSINESS_WEEKEND) {
                        continue;
                    }
                    // What little a work phone does at the weekend is private use.
                    &CONSUMER_HOURS
                }
                Profile::Business => &BUSINESS_HOURS,
                Profile::Consumer => &CONSUMER_HOURS,
            };
            let hour = weighted(rng, hours) as i64;
            let local = day * 86_400 + hour * 3600 + rng.i64(0..3600);
            if (self.start_local..self.end_local).contains(&local) {
                return (local - self.start_local) as u32;
            }
        }
    }
}

/// 1970-01-01 was a Thursday.
fn is_weekend(day: i64) -> bool {
    (day + 3).rem_euclid(7) >= 5
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weekends_and_bounds() {
        let sunday = EventTime::parse("2026-11-01T00:00:00+01:00").unwrap();
        assert!(is_weekend(sunday.local_secs().div_euclid(86_400)));
        assert!(!is_weekend(sunday.local_secs().div_euclid(86_400) + 1));
        let noon = EventTime::parse("2026-11-02T12:00:00+01:00").unwrap();
        let clock = Clock::new(noon, 1);
        let mut rng = Rng::with_seed(3);
        for _ in 0..2000 {
            let s = clock.sample(&mut rng, Profile::Business) as i64;
            assert!(s < clock.len_s());
        }
        assert_eq!(clock.at(3600).to_string(), "2026-11-02T13:00:00+01:00");
    }
}
