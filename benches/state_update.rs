//! State update cost per record with 10⁵ and 10⁶ subscribers, on a warm store.
//!
//! The store is filled first (first-touch page faults are expensive on this VM and are not the steady
//! state); the measured loop then applies records to random existing subscribers, advancing event time
//! like a live stream, so cells roll up and lookups miss the cache as they would in production.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use cdrguard::classify::{Classifier, PrefixList};
use cdrguard::config::StateConfig;
use cdrguard::record::{Decoder, EventTime, Number, UsageRecord};
use cdrguard::state::WindowStore;

fn record(i: u64, subs: u64, t: i64, rng: &mut fastrand::Rng) -> UsageRecord {
    let sub = 33_600_000_000 + rng.u64(0..subs);
    let kind = ["voice", "voice", "sms", "data"][rng.usize(0..4)];
    let dir = if kind == "data" {
        String::new()
    } else {
        format!(r#""direction":"{}","#, if rng.bool() { "mo" } else { "mt" })
    };
    let other = if kind == "data" {
        String::new()
    } else {
        format!(
            r#","other_party":{{"number":"336{:08}"}}"#,
            rng.u32(0..50_000_000)
        )
    };
    let json = format!(
        r#"{{"record_id":"r-{i}","record_type":"{kind}",{dir}"event_start":"{}","duration_s":{},"served":{{"msisdn":"{sub}","account_id":"A-{}"}}{other},"location":{{"cell_id":{}}},"charge":{{"amount":"0.05"}}}}"#,
        EventTime {
            utc: t,
            offset_min: 60
        },
        rng.u32(0..600),
        sub / 2,
        rng.u32(0..5000)
    );
    Decoder::default().usage(json.as_bytes()).unwrap()
}

fn bench(c: &mut Criterion) {
    let list = PrefixList::parse("882\n", "bench").unwrap();
    let classifier = Classifier::new(Number::parse("33").unwrap(), list);
    let mut g = c.benchmark_group("state_update");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    for subs in [100_000u64, 1_000_000] {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut store = WindowStore::new(StateConfig::default());
        let mut t = 1_795_000_000i64;
        // Warm-up: every subscriber gets a few records (3 per subscriber, spread over ~a day).
        for i in 0..subs * 3 {
            t += (86_400 / (subs as i64 * 3)).max(1) * (i as i64 % 2);
            let r = record(i, subs, t, &mut rng);
            let class = classifier.classify(&r);
            store.apply_usage(&r, class);
        }
        let pool: Vec<_> = (0..100_000u64)
            .map(|i| {
                t += 1;
                let r = record(subs * 3 + i, subs, t, &mut rng);
                let class = classifier.classify(&r);
                (r, class)
            })
            .collect();
        let mut next = 0usize;
        g.bench_function(format!("apply_usage/{subs}_subscribers"), |b| {
            b.iter_batched(
                || {
                    // Untimed: a fresh id each time, since a duplicate is a cheap early exit and the
                    // full update is what is measured.
                    next += 1;
                    let (r, class) = &pool[next % pool.len()];
                    let mut r = r.clone();
                    r.record_id = format!("b-{next}").into();
                    (r, *class)
                },
                |(r, class)| store.apply_usage(&r, class),
                BatchSize::SmallInput,
            )
        });
        let size = store.size();
        eprintln!(
            "state_update/{subs}: {} subscribers, {} accounts, {} cells, {:.1} MiB estimated ({} B/subscriber)",
            size.subscribers,
            size.accounts,
            size.cells,
            size.estimated_bytes as f64 / 1048576.0,
            size.estimated_bytes / size.subscribers.max(1)
        );
    }

    // A Wangiri wave: one foreign number rings 100,000 distinct subscribers (short MT calls). Its
    // distinct-victims set grows with every call; each call must stay cheap while it does.
    let mut store = WindowStore::new(StateConfig::default());
    let mut rng = fastrand::Rng::with_seed(9);
    let wave = |i: u64, t: i64| {
        let json = format!(
            r#"{{"record_id":"w-{i}","record_type":"voice","direction":"mt","event_start":"{}","duration_s":1,"answered":false,"served":{{"msisdn":"3360{:07}"}},"other_party":{{"number":"88213000123"}}}}"#,
            EventTime {
                utc: t,
                offset_min: 60
            },
            i % 10_000_000
        );
        Decoder::default().usage(json.as_bytes()).unwrap()
    };
    let mut t = 1_795_000_000i64;
    for i in 0..100_000u64 {
        t += rng.i64(0..2);
        let r = wave(i, t);
        let class = classifier.classify(&r);
        store.apply_usage(&r, class);
    }
    let mut next = 100_000u64;
    g.bench_function("apply_usage/wangiri_caller_100k_victims", |b| {
        b.iter_batched(
            || {
                next += 1;
                let r = wave(next, t);
                let class = classifier.classify(&r);
                (r, class)
            },
            |(r, class)| store.apply_usage(&r, class),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
