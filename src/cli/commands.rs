//! The commands: each parses what its arguments mean, calls into the library, and returns the exit
//! code. Library code does the work.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;

use crate::classify::ClassFilter;
use crate::modes::backtest::{Labels, Page, Score};
use crate::modes::inspect::{self, Target};
use crate::modes::replay::{self, ReplayOptions};
use crate::modes::replay_split;
use crate::record::{EventTime, Number};

use super::args::*;

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

/// `run`; `json_logs`: stderr carries only JSON log lines (no banner).
pub fn run_cmd(a: RunArgs, json_logs: bool) -> anyhow::Result<i32> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let (mut cfg, base) = crate::config::Config::load(a.config.as_deref())?;
    if let Some(b) = a.brokers {
        cfg.kafka.brokers = Some(b);
    }
    if let Some(g) = a.group {
        cfg.kafka.group_id = g;
    }
    if let Some(m) = a.metrics_address {
        cfg.daemon.metrics_address = m;
    }
    cfg.validate()?;
    let dir = crate::rules::runtime::locate(a.rules.as_deref(), &cfg, &base);
    if a.check {
        let report = crate::modes::preflight::run(&cfg, &base, &dir);
        print!("{}", report.render());
        return Ok(if report.problems.is_empty() { 0 } else { 1 });
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
            if state_dir.is_some() || !cfg.durability.store.is_empty() {
                // The embedded broker's log lives in memory: a snapshot from an earlier run would
                // describe offsets this broker never had.
                let t = std::env::temp_dir()
                    .join(format!("cdrguard-demo-state-{}", std::process::id()));
                tracing::info!(dir = %t.display(), "State snapshots (embedded broker: temporary).");
                state_dir = Some(t.clone());
                demo_state = Some(t);
            }
            if !cfg.durability.store.is_empty() {
                tracing::warn!(store = %cfg.durability.store, "durability.store is not used with the embedded broker (its log lives in memory); checkpoints go to a temporary directory.");
                cfg.durability.store.clear();
            }
            let demo = cfg.demo.enabled && !a.no_demo;
            if demo {
                // Demo rounds run in simulated time, ahead of the wall clock after the first.
                cfg.state.max_future_skew = crate::config::Secs(3650 * 86_400);
            }
            let e = crate::demo::embedded::start(&cfg)?;
            let b = e.bootstrap.clone();
            if json_logs {
                // A JSON log pipeline reads every line of stderr as an event.
                let k = &cfg.kafka;
                tracing::info!(
                    bootstrap = %b,
                    usage_topic = %k.usage_topic,
                    events_topic = %k.events_topic,
                    demo,
                    "Embedded Kafka broker (librdkafka mock cluster) started."
                );
            } else {
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
                if demo {
                    eprintln!("  demo traffic runs in simulated time, hours of event time per second (the status line shows it): records of your own would be late; run with --no-demo to produce your own");
                } else {
                    eprintln!("  no demo traffic (--no-demo): the event time is what you produce");
                }
            }
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

pub fn check_cmd(a: CheckArgs) -> anyhow::Result<i32> {
    let (cfg, base) = crate::config::Config::load(a.config.as_deref())?;
    let dir = crate::rules::runtime::locate(a.rules.as_deref(), &cfg, &base);
    let sources = crate::rules::RuleSources::read(&dir)?;
    let (errors, warnings, rules) = match crate::rules::runtime::validate(&sources, &cfg) {
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

pub fn test_cmd(a: TestArgs) -> anyhow::Result<i32> {
    let (cfg, base) = crate::config::Config::load(a.config.as_deref())?;
    let dir = crate::rules::runtime::locate(a.rules.as_deref(), &cfg, &base);
    let report = crate::modes::ruletest::run(&dir, &a.cases)?;
    print!("{}", report.render());
    Ok(if report.failed() > 0 { 1 } else { 0 })
}

pub fn replay_cmd(a: ReplayArgs) -> anyhow::Result<i32> {
    let candidate = match a.shadow_rules {
        Some(d) => Some(d),
        None if a.no_rules || a.threads.is_some() => None,
        None => {
            let (cfg, base) = crate::config::Config::load(a.input.config.as_deref())?;
            cfg.rules.shadow_dir.map(|d| base.join(d))
        }
    };
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
        shadow_out: a.shadow_out,
        shadow_in_alerts: false,
        tally: a.report.is_some() || a.labels.is_some(),
        feedback: a.feedback,
        candidate,
    };
    // Read before the replay: a mistake in the file should not cost a long run.
    let labels = a.labels.as_deref().map(Labels::read).transpose()?;
    let report = match a.threads {
        Some(n) => replay_split::run(&opts, n as usize)?,
        None => replay::run(&opts)?.0,
    };
    let no_tally = crate::modes::backtest::Tally::default();
    let tally = report.tally.as_ref().unwrap_or(&no_tally);
    // The summary lists a few missed and unexpected alerts per rule, the page more.
    let score = labels.as_ref().map(|l| Score::new(l, &tally.alerts, 10));
    eprint!("{}", report.render());
    if let Some(s) = &score {
        eprint!("{}", s.render());
    }
    if let Some(p) = a.summary_json {
        let f = File::create(&p).with_context(|| format!("creating {}", p.display()))?;
        let summary = replay::Summary {
            report: &report,
            labels: score.as_ref(),
        };
        serde_json::to_writer_pretty(BufWriter::new(f), &summary)?;
    }
    if let Some(p) = a.report {
        let score = labels.as_ref().map(|l| Score::new(l, &tally.alerts, 200));
        let html = crate::modes::backtest::page::render(&Page {
            report: &report,
            tally,
            score: score.as_ref(),
            usage: &opts.usage,
            events: opts.events.as_deref(),
        });
        std::fs::write(&p, html).with_context(|| format!("writing {}", p.display()))?;
        eprintln!("  report              {}", p.display());
    }
    Ok(0)
}

pub fn diff_cmd(a: DiffArgs) -> anyhow::Result<i32> {
    let report = crate::modes::diff::run(&crate::modes::diff::DiffOptions {
        usage: a.input.usage,
        events: a.input.events,
        config: a.input.config,
        rules: a.rules,
        against: a.against,
        examples: a.examples,
        progress: !a.quiet,
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(0)
}

fn number(s: &str, what: &str) -> anyhow::Result<Number> {
    Number::parse(s).map_err(|why| anyhow::anyhow!("--{what} {s:?}: {why}"))
}

/// `--at`, `--window` and `--filter` of the reports (`inspect`, `state inspect`), with their defaults.
fn report_options(
    r: ReportArgs,
) -> anyhow::Result<(
    Option<EventTime>,
    Vec<inspect::WindowSpec>,
    Vec<ClassFilter>,
)> {
    let at =
        r.at.as_deref()
            .map(|s| EventTime::parse(s).map_err(|why| anyhow::anyhow!("--at {s:?}: {why}")))
            .transpose()?;
    let or_default = |given: Vec<String>, default: &[&str]| {
        if given.is_empty() {
            default.iter().map(|s| s.to_string()).collect()
        } else {
            given
        }
    };
    let windows = or_default(r.windows, inspect::DEFAULT_WINDOWS)
        .iter()
        .map(|w| inspect::WindowSpec::parse(w).map_err(anyhow::Error::msg))
        .collect::<Result<_, _>>()?;
    let filters = or_default(r.filters, inspect::DEFAULT_FILTERS)
        .iter()
        .map(|f| ClassFilter::parse(f).map_err(anyhow::Error::msg))
        .collect::<Result<_, _>>()?;
    Ok((at, windows, filters))
}

pub fn inspect_cmd(a: InspectArgs) -> anyhow::Result<i32> {
    let target = target(&a.target)?;
    let json = a.report.json;
    let (at, windows, filters) = report_options(a.report)?;
    let dl = a.dead_letter;
    let (report, pipeline) = match a.feedback {
        None => replay::run_quiet(
            &a.input.usage,
            a.input.events.as_deref(),
            a.input.config.as_deref(),
            at,
            dl,
        )?,
        // The rules raise the alerts the decisions name.
        Some(feedback) => replay::run_to(
            &ReplayOptions {
                usage: a.input.usage.clone(),
                events: a.input.events.clone(),
                no_dead_letter: dl.is_none(),
                dead_letter: dl,
                config: a.input.config.clone(),
                cutoff: at,
                keep_fired: true,
                rules: match a.rules {
                    Some(d) => replay::RulesChoice::Dir(d),
                    None => replay::RulesChoice::Default,
                },
                feedback: Some(feedback),
                // Nothing is written: no shadow file beside the input either.
                shadow_in_alerts: true,
                ..Default::default()
            },
            &mut std::io::sink(),
        )?,
    };
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
    let mut v = inspect::report(
        &pipeline.store.borrow(),
        &pipeline.fired,
        &target,
        as_of,
        &windows,
        &filters,
    )?;
    pipeline.with_state(|_, memory| inspect::add_decisions(&mut v, memory));
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &v)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", inspect::render_text(&v))?;
    }
    Ok(0)
}

/// The entity named by exactly one of the flags (clap refuses two).
fn target(t: &TargetArgs) -> anyhow::Result<Target> {
    Ok(match (&t.msisdn, &t.account, &t.calling_number, &t.imei) {
        (Some(m), ..) => Target::Subscriber(number(m, "msisdn")?),
        (_, Some(acc), ..) => Target::Account(acc.clone()),
        (_, _, Some(c), _) => Target::CallingNumber(number(c, "calling-number")?),
        (.., Some(i)) => Target::Imei(number(i, "imei")?),
        _ => anyhow::bail!("name the entity: --msisdn, --account, --calling-number or --imei"),
    })
}

pub fn state_cmd(a: StateArgs) -> anyhow::Result<i32> {
    use crate::modes::state as statedir;
    let mut out = std::io::stdout().lock();
    match a.command {
        StateCommand::Inspect(a) => {
            let target = target(&a.target)?;
            let json = a.report.json;
            let (at, windows, filters) = report_options(a.report)?;
            let opts = statedir::ReportOptions {
                at,
                windows,
                filters,
                json,
            };
            statedir::inspect(&a.dir, &target, &opts, &mut out)?;
        }
        StateCommand::Export(a) if a.all => statedir::list(&a.dir, &mut out)?,
        StateCommand::Export(a) => {
            let target = target(&a.target)?;
            statedir::export(&a.dir, &target, &mut out)?;
        }
        StateCommand::Clear(a) => {
            let target = target(&TargetArgs {
                msisdn: a.msisdn,
                account: a.account,
                calling_number: None,
                imei: None,
            })?;
            statedir::clear(&a.dir, &target, &mut out)?;
        }
    }
    Ok(0)
}

pub fn gen_cmd(a: GenArgs) -> anyhow::Result<i32> {
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
        tap: a.tap,
    };
    if let Some(brokers) = &a.brokers {
        let (kcfg, base) = crate::config::Config::load(a.config.as_deref())?;
        let (mut usage, mut events) = (Vec::new(), Vec::new());
        let t = std::time::Instant::now();
        let s = crate::demo::gen::generate(&cfg, &mut usage, &mut events)?;
        let producer = crate::demo::embedded::input_producer(&kcfg.kafka, brokers, &base)?;
        let before = crate::demo::embedded::log_starts(&producer, &kcfg).ok();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let n =
            crate::demo::embedded::produce_input(&producer, &kcfg, &usage, &events, a.rate, &stop)?;
        eprintln!(
            "produced {n} records ({} usage, {} events) to {brokers} in {:.2} s",
            s.usage_records,
            s.account_events,
            t.elapsed().as_secs_f64()
        );
        // A broker that drops what was just produced (retention, a size limit such as the embedded
        // broker's) leaves a consumer that had not read it a gap.
        if let (Some(before), Ok(after)) =
            (before, crate::demo::embedded::log_starts(&producer, &kcfg))
        {
            let dropped: i64 = after
                .iter()
                .map(|(k, low)| low - before.get(k).copied().unwrap_or(*low))
                .filter(|d| *d > 0)
                .sum();
            if dropped > 0 {
                eprintln!(
                    "warning: the broker dropped {dropped} of the oldest records of the input topics while this ran \
                     (its retention or size limit; the embedded broker keeps at most 5 MB or 100,000 messages per partition). \
                     A consumer that had not read them skips them (cdrguard_records_skipped_total). \
                     Produce at a --rate the consumer keeps up with, or give the topics more partitions (demo.partitions)."
                );
            }
        }
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
