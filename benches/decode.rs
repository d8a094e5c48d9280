//! Decode cost per record: JSON bytes → `UsageRecord` (and the classify step that follows it).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use cdrguard::classify::{Classifier, PrefixList};
use cdrguard::record::{Decoder, Number};

const VOICE: &str = r#"{"record_id":"msc1-729081236-0","record_type":"voice","direction":"mo","event_start":"2026-11-21T03:17:05+01:00","duration_s":95,"answered":true,"served":{"msisdn":"33612345678","imsi":"208011234567890","imei":"35698701234567","account_id":"A-1001"},"other_party":{"number":"88213000123"},"location":{"cell_id":4353,"lat":48.85,"lon":2.35},"roaming":{"is_roaming":false,"visited_plmn":null},"forwarding":{"forwarded_to_number":null},"volume":{"bytes_up":0,"bytes_down":0},"charge":{"amount":"1.25","currency":"EUR"}}"#;
const DATA: &str = r#"{"record_id":"pgw-19283-7","record_type":"data","event_start":"2026-11-21T14:02:11+01:00","duration_s":1800,"served":{"msisdn":"33698765432","account_id":"A-77"},"location":{"cell_id":99812},"volume":{"bytes_up":1048576,"bytes_down":20971520},"charge":{"amount":0}}"#;
const BAD: &str = r#"{"record_id":"msc1-1","record_type":"voice","direction":"mo","event_start":"2026-11-21T03:17:05","served":{"msisdn":"33612345678"}}"#;

fn bench(c: &mut Criterion) {
    let d = Decoder::default();
    let list = PrefixList::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/rules/lists/high_risk_prefixes.txt"
    )))
    .unwrap();
    let classifier = Classifier::new(Number::parse("33").unwrap(), list);
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("usage_voice_full", |b| {
        b.iter(|| d.usage(std::hint::black_box(VOICE.as_bytes())).unwrap())
    });
    g.bench_function("usage_data_minimal", |b| {
        b.iter(|| d.usage(std::hint::black_box(DATA.as_bytes())).unwrap())
    });
    g.bench_function("usage_rejected_with_path", |b| {
        b.iter(|| d.usage(std::hint::black_box(BAD.as_bytes())).unwrap_err())
    });
    let rec = d.usage(VOICE.as_bytes()).unwrap();
    g.bench_function("classify", |b| {
        b.iter(|| classifier.classify(std::hint::black_box(&rec)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
