//! The command line's arguments (clap): one struct per command, and the pieces several commands
//! share flattened in (`InputArgs`, `TargetArgs`, `ReportArgs`).

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Replay NDJSON history through the pipeline (decode → state → rules → alerts) and summarise.
    Replay(ReplayArgs),
    /// Replay history through two rule libraries and list, per rule, the alerts only one raises
    /// and those whose severity or departments change.
    Diff(DiffArgs),
    /// Replay, then print one entity's window features and account view.
    Inspect(InspectArgs),
    /// Write realistic generated traffic (usage records and account events) as NDJSON.
    Gen(GenArgs),
    /// Compile and validate the rule library; print every problem as file:line:col. Exit 1 on errors.
    Check(CheckArgs),
    /// Run every rule's test cases and report pass/fail with a diff. Exit 1 on failure.
    Test(TestArgs),
    /// The daemon: consume usage and account events from Kafka, produce alerts to department topics.
    /// Without `kafka.brokers` it starts an embedded broker with demo traffic.
    Run(RunArgs),
    /// Read or edit the state snapshots (`durability.dir`) of a stopped daemon.
    State(StateArgs),
}

#[derive(Args, Debug)]
pub struct StateArgs {
    #[command(subcommand)]
    pub command: StateCommand,
}

#[derive(Subcommand, Debug)]
pub enum StateCommand {
    /// One entity's window features and account view from the snapshot(s) holding it, with the
    /// snapshot's header. Exit 1 if no snapshot holds it.
    Inspect(StateInspectArgs),
    /// One entity's raw state as JSON (one document per snapshot holding it), or `--all`: every
    /// snapshot's header.
    Export(StateExportArgs),
    /// Remove a subscriber or an account from the snapshot(s) holding it. Refused while a daemon
    /// holds the directory; exit 1 if not found.
    Clear(StateClearArgs),
}

#[derive(Args, Debug)]
pub struct StateInspectArgs {
    /// The daemon's state directory (`durability.dir`).
    #[arg(long)]
    pub dir: PathBuf,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub report: ReportArgs,
}

#[derive(Args, Debug)]
pub struct StateExportArgs {
    /// The daemon's state directory (`durability.dir`).
    #[arg(long)]
    pub dir: PathBuf,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Every snapshot's header (file, kind, offsets, entity counts, size, times) instead.
    #[arg(long, conflicts_with_all = ["msisdn", "account", "calling_number", "imei"])]
    pub all: bool,
}

#[derive(Args, Debug)]
pub struct StateClearArgs {
    /// The daemon's state directory (`durability.dir`); the daemon must be stopped.
    #[arg(long)]
    pub dir: PathBuf,
    /// A subscriber (E.164 digits): its windows go; its account keeps its ledger.
    #[arg(long, required_unless_present = "account", conflicts_with = "account")]
    pub msisdn: Option<String>,
    /// An account id: its ledger and timers go; its lines keep their windows.
    #[arg(long)]
    pub account: Option<String>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Configuration file (TOML); see the README for every field.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Rule library folder (default: `rules.dir` from the config, else `rules/`).
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Pre-flight, then exit (0 ready, 1 not): the configuration, the rule library, reference
    /// files, the brokers (with TLS/SASL), the topics and their partition counts, the state
    /// directory, the metrics address — each problem named.
    #[arg(long)]
    pub check: bool,
    /// Embedded mode without the demo traffic generator (an empty broker to produce to).
    #[arg(long)]
    pub no_demo: bool,
    /// Bootstrap servers, overriding `kafka.brokers`.
    #[arg(long, env = "CDRGUARD_BROKERS")]
    pub brokers: Option<String>,
    /// Consumer group, overriding `kafka.group_id`.
    #[arg(long)]
    pub group: Option<String>,
    /// `/metrics` and `/health` address, overriding `daemon.metrics_address` (empty: none).
    #[arg(long)]
    pub metrics_address: Option<String>,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Rule library folder (default: `rules.dir` from the config, else `rules/`).
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Configuration file (sandbox limits, state windows).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct TestArgs {
    /// Rule library folder (default: `rules.dir` from the config, else `rules/`).
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Folder of cases by rule id: `<dir>/<rule_id>/<case>/`. Cases beside a rule
    /// (`<rule_id>.cases/<case>/`) are found too.
    #[arg(long, default_value = "fixtures/rules")]
    pub cases: PathBuf,
    /// Configuration file, to find `rules.dir`.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct InputArgs {
    /// Usage records, NDJSON (`-` for stdin).
    #[arg(long)]
    pub usage: PathBuf,
    /// Account events, NDJSON; merged with usage by event time.
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// Configuration file (TOML); defaults apply without one.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Alerts output, NDJSON (default stdout).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Rejected lines with reasons (default `<out>.rejected.ndjson`, or `<usage>.rejected.ndjson`).
    #[arg(long)]
    pub dead_letter: Option<PathBuf>,
    /// Alerts of shadow rules (`RULE.mode: "shadow"`; default `<out>.shadow.ndjson`, or
    /// `<usage>.shadow.ndjson`), never in the alerts output.
    #[arg(long)]
    pub shadow_out: Option<PathBuf>,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
    /// Write the back-test as one self-contained HTML page: alerts over time by rule and department,
    /// severities, top entities, rule timings, rejects, input volume (and the score with --labels).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Score the alerts against confirmed cases: the JSON `gen --labels` writes, or CSV
    /// `rule,entity_type,entity_key` (header optional). Precision and recall per rule in the summary.
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// Analysts' decisions (NDJSON, docs/schema/feedback.schema.json), each applied right after
    /// the alert it names is raised: snoozes hold back what follows, dispositions are counted per
    /// rule; decisions naming no alert of the replay are dead-lettered.
    #[arg(long, value_name = "FILE", conflicts_with = "threads")]
    pub feedback: Option<PathBuf>,
    /// A candidate library run in shadow beside the rules (default `rules.shadow_dir` of the
    /// config): its alerts to the shadow file, and per rule the overlap with the live rule of the
    /// same id in the summary.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["threads", "no_rules"])]
    pub shadow_rules: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Rule library folder (default: `rules.dir` from the config, else `rules/`).
    #[arg(long, conflicts_with = "no_rules")]
    pub rules: Option<PathBuf>,
    /// Replay without rules (state and dead letters only).
    #[arg(long)]
    pub no_rules: bool,
    /// Reload the rules when their files change or on SIGHUP, e.g. while replaying from stdin.
    #[arg(long, conflicts_with = "threads")]
    pub watch_rules: bool,
    /// Split the input by account over this many worker threads (as the daemon splits partitions),
    /// plus a reader and a collector; the alerts are those of one thread.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: Option<u16>,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// The rule library as it is (A).
    #[arg(long)]
    pub rules: PathBuf,
    /// The library to compare it with (B), e.g. a copy with a threshold changed.
    #[arg(long)]
    pub against: PathBuf,
    /// Examples listed per rule and kind of difference.
    #[arg(long, default_value_t = 5)]
    pub examples: usize,
    /// Print the comparison as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub report: ReportArgs,
    /// Write rejected lines here (default: only count them; `replay` reports them in full).
    #[arg(long)]
    pub dead_letter: Option<PathBuf>,
    /// Analysts' decisions (as `replay --feedback`): run the rules too, and show the entity's
    /// snoozes and last decisions.
    #[arg(long, value_name = "FILE")]
    pub feedback: Option<PathBuf>,
    /// Rule library for --feedback (default: `rules.dir` from the config, else `rules/`).
    #[arg(long, requires = "feedback")]
    pub rules: Option<PathBuf>,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("output").required(true).multiple(true).args(["usage", "brokers"])))]
pub struct GenArgs {
    /// Usage records output file.
    #[arg(long, requires = "events")]
    pub usage: Option<PathBuf>,
    /// Account events output file.
    #[arg(long, requires = "usage")]
    pub events: Option<PathBuf>,
    /// Produce to Kafka instead (topics and options from `--config`, keyed by account id, else
    /// msisdn), in event-time order.
    #[arg(long, conflicts_with_all = ["usage", "events"])]
    pub brokers: Option<String>,
    /// Records per second when producing to Kafka (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub rate: u32,
    /// Configuration file (Kafka topics) for `--brokers`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Inserted into every generated id, so several runs can share one stream.
    #[arg(long, default_value = "")]
    pub tag: String,
    #[arg(long, default_value_t = 10_000)]
    pub subscribers: u32,
    #[arg(long, default_value_t = 100_000)]
    pub records: u64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// First instant of the traffic (RFC 3339 with offset).
    #[arg(long, default_value = "2026-11-01T00:00:00+01:00")]
    pub start: String,
    #[arg(long, default_value_t = 1)]
    pub days: u32,
    #[arg(long, default_value = "33")]
    pub home_cc: String,
    /// Inject fraud/arrears stories: `RULE=N` (repeatable), `RULE` for one, `all` or `all=N` for every
    /// rule of the shipped library; counts for one rule add up. Needs `--days 4` or more.
    #[arg(long = "inject", value_name = "RULE=N")]
    pub inject: Vec<String>,
    /// Write the alerts the stories must raise (rule, entity, severity, story) as JSON.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Write roaming records as TAP files deliver them: priced in SDR (XDR, 1 XDR = 1.20 of the
    /// home currency) and one in three 24–34 h late. Read them with `input.exchange_rates`
    /// holding `XDR,1.20` and `state.roaming_allowed_lateness = "36h"` (and `dedup_horizon`).
    #[arg(long)]
    pub tap: bool,
}

/// The entity a report is about: exactly one of these.
#[derive(Args, Debug)]
#[group(multiple = false)]
pub struct TargetArgs {
    /// A subscriber (E.164 digits).
    #[arg(long)]
    pub msisdn: Option<String>,
    /// An account id.
    #[arg(long)]
    pub account: Option<String>,
    /// A calling number tracked from MT calls (in the partition of the number, beside its calls).
    #[arg(long)]
    pub calling_number: Option<String>,
    /// A device (needs state.track_imei).
    #[arg(long)]
    pub imei: Option<String>,
}

/// How a report is shown (`inspect`, `state inspect`).
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Windows end at this RFC 3339 instant. Default: where the input (or the snapshot) ends.
    #[arg(long)]
    pub at: Option<String>,
    /// Windows to show (repeatable), e.g. `--window 1h --window 24h`.
    #[arg(long = "window")]
    pub windows: Vec<String>,
    /// Record-class filters to show (repeatable), e.g. `voice.mo.international`.
    #[arg(long = "filter")]
    pub filters: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}
