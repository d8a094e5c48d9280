//! Progress of a long replay: a self-overwriting line on a terminal, a log line every 10 s otherwise.
//! The clock is read once per 16k records so progress costs nothing per record.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    tty: bool,
    enabled: bool,
    started: Instant,
    last: Instant,
    every: Duration,
    shown: bool,
}

impl Progress {
    pub fn new(enabled: bool) -> Self {
        let tty = std::io::stderr().is_terminal();
        let now = Instant::now();
        Progress {
            tty,
            enabled,
            started: now,
            last: now,
            every: if tty {
                Duration::from_millis(500)
            } else {
                Duration::from_secs(10)
            },
            shown: false,
        }
    }

    pub fn tick(&mut self, records: u64, fraction: Option<f64>) {
        if !self.enabled || !records.is_multiple_of(16_384) {
            return;
        }
        let now = Instant::now();
        if now - self.last < self.every {
            return;
        }
        self.last = now;
        let secs = (now - self.started).as_secs_f64();
        let rate = records as f64 / secs.max(1e-9);
        let pct = fraction
            .map(|f| format!(" {:5.1}%", f * 100.0))
            .unwrap_or_default();
        if self.tty {
            eprint!("\r  replaying{pct} · {records} records · {rate:.0} records/s   ");
            let _ = std::io::stderr().flush();
            self.shown = true;
        } else {
            tracing::info!(
                records,
                rate = rate as u64,
                progress = fraction.map(|f| (f * 1000.0).round() / 10.0),
                "Replay in progress."
            );
        }
    }

    pub fn done(&mut self) {
        if self.shown {
            eprint!("\r{:70}\r", "");
            self.shown = false;
        }
    }
}
