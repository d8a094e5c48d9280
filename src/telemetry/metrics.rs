//! Metrics and health: counters the workers, the consumer and the producer update, rendered as
//! Prometheus text on `/metrics`, and `/health` (200 while the consumer polls, 503 when it has not for
//! 30 s). A few plain threads and a blocking listener: the endpoint serves a scrape every few seconds,
//! not traffic.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;

/// What one worker reports about its rule engines and state, replaced every second.
#[derive(Clone, Default)]
pub struct WorkerView {
    pub partitions: usize,
    pub ruleset_version: String,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub entities: u64,
    pub state_bytes: u64,
    pub timers_pending: u64,
    /// Per rule: evaluations, errors, quarantined, evaluation time (ns).
    pub rules: BTreeMap<String, RuleView>,
}

#[derive(Clone)]
pub struct RuleView {
    pub evaluations: u64,
    pub errors: u64,
    pub quarantined: bool,
    pub latency: Histogram<u64>,
}

#[derive(Default)]
pub struct Metrics {
    pub usage_in: AtomicU64,
    pub events_in: AtomicU64,
    pub dead_letters: AtomicU64,
    pub delivered: AtomicU64,
    pub delivery_failed: AtomicU64,
    pub kafka_errors: AtomicU64,
    /// Reloads refused before reaching the workers (invalid or unreadable library).
    pub reloads_refused: AtomicU64,
    /// Unix milliseconds of the consumer's last poll.
    pub last_poll_ms: AtomicI64,
    pub rejected: Mutex<BTreeMap<String, u64>>,
    /// (rule, department) → alerts produced.
    pub alerts: Mutex<BTreeMap<(String, String), u64>>,
    /// (topic, partition) → consumer lag in messages.
    pub lag: Mutex<BTreeMap<(String, i32), i64>>,
    pub workers: Mutex<Vec<WorkerView>>,
    pub snapshots: SnapshotMetrics,
}

/// Snapshot writes, restores and replays after a restore.
#[derive(Default)]
pub struct SnapshotMetrics {
    pub written: AtomicU64,
    /// Snapshots not written: alerts undelivered in time, or an I/O error.
    pub failed: AtomicU64,
    pub bytes_written: AtomicU64,
    /// Time to encode plus write the last snapshot (µs).
    pub last_write_us: AtomicU64,
    /// Partitions started from a snapshot, rebuilt, or started empty (new), by outcome.
    pub restores: Mutex<BTreeMap<String, u64>>,
    /// Records re-read after a restore whose effect the snapshot already held (skipped).
    pub records_skipped: AtomicU64,
    /// Alerts and dead letters recomputed while re-reading already committed input (not sent again).
    pub outputs_suppressed: AtomicU64,
}

impl SnapshotMetrics {
    pub fn count_restore(&self, outcome: &str) {
        *self
            .restores
            .lock()
            .expect("metrics lock")
            .entry(outcome.to_string())
            .or_default() += 1;
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Metrics {
    pub fn count_alert(&self, rule: &str, department: &str) {
        *self
            .alerts
            .lock()
            .expect("metrics lock")
            .entry((rule.to_string(), department.to_string()))
            .or_default() += 1;
    }

    pub fn count_reject(&self, reason: &str) {
        *self
            .rejected
            .lock()
            .expect("metrics lock")
            .entry(reason.to_string())
            .or_default() += 1;
    }

    pub fn alerts_total(&self) -> u64 {
        self.alerts.lock().expect("metrics lock").values().sum()
    }

    pub fn alerts_by_department(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for ((_, d), n) in self.alerts.lock().expect("metrics lock").iter() {
            *out.entry(d.clone()).or_default() += n;
        }
        out
    }

    pub fn lag_total(&self) -> i64 {
        self.lag.lock().expect("metrics lock").values().sum()
    }

    pub fn healthy(&self) -> bool {
        now_ms() - self.last_poll_ms.load(Ordering::Relaxed) < 30_000
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let head = |s: &mut String, name: &str, help: &str, kind: &str| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(
            &mut s,
            "cdrguard_records_in_total",
            "Records consumed, by input.",
            "counter",
        );
        let _ = writeln!(
            s,
            "cdrguard_records_in_total{{input=\"usage\"}} {}\ncdrguard_records_in_total{{input=\"events\"}} {}",
            self.usage_in.load(Ordering::Relaxed),
            self.events_in.load(Ordering::Relaxed)
        );
        head(
            &mut s,
            "cdrguard_records_rejected_total",
            "Records dead-lettered, by reason.",
            "counter",
        );
        for (reason, n) in self.rejected.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                s,
                "cdrguard_records_rejected_total{{reason=\"{reason}\"}} {n}"
            );
        }
        head(
            &mut s,
            "cdrguard_dead_letters_total",
            "Messages produced to the dead-letter topic.",
            "counter",
        );
        let _ = writeln!(
            s,
            "cdrguard_dead_letters_total {}",
            self.dead_letters.load(Ordering::Relaxed)
        );
        let snap = &self.snapshots;
        for (name, help, v) in [
            (
                "cdrguard_snapshots_written_total",
                "State snapshots written.",
                &snap.written,
            ),
            (
                "cdrguard_snapshots_failed_total",
                "State snapshots not written (undelivered alerts, I/O).",
                &snap.failed,
            ),
            (
                "cdrguard_snapshot_bytes_total",
                "Bytes of state snapshots written.",
                &snap.bytes_written,
            ),
            (
                "cdrguard_snapshot_records_skipped_total",
                "Records re-read after a restore that the snapshot already held.",
                &snap.records_skipped,
            ),
            (
                "cdrguard_snapshot_outputs_suppressed_total",
                "Alerts and dead letters recomputed from already committed input, not sent again.",
                &snap.outputs_suppressed,
            ),
        ] {
            head(&mut s, name, help, "counter");
            let _ = writeln!(s, "{name} {}", v.load(Ordering::Relaxed));
        }
        head(
            &mut s,
            "cdrguard_snapshot_last_write_seconds",
            "Encode and write time of the last snapshot.",
            "gauge",
        );
        let _ = writeln!(
            s,
            "cdrguard_snapshot_last_write_seconds {:.6}",
            snap.last_write_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        head(
            &mut s,
            "cdrguard_partition_restores_total",
            "Partitions assigned, by how their state started: snapshot, rebuilt_<why>, stale_snapshot, new.",
            "counter",
        );
        for (outcome, n) in snap.restores.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                s,
                "cdrguard_partition_restores_total{{outcome=\"{outcome}\"}} {n}"
            );
        }
        head(
            &mut s,
            "cdrguard_alerts_total",
            "Alerts produced, by rule and department.",
            "counter",
        );
        for ((rule, dept), n) in self.alerts.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                s,
                "cdrguard_alerts_total{{rule=\"{rule}\",department=\"{dept}\"}} {n}"
            );
        }
        head(
            &mut s,
            "cdrguard_messages_delivered_total",
            "Alerts and dead letters acknowledged by the broker.",
            "counter",
        );
        let _ = writeln!(
            s,
            "cdrguard_messages_delivered_total {}\n# HELP cdrguard_messages_failed_total Messages that failed for good (their input offsets stay uncommitted).\n# TYPE cdrguard_messages_failed_total counter\ncdrguard_messages_failed_total {}",
            self.delivered.load(Ordering::Relaxed),
            self.delivery_failed.load(Ordering::Relaxed)
        );
        head(
            &mut s,
            "cdrguard_kafka_errors_total",
            "Client errors reported by librdkafka (broker down, ...).",
            "counter",
        );
        let _ = writeln!(
            s,
            "cdrguard_kafka_errors_total {}",
            self.kafka_errors.load(Ordering::Relaxed)
        );
        head(
            &mut s,
            "cdrguard_consumer_lag",
            "Messages behind the partition's high watermark.",
            "gauge",
        );
        for ((topic, p), lag) in self.lag.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                s,
                "cdrguard_consumer_lag{{topic=\"{topic}\",partition=\"{p}\"}} {lag}"
            );
        }

        let workers = self.workers.lock().expect("metrics lock").clone();
        let (mut ok, mut failed, mut entities, mut bytes, mut timers) = (0, 0, 0, 0, 0);
        let mut rules: BTreeMap<String, RuleView> = BTreeMap::new();
        let mut version = String::new();
        for w in &workers {
            ok = ok.max(w.reloads_ok);
            failed = failed.max(w.reloads_failed);
            entities += w.entities;
            bytes += w.state_bytes;
            timers += w.timers_pending;
            if !w.ruleset_version.is_empty() {
                version = w.ruleset_version.clone();
            }
            for (id, r) in &w.rules {
                match rules.get_mut(id) {
                    Some(acc) => {
                        acc.evaluations += r.evaluations;
                        acc.errors += r.errors;
                        acc.quarantined |= r.quarantined;
                        let _ = acc.latency.add(&r.latency);
                    }
                    None => {
                        rules.insert(id.clone(), r.clone());
                    }
                }
            }
        }
        head(
            &mut s,
            "cdrguard_rules_reloads_total",
            "Rule library reloads, by result.",
            "counter",
        );
        let failed = failed + self.reloads_refused.load(Ordering::Relaxed);
        let _ = writeln!(
            s,
            "cdrguard_rules_reloads_total{{result=\"ok\"}} {ok}\ncdrguard_rules_reloads_total{{result=\"failed\"}} {failed}"
        );
        head(
            &mut s,
            "cdrguard_ruleset_info",
            "The active rule set.",
            "gauge",
        );
        let _ = writeln!(s, "cdrguard_ruleset_info{{version=\"{version}\"}} 1");
        head(
            &mut s,
            "cdrguard_rule_evaluations_total",
            "Rule evaluations, by rule.",
            "counter",
        );
        for (id, r) in &rules {
            let _ = writeln!(
                s,
                "cdrguard_rule_evaluations_total{{rule=\"{id}\"}} {}",
                r.evaluations
            );
        }
        head(
            &mut s,
            "cdrguard_rule_errors_total",
            "Rule failures (sandbox limits, runtime errors, bad verdicts), by rule.",
            "counter",
        );
        for (id, r) in &rules {
            let _ = writeln!(
                s,
                "cdrguard_rule_errors_total{{rule=\"{id}\"}} {}",
                r.errors
            );
        }
        head(
            &mut s,
            "cdrguard_rule_quarantined",
            "1 while a rule is quarantined after repeated failures.",
            "gauge",
        );
        for (id, r) in &rules {
            let _ = writeln!(
                s,
                "cdrguard_rule_quarantined{{rule=\"{id}\"}} {}",
                r.quarantined as u8
            );
        }
        head(
            &mut s,
            "cdrguard_rule_eval_seconds",
            "Rule evaluation time (sandboxed call), by rule.",
            "summary",
        );
        for (id, r) in &rules {
            for q in [0.5, 0.99, 0.999] {
                let _ = writeln!(
                    s,
                    "cdrguard_rule_eval_seconds{{rule=\"{id}\",quantile=\"{q}\"}} {:.9}",
                    r.latency.value_at_quantile(q) as f64 / 1e9
                );
            }
            let _ = writeln!(
                s,
                "cdrguard_rule_eval_seconds_sum{{rule=\"{id}\"}} {:.9}\ncdrguard_rule_eval_seconds_count{{rule=\"{id}\"}} {}",
                r.latency.mean() * r.latency.len() as f64 / 1e9,
                r.latency.len()
            );
        }
        head(
            &mut s,
            "cdrguard_state_entities",
            "Entities in window state (subscribers, accounts, calling numbers, devices).",
            "gauge",
        );
        let _ = writeln!(s, "cdrguard_state_entities {entities}");
        head(
            &mut s,
            "cdrguard_state_bytes",
            "Estimated bytes of window state.",
            "gauge",
        );
        let _ = writeln!(s, "cdrguard_state_bytes {bytes}");
        head(
            &mut s,
            "cdrguard_timers_pending",
            "Event-time timers waiting for the watermark.",
            "gauge",
        );
        let _ = writeln!(s, "cdrguard_timers_pending {timers}");
        s
    }
}

/// Serves `/metrics` and `/health` on `address` until `stop` is set.
pub fn serve(
    address: &str,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let listener = TcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    tracing::info!(
        address,
        "Metrics on http://{address}/metrics, health on /health."
    );
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 2048];
                        let n = conn.read(&mut buf).unwrap_or(0);
                        let request = String::from_utf8_lossy(&buf[..n]);
                        let path = request.split_whitespace().nth(1).unwrap_or("/");
                        let (status, body, kind) = match path {
                            "/metrics" => ("200 OK", metrics.render(), "text/plain; version=0.0.4"),
                            "/health" if metrics.healthy() => ("200 OK", "ok\n".into(), "text/plain"),
                            "/health" => (
                                "503 Service Unavailable",
                                "consumer not polling\n".into(),
                                "text/plain",
                            ),
                            _ => ("404 Not Found", "try /metrics or /health\n".into(), "text/plain"),
                        };
                        let _ = write!(
                            conn,
                            "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Metrics connection failed.");
                    }
                }
            }
        })
}
