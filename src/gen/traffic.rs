//! Usage records: when (diurnal), who (by activity weight), what (voice / SMS / data mix) and to whom.

use compact_str::format_compact;

use crate::record::{
    Charge, Direction, EventTime, Forwarding, Location, Money, Number, OtherParty, RecordType,
    Roaming, Served, UsageRecord, Volume,
};

use super::population::{Line, Population};

/// Relative traffic by local hour: quiet 01:00–06:00, peaks late morning and early evening.
pub const HOURLY_WEIGHTS: [f64; 24] = [
    0.8, 0.4, 0.25, 0.2, 0.2, 0.3, 0.8, 2.0, 3.5, 4.5, 5.0, 5.2, 4.8, 4.6, 4.5, 4.6, 5.0, 5.6, 6.0,
    5.6, 4.6, 3.6, 2.6, 1.6,
];

/// International destinations a French subscriber calls (country codes).
const ABROAD: [&str; 10] = ["44", "49", "34", "39", "1", "32", "41", "212", "351", "216"];
/// High-risk ranges (from the shipped list) that a small share of calls reach.
const HIGH_RISK: [&str; 5] = ["88213", "88216", "5399", "23276", "67579"];
const PLMNS: [&str; 6] = ["23415", "26201", "21407", "22201", "31026", "20404"];

/// Picks an index with probability proportional to its weight (cumulative sums + binary search).
pub struct WeightedPick {
    cumulative: Vec<f64>,
}

impl WeightedPick {
    pub fn new(weights: impl Iterator<Item = f64>) -> Self {
        let mut acc = 0.0;
        WeightedPick {
            cumulative: weights
                .map(|w| {
                    acc += w;
                    acc
                })
                .collect(),
        }
    }

    pub fn pick(&self, rng: &mut fastrand::Rng) -> usize {
        let total = *self.cumulative.last().expect("non-empty");
        let x = rng.f64() * total;
        self.cumulative
            .partition_point(|&c| c <= x)
            .min(self.cumulative.len() - 1)
    }
}

/// A local instant in `[start, start + days)` with the diurnal shape.
pub fn diurnal_time(
    rng: &mut fastrand::Rng,
    hours: &WeightedPick,
    start: EventTime,
    days: u32,
) -> i64 {
    let day = rng.u32(0..days.max(1)) as i64;
    let hour = hours.pick(rng) as i64;
    // Hours are local: offset from the start's local midnight.
    let local_midnight =
        start.local_secs().div_euclid(86_400) * 86_400 - start.offset_min as i64 * 60;
    let t = local_midnight + day * 86_400 + hour * 3600 + rng.i64(0..3600);
    t.max(start.utc)
}

fn money(rng: &mut fastrand::Rng, lo_cents: i64, hi_cents: i64) -> Money {
    Money(rng.i64(lo_cents..=hi_cents) * 10_000)
}

fn random_home_number(rng: &mut fastrand::Rng, home_cc: &str) -> Number {
    let prefix = if rng.bool() { "6" } else { "7" };
    Number::parse(&format!("{home_cc}{prefix}{:08}", rng.u32(0..100_000_000))).expect("digits")
}

fn foreign_number(rng: &mut fastrand::Rng, cc: &str) -> Number {
    let len = 11usize.saturating_sub(cc.len()).max(6);
    let n = rng.u64(0..10u64.pow(len as u32));
    Number::parse(&format!("{cc}{n:0len$}")).expect("digits")
}

pub struct TrafficMaker<'a> {
    pub pop: &'a Population,
    pub home_cc: &'a str,
    pub offset_min: i16,
}

impl TrafficMaker<'_> {
    fn other_party(&self, rng: &mut fastrand::Rng, me: u32) -> Number {
        let r = rng.f64();
        if r < 0.0005 {
            let cc = HIGH_RISK[rng.usize(..HIGH_RISK.len())];
            foreign_number(rng, cc)
        } else if r < 0.05 {
            let cc = ABROAD[rng.usize(..ABROAD.len())];
            foreign_number(rng, cc)
        } else if r < 0.75 {
            // Mostly people on the same network, ideally someone we generate traffic for.
            let other = rng.u32(..self.pop.lines.len() as u32);
            if other == me {
                random_home_number(rng, self.home_cc)
            } else {
                self.pop.lines[other as usize].msisdn
            }
        } else {
            random_home_number(rng, self.home_cc)
        }
    }

    pub fn record(&self, rng: &mut fastrand::Rng, seq: u64, who: u32, at: i64) -> UsageRecord {
        let line: &Line = &self.pop.lines[who as usize];
        let roaming = rng.f64() < 0.02;
        let kind = rng.f64();
        let record_type = if kind < 0.45 {
            RecordType::Voice
        } else if kind < 0.65 {
            RecordType::Sms
        } else {
            RecordType::Data
        };
        let mut direction = match record_type {
            RecordType::Data => None,
            _ if rng.f64() < 0.55 => Some(Direction::Mo),
            _ => Some(Direction::Mt),
        };
        let mut forwarding = Forwarding::default();
        let mut other = OtherParty::default();
        let (mut duration_s, mut answered, mut volume, mut charge) =
            (0u32, true, Volume::default(), Money::ZERO);
        match record_type {
            RecordType::Voice => {
                let n = self.other_party(rng, who);
                other.number = Some(n);
                if rng.f64() < 0.005 {
                    direction = Some(Direction::Forwarded);
                    forwarding.forwarded_to_number = Some(random_home_number(rng, self.home_cc));
                }
                answered = rng.f64() < 0.85;
                if answered {
                    // Log-normal-ish: median ~1.5 min, tail to 30 min.
                    let secs = (4.5 + rng.f64() * 1.2 + rng.f64() * 1.2 - 1.2).exp();
                    duration_s = secs.clamp(5.0, 1800.0) as u32;
                }
                let minutes = (duration_s as i64 + 59) / 60;
                let international = !n.starts_with(Number::parse(self.home_cc).expect("digits"));
                if direction != Some(Direction::Mt) && answered {
                    if international {
                        charge = Money(money(rng, 10, 200).micros() * minutes);
                    } else if roaming {
                        charge = Money(500_000 * minutes);
                    } else if rng.f64() < 0.3 {
                        charge = money(rng, 1, 20);
                    }
                } else if roaming && answered {
                    charge = Money(200_000 * minutes);
                }
            }
            RecordType::Sms => {
                other.number = Some(self.other_party(rng, who));
                if direction == Some(Direction::Mo) && (roaming || rng.f64() < 0.3) {
                    charge = money(rng, 5, 20);
                }
            }
            RecordType::Data => {
                duration_s = rng.u32(60..=3600);
                let down = (rng.f64() * rng.f64() * 200e6) as u64;
                volume = Volume {
                    bytes_up: down / rng.u64(5..20),
                    bytes_down: down,
                };
                if roaming {
                    charge = Money(((down / 1_000_000) as i64 + 1) * 10_000);
                }
            }
        }
        let location = if roaming {
            if rng.f64() < 0.5 {
                Location::default()
            } else {
                Location {
                    cell_id: None,
                    lat: Some(40.0 + rng.f64() * 15.0),
                    lon: Some(-5.0 + rng.f64() * 25.0),
                }
            }
        } else if rng.f64() < 0.05 {
            Location::default()
        } else {
            let cell = line.cells[if rng.f64() < 0.6 {
                0
            } else {
                rng.usize(..line.cells.len())
            }];
            Location {
                cell_id: Some(cell),
                lat: Some(round4(line.lat)),
                lon: Some(round4(line.lon)),
            }
        };
        let prefix = match record_type {
            RecordType::Voice => "msc1",
            RecordType::Sms => "sms",
            RecordType::Data => "pgw",
        };
        UsageRecord {
            record_id: format_compact!("{prefix}-{}-{seq}", at),
            record_type,
            direction,
            event_start: EventTime {
                utc: at,
                offset_min: self.offset_min,
            },
            duration_s,
            answered,
            served: Served {
                msisdn: line.msisdn,
                imsi: Some(line.imsi),
                imei: Some(line.imei),
                account_id: Some(self.pop.accounts[line.account as usize].id.clone()),
            },
            other_party: other,
            location,
            roaming: Roaming {
                is_roaming: roaming,
                visited_plmn: roaming.then(|| PLMNS[rng.usize(..PLMNS.len())].into()),
            },
            forwarding,
            volume,
            charge: Charge {
                amount: charge,
                currency: Some("EUR".into()),
            },
        }
    }
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}
