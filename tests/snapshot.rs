//! State survives a snapshot: replaying with the store serialized and restored mid-stream gives exactly
//! the state of an uninterrupted replay (same features, ledgers, timers, counters). The durable
//! snapshot format and offsets are the durability issue's; this pins the property it builds on.

use std::path::Path;

use cdrguard::classify::ClassFilter;
use cdrguard::config::Config;
use cdrguard::modes::inspect::{self, Target, WindowSpec};
use cdrguard::pipeline::{Pipeline, PipelineOptions};
use cdrguard::record::{EventTime, Number};
use cdrguard::source::FileSource;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn replay(snapshot_after: Option<u64>) -> Pipeline {
    let (cfg, base) = Config::load(None).unwrap();
    let mut p = Pipeline::new(PipelineOptions {
        keep_fired: true,
        ..PipelineOptions::new(
            cfg.classifier(Path::new(ROOT).join(&base).as_path())
                .unwrap(),
            cfg.state.clone(),
        )
    })
    .unwrap();
    let usage = Path::new(ROOT).join("fixtures/demo/usage.ndjson");
    let events = Path::new(ROOT).join("fixtures/demo/events.ndjson");
    let mut src = FileSource::open(&usage, Some(&events), cfg.decoder()).unwrap();
    while let Some(d) = src.next_decoded().unwrap() {
        p.process(d);
        if Some(p.counts.lines) == snapshot_after {
            let bytes = serde_json::to_vec(&*p.store.borrow()).unwrap();
            *p.store.borrow_mut() = serde_json::from_slice(&bytes).unwrap();
        }
    }
    p.finish();
    p
}

fn report(p: &Pipeline, target: Target) -> serde_json::Value {
    let at = EventTime {
        utc: p.store.borrow().watermark().unwrap(),
        offset_min: p.display_offset,
    };
    let windows: Vec<WindowSpec> = ["10m", "1h", "24h", "7d"]
        .iter()
        .map(|w| WindowSpec::parse(w).unwrap())
        .collect();
    let filters: Vec<ClassFilter> = inspect::DEFAULT_FILTERS
        .iter()
        .map(|f| ClassFilter::parse(f).unwrap())
        .collect();
    serde_json::to_value(
        inspect::report(&p.store.borrow(), &p.fired, &target, at, &windows, &filters).unwrap(),
    )
    .unwrap()
}

#[test]
fn restored_state_continues_exactly_like_the_original() {
    let whole = replay(None);
    let lines = whole.counts.lines;
    for split in [lines / 3, lines / 2, lines - 10] {
        let resumed = replay(Some(split));
        assert_eq!(
            serde_json::to_value(&whole.counts).unwrap(),
            serde_json::to_value(&resumed.counts).unwrap()
        );
        assert_eq!(
            serde_json::to_value(&whole.store.borrow().counters).unwrap(),
            serde_json::to_value(&resumed.store.borrow().counters).unwrap()
        );
        let (a, b) = (whole.store.borrow().size(), resumed.store.borrow().size());
        assert_eq!(
            (
                a.subscribers,
                a.accounts,
                a.calling_numbers,
                a.cells,
                a.distinct_entries,
                a.timers_pending,
                a.dedup_ids
            ),
            (
                b.subscribers,
                b.accounts,
                b.calling_numbers,
                b.cells,
                b.distinct_entries,
                b.timers_pending,
                b.dedup_ids
            )
        );
        // Every subscriber of the demo and every account: identical reports.
        let text =
            std::fs::read_to_string(Path::new(ROOT).join("fixtures/demo/usage.ndjson")).unwrap();
        let mut subs: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["served"]["msisdn"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        subs.sort();
        subs.dedup();
        assert!(subs.len() > 500);
        for s in subs.iter().step_by(7) {
            let t = || Target::Subscriber(Number::parse(s).unwrap());
            assert_eq!(
                report(&whole, t()),
                report(&resumed, t()),
                "subscriber {s}, snapshot after line {split}"
            );
        }
        for i in (1..=491).step_by(5) {
            let id = format!("A-{i}");
            if whole.store.borrow().account(&id).is_some() {
                assert_eq!(
                    report(&whole, Target::Account(id.clone())),
                    report(&resumed, Target::Account(id.clone())),
                    "account {id}"
                );
            }
        }
    }
}
