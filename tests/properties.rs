//! Property tests of everything that reads outside input: the usage and event decoders (random bytes,
//! and mutations of real records), the config and params parsers (mutations of the shipped files),
//! and the snapshot reader (bit flips and truncations of a real partition snapshot, and of its payload
//! past the checksum). None may panic; every reject carries a reason.
//!
//! Cases per property: `CDRGUARD_PROPTEST_CASES` (default 2,000, so that the fast suite stays fast;
//! 100,000 each were run for issue 14 — see its closing note).

mod common;

use std::path::Path;
use std::sync::OnceLock;

use cdrguard::config::Config;
use cdrguard::durability::checkpoint::{self, PartitionState, PartitionStateRef};
use cdrguard::durability::snapshot::{self, Loaded, SnapshotKind};
use cdrguard::modes::replay::{self, ReplayOptions, RulesChoice};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("CDRGUARD_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Real records to mutate: the demo fixtures' first lines.
fn records(file: &str) -> Vec<Vec<u8>> {
    std::fs::read_to_string(common::fixture(&format!("fixtures/demo/{file}")))
        .unwrap()
        .lines()
        .take(200)
        .map(|l| l.as_bytes().to_vec())
        .collect()
}

static USAGE: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
static EVENTS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();

/// A mutation of `base`: bytes replaced, inserted or removed, or the text cut.
fn mutate(base: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut b = base.to_vec();
    for &(at, kind, byte) in edits {
        if b.is_empty() {
            b.push(byte);
            continue;
        }
        let at = at % b.len();
        match kind % 4 {
            0 => b[at] = byte,
            1 => b.insert(at, byte),
            2 => {
                b.remove(at);
            }
            _ => b.truncate(at),
        }
    }
    b
}

fn edits() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn decoders_take_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let d = Config::default().decoder();
        if let Err(r) = d.usage(&bytes) {
            prop_assert!(!r.reason.as_str().is_empty());
        }
        if let Err(r) = d.account_event(&bytes) {
            prop_assert!(!r.reason.as_str().is_empty());
        }
    }

    #[test]
    fn decoders_take_mutated_records(i in 0usize..200, e in edits()) {
        let d = Config::default().decoder();
        let usage = USAGE.get_or_init(|| records("usage.ndjson"));
        let events = EVENTS.get_or_init(|| records("events.ndjson"));
        let u = mutate(&usage[i % usage.len()], &e);
        if let Err(r) = d.usage(&u) {
            prop_assert!(!r.detail.is_empty() || !r.reason.as_str().is_empty());
        }
        let ev = mutate(&events[i % events.len()], &e);
        let _ = d.account_event(&ev);
    }

    #[test]
    fn config_and_params_parsers_take_mutated_files(e in edits()) {
        static FILES: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
        let (config, params) = FILES.get_or_init(|| {
            let readme = common::readme_toml("## Configuration").remove(0).into_bytes();
            let params = std::fs::read(common::fixture("rules/params.toml")).unwrap();
            (readme, params)
        });
        let text = String::from_utf8_lossy(&mutate(config, &e)).to_string();
        if let Ok(c) = Config::parse(&text) {
            let _ = c.validate();
        }
        let text = String::from_utf8_lossy(&mutate(params, &e)).to_string();
        let _ = cdrguard::rules::params::Params::parse(&text);
    }

    #[test]
    fn the_snapshot_reader_takes_damaged_files(e in edits()) {
        let (file, payload) = snapshot_bytes();
        let path = Path::new("p.snap");
        // Damaged anywhere: refused by the checksum or the header checks, never a panic.
        if let Ok(loaded) = Loaded::from_bytes(path, mutate(file, &e)) {
            let _ = loaded.payload::<PartitionState>();
        }
        // Damaged past the checksum (a bug, or a checksum collision): the decoder itself refuses.
        let _ = postcard::from_bytes::<PartitionState>(&mutate(payload, &e));
    }
}

/// A real partition snapshot (file bytes) and its payload alone: the demo usage replayed with the
/// shipped rules.
fn snapshot_bytes() -> &'static (Vec<u8>, Vec<u8>) {
    static BYTES: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    BYTES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let usage = dir.path().join("usage.ndjson");
        let head: String = std::fs::read_to_string(common::fixture("fixtures/demo/usage.ndjson"))
            .unwrap()
            .lines()
            .take(2000)
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&usage, head).unwrap();
        let opts = ReplayOptions {
            usage,
            no_dead_letter: true,
            rules: RulesChoice::Dir(common::fixture("rules")),
            ..Default::default()
        };
        let (_, pipeline) = replay::run_to(&opts, &mut std::io::sink()).unwrap();
        pipeline.with_state(|store, memory| {
            let state = PartitionStateRef {
                store,
                memory,
                highs: [0, 0],
                calls: None,
            };
            let header = checkpoint::header(SnapshotKind::Partition(0), vec![], store);
            (
                snapshot::encode(&header, &state).unwrap(),
                postcard::to_allocvec(&state).unwrap(),
            )
        })
    })
}
