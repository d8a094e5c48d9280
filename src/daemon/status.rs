//! The periodic status line (records/s, alerts by department, dead letters, lag, in flight, rule set)
//! and the consumer-lag gauge it refreshes.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::record::Input;
use crate::sink::Tracker;
use crate::telemetry::metrics::Metrics;

pub struct Status {
    /// Log the line (the lag gauge is refreshed either way).
    enabled: bool,
    every: Duration,
    next: Instant,
    last_records: u64,
    last_at: Instant,
}

impl Status {
    pub fn new(cfg: &Config, enabled: bool) -> Self {
        let every = Duration::from_secs(cfg.daemon.status_interval.0.max(1) as u64);
        Status {
            enabled,
            every,
            next: Instant::now() + every,
            last_records: 0,
            last_at: Instant::now(),
        }
    }

    pub fn maybe_log(
        &mut self,
        metrics: &Metrics,
        tracker: &Tracker,
        lag: BTreeMap<(Input, i32), i64>,
    ) {
        if Instant::now() < self.next {
            return;
        }
        self.next = Instant::now() + self.every;
        *metrics.lag.lock().expect("metrics lock") = lag;
        if !self.enabled {
            return;
        }
        let records = metrics.records_total();
        let rate = (records - self.last_records) as f64 / self.last_at.elapsed().as_secs_f64();
        self.last_records = records;
        self.last_at = Instant::now();
        let by_dept: Vec<String> = metrics
            .alerts
            .by_department()
            .iter()
            .map(|(d, n)| format!("{d} {n}"))
            .collect();
        let version = metrics
            .workers
            .lock()
            .expect("metrics lock")
            .iter()
            .map(|w| w.ruleset_version.clone())
            .find(|v| !v.is_empty())
            .unwrap_or_default();
        // What a producer needs to know: usage stamped before the watermark is dead-lettered as
        // late (the embedded demo runs hours of event time per second).
        let watermark = metrics
            .workers
            .lock()
            .expect("metrics lock")
            .iter()
            .flat_map(|w| w.watermarks.values().copied())
            .max()
            .map(|utc| {
                format!(
                    ", event time watermark {}",
                    crate::record::EventTime { utc, offset_min: 0 }
                )
            })
            .unwrap_or_default();
        let gaps = metrics.gaps_total();
        let skipped = if gaps.episodes > 0 {
            format!(
                ", SKIPPED {} records in {} offset gap(s) (gone from the broker)",
                gaps.skipped, gaps.episodes
            )
        } else {
            String::new()
        };
        let miskeyed = match metrics.miskeyed_total() {
            0 => String::new(),
            n => format!(", MISKEYED {n} records (not keyed by their account)"),
        };
        tracing::info!(
            "status: {:.0} records/s, {} records, {} alerts ({}), {} dead letters, lag {}, in flight {}, rules {}{}{}{}",
            rate,
            records,
            metrics.alerts.total(),
            if by_dept.is_empty() { "none yet".into() } else { by_dept.join(", ") },
            metrics.dead_letters.load(Ordering::Relaxed),
            metrics.lag_total(),
            tracker.in_flight(),
            version,
            watermark,
            skipped,
            miskeyed
        );
    }
}
