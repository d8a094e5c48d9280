//! `gen --tap` (issue "Real mediation feeds", part 3): roaming records priced in SDR and delivered
//! up to 34 h late are all applied with the TAP settings, and the default deployment says why not.

mod common;

use std::path::Path;

use cdrguard::demo::gen::{generate, GenConfig};
use cdrguard::modes::replay::{self, ReplayOptions, RulesChoice};
use cdrguard::record::RejectReason;

use common::ROOT;

fn replay(usage: &Path, config: Option<&Path>) -> replay::ReplayReport {
    let opts = ReplayOptions {
        usage: usage.to_path_buf(),
        no_dead_letter: true,
        config: config.map(Path::to_path_buf),
        rules: RulesChoice::Dir(Path::new(ROOT).join("rules")),
        ..Default::default()
    };
    replay::run_to(&opts, &mut Vec::new()).unwrap().0
}

#[test]
fn tap_records_are_applied_with_the_tap_settings() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = GenConfig {
        subscribers: 400,
        records: 20_000,
        days: 4,
        seed: 9,
        tap: true,
        ..GenConfig::default()
    };
    let (mut u, mut e) = (Vec::new(), Vec::new());
    generate(&cfg, &mut u, &mut e).unwrap();
    let text = String::from_utf8(u.clone()).unwrap();
    assert!(text.contains(r#""currency":"XDR""#), "priced in SDR");
    let usage = dir.path().join("u.ndjson");
    std::fs::write(&usage, &u).unwrap();

    let count = |r: &replay::ReplayReport, why| r.counts.rejected.get(&why).copied().unwrap_or(0);
    // The default deployment: no SDR rate.
    let plain = replay(&usage, None);
    assert!(count(&plain, RejectReason::CurrencyMismatch) > 10);

    // The rate, but the 6 h watermark: the late TAP records are refused.
    std::fs::write(dir.path().join("rates.csv"), "XDR,1.20\n").unwrap();
    let rates_only = dir.path().join("rates.toml");
    std::fs::write(&rates_only, "[input]\nexchange_rates = \"rates.csv\"\n").unwrap();
    let late = replay(&usage, Some(&rates_only));
    assert_eq!(count(&late, RejectReason::CurrencyMismatch), 0);
    assert!(
        count(&late, RejectReason::Late) > 10,
        "{:?}",
        late.counts.rejected
    );

    // TAP settings: every record is applied.
    let config = dir.path().join("tap.toml");
    std::fs::write(
        &config,
        "[input]\nexchange_rates = \"rates.csv\"\n[state]\nroaming_allowed_lateness = \"36h\"\ndedup_horizon = \"36h\"\n",
    )
    .unwrap();
    let tap = replay(&usage, Some(&config));
    assert_eq!(tap.counts.rejected_total(), 0, "{:?}", tap.counts.rejected);
    assert_eq!(tap.counts.usage_accepted, text.lines().count() as u64);
}
