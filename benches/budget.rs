//! The cost of the CPU-time budget per rule evaluation (`rules.sandbox.max_eval_ms`; target: under
//! 3% of evaluation time).
//!
//! The budget is Rhai's progress callback, called at every operation. Scripts that loop, from
//! every-operation-is-script (the worst case: nothing but callback overhead beside each operation)
//! to native-call-heavy, run three ways: in the sandbox engine (`build_engine`), in the same engine
//! without the callback (`build_unwatched_engine`), and in that one with a callback that does
//! nothing (what Rhai's callback costs by itself, the floor of any budget Rhai can enforce).
//!
//! Paired rounds, not criterion: criterion measures one variant after the other, minutes apart, and
//! on this noisy 2-vCPU machine the drift between them (up to ±10%) is larger than the effect.
//! Here each round times a block of evaluations of each variant back to back, and the figure is
//! the median over rounds. Per core, one thread.
//!
//! `cargo bench --bench budget`

use std::time::Instant;

use cdrguard::rules::sandbox::{self, SandboxLimits};
use rhai::Engine;

/// Every operation a script operation: nothing but callback overhead beside each.
const ARITHMETIC: &str = r#"fn evaluate(x, n) {
    let s = 0;
    for i in 0..n { if i % 3 == 0 { s += i * x; } else { s -= 1; } }
    if s > 1000000 { #{ explanation: "never" } }
}"#;

/// `n` sets the loop count.
const SCRIPTS: [(&str, &str, i64); 3] = [
    ("arithmetic, ~90 ops", ARITHMETIC, 8),
    ("arithmetic, ~830 ops, 3 checkpoints", ARITHMETIC, 85),
    (
        "strings and arrays, ~800 ops",
        r#"fn evaluate(x, n) {
            let seen = [];
            for i in 0..n {
                let d = `+88${i * x}`;
                if d.starts_with("+88") && !seen.contains(d) { seen.push(d); }
            }
            if seen.len() > 1000 { #{ explanation: `${seen.len()} numbers` } }
        }"#,
        30,
    ),
];

const ROUNDS: usize = 1500;
const PER_BLOCK: usize = 200;

fn main() {
    // `cargo bench` passes `--bench`; a filter, if any, is ignored.
    let limits = SandboxLimits::default();
    let mut empty_callback = sandbox::build_unwatched_engine(&limits);
    empty_callback.on_progress(|_| None);
    let engines: [(&str, Engine); 3] = [
        ("no budget", sandbox::build_unwatched_engine(&limits)),
        ("budget", sandbox::build_engine(&limits)),
        ("empty callback", empty_callback),
    ];
    println!(
        "{:<34} {:>12} {:>12} {:>16} {:>8} {:>10}",
        "script", "no budget", "budget", "empty callback", "budget", "callback"
    );
    for (label, script, n) in SCRIPTS {
        let mut loaded: Vec<_> = engines
            .iter()
            .map(|(_, e)| sandbox::load(e, "bench.rhai", script).expect("bench script loads"))
            .collect();
        let mut times = vec![Vec::with_capacity(ROUNDS); engines.len()];
        for _ in 0..ROUNDS {
            for (k, (_, engine)) in engines.iter().enumerate() {
                let (ast, scope) = &mut loaded[k];
                let t = Instant::now();
                for _ in 0..PER_BLOCK {
                    let r = sandbox::call(engine, ast, scope, "evaluate", (3_i64, n));
                    let _ = std::hint::black_box(r.expect("bench script runs"));
                }
                times[k].push(t.elapsed().as_nanos() as f64 / PER_BLOCK as f64);
            }
        }
        // Per round, the ratio to the unwatched engine in that round; then medians.
        let ratio = |k: usize| {
            let mut r: Vec<f64> = (0..ROUNDS).map(|i| times[k][i] / times[0][i]).collect();
            median(&mut r)
        };
        let (budget, callback) = (ratio(1), ratio(2));
        let ns: Vec<f64> = times.iter_mut().map(|t| median(t)).collect();
        println!(
            "{label:<34} {:>9.0} ns {:>9.0} ns {:>13.0} ns {:>+7.1}% {:>+9.1}%",
            ns[0],
            ns[1],
            ns[2],
            (budget - 1.0) * 100.0,
            (callback - 1.0) * 100.0
        );
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
