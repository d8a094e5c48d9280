//! Deterministic, realistic background traffic: the input for benchmarks, demos and back-tests.
//!
//! A population of lines in accounts (families, businesses, a few VIPs), usage with a diurnal shape and
//! heavy-tailed activity per line, a voice/SMS/data mix with international, high-risk and roaming
//! shares of the order operators see, and the billing side (activations, credit limits, segments,
//! invoices, payments, a few reversals). The same config always gives byte-identical files: one seeded
//! `fastrand` generator, records built as the wire types and written by serde, so they decode exactly.
//! It deliberately contains no fraud stories; the rule library issue injects those on top.

mod events;
mod population;
mod traffic;

use std::io::{self, Write};

use crate::record::EventTime;

use population::Population;
use traffic::{diurnal_time, TrafficMaker, WeightedPick};

#[derive(Clone, Debug)]
pub struct GenConfig {
    pub seed: u64,
    /// Number of lines (msisdns).
    pub subscribers: u32,
    /// Number of usage records to write.
    pub records: u64,
    /// First instant; records spread over `days` from here, in its UTC offset.
    pub start: EventTime,
    pub days: u32,
    /// Home country code, e.g. `33`.
    pub home_cc: String,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            seed: 42,
            subscribers: 10_000,
            records: 100_000,
            start: EventTime::parse("2026-11-01T00:00:00+01:00").expect("valid"),
            days: 1,
            home_cc: "33".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenSummary {
    pub usage_records: u64,
    pub account_events: u64,
    pub subscribers: u32,
    pub accounts: u32,
}

/// Writes usage records (NDJSON, sorted by `event_start`) to `usage` and account events (NDJSON, sorted
/// by `occurred_at`) to `events`.
pub fn generate(
    cfg: &GenConfig,
    usage: &mut dyn Write,
    events: &mut dyn Write,
) -> io::Result<GenSummary> {
    if cfg.subscribers == 0 || cfg.subscribers > 99_999_999 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "subscribers must be 1..=99,999,999",
        ));
    }
    let mut rng = fastrand::Rng::with_seed(cfg.seed);
    let pop = Population::build(&mut rng, cfg.subscribers, &cfg.home_cc);

    // Who and when first, then sort by time: 16 bytes per record, so 10⁶ records cost 16 MB here.
    let hours = WeightedPick::new(traffic_hours());
    let who = WeightedPick::new(pop.lines.iter().map(|l| l.weight));
    let mut plan: Vec<(i64, u32)> = (0..cfg.records)
        .map(|i| {
            // Everyone appears at least once when there are enough records.
            let sub = if i < cfg.subscribers as u64 {
                i as u32
            } else {
                who.pick(&mut rng) as u32
            };
            (diurnal_time(&mut rng, &hours, cfg.start, cfg.days), sub)
        })
        .collect();
    plan.sort_unstable();

    let maker = TrafficMaker {
        pop: &pop,
        home_cc: &cfg.home_cc,
        offset_min: cfg.start.offset_min,
    };
    let mut line = Vec::with_capacity(512);
    for (seq, &(at, sub)) in plan.iter().enumerate() {
        let rec = maker.record(&mut rng, seq as u64, sub, at);
        line.clear();
        serde_json::to_writer(&mut line, &rec)?;
        line.push(b'\n');
        usage.write_all(&line)?;
    }

    let evs = events::account_events(&mut rng, &pop, cfg);
    for e in &evs {
        serde_json::to_writer(&mut *events, e)?;
        events.write_all(b"\n")?;
    }
    Ok(GenSummary {
        usage_records: cfg.records,
        account_events: evs.len() as u64,
        subscribers: pop.lines.len() as u32,
        accounts: pop.accounts.len() as u32,
    })
}

fn traffic_hours() -> impl Iterator<Item = f64> {
    traffic::HOURLY_WEIGHTS.iter().copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Decoder, RecordType};

    fn run(cfg: &GenConfig) -> (Vec<u8>, Vec<u8>, GenSummary) {
        let (mut u, mut e) = (Vec::new(), Vec::new());
        let s = generate(cfg, &mut u, &mut e).unwrap();
        (u, e, s)
    }

    fn small(seed: u64) -> GenConfig {
        GenConfig {
            seed,
            subscribers: 300,
            records: 5_000,
            days: 2,
            ..GenConfig::default()
        }
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let a = run(&small(1));
        let b = run(&small(1));
        let c = run(&small(2));
        assert_eq!((&a.0, &a.1), (&b.0, &b.1));
        assert_ne!(a.0, c.0);
    }

    #[test]
    fn every_line_decodes_and_is_sorted_and_everyone_appears() {
        let (u, e, s) = run(&small(7));
        let d = Decoder::default();
        let mut last = i64::MIN;
        let mut kinds = [0u32; 3];
        let mut subs = std::collections::HashSet::new();
        for l in u.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let r = d
                .usage(l)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(l)));
            assert!(r.event_start.utc >= last, "usage sorted by time");
            last = r.event_start.utc;
            kinds[r.record_type as usize] += 1;
            subs.insert(r.served.msisdn);
        }
        assert_eq!(kinds.iter().sum::<u32>(), 5_000);
        let share = |k: RecordType| kinds[k as usize] as f64 / 5_000.0;
        assert!((share(RecordType::Voice) - 0.45).abs() < 0.04, "{kinds:?}");
        assert!((share(RecordType::Sms) - 0.20).abs() < 0.04, "{kinds:?}");
        assert!((share(RecordType::Data) - 0.35).abs() < 0.04, "{kinds:?}");
        assert_eq!(subs.len(), s.subscribers as usize);
        let mut last = i64::MIN;
        let mut n = 0;
        for l in e.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let ev = d
                .account_event(l)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(l)));
            assert!(ev.occurred_at.utc >= last, "events sorted by time");
            last = ev.occurred_at.utc;
            n += 1;
        }
        assert_eq!(n, s.account_events);
        assert!(
            s.accounts < s.subscribers,
            "some accounts have several lines"
        );
    }

    #[test]
    fn diurnal_shape_is_visible() {
        let (u, _, _) = run(&GenConfig {
            subscribers: 200,
            records: 20_000,
            ..small(3)
        });
        let d = Decoder::default();
        let mut by_hour = [0u32; 24];
        for l in u.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            by_hour[d.usage(l).unwrap().event_start.local_hour() as usize] += 1;
        }
        assert!(by_hour[18] > 10 * by_hour[3], "{by_hour:?}");
    }
}
