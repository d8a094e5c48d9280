//! Metrics: counters the consumer, the workers, the repartition stages and the sinks update, rendered as
//! Prometheus text (`http` serves them). Labels are closed sets (enums indexed into arrays) or
//! interned rule ids: counting an alert or a reject allocates nothing after a label's first use.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ahash::AHashMap;
use hdrhistogram::Histogram;

use crate::record::{Department, GapReason, Input, OffsetGap, RejectReason, Repair, Repairs};

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
    /// Per usage partition held: its event-time watermark (seconds since the epoch).
    pub watermarks: BTreeMap<i32, i64>,
    /// `edge` names refused by `state.max_edges_per_entity`.
    pub edges_refused: u64,
}

/// A per-rule series: name, help, type, and its value for one rule.
type PerRule = (
    &'static str,
    &'static str,
    &'static str,
    fn(&RuleView) -> u64,
);

/// Upper bounds (seconds) of the rule evaluation time histogram's buckets: from a comparison in
/// Rust (~1 µs with the call) to a runaway script stopped by the sandbox (~10 ms).
const EVAL_BUCKETS: [f64; 12] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2,
];

#[derive(Clone)]
pub struct RuleView {
    pub evaluations: u64,
    pub errors: u64,
    pub quarantined: bool,
    /// Times quarantined (each re-admission after a cool-down can be followed by another).
    pub quarantines: u64,
    pub latency: Histogram<u64>,
    /// `live` or `shadow` (the label `mode`).
    pub mode: &'static str,
}

/// (rule id hash, department) → (rule id, count).
type AlertCountMap = AHashMap<(u64, Department), (Arc<str>, u64)>;

/// Analysts' decisions read (`alert::feedback`): what became of them, and the applied ones by
/// (rule, disposition) — each rule's precision as the desk judges it.
#[derive(Default)]
pub struct FeedbackCounts {
    /// By outcome: `[applied, again, unknown_alert, malformed, not_here]`.
    pub outcomes: [AtomicU64; 5],
    by: Mutex<BTreeMap<(String, &'static str), u64>>,
}

impl FeedbackCounts {
    pub const OUTCOMES: [&'static str; 5] =
        ["applied", "again", "unknown_alert", "malformed", "not_here"];

    pub fn applied(&self, rule: &str, disposition: crate::alert::memory::Disposition) {
        self.outcomes[0].fetch_add(1, Ordering::Relaxed);
        *self
            .by
            .lock()
            .expect("metrics lock")
            .entry((rule.to_string(), disposition.as_str()))
            .or_default() += 1;
    }

    pub fn by_rule(&self) -> BTreeMap<(String, &'static str), u64> {
        self.by.lock().expect("metrics lock").clone()
    }
}

/// Alerts handed to the sinks, by (rule, department). Rule ids are interned on first use.
#[derive(Default)]
pub struct AlertCounts {
    by: Mutex<AlertCountMap>,
}

impl AlertCounts {
    pub fn count(&self, rule: &str, department: Department) {
        let key = (crate::alert::memory::key_hash(rule), department);
        let mut by = self.by.lock().expect("metrics lock");
        match by.get_mut(&key) {
            Some((_, n)) => *n += 1,
            None => {
                by.insert(key, (Arc::from(rule), 1));
            }
        }
    }

    pub fn total(&self) -> u64 {
        self.by
            .lock()
            .expect("metrics lock")
            .values()
            .map(|v| v.1)
            .sum()
    }

    pub fn by_department(&self) -> BTreeMap<Department, u64> {
        let mut out = BTreeMap::new();
        for ((_, d), (_, n)) in self.by.lock().expect("metrics lock").iter() {
            *out.entry(*d).or_default() += n;
        }
        out
    }

    /// (rule, department) → count, sorted.
    pub fn sorted(&self) -> BTreeMap<(Arc<str>, Department), u64> {
        self.by
            .lock()
            .expect("metrics lock")
            .iter()
            .map(|((_, d), (r, n))| ((r.clone(), *d), *n))
            .collect()
    }
}

/// How a partition's state started when it was assigned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RestoreOutcome {
    /// From its snapshot.
    Snapshot,
    /// From a snapshot older than the committed offset (another owner went on): re-read to catch up.
    StaleSnapshot,
    /// No snapshot and nothing committed: a partition new to the group.
    New,
    /// Snapshots are off.
    NoSnapshots,
    /// A snapshot ahead of the partition's log (another cluster, recreated topics): not used.
    ForeignSnapshot,
    /// No usable snapshot (`missing`, `io`, `corrupt`, `incompatible`): rebuilt from the input.
    Rebuilt(&'static str),
}

impl RestoreOutcome {
    pub fn label(self) -> String {
        match self {
            RestoreOutcome::Snapshot => "snapshot".into(),
            RestoreOutcome::StaleSnapshot => "stale_snapshot".into(),
            RestoreOutcome::New => "new".into(),
            RestoreOutcome::NoSnapshots => "no_snapshots".into(),
            RestoreOutcome::ForeignSnapshot => "foreign_snapshot".into(),
            RestoreOutcome::Rebuilt(why) => format!("rebuilt_{why}"),
        }
    }
}

/// Snapshot writes, restores and replays after a restore.
#[derive(Default)]
pub struct SnapshotMetrics {
    pub written: AtomicU64,
    /// Snapshots not written: alerts undelivered in time, or an I/O error.
    pub failed: AtomicU64,
    /// When writing started failing with an I/O error (ms since the epoch; 0: the last write
    /// succeeded). Commits wait meanwhile: `/health` says degraded.
    pub failing_since_ms: std::sync::atomic::AtomicI64,
    /// The last I/O error, for `/health` and the exit.
    pub last_error: Mutex<Option<String>>,
    pub bytes_written: AtomicU64,
    /// Partition checkpoints written whole (bases) and as changes since the last one (deltas).
    pub bases_written: AtomicU64,
    pub deltas_written: AtomicU64,
    /// Time to encode plus write the last snapshot (µs).
    pub last_write_us: AtomicU64,
    /// Partitions started, by how their state started.
    pub restores: Mutex<BTreeMap<RestoreOutcome, u64>>,
    /// Records re-read after a restore whose effect the snapshot already held (skipped).
    pub records_skipped: AtomicU64,
    /// Alerts and dead letters recomputed while re-reading already committed input (not sent again).
    pub outputs_suppressed: AtomicU64,
}

impl SnapshotMetrics {
    pub fn count_restore(&self, outcome: RestoreOutcome) {
        *self
            .restores
            .lock()
            .expect("metrics lock")
            .entry(outcome)
            .or_default() += 1;
    }
}

/// The webhook sink's POSTs.
#[derive(Default)]
pub struct WebhookMetrics {
    pub delivered: AtomicU64,
    /// Attempts that failed and were retried.
    pub retries: AtomicU64,
    /// Alerts refused for good (their offsets stay uncommitted).
    pub failed: AtomicU64,
}

/// The event-time alignment in the workers.
#[derive(Default)]
pub struct AlignMetrics {
    /// Times fetching of a partition was paused because too much of it waited in a worker.
    pub pauses: AtomicU64,
    /// Records read ahead and waiting in the workers' queues (bytes).
    pub queued_bytes: AtomicI64,
}

/// The repartition stages of one input (`crate::repartition`).
#[derive(Default)]
pub struct RepartitionCounts {
    /// Records written to the repartition topic.
    pub rekeyed: AtomicU64,
    /// Of those, usage records that name no account, keyed by their msisdn.
    pub by_msisdn: AtomicU64,
    /// Markers written (both stages).
    pub markers: AtomicU64,
    /// Records written to the by-account topic in merge order.
    pub sequenced: AtomicU64,
    /// Records read again after a stage restarted, already passed on (skipped).
    pub duplicates: AtomicU64,
    /// Records waiting in the sequencers' merges.
    pub held: AtomicI64,
    /// Offsets of the input topic gone from the broker before the first stage read them, and
    /// offsets of a repartition topic its sequencer never received.
    pub skipped: AtomicU64,
}

#[derive(Default)]
pub struct RepartitionMetrics {
    /// Per input repartitioned by account, and the calls repartitioned by number
    /// (`repartition::calls`, input "calls").
    inputs: [RepartitionCounts; 3],
    /// Lines in the line table (`repartition::lines`).
    pub lines: AtomicI64,
}

impl RepartitionMetrics {
    pub fn by(&self, input: Input) -> &RepartitionCounts {
        &self.inputs[input.index()]
    }
}

/// Offset gaps of one input partition and reason.
#[derive(Clone, Copy, Debug, Default)]
pub struct GapCount {
    pub episodes: u64,
    pub skipped: u64,
}

pub struct Metrics {
    /// Topic names, for labels: `[usage, events, calls]`.
    topics: [String; 3],
    pub records_in: [AtomicU64; 2],
    /// Records whose message key is not the one their partitioning needs (`Pipeline::miskeyed`).
    pub miskeyed: [AtomicU64; 2],
    pub rejected: [AtomicU64; RejectReason::ALL.len()],
    /// Optional fields dropped from records that were kept (`record::repair`).
    pub repaired: [AtomicU64; Repair::ALL.len()],
    pub dead_letters: AtomicU64,
    pub delivered: AtomicU64,
    pub delivery_failed: AtomicU64,
    pub kafka_errors: AtomicU64,
    /// Reloads refused before reaching the workers (invalid or unreadable library), and accepted.
    pub reloads_refused: AtomicU64,
    pub reloads_ok: AtomicU64,
    /// Unix milliseconds of the consumer's last poll.
    pub last_poll_ms: AtomicI64,
    pub alerts: AlertCounts,
    /// Alerts of shadow rules, by the department each would go to once promoted.
    pub shadow_alerts: AlertCounts,
    pub feedback: FeedbackCounts,
    /// Per rule id in the live and the candidate library: alerts by both, live only, shadow only.
    overlap: Mutex<BTreeMap<String, crate::alert::overlap::Overlap>>,
    /// (input, partition) → messages behind the partition's end offset.
    pub lag: Mutex<BTreeMap<(Input, i32), i64>>,
    pub workers: Mutex<Vec<WorkerView>>,
    pub snapshots: SnapshotMetrics,
    pub webhook: WebhookMetrics,
    pub align: AlignMetrics,
    pub repartition: RepartitionMetrics,
    /// Offsets skipped because their records were gone (`record::gap`), per input partition and
    /// reason. Rare: a lock is fine.
    pub gaps: Mutex<BTreeMap<(Input, i32, GapReason), GapCount>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(["usage", "events", "calls"])
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Metrics {
    /// Adds to the overlap of a rule's live and candidate alerts.
    pub fn overlap(&self, rule: &str, o: &crate::alert::overlap::Overlap) {
        self.overlap
            .lock()
            .expect("metrics lock")
            .entry(rule.to_string())
            .or_default()
            .add(o);
    }

    /// `topics`: the names of the topics read, `[usage, events, calls]`, for labels.
    pub fn new(topics: [&str; 3]) -> Self {
        Metrics {
            topics: topics.map(str::to_string),
            records_in: Default::default(),
            miskeyed: Default::default(),
            rejected: Default::default(),
            repaired: Default::default(),
            dead_letters: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            delivery_failed: AtomicU64::new(0),
            kafka_errors: AtomicU64::new(0),
            reloads_refused: AtomicU64::new(0),
            reloads_ok: AtomicU64::new(0),
            last_poll_ms: AtomicI64::new(now_ms()),
            alerts: AlertCounts::default(),
            shadow_alerts: AlertCounts::default(),
            feedback: FeedbackCounts::default(),
            overlap: Mutex::default(),
            lag: Mutex::default(),
            workers: Mutex::default(),
            snapshots: SnapshotMetrics::default(),
            webhook: WebhookMetrics::default(),
            align: AlignMetrics::default(),
            repartition: RepartitionMetrics::default(),
            gaps: Mutex::default(),
        }
    }

    /// Counts a gap; returns the partition's totals for this reason.
    pub fn count_gap(&self, gap: &OffsetGap) -> GapCount {
        let mut gaps = self.gaps.lock().expect("metrics lock");
        let c = gaps
            .entry((gap.input, gap.partition, gap.reason))
            .or_default();
        c.episodes += 1;
        c.skipped += gap.skipped();
        *c
    }

    /// Records skipped by offset gaps and gap episodes since start, all partitions.
    pub fn gaps_total(&self) -> GapCount {
        let gaps = self.gaps.lock().expect("metrics lock");
        gaps.values().fold(GapCount::default(), |a, c| GapCount {
            episodes: a.episodes + c.episodes,
            skipped: a.skipped + c.skipped,
        })
    }

    /// Why the daemon runs but its results are incomplete, if they are.
    pub fn degraded(&self) -> Option<String> {
        let mut why = Vec::new();
        let since = self.snapshots.failing_since_ms.load(Ordering::Relaxed);
        if since > 0 {
            why.push(format!(
                "snapshots failing for {} s, commits wait: {} (cdrguard_snapshots_failed_total)",
                (now_ms() - since) / 1000,
                self.snapshots
                    .last_error
                    .lock()
                    .expect("metrics lock")
                    .as_deref()
                    .unwrap_or("?")
            ));
        }
        let g = self.gaps_total();
        if g.episodes > 0 {
            why.push(format!(
                "{} records skipped in {} offset gap(s): their records were gone from the broker (cdrguard_records_skipped_total)",
                g.skipped, g.episodes
            ));
        }
        let miskeyed = self.miskeyed.each_ref().map(|c| c.load(Ordering::Relaxed));
        if miskeyed.iter().any(|&n| n > 0) {
            why.push(format!(
                "{} usage record(s) and {} account event(s) keyed other than by their account: an \
                 account split over partitions loses alerts (cdrguard_input_miskeyed_total; README \
                 \"Keying\")",
                miskeyed[0], miskeyed[1]
            ));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    pub fn miskeyed_total(&self) -> u64 {
        self.miskeyed
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    pub fn topic(&self, input: Input) -> &str {
        &self.topics[input.index()]
    }

    pub fn count_reject(&self, reason: RejectReason) {
        self.rejected[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_repairs(&self, repairs: Repairs) {
        for r in repairs.iter() {
            self.repaired[r as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn records_total(&self) -> u64 {
        self.records_in
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
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
        static LIBRDKAFKA: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let librdkafka = LIBRDKAFKA.get_or_init(|| crate::client::build_info().0);
        head(
            &mut s,
            "cdrguard_build_info",
            "The running build: version, git commit, librdkafka version.",
            "gauge",
        );
        let _ = writeln!(
            s,
            "cdrguard_build_info{{version=\"{}\",commit=\"{}\",librdkafka=\"{librdkafka}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            env!("CDRGUARD_GIT_COMMIT")
        );
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        // Per input: (name, help, labelled by topic rather than input, counters).
        for (name, help, by_topic, counters) in [
            ("cdrguard_records_in_total", "Records consumed, by input.", false, &self.records_in),
            (
                "cdrguard_input_miskeyed_total",
                "Records whose message key is not their account (usage without an account: its msisdn), by topic.",
                true,
                &self.miskeyed,
            ),
        ] {
            head(&mut s, name, help, "counter");
            for input in Input::ALL {
                let label = if by_topic {
                    format!("topic=\"{}\"", self.topic(*input))
                } else {
                    format!("input=\"{input}\"")
                };
                let _ = writeln!(s, "{name}{{{label}}} {}", load(&counters[input.index()]));
            }
        }
        head(
            &mut s,
            "cdrguard_records_rejected_total",
            "Records dead-lettered, by reason.",
            "counter",
        );
        for reason in RejectReason::ALL {
            let n = load(&self.rejected[*reason as usize]);
            if n > 0 {
                let _ = writeln!(
                    s,
                    "cdrguard_records_rejected_total{{reason=\"{reason}\"}} {n}"
                );
            }
        }
        head(
            &mut s,
            "cdrguard_fields_dropped_total",
            "Optional fields dropped from records that were kept (an IMSI or IMEI that is no identity, a position off the globe), by field.",
            "counter",
        );
        for field in Repair::ALL {
            let n = load(&self.repaired[*field as usize]);
            if n > 0 {
                let _ = writeln!(s, "cdrguard_fields_dropped_total{{field=\"{field}\"}} {n}");
            }
        }
        let snap = &self.snapshots;
        let w = &self.webhook;
        for (name, help, v) in [
            (
                "cdrguard_dead_letters_total",
                "Messages produced to the dead-letter topic.",
                &self.dead_letters,
            ),
            (
                "cdrguard_messages_delivered_total",
                "Alerts and dead letters acknowledged by the broker.",
                &self.delivered,
            ),
            (
                "cdrguard_messages_failed_total",
                "Messages that failed for good (their input offsets stay uncommitted).",
                &self.delivery_failed,
            ),
            (
                "cdrguard_kafka_errors_total",
                "Client errors reported by librdkafka (broker down, ...).",
                &self.kafka_errors,
            ),
            (
                "cdrguard_webhook_delivered_total",
                "Webhook POSTs answered 2xx.",
                &w.delivered,
            ),
            (
                "cdrguard_webhook_retries_total",
                "Webhook POSTs that failed and were retried.",
                &w.retries,
            ),
            (
                "cdrguard_webhook_failed_total",
                "Alerts a webhook refused for good (their input offsets stay uncommitted).",
                &w.failed,
            ),
            (
                "cdrguard_fetch_pauses_total",
                "Times fetching of an input partition paused because too much of it waited in a worker.",
                &self.align.pauses,
            ),
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
                "cdrguard_checkpoint_bases_total",
                "Partition checkpoints written whole (a base).",
                &snap.bases_written,
            ),
            (
                "cdrguard_checkpoint_deltas_total",
                "Partition checkpoints written as the changes since the previous durable one.",
                &snap.deltas_written,
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
            let _ = writeln!(s, "{name} {}", load(v));
        }
        head(
            &mut s,
            "cdrguard_queued_bytes",
            "Input read ahead and waiting in the workers' queues.",
            "gauge",
        );
        let _ = writeln!(
            s,
            "cdrguard_queued_bytes {}",
            self.align.queued_bytes.load(Ordering::Relaxed).max(0)
        );
        head(
            &mut s,
            "cdrguard_snapshot_last_write_seconds",
            "Encode and write time of the last snapshot.",
            "gauge",
        );
        let _ = writeln!(
            s,
            "cdrguard_snapshot_last_write_seconds {:.6}",
            load(&snap.last_write_us) as f64 / 1e6
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
                "cdrguard_partition_restores_total{{outcome=\"{}\"}} {n}",
                outcome.label()
            );
        }
        head(
            &mut s,
            "cdrguard_alerts_total",
            "Alerts produced, by rule and department.",
            "counter",
        );
        for ((rule, dept), n) in self.alerts.sorted() {
            let _ = writeln!(
                s,
                "cdrguard_alerts_total{{rule=\"{rule}\",department=\"{dept}\"}} {n}"
            );
        }
        head(
            &mut s,
            "cdrguard_shadow_alerts_total",
            "Alerts of shadow rules (sent to the shadow topic only), by rule and the department each would go to once promoted.",
            "counter",
        );
        for ((rule, dept), n) in self.shadow_alerts.sorted() {
            let _ = writeln!(
                s,
                "cdrguard_shadow_alerts_total{{rule=\"{rule}\",department=\"{dept}\"}} {n}"
            );
        }
        head(
            &mut s,
            "cdrguard_shadow_overlap_total",
            "Per rule id in both the live and the candidate library (rules.shadow_dir): alerts raised by both, by the live rule only, by the candidate only.",
            "counter",
        );
        for (rule, o) in self.overlap.lock().expect("metrics lock").iter() {
            for (side, n) in [
                ("both", o.both),
                ("live_only", o.live_only),
                ("shadow_only", o.shadow_only),
            ] {
                let _ = writeln!(
                    s,
                    "cdrguard_shadow_overlap_total{{rule=\"{rule}\",side=\"{side}\"}} {n}"
                );
            }
        }
        head(
            &mut s,
            "cdrguard_alert_dispositions_total",
            "Analysts' decisions applied, by rule and disposition (confirmed, false_positive, snooze).",
            "counter",
        );
        for ((rule, d), n) in self.feedback.by_rule() {
            let _ = writeln!(
                s,
                "cdrguard_alert_dispositions_total{{rule=\"{rule}\",disposition=\"{d}\"}} {n}"
            );
        }
        head(
            &mut s,
            "cdrguard_feedback_total",
            "Analysts' decisions read, by outcome: applied, again (re-read, already applied), unknown_alert and malformed (both dead-lettered), not_here (no partition of this instance knows the alert; another instance may).",
            "counter",
        );
        for (o, n) in FeedbackCounts::OUTCOMES.iter().zip(&self.feedback.outcomes) {
            let _ = writeln!(
                s,
                "cdrguard_feedback_total{{outcome=\"{o}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        head(
            &mut s,
            "cdrguard_consumer_lag",
            "Messages behind the partition's end offset.",
            "gauge",
        );
        for ((input, p), lag) in self.lag.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                s,
                "cdrguard_consumer_lag{{topic=\"{}\",partition=\"{p}\"}} {lag}",
                self.topic(*input)
            );
        }
        head(
            &mut s,
            "cdrguard_records_skipped_total",
            "Offsets jumped because their records were gone from the broker before they were read (reason deleted: retention, deleted records, a size limit; rewound: the log restarted lower, its count unknown and 0 here).",
            "counter",
        );
        let gaps = self.gaps.lock().expect("metrics lock").clone();
        for ((input, p, reason), c) in &gaps {
            let _ = writeln!(
                s,
                "cdrguard_records_skipped_total{{topic=\"{}\",partition=\"{p}\",reason=\"{}\"}} {}",
                self.topic(*input),
                reason.as_str(),
                c.skipped
            );
        }
        head(
            &mut s,
            "cdrguard_offset_gaps_total",
            "Offset gaps found (episodes), by input partition and reason.",
            "counter",
        );
        for ((input, p, reason), c) in &gaps {
            let _ = writeln!(
                s,
                "cdrguard_offset_gaps_total{{topic=\"{}\",partition=\"{p}\",reason=\"{}\"}} {}",
                self.topic(*input),
                reason.as_str(),
                c.episodes
            );
        }
        self.render_repartition(&mut s, &head);
        self.render_workers(&mut s, head);
        s
    }

    /// The repartition stages' series, for the inputs that have them.
    fn render_repartition(&self, s: &mut String, head: &impl Fn(&mut String, &str, &str, &str)) {
        let used: Vec<Input> = Input::LANES
            .into_iter()
            .filter(|&i| {
                let c = self.repartition.by(i);
                c.rekeyed.load(Ordering::Relaxed) + c.markers.load(Ordering::Relaxed) > 0
            })
            .collect();
        if used.is_empty() {
            return;
        }
        type Get = fn(&RepartitionCounts) -> i64;
        let series: [(&str, &str, &str, Get); 7] = [
            ("cdrguard_repartition_records_skipped_total", "Offsets a repartition stage never received: input records gone from the broker before the first stage read them, or records of a repartition topic the sequencer never got (a broker fault).", "counter", |c| c.skipped.load(Ordering::Relaxed) as i64),
            ("cdrguard_repartition_records_total", "Records written to the repartition topic, by input.", "counter", |c| c.rekeyed.load(Ordering::Relaxed) as i64),
            ("cdrguard_repartition_by_msisdn_total", "Usage records that name no account, repartitioned by their msisdn.", "counter", |c| c.by_msisdn.load(Ordering::Relaxed) as i64),
            ("cdrguard_repartition_markers_total", "Markers written by the repartition stages.", "counter", |c| c.markers.load(Ordering::Relaxed) as i64),
            ("cdrguard_repartition_sequenced_total", "Records written to the by-account topic in event-time order.", "counter", |c| c.sequenced.load(Ordering::Relaxed) as i64),
            ("cdrguard_repartition_duplicates_total", "Records read again after a stage restart and skipped.", "counter", |c| c.duplicates.load(Ordering::Relaxed) as i64),
            ("cdrguard_repartition_held", "Records waiting in the sequencers' merges for a source partition to show its next key.", "gauge", |c| c.held.load(Ordering::Relaxed)),
        ];
        head(
            s,
            "cdrguard_repartition_lines",
            "Lines in the line table the repartition stage looks usage records that name no account up in.",
            "gauge",
        );
        let _ = writeln!(
            s,
            "cdrguard_repartition_lines {}",
            self.repartition.lines.load(Ordering::Relaxed)
        );
        for (name, help, kind, get) in series {
            head(s, name, help, kind);
            for &input in &used {
                let _ = writeln!(
                    s,
                    "{name}{{input=\"{input}\"}} {}",
                    get(self.repartition.by(input))
                );
            }
        }
    }

    fn render_workers(&self, s: &mut String, head: impl Fn(&mut String, &str, &str, &str)) {
        let workers = self.workers.lock().expect("metrics lock").clone();
        let (mut entities, mut bytes, mut timers, mut edges_refused) = (0, 0, 0, 0);
        let mut rules: BTreeMap<String, RuleView> = BTreeMap::new();
        let mut version = String::new();
        for w in &workers {
            entities += w.entities;
            bytes += w.state_bytes;
            timers += w.timers_pending;
            edges_refused += w.edges_refused;
            if !w.ruleset_version.is_empty() {
                version = w.ruleset_version.clone();
            }
            for (id, r) in &w.rules {
                match rules.get_mut(id) {
                    Some(acc) => {
                        acc.evaluations += r.evaluations;
                        acc.errors += r.errors;
                        acc.quarantined |= r.quarantined;
                        acc.quarantines += r.quarantines;
                        let _ = acc.latency.add(&r.latency);
                    }
                    None => {
                        rules.insert(id.clone(), r.clone());
                    }
                }
            }
        }
        head(
            s,
            "cdrguard_rules_reloads_total",
            "Rule library reloads, by result (refused: unreadable or invalid, the previous rules stayed).",
            "counter",
        );
        let _ = writeln!(
            s,
            "cdrguard_rules_reloads_total{{result=\"ok\"}} {}\ncdrguard_rules_reloads_total{{result=\"failed\"}} {}",
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_refused.load(Ordering::Relaxed)
        );
        head(s, "cdrguard_ruleset_info", "The active rule set.", "gauge");
        let _ = writeln!(s, "cdrguard_ruleset_info{{version=\"{version}\"}} 1");
        // One series per rule for each of these.
        let per_rule: [PerRule; 4] = [
            (
                "cdrguard_rule_evaluations_total",
                "Rule evaluations, by rule.",
                "counter",
                |r| r.evaluations,
            ),
            (
                "cdrguard_rule_errors_total",
                "Rule failures (sandbox limits, runtime errors, bad verdicts), by rule.",
                "counter",
                |r| r.errors,
            ),
            (
                "cdrguard_rule_quarantined",
                "1 while a rule is quarantined after repeated failures.",
                "gauge",
                |r| r.quarantined as u64,
            ),
            (
                "cdrguard_rule_quarantines_total",
                "Times a rule was quarantined (re-admitted after rules.quarantine_cooldown of event time).",
                "counter",
                |r| r.quarantines,
            ),
        ];
        // The mode as an info series: a promotion changes it, and the counters above keep theirs.
        head(
            s,
            "cdrguard_rule_mode",
            "1 for each rule's mode in the active set: live, or shadow (its alerts reach no department).",
            "gauge",
        );
        // A candidate library's rule is keyed `id␟candidate` beside the live one of its id.
        let label = |key: &str| key.split('\u{1f}').next().unwrap_or(key).to_string();
        for (id, r) in &rules {
            let _ = writeln!(
                s,
                "cdrguard_rule_mode{{rule=\"{}\",mode=\"{}\"}} 1",
                label(id),
                r.mode
            );
        }
        for (name, help, kind, value) in per_rule {
            head(s, name, help, kind);
            for (id, r) in &rules {
                let _ = writeln!(
                    s,
                    "{name}{{rule=\"{}\",mode=\"{}\"}} {}",
                    label(id),
                    r.mode,
                    value(r)
                );
            }
        }
        // A histogram, not a summary: buckets add up across instances and over time.
        head(
            s,
            "cdrguard_rule_eval_seconds",
            "Rule evaluation time (sandboxed call), by rule.",
            "histogram",
        );
        for (key, r) in &rules {
            let (id, mode) = (label(key), r.mode);
            for le in EVAL_BUCKETS {
                let _ = writeln!(
                    s,
                    "cdrguard_rule_eval_seconds_bucket{{rule=\"{id}\",mode=\"{mode}\",le=\"{le}\"}} {}",
                    r.latency.count_between(0, (le * 1e9) as u64)
                );
            }
            let _ = writeln!(
                s,
                "cdrguard_rule_eval_seconds_bucket{{rule=\"{id}\",mode=\"{mode}\",le=\"+Inf\"}} {}\ncdrguard_rule_eval_seconds_sum{{rule=\"{id}\",mode=\"{mode}\"}} {:.9}\ncdrguard_rule_eval_seconds_count{{rule=\"{id}\",mode=\"{mode}\"}} {}",
                r.latency.len(),
                r.latency.mean() * r.latency.len() as f64 / 1e9,
                r.latency.len()
            );
        }
        let watermarks: BTreeMap<i32, i64> = workers
            .iter()
            .flat_map(|w| w.watermarks.iter().map(|(&p, &t)| (p, t)))
            .collect();
        let now = now_ms() / 1000;
        head(
            s,
            "cdrguard_event_time_watermark_seconds",
            "Event-time watermark of each usage partition held (Unix seconds): windows and timers are complete up to it.",
            "gauge",
        );
        for (p, t) in &watermarks {
            let _ = writeln!(
                s,
                "cdrguard_event_time_watermark_seconds{{partition=\"{p}\"}} {t}"
            );
        }
        head(
            s,
            "cdrguard_event_time_behind_seconds",
            "Freshness: the wall clock minus each partition's watermark (includes state.allowed_lateness).",
            "gauge",
        );
        for (p, t) in &watermarks {
            let _ = writeln!(
                s,
                "cdrguard_event_time_behind_seconds{{partition=\"{p}\"}} {}",
                now - t
            );
        }
        for (name, help, v) in [
            (
                "cdrguard_state_entities",
                "Entities in window state (subscribers, accounts, calling numbers, devices).",
                entities,
            ),
            (
                "cdrguard_state_bytes",
                "Estimated bytes of window state and alert memory.",
                bytes,
            ),
            (
                "cdrguard_timers_pending",
                "Event-time timers waiting for the watermark.",
                timers,
            ),
        ] {
            head(s, name, help, "gauge");
            let _ = writeln!(s, "{name} {v}");
        }
        head(
            s,
            "cdrguard_rule_edges_refused_total",
            "edge() condition names refused by state.max_edges_per_entity (a rule error each).",
            "counter",
        );
        let _ = writeln!(s, "cdrguard_rule_edges_refused_total {edges_refused}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_build_info_watermarks_and_an_aggregatable_histogram() {
        let m = Metrics::new(["u", "e", "c"]);
        let mut latency = Histogram::<u64>::new(3).unwrap();
        for ns in [800, 3_000, 3_000, 40_000, 20_000_000] {
            latency.record(ns).unwrap();
        }
        let rule = RuleView {
            evaluations: 5,
            errors: 0,
            quarantined: false,
            quarantines: 0,
            latency,
            mode: "live",
        };
        let mut view = WorkerView::default();
        view.rules.insert("r".into(), rule);
        view.watermarks.insert(3, 1_700_000_000);
        m.workers.lock().unwrap().push(view);
        let text = m.render();
        assert!(text.contains("cdrguard_build_info{version=\""), "{text}");
        assert!(text.contains("# TYPE cdrguard_rule_eval_seconds histogram"));
        // Cumulative buckets: 1 µs holds one, 5 µs three, 50 µs four, +Inf all five.
        for line in [
            "cdrguard_rule_eval_seconds_bucket{rule=\"r\",mode=\"live\",le=\"0.000001\"} 1",
            "cdrguard_rule_eval_seconds_bucket{rule=\"r\",mode=\"live\",le=\"0.000005\"} 3",
            "cdrguard_rule_eval_seconds_bucket{rule=\"r\",mode=\"live\",le=\"0.00005\"} 4",
            "cdrguard_rule_eval_seconds_bucket{rule=\"r\",mode=\"live\",le=\"0.01\"} 4",
            "cdrguard_rule_eval_seconds_bucket{rule=\"r\",mode=\"live\",le=\"+Inf\"} 5",
            "cdrguard_rule_eval_seconds_count{rule=\"r\",mode=\"live\"} 5",
            "cdrguard_event_time_watermark_seconds{partition=\"3\"} 1700000000",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(text.contains("cdrguard_event_time_behind_seconds{partition=\"3\"} "));
    }
}
