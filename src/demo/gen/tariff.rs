//! Retail rates and the networks travellers visit. Charges are computed in integer micro-units.

use crate::record::Money;

/// A foreign network a traveller is attached to, with where it is and what its usage costs.
pub struct VisitedNetwork {
    pub plmn: &'static str,
    pub lat: f64,
    pub lon: f64,
    /// Relative share of travellers.
    pub weight: u32,
    pub voice_mo_per_min: Money,
    pub voice_mt_per_min: Money,
    pub sms_mo: Money,
    pub data_per_mb: Money,
}

/// EU networks charge little (roam-like-at-home, out-of-bundle rates only); the UK, Switzerland and
/// beyond charge real money, which is what roaming rules watch.
pub const VISITED: [VisitedNetwork; 6] = [
    visited(
        "23415",
        51.507,
        -0.128,
        30,
        [500_000, 200_000, 200_000, 50_000],
    ), // UK, Vodafone
    visited("26202", 52.520, 13.405, 20, [150_000, 0, 60_000, 5_000]), // Germany, Vodafone
    visited("21407", 40.417, -3.704, 25, [150_000, 0, 60_000, 5_000]), // Spain, Movistar
    visited("22210", 41.903, 12.496, 15, [150_000, 0, 60_000, 5_000]), // Italy, Vodafone
    visited(
        "22801",
        46.948,
        7.447,
        6,
        [800_000, 400_000, 300_000, 100_000],
    ), // Switzerland, Swisscom
    visited(
        "310260",
        40.713,
        -74.006,
        4,
        [1_500_000, 800_000, 400_000, 200_000],
    ), // USA, T-Mobile
];

/// `rates`: voice MO €/min, voice MT €/min, SMS MO €, data €/MB, all in micro-units.
const fn visited(
    plmn: &'static str,
    lat: f64,
    lon: f64,
    weight: u32,
    rates: [i64; 4],
) -> VisitedNetwork {
    VisitedNetwork {
        plmn,
        lat,
        lon,
        weight,
        voice_mo_per_min: Money(rates[0]),
        voice_mt_per_min: Money(rates[1]),
        sms_mo: Money(rates[2]),
        data_per_mb: Money(rates[3]),
    }
}

/// Shares for drawing a visited network.
pub fn visited_weights() -> [u32; VISITED.len()] {
    VISITED.map(|v| v.weight)
}

/// International SMS, per message.
pub const SMS_INTERNATIONAL: Money = Money(200_000);

/// Per-second rating of a per-minute rate, to 4 decimals as rating engines print it.
pub fn per_minute(rate: Money, secs: u32) -> Money {
    round4(rate.micros() * secs as i64 / 60)
}

/// Volume rating of a per-MB (10⁶ bytes) rate.
pub fn per_mb(rate: Money, bytes: u64) -> Money {
    round4((rate.micros() as i128 * bytes as i128 / 1_000_000) as i64)
}

fn round4(micros: i64) -> Money {
    Money((micros + 50) / 100 * 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rating_is_exact() {
        assert_eq!(per_minute(Money(250_000), 90).to_string(), "0.375");
        assert_eq!(per_minute(Money(100_000), 1).to_string(), "0.0017");
        assert_eq!(per_mb(Money(50_000), 2_500_000).to_string(), "0.125");
        assert_eq!(per_minute(Money::ZERO, 600), Money::ZERO);
    }
}
