//! Command line: parse, dispatch, and map outcomes to exit codes. Library code does the work.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::classify::ClassFilter;
use crate::modes::inspect::{self, Target};
use crate::modes::replay::{self, ReplayOptions};
use crate::record::{EventTime, Number};

#[derive(Parser, Debug)]
#[command(
    name = "cdrguard",
    version,
    about = "Real-time telecom fraud and arrears detection over CDR streams"
)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info`, `cdrguard=debug`. Env: CDRGUARD_LOG.
    #[arg(long, global = true, env = "CDRGUARD_LOG", default_value = "info")]
    pub log: String,
    /// Log format.
    #[arg(long, global = true, value_parser = ["text", "json"], default_value = "text")]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Replay NDJSON history through the pipeline (decode → state → rules → alerts) and summarise.
    Replay(ReplayArgs),
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
#[command(group(clap::ArgGroup::new("target").required(true).args(["msisdn", "account", "calling_number", "imei"])))]
pub struct StateInspectArgs {
    /// The daemon's state directory (`durability.dir`).
    #[arg(long)]
    pub dir: PathBuf,
    /// A subscriber (E.164 digits).
    #[arg(long)]
    pub msisdn: Option<String>,
    /// An account id.
    #[arg(long)]
    pub account: Option<String>,
    /// A calling number tracked from MT calls (in `callers.snap`).
    #[arg(long)]
    pub calling_number: Option<String>,
    /// A device (needs state.track_imei).
    #[arg(long)]
    pub imei: Option<String>,
    /// Windows end at this RFC 3339 instant. Default: the snapshot's newest event time.
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

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["msisdn", "account", "calling_number", "imei", "all"])))]
pub struct StateExportArgs {
    /// The daemon's state directory (`durability.dir`).
    #[arg(long)]
    pub dir: PathBuf,
    /// A subscriber (E.164 digits).
    #[arg(long)]
    pub msisdn: Option<String>,
    /// An account id.
    #[arg(long)]
    pub account: Option<String>,
    /// A calling number tracked from MT calls (in `callers.snap`).
    #[arg(long)]
    pub calling_number: Option<String>,
    /// A device (needs state.track_imei).
    #[arg(long)]
    pub imei: Option<String>,
    /// Every snapshot's header (file, kind, offsets, entity counts, size, times) instead.
    #[arg(long)]
    pub all: bool,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["msisdn", "account"])))]
pub struct StateClearArgs {
    /// The daemon's state directory (`durability.dir`); the daemon must be stopped.
    #[arg(long)]
    pub dir: PathBuf,
    /// A subscriber (E.164 digits): its windows go; its account keeps its ledger.
    #[arg(long)]
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
    /// Validate the configuration and the rule library, then exit (0 valid, 1 not).
    #[arg(long)]
    pub check: bool,
    /// Embedded mode without the demo traffic generator (an empty broker to produce to).
    #[arg(long)]
    pub no_demo: bool,
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
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
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
    #[arg(long)]
    pub watch_rules: bool,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["msisdn", "account", "calling_number", "imei"])))]
pub struct InspectArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// A subscriber (E.164 digits).
    #[arg(long)]
    pub msisdn: Option<String>,
    /// An account id.
    #[arg(long)]
    pub account: Option<String>,
    /// A calling number tracked from MT calls.
    #[arg(long)]
    pub calling_number: Option<String>,
    /// A device (needs state.track_imei).
    #[arg(long)]
    pub imei: Option<String>,
    /// Features as of this RFC 3339 instant (records after it are not applied). Default: end of input.
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
    /// Write rejected lines here (default: only count them; `replay` reports them in full).
    #[arg(long)]
    pub dead_letter: Option<PathBuf>,
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
}

/// `rule=3`, `rule`, `all=2` → (rule, count) pairs.
fn parse_inject(specs: &[String]) -> anyhow::Result<Vec<(String, u32)>> {
    let mut out: Vec<(String, u32)> = Vec::new();
    for spec in specs {
        let (rule, n) = match spec.split_once('=') {
            Some((r, n)) => (
                r,
                n.parse::<u32>()
                    .map_err(|_| anyhow::anyhow!("--inject {spec:?}: count must be a number"))?,
            ),
            None => (spec.as_str(), 1),
        };
        if rule == "all" {
            out.extend(
                crate::demo::gen::stories::STORY_RULES
                    .iter()
                    .map(|r| (r.to_string(), n)),
            );
        } else {
            out.push((rule.to_string(), n));
        }
    }
    Ok(out)
}

pub fn init_tracing(cli: &Cli) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .with_context(|| format!("--log {:?}", cli.log))?;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if cli.log_format == "json" {
        b.json().init();
    } else {
        b.init();
    }
    Ok(())
}

/// Runs a command; the result is the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Replay(a) => replay_cmd(a),
        Command::Inspect(a) => inspect_cmd(a),
        Command::Gen(a) => gen_cmd(a),
        Command::Check(a) => check_cmd(a),
        Command::Test(a) => test_cmd(a),
        Command::Run(a) => run_cmd(a),
        Command::State(a) => state_cmd(a),
    }
}

fn run_cmd(a: RunArgs) -> anyhow::Result<i32> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let (mut cfg, base) = crate::config::Config::load(a.config.as_deref())?;
    let dir = rules_dir(a.rules, &cfg, &base);
    if a.check {
        let sources = crate::rules::RuleSources::read(&dir)?;
        return match crate::daemon::validate_rules(&cfg, &sources) {
            Ok(set) => {
                eprintln!(
                    "configuration OK; {}: {} rules OK (rule set {})",
                    dir.display(),
                    set.rules.len(),
                    sources.version
                );
                Ok(0)
            }
            Err(e) => {
                eprintln!("{e:#}");
                Ok(1)
            }
        };
    }
    let control = crate::daemon::Control::default();
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, control.stop.clone())?;
    }
    let stop_demo = Arc::new(AtomicBool::new(false));
    let mut embedded = None;
    let mut helpers = Vec::new();
    let mut state_dir =
        (!cfg.durability.dir.is_empty()).then(|| PathBuf::from(&cfg.durability.dir));
    let mut demo_state = None;
    let brokers = match cfg.kafka.brokers.clone() {
        Some(b) => b,
        None => {
            if state_dir.is_some() {
                // The embedded broker's log lives in memory: a snapshot from an earlier run would
                // describe offsets this broker never had.
                let t = std::env::temp_dir()
                    .join(format!("cdrguard-demo-state-{}", std::process::id()));
                eprintln!(
                    "State snapshots (embedded broker: temporary) in {}",
                    t.display()
                );
                state_dir = Some(t.clone());
                demo_state = Some(t);
            }
            let demo = cfg.demo.enabled && !a.no_demo;
            if demo {
                // Demo rounds run in simulated time, ahead of the wall clock after the first.
                cfg.state.max_future_skew = crate::config::Span(3650 * 86_400);
            }
            let e = crate::demo::embedded::start(&cfg)?;
            let b = e.bootstrap.clone();
            eprintln!(
                "Embedded Kafka broker (librdkafka mock cluster) at {b}\n  produce usage records to `{}` and account events to `{}` (key: account id, else msisdn)\n  alerts on `{}`, `{}`, `{}`, `{}`; dead letters on `{}`\n  e.g. kcat -b {b} -C -t {}",
                cfg.kafka.usage_topic,
                cfg.kafka.events_topic,
                cfg.kafka.alert_topics.fraud,
                cfg.kafka.alert_topics.collections,
                cfg.kafka.alert_topics.key_accounts,
                cfg.kafka.alert_topics.care,
                cfg.kafka.dead_letter_topic,
                cfg.kafka.alert_topics.fraud,
            );
            if cfg.demo.print_alerts {
                helpers.push(crate::demo::embedded::print_alerts(
                    b.clone(),
                    cfg.clone(),
                    stop_demo.clone(),
                )?);
            }
            if demo {
                helpers.push(crate::demo::embedded::demo_traffic(
                    b.clone(),
                    cfg.clone(),
                    stop_demo.clone(),
                )?);
            }
            embedded = Some(e);
            b
        }
    };
    let opts = crate::daemon::RunOptions {
        rules_dir: dir,
        watch_rules: true,
        sighup: true,
        status: true,
        control,
        state_dir,
    };
    let result = crate::daemon::run(cfg, &base, &brokers, opts);
    stop_demo.store(true, Ordering::Relaxed);
    for h in helpers {
        let _ = h.join();
    }
    drop(embedded);
    if let Some(t) = demo_state {
        let _ = std::fs::remove_dir_all(t);
    }
    result?;
    Ok(0)
}

/// The rule library folder: `--rules`, else `rules.dir` of the config, else `rules/`.
fn rules_dir(
    flag: Option<PathBuf>,
    cfg: &crate::config::Config,
    base: &std::path::Path,
) -> PathBuf {
    flag.or_else(|| cfg.rules.dir.as_ref().map(|d| base.join(d)))
        .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_RULES_DIR))
}

fn check_cmd(a: CheckArgs) -> anyhow::Result<i32> {
    use crate::rules::{RuleSet, RuleSources, Shared};
    let (cfg, base) = crate::config::Config::load(a.config.as_deref())?;
    let dir = rules_dir(a.rules, &cfg, &base);
    let sources = RuleSources::read(&dir)?;
    let store = std::rc::Rc::new(std::cell::RefCell::new(crate::state::WindowStore::new(
        cfg.state.clone(),
    )));
    let shared = Shared::new(store, Default::default());
    let (errors, warnings, rules) = match RuleSet::build(&sources, &cfg.rules.sandbox, &shared) {
        Ok(set) => (vec![], set.warnings.clone(), set.rules.len()),
        Err(e) => (e.errors, e.warnings, 0),
    };
    for p in &errors {
        println!("{}", p.with_level("error"));
    }
    for p in &warnings {
        println!("{}", p.with_level("warning"));
    }
    if errors.is_empty() {
        eprintln!(
            "{}: {rules} rules OK (rule set {}), {} warning(s)",
            dir.display(),
            sources.version,
            warnings.len()
        );
        Ok(0)
    } else {
        eprintln!(
            "{}: {} error(s), {} warning(s)",
            dir.display(),
            errors.len(),
            warnings.len()
        );
        Ok(1)
    }
}

fn test_cmd(a: TestArgs) -> anyhow::Result<i32> {
    let (cfg, base) = crate::config::Config::load(a.config.as_deref())?;
    let dir = rules_dir(a.rules, &cfg, &base);
    let report = crate::modes::ruletest::run(&dir, &a.cases)?;
    print!("{}", report.render());
    Ok(if report.failed() > 0 { 1 } else { 0 })
}

fn replay_cmd(a: ReplayArgs) -> anyhow::Result<i32> {
    let opts = ReplayOptions {
        usage: a.input.usage,
        events: a.input.events,
        out: a.out,
        dead_letter: a.dead_letter,
        config: a.input.config,
        cutoff: None,
        progress: !a.quiet,
        keep_fired: false,
        no_dead_letter: false,
        rules: match (a.rules, a.no_rules) {
            (_, true) => replay::RulesChoice::Off,
            (Some(d), _) => replay::RulesChoice::Dir(d),
            (None, false) => replay::RulesChoice::Default,
        },
        watch_rules: a.watch_rules,
    };
    let (report, _) = replay::run(&opts)?;
    eprint!("{}", report.render());
    if let Some(p) = a.summary_json {
        let f = File::create(&p).with_context(|| format!("creating {}", p.display()))?;
        serde_json::to_writer_pretty(BufWriter::new(f), &report)?;
    }
    Ok(0)
}

fn number(s: &str, what: &str) -> anyhow::Result<Number> {
    Number::parse(s).map_err(|why| anyhow::anyhow!("--{what} {s:?}: {why}"))
}

/// `--at`, `--window` and `--filter` of the reports (`inspect`, `state inspect`), with their defaults.
fn report_options(
    at: Option<&str>,
    windows: Vec<String>,
    filters: Vec<String>,
) -> anyhow::Result<(
    Option<EventTime>,
    Vec<inspect::WindowSpec>,
    Vec<ClassFilter>,
)> {
    let at = at
        .map(|s| EventTime::parse(s).map_err(|why| anyhow::anyhow!("--at {s:?}: {why}")))
        .transpose()?;
    let or_default = |given: Vec<String>, default: &[&str]| {
        if given.is_empty() {
            default.iter().map(|s| s.to_string()).collect()
        } else {
            given
        }
    };
    let windows = or_default(windows, inspect::DEFAULT_WINDOWS)
        .iter()
        .map(|w| inspect::WindowSpec::parse(w).map_err(anyhow::Error::msg))
        .collect::<Result<_, _>>()?;
    let filters = or_default(filters, inspect::DEFAULT_FILTERS)
        .iter()
        .map(|f| ClassFilter::parse(f).map_err(anyhow::Error::msg))
        .collect::<Result<_, _>>()?;
    Ok((at, windows, filters))
}

fn inspect_cmd(a: InspectArgs) -> anyhow::Result<i32> {
    let target = match (&a.msisdn, &a.account, &a.calling_number, &a.imei) {
        (Some(m), ..) => Target::Subscriber(number(m, "msisdn")?),
        (_, Some(acc), ..) => Target::Account(acc.clone()),
        (_, _, Some(c), _) => Target::CallingNumber(number(c, "calling-number")?),
        (.., Some(i)) => Target::Imei(number(i, "imei")?),
        _ => unreachable!("clap requires a target"),
    };
    let (at, windows, filters) = report_options(a.at.as_deref(), a.windows, a.filters)?;
    let dl = a.dead_letter;
    let (report, pipeline) = replay::run_quiet(
        &a.input.usage,
        a.input.events.as_deref(),
        a.input.config.as_deref(),
        at,
        dl,
    )?;
    if report.counts.rejected_total() > 0 {
        eprintln!(
            "note: {} input lines were rejected (see `cdrguard replay` for details)",
            report.counts.rejected_total()
        );
    }
    // "As of" is where the input closed every window: the final watermark, which timers fired up to.
    let as_of = at.unwrap_or_else(|| EventTime {
        utc: pipeline.store.borrow().watermark().unwrap_or(0),
        offset_min: pipeline.display_offset,
    });
    let v = inspect::report(
        &pipeline.store.borrow(),
        &pipeline.fired,
        &target,
        as_of,
        &windows,
        &filters,
    )?;
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer_pretty(&mut out, &v)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", inspect::render_text(&v))?;
    }
    Ok(0)
}

/// The entity named by exactly one of the flags (clap enforces one).
fn state_target(
    msisdn: Option<&str>,
    account: Option<&str>,
    calling_number: Option<&str>,
    imei: Option<&str>,
) -> anyhow::Result<Target> {
    Ok(match (msisdn, account, calling_number, imei) {
        (Some(m), ..) => Target::Subscriber(number(m, "msisdn")?),
        (_, Some(acc), ..) => Target::Account(acc.to_string()),
        (_, _, Some(c), _) => Target::CallingNumber(number(c, "calling-number")?),
        (.., Some(i)) => Target::Imei(number(i, "imei")?),
        _ => unreachable!("clap requires a target"),
    })
}

fn state_cmd(a: StateArgs) -> anyhow::Result<i32> {
    use crate::modes::state as statedir;
    let mut out = std::io::stdout().lock();
    match a.command {
        StateCommand::Inspect(a) => {
            let target = state_target(
                a.msisdn.as_deref(),
                a.account.as_deref(),
                a.calling_number.as_deref(),
                a.imei.as_deref(),
            )?;
            let (at, windows, filters) = report_options(a.at.as_deref(), a.windows, a.filters)?;
            let opts = statedir::ReportOptions {
                at,
                windows,
                filters,
                json: a.json,
            };
            statedir::inspect(&a.dir, &target, &opts, &mut out)?;
        }
        StateCommand::Export(a) if a.all => statedir::list(&a.dir, &mut out)?,
        StateCommand::Export(a) => {
            let target = state_target(
                a.msisdn.as_deref(),
                a.account.as_deref(),
                a.calling_number.as_deref(),
                a.imei.as_deref(),
            )?;
            statedir::export(&a.dir, &target, &mut out)?;
        }
        StateCommand::Clear(a) => {
            let target = state_target(a.msisdn.as_deref(), a.account.as_deref(), None, None)?;
            statedir::clear(&a.dir, &target, &mut out)?;
        }
    }
    Ok(0)
}

fn gen_cmd(a: GenArgs) -> anyhow::Result<i32> {
    let start = EventTime::parse(&a.start)
        .map_err(|why| anyhow::anyhow!("--start {:?}: {why}", a.start))?;
    let cfg = crate::demo::gen::GenConfig {
        seed: a.seed,
        subscribers: a.subscribers,
        records: a.records,
        start,
        days: a.days,
        home_cc: a.home_cc,
        inject: parse_inject(&a.inject)?,
        tag: a.tag.clone(),
    };
    if let Some(brokers) = &a.brokers {
        let (kcfg, _) = crate::config::Config::load(a.config.as_deref())?;
        let (mut usage, mut events) = (Vec::new(), Vec::new());
        let t = std::time::Instant::now();
        let s = crate::demo::gen::generate(&cfg, &mut usage, &mut events)?;
        let producer = crate::demo::embedded::input_producer(brokers)?;
        let stop = std::sync::atomic::AtomicBool::new(false);
        let n =
            crate::demo::embedded::produce_input(&producer, &kcfg, &usage, &events, a.rate, &stop)?;
        eprintln!(
            "produced {n} records ({} usage, {} events) to {brokers} in {:.2} s",
            s.usage_records,
            s.account_events,
            t.elapsed().as_secs_f64()
        );
        if let Some(p) = &a.labels {
            let f = File::create(p).with_context(|| format!("creating {}", p.display()))?;
            serde_json::to_writer_pretty(BufWriter::new(f), &s.labels)?;
        }
        return Ok(0);
    }
    let (usage_path, events_path) = (
        a.usage.clone().expect("clap: --usage"),
        a.events.clone().expect("clap: --events"),
    );
    let mut usage = BufWriter::with_capacity(
        1 << 20,
        File::create(&usage_path).with_context(|| format!("creating {}", usage_path.display()))?,
    );
    let mut events = BufWriter::new(
        File::create(&events_path)
            .with_context(|| format!("creating {}", events_path.display()))?,
    );
    let t = std::time::Instant::now();
    let s = crate::demo::gen::generate(&cfg, &mut usage, &mut events)?;
    usage.flush()?;
    events.flush()?;
    if let Some(p) = &a.labels {
        let f = File::create(p).with_context(|| format!("creating {}", p.display()))?;
        serde_json::to_writer_pretty(BufWriter::new(f), &s.labels)?;
    }
    eprintln!(
        "generated {} usage records and {} account events for {} subscribers in {} accounts in {:.2} s",
        s.usage_records,
        s.account_events,
        s.subscribers,
        s.accounts,
        t.elapsed().as_secs_f64()
    );
    if !s.labels.is_empty() {
        eprintln!(
            "injected {} stories; they must raise {} alerts{}",
            cfg.inject.iter().map(|(_, n)| *n as u64).sum::<u64>(),
            s.labels.len(),
            a.labels
                .as_ref()
                .map(|p| format!(" (listed in {})", p.display()))
                .unwrap_or_default()
        );
    }
    Ok(0)
}
