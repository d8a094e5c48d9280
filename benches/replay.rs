//! End to end: generated NDJSON files → decode → classify → state (→ the 17 shipped rules), through the
//! same `replay::run` as the CLI. Throughput is per core (one thread). The file is generated once per run into a temp folder.

use std::fs::File;
use std::io::BufWriter;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use cdrguard::demo::gen::{generate, GenConfig};
use cdrguard::modes::replay::{self, ReplayOptions, RulesChoice};

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (usage, events) = (
        dir.path().join("usage.ndjson"),
        dir.path().join("events.ndjson"),
    );
    let cfg = GenConfig {
        subscribers: 20_000,
        records: 200_000,
        seed: 1,
        ..GenConfig::default()
    };
    let summary = {
        let mut u = BufWriter::new(File::create(&usage).unwrap());
        let mut e = BufWriter::new(File::create(&events).unwrap());
        generate(&cfg, &mut u, &mut e).unwrap()
    };
    let lines = summary.usage_records + summary.account_events;
    let opts = ReplayOptions {
        usage: usage.clone(),
        events: Some(events.clone()),
        out: Some(dir.path().join("alerts.ndjson")),
        dead_letter: Some(dir.path().join("rejected.ndjson")),
        rules: RulesChoice::Off,
        ..ReplayOptions::default()
    };
    let with_rules = ReplayOptions {
        rules: RulesChoice::Dir(concat!(env!("CARGO_MANIFEST_DIR"), "/rules").into()),
        ..opts.clone()
    };
    let mut g = c.benchmark_group("replay");
    g.sample_size(10);
    g.throughput(Throughput::Elements(lines));
    for (id, opts) in [
        ("generated_200k_records_20k_subscribers_no_rules", &opts),
        (
            "generated_200k_records_20k_subscribers_17_rules",
            &with_rules,
        ),
    ] {
        g.bench_function(id, |b| {
            b.iter(|| {
                let (report, _) = replay::run(opts).unwrap();
                assert_eq!(report.counts.rejected_total(), 0);
                report.counts.lines
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
