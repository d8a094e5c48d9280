//! Who is on the network: lines grouped into accounts, each line with its identity, home cells and an
//! activity weight.
//!
//! Account sizes follow a consumer-heavy operator: ~70% single-line, ~25% families of 2–4 lines, ~5%
//! business accounts of 5–20 lines. Activity per line is heavy-tailed (a few heavy users, many light
//! ones), the shape every usage distribution in telecom has.

use compact_str::{format_compact, CompactString};

use crate::record::{Number, Segment};

pub struct Line {
    pub msisdn: Number,
    pub imsi: Number,
    pub imei: Number,
    pub account: u32,
    /// Cells the line is usually served by; the first is home.
    pub cells: Vec<u64>,
    pub lat: f64,
    pub lon: f64,
    /// Relative share of the traffic.
    pub weight: f64,
}

pub struct AccountInfo {
    pub id: CompactString,
    pub segment: Segment,
    pub lines: Vec<u32>,
}

pub struct Population {
    pub lines: Vec<Line>,
    pub accounts: Vec<AccountInfo>,
}

pub fn msisdn(home_cc: &str, i: u32) -> Number {
    Number::parse(&format!("{home_cc}6{i:08}")).expect("digits")
}

impl Population {
    pub fn build(rng: &mut fastrand::Rng, subscribers: u32, home_cc: &str) -> Population {
        let mut lines = Vec::with_capacity(subscribers as usize);
        let mut accounts = Vec::new();
        let mut next = 0u32;
        while next < subscribers {
            let r = rng.f64();
            let (size, segment) = if r < 0.70 {
                let s = rng.f64();
                let seg = if s < 0.01 {
                    Segment::Vip
                } else if s < 0.015 {
                    Segment::Test
                } else {
                    Segment::Consumer
                };
                (1, seg)
            } else if r < 0.95 {
                (rng.u32(2..=4), Segment::Consumer)
            } else {
                let s = rng.f64();
                let seg = if s < 0.6 {
                    Segment::Smb
                } else if s < 0.95 {
                    Segment::Enterprise
                } else {
                    Segment::Government
                };
                (rng.u32(5..=20), seg)
            };
            let account = accounts.len() as u32;
            let mut members = Vec::new();
            // A household or an office shares a place: lines of one account live near each other.
            let (lat, lon) = (43.0 + rng.f64() * 7.0, -1.5 + rng.f64() * 9.0);
            for _ in 0..size.min(subscribers - next) {
                let home_cell = rng.u64(1..10_000_000);
                let mut cells = vec![home_cell];
                for _ in 0..rng.usize(1..=3) {
                    cells.push(home_cell + rng.u64(1..50));
                }
                // Pareto-like weight u^-0.8 (mean 5), capped at 50: the heaviest lines make ~10x the
                // average traffic, as in real usage, without one line dominating a small population.
                let weight = (1.0 - rng.f64()).powf(-0.8).min(50.0);
                lines.push(Line {
                    msisdn: msisdn(home_cc, next),
                    imsi: Number::parse(&format!("20801{:010}", rng.u64(0..10_000_000_000)))
                        .expect("digits"),
                    imei: Number::parse(&format!("35{:012}", rng.u64(0..1_000_000_000_000)))
                        .expect("digits"),
                    account,
                    cells,
                    lat: lat + rng.f64() * 0.05,
                    lon: lon + rng.f64() * 0.05,
                    weight,
                });
                members.push(next);
                next += 1;
            }
            accounts.push(AccountInfo {
                id: format_compact!("A-{}", account + 1000),
                segment,
                lines: members,
            });
        }
        Population { lines, accounts }
    }
}
