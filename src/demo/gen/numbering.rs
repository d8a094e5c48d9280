//! Numbering plans: what the digits of a home, foreign, high-risk or short-code party look like.

use fastrand::Rng;

use compact_str::{format_compact, CompactString};

use super::dist::weighted;
use crate::record::{Direction, Money, Number, NumberKind, OtherParty, RecordType, UsageRecord};

/// Sender names of received A2P messages (banks' one-time codes, parcel notices).
const SENDERS: [&str; 3] = ["MYBANK", "ParcelCo", "INFO"];

/// Foreign mobile ranges people in France call most (prefix, free digits, share, retail € per minute in
/// micro-units). Deliberately none of them is on the high-risk list (Tunisia and Côte d'Ivoire are large
/// diaspora destinations but listed), so ordinary international traffic never looks like IRSF.
const FOREIGN: &[(&str, u32, u32, i64)] = &[
    ("447", 9, 18, 250_000),   // United Kingdom mobile
    ("4917", 8, 15, 250_000),  // Germany mobile
    ("346", 8, 14, 200_000),   // Spain mobile
    ("393", 9, 12, 200_000),   // Italy mobile
    ("324", 8, 10, 200_000),   // Belgium mobile
    ("417", 8, 6, 350_000),    // Switzerland mobile
    ("3519", 8, 8, 250_000),   // Portugal mobile
    ("2126", 8, 8, 900_000),   // Morocco mobile
    ("2135", 8, 6, 1_100_000), // Algeria mobile
    ("2217", 8, 3, 1_400_000), // Senegal mobile
    ("1212", 7, 3, 100_000),   // New York
    ("1514", 7, 3, 100_000),   // Montréal
    ("8613", 9, 2, 300_000),   // China mobile
];

/// Ranges from `rules/lists/high_risk_prefixes.txt` (satellite, international networks, thin routes).
/// Copied rather than read so that generated data does not change when an operator edits the list.
const HIGH_RISK: &[(&str, u32, i64)] = &[
    ("88213", 7, 2_000_000), // International Networks
    ("8816", 8, 1_900_000),  // Iridium
    ("53", 8, 1_200_000),    // Cuba
    ("2526", 8, 1_500_000),  // Somalia
    ("24381", 7, 1_300_000), // DR Congo
    ("960", 7, 1_500_000),   // Maldives
    ("674", 7, 1_800_000),   // Nauru
];

/// A block of numbers: fixed leading digits, then `free` digits drawn at random.
#[derive(Clone, Copy, Debug)]
pub struct Block {
    prefix: u64,
    prefix_digits: u32,
    free: u32,
}

impl Block {
    /// `prefix` is a digit string without a leading zero (E.164 country codes never start with 0).
    pub fn new(prefix: &str, free: u32) -> Block {
        debug_assert!(prefix.bytes().all(|c| c.is_ascii_digit()) && !prefix.starts_with('0'));
        Block {
            prefix: prefix.parse().expect("digits"),
            prefix_digits: prefix.len() as u32,
            free,
        }
    }

    pub fn pick(self, rng: &mut Rng) -> Number {
        let span = 10u64.pow(self.free);
        number(
            self.prefix * span + rng.u64(0..span),
            (self.prefix_digits + self.free) as usize,
        )
    }
}

/// A number of exactly `digits` digits (zero-padded), without the string allocation of `to_string`.
pub fn number(mut value: u64, digits: usize) -> Number {
    let mut buf = [b'0'; Number::MAX_DIGITS];
    for d in buf[..digits].iter_mut().rev() {
        *d = b'0' + (value % 10) as u8;
        value /= 10;
    }
    Number::parse(std::str::from_utf8(&buf[..digits]).expect("ascii digits"))
        .expect("1..=15 digits")
}

/// A destination outside the home country with its retail rate.
#[derive(Clone, Copy, Debug)]
pub struct Destination {
    pub block: Block,
    pub per_minute: Money,
}

pub struct NumberPlan {
    /// Home mobile ranges (06, 07 in French national format).
    mobile: [Block; 2],
    /// Home geographic and VoIP ranges (01–05, 09); 08 is left out because 0899/0897 are premium-rate.
    fixed: [Block; 6],
    /// Application-to-person short codes (banks' one-time codes, delivery notices). 36xxx and 38xxx:
    /// no high-risk prefix starts with them.
    short_codes: [Block; 2],
    foreign: Vec<Destination>,
    foreign_weights: Vec<u32>,
    high_risk: Vec<Destination>,
    home_cc: String,
}

impl NumberPlan {
    pub fn new(home_cc: &str) -> NumberPlan {
        let home = |first: char| Block::new(&format!("{home_cc}{first}"), 8);
        // A destination inside the home country code would be domestic, not international.
        let abroad = |prefix: &&str| !prefix.starts_with(home_cc);
        let (foreign, foreign_weights) = FOREIGN
            .iter()
            .filter(|(p, ..)| abroad(p))
            .map(|&(p, free, weight, rate)| {
                let d = Destination {
                    block: Block::new(p, free),
                    per_minute: Money(rate),
                };
                (d, weight)
            })
            .unzip();
        let high_risk = HIGH_RISK
            .iter()
            .filter(|(p, ..)| abroad(p))
            .map(|&(p, free, rate)| Destination {
                block: Block::new(p, free),
                per_minute: Money(rate),
            })
            .collect();
        NumberPlan {
            mobile: [home('6'), home('7')],
            fixed: ['1', '2', '3', '4', '5', '9'].map(home),
            short_codes: [Block::new("36", 3), Block::new("38", 3)],
            foreign,
            foreign_weights,
            high_risk,
            home_cc: home_cc.to_string(),
        }
    }

    /// Rewrites some of a record's numbers the ways real feeds write them (`record::numbering`):
    /// `+` and spaces, the international or trunk prefix, tel and SIP URIs, sender names and
    /// withheld callers. The choice hangs on the record id, not on the generator's random stream, so
    /// the traffic itself (who, when, what) is the same with or without it. Only notation changes for
    /// numbers the rules read; the sender names and withheld callers replace received SMS from short
    /// codes and domestic callers, which no shipped rule keys on.
    pub fn vary_notation(&self, rec: &mut UsageRecord) {
        let h = xxhash_rust::xxh3::xxh3_64(rec.record_id.as_bytes());
        let (pick, served_pick) = (h % 1000, (h >> 20) % 1000);
        if served_pick < 20 {
            rec.served.msisdn_written = Some(format_compact!("+{}", rec.served.msisdn));
        }
        // Some probes report the IMEISV (the IMEI and a 2-digit software version): the same handset.
        if let (Some(imei), 20..=69) = (rec.served.imei, served_pick) {
            rec.served.imei_written = Some(format_compact!("{imei}{:02}", (h >> 40) % 100));
        }
        let mt = rec.direction == Some(Direction::Mt);
        let other = &mut rec.other_party;
        if other.kind == NumberKind::ShortCode {
            if rec.record_type == RecordType::Sms && mt && pick < 300 {
                other.number = None;
                other.kind = NumberKind::Alphanumeric;
                other.written = Some(CompactString::const_new(SENDERS[(h >> 40) as usize % 3]));
            }
            return;
        }
        let Some(n) = other.number else {
            return;
        };
        let digits = n.to_string();
        let domestic = digits.starts_with(&self.home_cc);
        // The North American plan dials 011 abroad and 1 at home; most others 00 and 0.
        let (international, trunk) = if self.home_cc == "1" {
            ("011", "1")
        } else {
            ("00", "0")
        };
        other.written = match pick {
            0..=39 => Some(format_compact!("+{digits}")),
            40..=69 if domestic => {
                Some(format_compact!("{trunk}{}", &digits[self.home_cc.len()..]))
            }
            40..=69 => Some(format_compact!("{international}{digits}")),
            70..=79 => Some(format_compact!("tel:+{digits}")),
            80..=84 if rec.record_type == RecordType::Voice => {
                Some(format_compact!("sip:+{digits}@ims.example;user=phone"))
            }
            85..=94 if domestic && mt && rec.record_type == RecordType::Voice => {
                other.number = None;
                other.kind = NumberKind::Withheld;
                Some(CompactString::const_new("anonymous"))
            }
            _ => None,
        };
    }

    pub fn home_mobile(&self, rng: &mut Rng) -> Number {
        // 06 ranges are far older and fuller than 07 ones.
        let b = if rng.u8(0..100) < 80 { 0 } else { 1 };
        self.mobile[b].pick(rng)
    }

    pub fn home_fixed(&self, rng: &mut Rng) -> Number {
        self.fixed[rng.usize(0..self.fixed.len())].pick(rng)
    }

    /// Someone in the home country: mostly mobiles, some landlines.
    pub fn home_any(&self, rng: &mut Rng) -> Number {
        if rng.u8(0..100) < 70 {
            self.home_mobile(rng)
        } else {
            self.home_fixed(rng)
        }
    }

    /// An application-to-person short code, as a party of its kind.
    pub fn short_code_party(&self, rng: &mut Rng) -> OtherParty {
        OtherParty {
            number: Some(self.short_code(rng)),
            kind: NumberKind::ShortCode,
            ..OtherParty::default()
        }
    }

    pub fn short_code(&self, rng: &mut Rng) -> Number {
        self.short_codes[rng.usize(0..2)].pick(rng)
    }

    pub fn foreign(&self, rng: &mut Rng) -> (Number, Money) {
        let d = self.foreign[weighted(rng, &self.foreign_weights)];
        (d.block.pick(rng), d.per_minute)
    }

    /// `None` only when the home country code swallows every listed range.
    pub fn high_risk(&self, rng: &mut Rng) -> Option<(Number, Money)> {
        if self.high_risk.is_empty() {
            return None;
        }
        let d = self.high_risk[rng.usize(0..self.high_risk.len())];
        Some((d.block.pick(rng), d.per_minute))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_have_the_planned_shape() {
        let plan = NumberPlan::new("33");
        let mut rng = Rng::with_seed(1);
        for _ in 0..1000 {
            let m = plan.home_mobile(&mut rng).to_string();
            assert!(
                m.len() == 11 && (m.starts_with("336") || m.starts_with("337")),
                "{m}"
            );
            let f = plan.home_fixed(&mut rng).to_string();
            assert!(f.len() == 11 && !f.starts_with("338"), "{f}");
            let (n, rate) = plan.foreign(&mut rng);
            assert!(!n.to_string().starts_with("33") && rate > Money::ZERO);
        }
        assert_eq!(number(42, 5).to_string(), "00042");
    }
}
