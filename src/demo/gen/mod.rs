//! Deterministic, realistic background traffic: the input for benchmarks, demos and back-tests.
//!
//! A rule is only as good as its false-positive rate on ordinary traffic, so the generator models an
//! ordinary period of a mid-size French operator rather than uniform noise, and contains no fraud (tests
//! inject that on top). The shapes, and why:
//! - **Population.** ~70% single-line consumer accounts, ~25% families of 2–4 lines, ~5% businesses of
//!   5–20 (smb, enterprise, a few government), ~1% of private accounts VIP: the account view and the
//!   key-account routing have something to aggregate. Each line has unique identities (a shared IMEI
//!   would be cloning) and lives in one place: a home cell and 1–3 neighbouring cells on a 2 km grid,
//!   lines of one account close together, most people in cities.
//! - **Activity** per line is Pareto-distributed (a few heavy users, many light ones), the shape of every
//!   telecom usage distribution; every line still appears when there are at least as many records as lines.
//! - **Time of day** follows a diurnal curve, quiet 01:00–06:00 with peaks late morning and early evening;
//!   business lines keep office hours and quiet weekends. Off-hours rules need the real night baseline.
//! - **Mix** ≈ voice 45% / SMS 20% / data 35%; 55% originated; 85% of calls answered, log-normal lengths.
//! - **Who talks to whom** comes from a per-line contact book (see `contacts`): narrow call graphs, so
//!   distinct-callee counts stay low; 5% of calls abroad to a line's few foreign contacts, 0.05% to
//!   high-risk ranges — a baseline for IRSF rules, never a pumping pattern.
//! - **Roaming**: ~2% of records, from travellers abroad for the whole period (a line that flipped
//!   between countries within minutes would be impossible travel). A line in a call is busy, so no line
//!   ever holds two calls at once.
//! - **Billing**: activation, credit limit and segment months before the start, one invoice per account
//!   shortly before it, ~85% paid during the period, ~2% of payments reversed: arrears rules see a mostly
//!   paying base with a realistic tail.
//!
//! Determinism: one `fastrand` generator seeded from `seed`, drawn in a fixed order; records are the wire
//! types written by serde, so they decode exactly. Float shapes (log-normal, Pareto) go through the
//! platform's `ln`/`exp`, and results are rounded before they are written, so output is byte-identical
//! for a given config and build target.

mod clock;
mod contacts;
mod dist;
mod events;
mod numbering;
mod partials;
mod population;
pub mod stories;
mod tariff;
#[cfg(test)]
mod tests;
mod traffic;

use std::io::{self, Write};

use crate::record::time::{days_from_civil, MIN_UTC};
use crate::record::EventTime;

use clock::Clock;
use numbering::NumberPlan;
use population::Population;

/// What to generate. Everything in the output is a function of these fields.
#[derive(Clone, Debug)]
pub struct GenConfig {
    /// Seed of the one random generator: same config, same bytes.
    pub seed: u64,
    /// Number of lines (msisdns).
    pub subscribers: u32,
    /// Number of usage records to write.
    pub records: u64,
    /// First instant; records spread over `days` from here, all written in its UTC offset.
    pub start: EventTime,
    pub days: u32,
    /// Home country code, e.g. `33`: home numbers are `<cc>6…` / `<cc>7…`.
    pub home_cc: String,
    /// Stories to inject: (rule id, how many). See `stories`.
    pub inject: Vec<(String, u32)>,
    /// Inserted into every generated id (accounts, records, events), so that several generated
    /// periods can share one stream without their ids colliding. Default empty.
    pub tag: String,
    /// Write roaming records as TAP files deliver them (`partials::tap`): priced in SDR and some
    /// up to 34 h late. Default false (the default deployment would reject them).
    pub tap: bool,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            seed: 42,
            subscribers: 10_000,
            records: 100_000,
            start: EventTime::parse("2026-11-01T00:00:00+01:00").expect("valid literal"),
            days: 1,
            home_cc: "33".into(),
            inject: Vec::new(),
            tag: String::new(),
            tap: false,
        }
    }
}

/// What was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenSummary {
    /// Including the stories' records.
    pub usage_records: u64,
    pub account_events: u64,
    pub subscribers: u32,
    pub accounts: u32,
    /// The alerts the injected stories must raise.
    pub labels: Vec<stories::Label>,
}

/// Writes usage records (NDJSON, sorted by event_start) to `usage` and account events (NDJSON, sorted by
/// occurred_at) to `events`. One `write_all` per line: pass buffered writers. An invalid config is an
/// `InvalidInput` error naming every problem.
pub fn generate(
    cfg: &GenConfig,
    usage: &mut dyn Write,
    events: &mut dyn Write,
) -> io::Result<GenSummary> {
    let problems = problems(cfg);
    if !problems.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid generator config: {}", problems.join("; ")),
        ));
    }
    let mut rng = fastrand::Rng::with_seed(cfg.seed);
    let plan = NumberPlan::new(&cfg.home_cc);
    let clock = Clock::new(cfg.start, cfg.days);
    let pop = Population::build(&mut rng, cfg.subscribers, cfg.records, &plan, &cfg.tag);
    let told = stories::plan(
        &cfg.inject,
        cfg.seed,
        &pop,
        &plan,
        &clock,
        &cfg.home_cc,
        &cfg.tag,
    )
    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let account_events = events::write(&mut rng, &pop, &clock, &told.events, &cfg.tag, events)?;
    let usage_records = traffic::write(
        &mut rng,
        cfg.records,
        &pop,
        &plan,
        &clock,
        cfg.seed,
        &cfg.tag,
        cfg.tap,
        &told.usage,
        usage,
    )?;
    Ok(GenSummary {
        usage_records,
        account_events,
        subscribers: pop.lines.len() as u32,
        accounts: pop.accounts.len() as u32,
        labels: told.labels,
    })
}

/// Largest population: msisdns are drawn from 2 × 10⁸ home mobile numbers, kept sparse so that the
/// generated lines do not fill the numbering plan.
const MAX_SUBSCRIBERS: u32 = 20_000_000;
/// Each record costs 8 bytes while it waits to be sorted.
const MAX_RECORDS: u64 = 1_000_000_000;
/// Activations are placed up to 400 days before the start.
const HISTORY_DAYS: i64 = 401;

fn problems(cfg: &GenConfig) -> Vec<String> {
    let mut p = Vec::new();
    if !(1..=MAX_SUBSCRIBERS).contains(&cfg.subscribers) {
        p.push(format!(
            "subscribers must be 1..={MAX_SUBSCRIBERS}, got {}",
            cfg.subscribers
        ));
    }
    if cfg.records > MAX_RECORDS {
        p.push(format!(
            "records must be at most {MAX_RECORDS}, got {}",
            cfg.records
        ));
    }
    if !(1..=3660).contains(&cfg.days) {
        p.push(format!("days must be 1..=3660, got {}", cfg.days));
    }
    let cc = &cfg.home_cc;
    if !(1..=3).contains(&cc.len())
        || !cc.bytes().all(|c| c.is_ascii_digit())
        || cc.starts_with('0')
    {
        p.push(format!(
            "home_cc must be a country code of 1–3 digits, got {cc:?}"
        ));
    }
    // Every timestamp written must parse back: local years 2000..2099 only.
    let first = cfg.start.local_secs() - HISTORY_DAYS * 86_400;
    let last = cfg.start.local_secs() + cfg.days as i64 * 86_400;
    if first < MIN_UTC || last >= days_from_civil(2100, 1, 1) * 86_400 {
        p.push(format!(
            "start {} must leave {HISTORY_DAYS} days of history after 2000-01-01 and end before 2100",
            cfg.start
        ));
    }
    p
}
