//! `replay`: run NDJSON history files through the same pipeline as the daemon, in event time.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::backtest::{AlertTally, InputVolume, Score, Tally};
use super::feedback::{FeedbackFile, FeedbackReport};
use crate::config::Config;
use crate::pipeline::{Counts, Pipeline, PipelineOptions, RulesOptions, Scope, Verdict};
use crate::record::{EventTime, Mode};
use crate::rules::{runtime, Library, Reloader, RulesReport};
use crate::sink::{AlertFile, DeadLetterFile, Origin, Outputs, Rejected, ShadowFile};
use crate::source::FileSource;
use crate::state::{StoreCounters, StoreSize};
use crate::telemetry::{peak_rss_bytes, Progress};

#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    /// Usage records, NDJSON; `-` for stdin.
    pub usage: PathBuf,
    /// Account events, NDJSON.
    pub events: Option<PathBuf>,
    /// Alerts output; `None` for stdout.
    pub out: Option<PathBuf>,
    /// Rejected lines; default `<out>.rejected.ndjson` (or `<usage>.rejected.ndjson` with stdout).
    pub dead_letter: Option<PathBuf>,
    /// Count rejects without writing them anywhere (inspect).
    pub no_dead_letter: bool,
    pub config: Option<PathBuf>,
    /// Stop applying records after this instant (inspect `--at`).
    pub cutoff: Option<EventTime>,
    pub progress: bool,
    /// Keep fired timers for the report (inspect).
    pub keep_fired: bool,
    /// Which rule library to run.
    pub rules: RulesChoice,
    /// Reload the rules when their files change or on SIGHUP (long replays from stdin).
    pub watch_rules: bool,
    /// Alerts of shadow rules; default `<out>.shadow.ndjson` (or `<usage>.shadow.ndjson`), created
    /// on the first.
    pub shadow_out: Option<PathBuf>,
    /// Shadow alerts in the alerts output, no shadow file (`cdrguard test`).
    pub shadow_in_alerts: bool,
    /// Collect the back-test tally (`--report`, `--labels`): input per hour, alerts folded.
    pub tally: bool,
    /// Analysts' decisions to apply as the alerts they name are raised (`modes::feedback`).
    pub feedback: Option<PathBuf>,
    /// A candidate library to run in shadow beside the rules (`replay --shadow-rules`, else
    /// `rules.shadow_dir`): its alerts to the shadow file, its overlap with the live rules in
    /// the summary.
    pub candidate: Option<PathBuf>,
}

/// Which rule library a replay runs.
#[derive(Clone, Debug, Default)]
pub enum RulesChoice {
    /// `rules.dir` from the config, else `rules/` if it exists, else none.
    #[default]
    Default,
    /// This folder; it must exist.
    Dir(PathBuf),
    /// No rules: state only.
    Off,
}

/// What a replay did, for the summary and for tests.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReplayReport {
    pub counts: Counts,
    pub blank_lines: u64,
    pub store: StoreCounters,
    pub size: StoreSize,
    /// Written as `elapsed_s`, seconds with a fraction: a plain unit for dashboards and schemas.
    #[serde(rename = "elapsed_s", serialize_with = "seconds")]
    pub elapsed: Duration,
    pub peak_rss_bytes: Option<u64>,
    pub dead_letter: Option<PathBuf>,
    /// Rejects not written to the dead-letter file: it reached `input.dead_letter_file_max_mib`.
    pub dead_letters_dropped: u64,
    /// Alerts written.
    pub alerts: u64,
    /// Alerts of shadow rules written, and where.
    pub shadow_alerts: u64,
    pub shadow_out: Option<PathBuf>,
    pub rules: Option<RulesReport>,
    /// The candidate library run in shadow beside the rules, with its overlap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate: Option<CandidateReport>,
    /// What became of `--feedback`'s decisions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feedback: Option<FeedbackReport>,
    /// What `ReplayOptions::tally` asked to collect.
    #[serde(skip)]
    pub tally: Option<Tally>,
}

/// What the candidate library did (`--shadow-rules`, `rules.shadow_dir`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct CandidateReport {
    pub dir: PathBuf,
    pub rules: RulesReport,
    /// Per rule id in both libraries: alerts raised by both, by the live rule only, by the
    /// candidate only (matched by entity and trigger time).
    pub overlap: Vec<OverlapRow>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct OverlapRow {
    pub rule: String,
    #[serde(flatten)]
    pub overlap: crate::alert::overlap::Overlap,
}

impl CandidateReport {
    pub fn render(&self) -> String {
        let mut s = format!(
            "candidate library {} (in shadow: its alerts to the shadow file)\n",
            self.dir.display()
        );
        s += &self.rules.render();
        if !self.overlap.is_empty() {
            let w = self.overlap.iter().map(|r| r.rule.len()).max().unwrap_or(4);
            s += &format!(
                "  overlap with the live rules\n    {:<w$}  {:>8} {:>10} {:>12}\n",
                "rule", "both", "live only", "shadow only"
            );
            for r in &self.overlap {
                s += &format!(
                    "    {:<w$}  {:>8} {:>10} {:>12}\n",
                    r.rule, r.overlap.both, r.overlap.live_only, r.overlap.shadow_only
                );
            }
        }
        s
    }
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// What `--summary-json` writes: the replay's report and, with `--labels`, its score.
#[derive(serde::Serialize)]
pub struct Summary<'a> {
    #[serde(flatten)]
    pub report: &'a ReplayReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<&'a Score>,
}

impl ReplayReport {
    pub fn records_per_sec(&self) -> f64 {
        self.counts.lines as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The summary printed to stderr.
    pub fn render(&self) -> String {
        let c = &self.counts;
        let mut s = String::new();
        let n = |v: u64| group(v);
        let _ = writeln!(s, "replay summary");
        let _ = writeln!(
            s,
            "  lines read          {:>12}   (blank lines skipped: {})",
            n(c.lines),
            n(self.blank_lines)
        );
        let _ = writeln!(s, "  usage accepted      {:>12}", n(c.usage_accepted));
        let _ = writeln!(s, "  events accepted     {:>12}", n(c.events_accepted));
        let _ = writeln!(s, "  duplicates          {:>12}", n(c.duplicates));
        let mut dl = self
            .dead_letter
            .as_ref()
            .map(|p| format!("   → {}", p.display()))
            .unwrap_or_default();
        if self.dead_letters_dropped > 0 {
            dl += &format!(
                " ({} NOT WRITTEN: the file reached input.dead_letter_file_max_mib)",
                n(self.dead_letters_dropped)
            );
        }
        let _ = writeln!(s, "  rejected            {:>12}{dl}", n(c.rejected_total()));
        for (reason, count) in &c.rejected {
            let _ = writeln!(s, "    {:<18}{:>12}", reason.as_str(), n(*count));
        }
        if !c.repaired.is_empty() {
            let total: u64 = c.repaired.values().sum();
            let _ = writeln!(
                s,
                "  fields dropped      {:>12}   (records kept; the field was unusable)",
                n(total)
            );
            for (field, count) in &c.repaired {
                let _ = writeln!(s, "    {:<18}{:>12}", field.as_str(), n(*count));
            }
        }
        if let Some(p) = &self.shadow_out {
            let _ = writeln!(
                s,
                "  shadow alerts       {:>12}   → {} (shadow rules: no department)",
                n(self.shadow_alerts),
                p.display()
            );
        }
        if c.after_cutoff > 0 {
            let _ = writeln!(
                s,
                "  after --at          {:>12}   (not applied)",
                n(c.after_cutoff)
            );
        }
        for (w, count) in &self.store.ledger_warnings {
            let _ = writeln!(s, "  ledger warning {w:<16}{:>6}", n(*count));
        }
        let z = &self.size;
        let _ = writeln!(
            s,
            "  timers              {:>12} fired, {} pending",
            n(self.store.timers_fired),
            n(z.timers_pending as u64)
        );
        let _ = writeln!(
            s,
            "  entities            subscribers {} · accounts {} · calling numbers {} · imeis {} (evicted {})",
            n(z.subscribers as u64),
            n(z.accounts as u64),
            n(z.calling_numbers as u64),
            n(z.imeis as u64),
            n(self.store.evicted_entities)
        );
        if self.store.calls_clipped > 0 {
            let _ = writeln!(
                s,
                "  calls clipped       {:>12} longer than state.max_call_duration (their concurrency span only)",
                n(self.store.calls_clipped)
            );
        }
        let per_sub = |b: usize| b.checked_div(z.subscribers).unwrap_or(0);
        let _ = writeln!(
            s,
            "  state               {:.1} MiB estimated: windows {:.1} MiB ({} cells, {} distinct entries; {} B per subscriber), accounts {:.1} MiB, dedup {:.1} MiB ({} ids)",
            z.estimated_bytes as f64 / 1048576.0,
            z.entity_bytes as f64 / 1048576.0,
            n(z.cells as u64),
            n(z.distinct_entries as u64),
            per_sub(z.entity_bytes),
            z.account_bytes as f64 / 1048576.0,
            z.dedup_bytes as f64 / 1048576.0,
            n(z.dedup_ids as u64),
        );
        let _ = writeln!(
            s,
            "  elapsed             {:.2} s · {} records/s",
            self.elapsed.as_secs_f64(),
            n(self.records_per_sec() as u64)
        );
        if let Some(p) = self.peak_rss_bytes {
            let _ = writeln!(s, "  peak RSS            {:.1} MiB", p as f64 / 1048576.0);
        }
        if let Some(r) = &self.rules {
            s.push_str(&r.render());
        }
        if let Some(c) = &self.candidate {
            s.push_str(&c.render());
        }
        if let Some(f) = &self.feedback {
            s.push_str(&f.render());
        }
        s
    }
}

/// 1234567 → "1,234,567".
pub fn group(v: u64) -> String {
    let d = v.to_string();
    let mut out = String::with_capacity(d.len() + d.len() / 3);
    for (i, ch) in d.chars().enumerate() {
        if i > 0 && (d.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn default_dead_letter(opts: &ReplayOptions) -> PathBuf {
    beside_output(opts, ".rejected.ndjson")
}

/// `<out><suffix>`, else `<usage><suffix>`, else `cdrguard<suffix>` (stdin to stdout).
fn beside_output(opts: &ReplayOptions, suffix: &str) -> PathBuf {
    let base = match (&opts.out, opts.usage.as_os_str() == "-") {
        (Some(out), _) => out.clone(),
        (None, false) => opts.usage.clone(),
        (None, true) => PathBuf::from("cdrguard"),
    };
    let mut s = base.into_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Builds the pipeline from a config file (or defaults) and runs the inputs through it, writing alerts
/// to `opts.out` (stdout when `None`).
pub fn run(opts: &ReplayOptions) -> anyhow::Result<(ReplayReport, Pipeline)> {
    run_to(opts, &mut open_out(opts)?)
}

/// The alerts output: `opts.out`, else stdout.
pub(super) fn open_out(opts: &ReplayOptions) -> anyhow::Result<Box<dyn Write>> {
    Ok(match &opts.out {
        Some(p) => Box::new(BufWriter::new(
            File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(BufWriter::new(io::stdout().lock())),
    })
}

/// Runs a replay with no alert output (inspect, tests); rejects go to `dead_letter` or are only counted.
pub fn run_quiet(
    usage: &Path,
    events: Option<&Path>,
    config: Option<&Path>,
    cutoff: Option<EventTime>,
    dead_letter: Option<PathBuf>,
) -> anyhow::Result<(ReplayReport, Pipeline)> {
    let opts = ReplayOptions {
        usage: usage.to_path_buf(),
        events: events.map(Path::to_path_buf),
        out: None,
        no_dead_letter: dead_letter.is_none(),
        dead_letter,
        config: config.map(Path::to_path_buf),
        cutoff,
        progress: false,
        keep_fired: true,
        rules: RulesChoice::Off,
        watch_rules: false,
        shadow_out: None,
        shadow_in_alerts: false,
        tally: false,
        feedback: None,
        candidate: None,
    };
    run_to(&opts, &mut io::sink())
}

/// What every replay builds before reading: the configuration, the classifier and the rule library.
pub(super) struct Setup {
    pub cfg: Config,
    classifier: crate::classify::Classifier,
    library: Option<Library>,
    pub candidate: Option<Library>,
}

impl Setup {
    pub fn load(opts: &ReplayOptions) -> anyhow::Result<Self> {
        let (cfg, base) = Config::load(opts.config.as_deref())?;
        let classifier = cfg.classifier(&base).context("loading reference data")?;
        let library = match &opts.rules {
            RulesChoice::Off => None,
            RulesChoice::Dir(d) => Some(Library::load(d, &cfg)?),
            RulesChoice::Default => match runtime::locate_optional(None, &cfg, &base) {
                Some(d) => Some(Library::load(&d, &cfg)?),
                None => {
                    tracing::warn!(
                        "No rule library ({}/ not found, no --rules): replaying without rules.",
                        crate::config::DEFAULT_RULES_DIR
                    );
                    None
                }
            },
        };
        let candidate = match (&opts.candidate, &library) {
            (Some(d), Some(_)) => Some(
                Library::load(d, &cfg)
                    .with_context(|| format!("the candidate library {}", d.display()))?,
            ),
            (Some(_), None) => {
                anyhow::bail!("a candidate library runs beside rules: not with --no-rules")
            }
            (None, _) => None,
        };
        Ok(Setup {
            cfg,
            classifier,
            library,
            candidate,
        })
    }

    /// A pipeline over `scope` with the replay's rules.
    pub fn pipeline(&self, scope: Scope) -> anyhow::Result<Pipeline> {
        self.pipeline_with(scope, None, false)
    }

    fn pipeline_with(
        &self,
        scope: Scope,
        cutoff: Option<i64>,
        keep_fired: bool,
    ) -> anyhow::Result<Pipeline> {
        let cfg = &self.cfg;
        Ok(Pipeline::new(PipelineOptions {
            rules: self.library.as_ref().map(|l| RulesOptions {
                sources: &l.sources,
                sandbox: &cfg.rules.sandbox,
                quarantine: cfg.rules.quarantine_policy(),
                mode: Mode::Replay,
                high_risk_from_rules: cfg.reference.high_risk_prefixes.is_none(),
                candidate: self.candidate.as_ref().map(|c| &*c.sources),
            }),
            cutoff,
            keep_fired,
            scope,
            ..PipelineOptions::new(self.classifier.clone(), cfg.state.clone())
        })?)
    }

    /// Where the alerts of shadow rules go.
    pub fn shadow_file(&self, opts: &ReplayOptions) -> ShadowFile {
        ShadowFile::new(
            opts.shadow_out
                .clone()
                .unwrap_or_else(|| beside_output(opts, ".shadow.ndjson")),
        )
    }

    /// Where rejected lines go, if anywhere.
    pub fn dead_letter_path(&self, opts: &ReplayOptions) -> Option<PathBuf> {
        match (opts.no_dead_letter, &opts.dead_letter) {
            (true, _) => None,
            (false, Some(p)) => Some(p.clone()),
            (false, None) => Some(default_dead_letter(opts)),
        }
    }
}

/// Runs a replay writing alerts (NDJSON) to `out`; `opts.out` is not used.
pub fn run_to(
    opts: &ReplayOptions,
    out: &mut dyn Write,
) -> anyhow::Result<(ReplayReport, Pipeline)> {
    let setup = Setup::load(opts)?;
    let cfg = &setup.cfg;
    let library = &setup.library;
    let mut pipeline = setup.pipeline_with(
        Scope::Everything,
        opts.cutoff.map(|t| t.utc),
        opts.keep_fired,
    )?;
    let mut reloader = match (library, opts.watch_rules) {
        (Some(l), true) => Some(Reloader::spawn(l, cfg, true)?),
        _ => None,
    };
    let mut source = FileSource::open(&opts.usage, opts.events.as_deref(), cfg.decoder())?;
    let dead_letter = DeadLetterFile::new(
        setup.dead_letter_path(opts),
        cfg.input.dead_letter_file_max_mib << 20,
    );
    let alerts = match opts.shadow_in_alerts {
        true => AlertFile::with_shadow(out),
        false => AlertFile::new(out),
    };
    let shadow = setup.shadow_file(opts);
    let tally = AlertTally::default();
    let mut volume = opts.tally.then(InputVolume::default);
    let mut sinks: Vec<&dyn crate::sink::Output> = vec![&alerts, &dead_letter];
    if !opts.shadow_in_alerts {
        sinks.push(&shadow);
    }
    if opts.tally {
        sinks.push(&tally);
    }
    let mut outputs = Outputs::new(sinks);
    let mut feedback = match &opts.feedback {
        Some(p) => Some(FeedbackFile::load(p, &mut outputs)?),
        None => None,
    };
    let mut progress = Progress::new(opts.progress);
    let started = Instant::now();
    loop {
        let Some(d) = source.next_decoded()? else {
            break;
        };
        if let (Some(v), Ok(item)) = (volume.as_mut(), &d.item) {
            v.add(item);
        }
        let (src, line, raw, truncated) = (d.source, d.line, d.raw, d.truncated);
        if let Verdict::Reject(reject) = pipeline.process(d) {
            let rejected = Rejected {
                source: src,
                partition: None,
                position: line,
                key: &[],
                raw,
                truncated,
                reject: &reject,
            };
            if let Some((_, e)) = outputs.reject(&rejected, Origin::Untracked).pop() {
                return Err(e).context("writing the dead-letter file");
            }
        }
        write_alerts(&mut pipeline, &mut outputs, feedback.as_mut())?;
        progress.tick(pipeline.counts.lines, source.progress());
        // Every line: a channel poll is an atomic load, and a replay from stdin may be slow.
        if let Some(sources) = reloader.as_mut().and_then(Reloader::poll) {
            // Validated already; a failure here is logged by the engine and the rules stay.
            if pipeline.reload_rules(&sources).is_ok() {
                tracing::info!(version = %sources.version, "Rules reloaded.");
            }
        }
    }
    pipeline.finish();
    write_alerts(&mut pipeline, &mut outputs, feedback.as_mut())?;
    let feedback = match feedback {
        Some(f) => Some(f.finish(&mut outputs)?),
        None => None,
    };
    progress.done();
    outputs.flush(Duration::ZERO)?;
    drop(outputs);
    let overlap = pipeline.take_overlap();
    let store = pipeline.store.borrow();
    let report = ReplayReport {
        counts: pipeline.counts.clone(),
        blank_lines: source.blank_lines,
        store: store.counters.clone(),
        size: store.size(),
        alerts: alerts.written(),
        shadow_alerts: shadow.written(),
        shadow_out: (shadow.written() > 0).then(|| shadow.path().to_path_buf()),
        rules: pipeline.rules.as_ref().map(RulesReport::of),
        candidate: match (&setup.candidate, &pipeline.candidate) {
            (Some(lib), Some(engine)) => Some(CandidateReport {
                dir: lib.dir.clone(),
                rules: RulesReport::of(engine),
                overlap: overlap_rows(&pipeline, engine, &overlap),
            }),
            _ => None,
        },
        feedback,
        elapsed: started.elapsed(),
        peak_rss_bytes: peak_rss_bytes(),
        dead_letter: dead_letter
            .path()
            .filter(|_| dead_letter.written() > 0)
            .map(Path::to_path_buf),
        dead_letters_dropped: dead_letter.dropped(),
        tally: volume.map(|volume| Tally {
            volume,
            alerts: tally.into_alerts(),
        }),
    };
    drop(store);
    Ok((report, pipeline))
}

/// Every rule id of both libraries with its overlap, those that raised nothing too.
fn overlap_rows(
    pipeline: &Pipeline,
    candidate: &crate::rules::RuleEngine,
    counted: &std::collections::BTreeMap<String, crate::alert::overlap::Overlap>,
) -> Vec<OverlapRow> {
    let Some(live) = &pipeline.rules else {
        return Vec::new();
    };
    let mut rows: Vec<OverlapRow> = candidate
        .set()
        .rules
        .iter()
        .filter(|r| live.set().rules.iter().any(|l| l.id() == r.id()))
        .map(|r| OverlapRow {
            rule: r.id().to_string(),
            overlap: counted.get(r.id()).copied().unwrap_or_default(),
        })
        .collect();
    rows.sort_by(|a, b| a.rule.cmp(&b.rule));
    rows
}

/// Writes the alerts the pipeline emitted since the last call, and applies the analysts' decisions
/// about them.
fn write_alerts(
    pipeline: &mut Pipeline,
    outputs: &mut Outputs<'_>,
    mut feedback: Option<&mut FeedbackFile>,
) -> anyhow::Result<()> {
    for alert in pipeline.take_alerts() {
        if let Some((_, e)) = outputs.alert(&alert, Origin::Untracked).pop() {
            return Err(e).context("writing alerts");
        }
        if let (Some(f), Ok(id)) = (
            feedback.as_deref_mut(),
            u128::from_str_radix(&alert.alert_id, 16),
        ) {
            f.on_alert(pipeline, id);
        }
    }
    Ok(())
}
