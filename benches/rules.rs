//! Rule evaluation cost: nanoseconds per usage record for 0, 1, 5 and 17 Rhai rules on a warm window
//! store, and the share of records that run no rule at all because trigger dispatch finds none for
//! their class.
//!
//! The library is the shipped one (`rules/`): each set copies some of its rules, their
//! `params.toml` tables and the lists into a folder of its own, so dispatch tables hold only its rules.
//! - `0_rules`: an empty library: dispatch only.
//! - `1_rule_bill_shock`: `bill_shock`, which triggers on every charged usage record: the per-call
//!   cost of the engine on most records.
//! - `1_rule_irsf`: `irsf_high_risk_destination`, which triggers on `voice.mo.high_risk` only: almost
//!   every record is dispatched to nothing.
//! - `5_rules`: a first fraud deployment: `irsf_high_risk_destination`, `wangiri_inbound`,
//!   `wangiri_callback`, `simbox_behaviour`, `credit_limit_exceeded`.
//! - `17_rules`: the whole library.
//!
//! Method: ~200k usage records for 20k subscribers (plus their account events) are generated once into a
//! temp folder and decoded once. For each set, a fresh `Pipeline` with that library processes the first
//! 90% of the merged input (state, timers and alert memory warm and realistic; not timed). The usage
//! records of the last 10% are kept classified in memory; the timed loop runs
//! `RuleEngine::on_usage` over all of them and drains the alerts. They are not applied to the store, so
//! every iteration reads the same state (the store as of the cut; features still end at each record's
//! own time). Throughput is per core (one thread). Before timing, one untimed pass prints to stderr the
//! share of held-back records that run no rule (the engine's `usage_without_rules`; with it, how many
//! have no rule for their class at all) and the rule evaluations per record.
//!
//! `cargo bench --bench rules -- --warm-up-time 1 --measurement-time 4`

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};

use cdrguard::classify::RecordClass;
use cdrguard::config::Config;
use cdrguard::demo::gen::{generate, GenConfig};
use cdrguard::pipeline::{Pipeline, PipelineOptions, RulesOptions, Verdict};
use cdrguard::record::Mode;
use cdrguard::record::UsageRecord;
use cdrguard::record::{Decoded, Item};
use cdrguard::rules::RuleSources;
use cdrguard::source::FileSource;

/// The sets measured: bench id and the rule ids in it (`None`: the whole catalogue).
const SETS: [(&str, Option<&[&str]>); 5] = [
    ("0_rules", Some(&[])),
    ("1_rule_bill_shock", Some(&["bill_shock"])),
    ("1_rule_irsf", Some(&["irsf_high_risk_destination"])),
    (
        "5_rules",
        Some(&[
            "irsf_high_risk_destination",
            "wangiri_inbound",
            "wangiri_callback",
            "simbox_behaviour",
            "credit_limit_exceeded",
        ]),
    ),
    ("17_rules", None),
];

/// The shipped library, relative to the crate root (benches run from there).
const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/rules");

/// Rule ids of the shipped library with their script paths (relative to `SHIPPED`).
fn shipped_rules() -> Vec<(String, String)> {
    let sources = RuleSources::read(Path::new(SHIPPED)).unwrap();
    sources
        .scripts
        .iter()
        .map(|f| {
            let id = f.path.rsplit('/').next().unwrap().trim_end_matches(".rhai");
            (id.to_string(), f.path.clone())
        })
        .collect()
}

/// Writes the shipped rules in `ids` (all of them for `None`) to `dir`, with their `params.toml`
/// tables (segment overrides included) and every list.
fn write_library(dir: &Path, ids: Option<&[&str]>) {
    let keep = |id: &str| ids.is_none_or(|ids| ids.contains(&id));
    std::fs::create_dir_all(dir).unwrap();
    for (id, path) in shipped_rules().iter().filter(|(id, _)| keep(id)) {
        let to = dir.join(path);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(Path::new(SHIPPED).join(path), to).unwrap_or_else(|e| panic!("{id}: {e}"));
    }
    let text = std::fs::read_to_string(Path::new(SHIPPED).join("params.toml")).unwrap();
    let mut params: toml::Table = text.parse().unwrap();
    params.retain(|k, _| k == "segments" || keep(k));
    if let Some(toml::Value::Table(segments)) = params.get_mut("segments") {
        for (_, rules) in segments.iter_mut() {
            if let toml::Value::Table(rules) = rules {
                rules.retain(|k, _| keep(k));
            }
        }
    }
    std::fs::write(dir.join("params.toml"), toml::to_string(&params).unwrap()).unwrap();
    std::fs::create_dir_all(dir.join("lists")).unwrap();
    for e in std::fs::read_dir(Path::new(SHIPPED).join("lists")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join("lists").join(e.file_name())).unwrap();
    }
}

fn clone_item(item: &Item) -> Item {
    match item {
        Item::Usage(r) => Item::Usage(r.clone()),
        Item::Event(e) => Item::Event(e.clone()),
    }
}

/// A pipeline with the library in `dir`, after the warm-up input.
fn warm(cfg: &Config, base: &Path, dir: &Path, input: &[Item]) -> Pipeline {
    let sources = RuleSources::read(dir).unwrap();
    let built = Pipeline::new(PipelineOptions {
        rules: Some(RulesOptions {
            sources: &sources,
            sandbox: &cfg.rules.sandbox,
            quarantine: cfg.rules.quarantine_policy(),
            mode: Mode::Replay,
            high_risk_from_rules: false,
            candidate: None,
        }),
        ..PipelineOptions::new(cfg.classifier(base).unwrap(), cfg.state.clone())
    });
    let mut p = match built {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    let engine = p.rules.as_ref().unwrap();
    assert!(
        engine.set().warnings.is_empty(),
        "library warnings: {:?}",
        engine.set().warnings
    );
    for (i, item) in input.iter().enumerate() {
        let d = Decoded {
            source: "bench",
            line: i as u64 + 1,
            raw: &[],
            truncated: 0,
            item: Ok(clone_item(item)),
        };
        let verdict = p.process(d);
        assert!(
            !matches!(verdict, Verdict::Reject(_)),
            "warm-up record {i} rejected"
        );
        p.rules.as_mut().unwrap().take_alerts().for_each(drop);
    }
    p
}

struct Figures {
    id: &'static str,
    rules: usize,
    without_rules: f64,
    evaluations_per_record: f64,
    alerts: u64,
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (usage, events) = (
        dir.path().join("usage.ndjson"),
        dir.path().join("events.ndjson"),
    );
    let gen = GenConfig {
        subscribers: 20_000,
        records: 200_000,
        seed: 1,
        ..GenConfig::default()
    };
    let summary = {
        let mut u = BufWriter::new(File::create(&usage).unwrap());
        let mut e = BufWriter::new(File::create(&events).unwrap());
        generate(&gen, &mut u, &mut e).unwrap()
    };
    let (cfg, base) = Config::load(None).unwrap();

    // Decode once, in merged (event-time) order.
    let mut input = Vec::new();
    let mut src = FileSource::open(&usage, Some(&events), cfg.decoder()).unwrap();
    while let Some(d) = src.next_decoded().unwrap() {
        input.push(d.item.unwrap_or_else(|r| panic!("rejected: {r:?}")));
    }
    assert_eq!(
        input.len() as u64,
        summary.usage_records + summary.account_events
    );
    let cut = input.len() * 9 / 10;
    let classifier = cfg.classifier(&base).unwrap();
    let held: Vec<(UsageRecord, RecordClass)> = input[cut..]
        .iter()
        .filter_map(|i| match i {
            Item::Usage(r) => Some((r.clone(), classifier.classify(r))),
            Item::Event(_) => None,
        })
        .collect();
    eprintln!(
        "rules bench: {} usage records + {} account events; warm-up {} lines, {} usage records held back (events after the cut unused)",
        summary.usage_records,
        summary.account_events,
        cut,
        held.len()
    );

    let mut figures = Vec::new();
    let mut g = c.benchmark_group("rules");
    g.sample_size(10);
    // 17 rules take ~0.1 s per pass: equal-sized samples, not criterion's growing ones.
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Elements(held.len() as u64));
    for (id, ids) in SETS {
        let lib = dir.path().join(id);
        write_library(&lib, ids);
        let mut p = warm(&cfg, &base, &lib, &input[..cut]);
        let engine = p.rules.as_mut().unwrap();
        let rules = engine.set().rules.len();
        assert_eq!(rules, ids.map_or(shipped_rules().len(), <[_]>::len), "{id}");
        assert_eq!(
            engine.counters.errors,
            0,
            "{id}: rule errors while warming: {:?}",
            engine
                .stats()
                .iter()
                .filter_map(|s| s.last_error.as_deref())
                .collect::<Vec<_>>()
        );
        if ids.is_none() {
            // The engine times each sandboxed call (not the views and bookkeeping around it).
            eprintln!("rules bench: {id}, warm-up per rule:");
            eprintln!(
                "  {:<28} {:>11} {:>6} {:>8} {:>12} {:>12}",
                "rule", "evaluations", "alerts", "cooldown", "call mean ns", "call p99 ns"
            );
            for s in engine.stats() {
                eprintln!(
                    "  {:<28} {:>11} {:>6} {:>8} {:>12.0} {:>12}",
                    s.id,
                    s.evaluations,
                    s.alerts,
                    s.suppressed,
                    s.latency.mean(),
                    s.latency.value_at_quantile(0.99)
                );
            }
        }

        // Dispatch figures over the held-back records, and one untimed pass for evaluations/record.
        // `by_class`: records whose class no rule of the set triggers on. The engine's own count can
        // only be higher (record-level trigger conditions, where a rule declares any).
        let by_class = held
            .iter()
            .filter(|(_, class)| engine.set().for_class(*class).is_empty())
            .count() as u64;
        let before = engine.counters.clone();
        for (r, class) in &held {
            engine.on_usage(r, *class, None);
        }
        let after = &engine.counters;
        let without = after.usage_without_rules - before.usage_without_rules;
        assert!(without >= by_class, "{id}: {without} < {by_class}");
        assert_eq!(
            after.errors, 0,
            "{id}: rule errors on the held-back records"
        );
        let f = Figures {
            id,
            rules,
            without_rules: without as f64 / held.len() as f64,
            evaluations_per_record: (after.evaluations - before.evaluations) as f64
                / held.len() as f64,
            alerts: after.alerts - before.alerts,
        };
        engine.take_alerts().for_each(drop);
        eprintln!(
            "rules bench: {id}: {rules} rules, {without} of {} held-back records ({:.2}%) run no rule ({by_class} have no rule for their class), {:.4} evaluations per record, {} alerts in one pass",
            held.len(),
            f.without_rules * 100.0,
            f.evaluations_per_record,
            f.alerts
        );
        figures.push(f);

        g.bench_function(id, |b| {
            b.iter(|| {
                for (r, class) in &held {
                    engine.on_usage(r, *class, None);
                }
                engine.take_alerts().count()
            })
        });
    }
    g.finish();

    eprintln!(
        "rules bench summary ({} held-back usage records):",
        held.len()
    );
    eprintln!("  set                  rules   no rule  evals/record  alerts/pass");
    for f in &figures {
        eprintln!(
            "  {:<20} {:>5}  {:>7.2}%  {:>12.4}  {:>11}",
            f.id,
            f.rules,
            f.without_rules * 100.0,
            f.evaluations_per_record,
            f.alerts
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
