//! The cost of the CPU-time budget per rule evaluation (`rules.sandbox.max_eval_ms`): the budget is a
//! progress callback Rhai calls at every operation (it reads a clock only every `CHECK_EVERY`
//! operations). The same script runs in the sandbox engine (`build_engine`: budget on) and in an
//! engine with the same limits and no progress callback; the ratio is the budget's share of
//! evaluation time (target: under 3%).
//!
//! Two scripts: a typical rule's size (~60 operations, as most shipped rules take) and the largest
//! (~600 operations, past the first clock read). Per core, one thread.
//!
//! `cargo bench --bench budget`

use criterion::{criterion_group, criterion_main, Criterion};

use cdrguard::rules::sandbox::{self, SandboxLimits};
use rhai::Engine;

/// The sandbox's limits without its progress callback.
fn without_budget(l: &SandboxLimits) -> Engine {
    let mut e = Engine::new();
    e.set_max_operations(l.max_operations)
        .set_max_call_levels(l.max_call_levels)
        .set_max_expr_depths(l.max_expr_depth, l.max_function_expr_depth)
        .set_max_string_size(l.max_string_size)
        .set_max_array_size(l.max_array_size)
        .set_max_map_size(l.max_map_size)
        .set_max_variables(l.max_variables)
        .set_max_functions(l.max_functions)
        .set_strict_variables(true);
    e
}

const SCRIPT: &str = r#"
fn evaluate(x, n) {
    let s = 0;
    for i in 0..n {
        if i % 3 == 0 { s += i * x; } else { s -= 1; }
    }
    if s > 1000000 { #{ explanation: "never" } }
}
"#;

fn bench(c: &mut Criterion) {
    let limits = SandboxLimits::default();
    let engines = [
        ("budget_on", sandbox::build_engine(&limits)),
        ("budget_off", without_budget(&limits)),
    ];
    for (label, iterations) in [("typical_60_ops", 8_i64), ("large_600_ops", 85)] {
        let mut group = c.benchmark_group(format!("eval_{label}"));
        for (name, engine) in &engines {
            let (ast, mut scope) = sandbox::load(engine, "bench.rhai", SCRIPT).unwrap();
            group.bench_function(*name, |b| {
                b.iter(|| {
                    sandbox::call(engine, &ast, &mut scope, "evaluate", (3_i64, iterations))
                        .unwrap()
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
