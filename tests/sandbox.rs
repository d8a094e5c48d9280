//! Hostile rule scripts (fixtures/rules/hostile/) are stopped by the sandbox with a precise error, and
//! the engine goes on evaluating other scripts.

use cdrguard::rules::sandbox::{self, expect_map_or_unit, load};
use cdrguard::rules::{build_engine, Limit, SandboxLimits, ScriptError};

/// What a hostile script's error must look like.
type Expectation = Box<dyn Fn(&ScriptError) -> bool>;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/rules/hostile");

fn run(engine: &rhai::Engine, name: &str, arg: i64) -> Result<Option<rhai::Map>, ScriptError> {
    let file = format!("{DIR}/{name}.rhai");
    let source = std::fs::read_to_string(&file).unwrap();
    let (ast, mut scope) = load(engine, &format!("{name}.rhai"), &source)?;
    let value = sandbox::call(engine, &ast, &mut scope, "evaluate", (arg,))?;
    expect_map_or_unit(value)
}

#[test]
fn each_hostile_script_fails_with_its_precise_error_and_the_engine_goes_on() {
    let engine = build_engine(&SandboxLimits::default());
    let cases: Vec<(&str, Expectation)> = vec![
        (
            "infinite_loop",
            Box::new(|e| {
                matches!(
                    e,
                    ScriptError::Limit {
                        limit: Limit::Operations,
                        ..
                    }
                )
            }),
        ),
        // Rhai raises stack overflow with no position at all (checked against rhai 1.27), so only the
        // kind can be asserted here.
        (
            "deep_recursion",
            Box::new(|e| {
                matches!(
                    e,
                    ScriptError::Limit {
                        limit: Limit::CallDepth,
                        ..
                    }
                )
            }),
        ),
        (
            "giant_string",
            Box::new(|e| {
                matches!(
                    e,
                    ScriptError::Limit {
                        limit: Limit::DataSize,
                        ..
                    }
                )
            }),
        ),
        (
            "giant_array",
            Box::new(|e| {
                matches!(
                    e,
                    ScriptError::Limit {
                        limit: Limit::DataSize,
                        ..
                    }
                )
            }),
        ),
        (
            "uses_eval",
            Box::new(
                |e| matches!(e, ScriptError::Compile { line: 3, message, .. } if message.contains("eval")),
            ),
        ),
        (
            "imports_module",
            Box::new(
                |e| matches!(e, ScriptError::Import { line: 2, module, .. } if module == "hostile_helpers"),
            ),
        ),
        (
            "division_by_zero",
            Box::new(
                |e| matches!(e, ScriptError::Runtime { line: 4, message, .. } if message.contains("Division by zero")),
            ),
        ),
        (
            "wrong_return_type",
            Box::new(|e| matches!(e, ScriptError::BadReturn { got, .. } if got == "string")),
        ),
        (
            "undeclared_variable",
            Box::new(
                |e| matches!(e, ScriptError::Compile { line: 4, message, .. } if message.contains("cals")),
            ),
        ),
    ];
    for (name, expected) in &cases {
        let err = run(&engine, name, 1).expect_err(name);
        assert!(expected(&err), "{name}: unexpected error {err:?} ({err})");
        // The same engine still evaluates a good rule after each failure.
        let ok = run(&engine, "good", 5).unwrap().expect("an alert");
        assert_eq!(ok["severity"].clone().into_string().unwrap(), "high");
        assert!(run(&engine, "good", 1).unwrap().is_none());
    }
}

#[test]
fn limits_are_explicit_not_build_dependent() {
    // Rhai's own defaults differ between debug and release; ours do not, so this holds in both.
    let engine = build_engine(&SandboxLimits {
        max_operations: 50,
        ..SandboxLimits::default()
    });
    let src = "fn evaluate(x) { let n = 0; for i in 0..x { n += i; } n }";
    let (ast, mut scope) = load(&engine, "t.rhai", src).unwrap();
    assert!(sandbox::call(&engine, &ast, &mut scope, "evaluate", (5_i64,)).is_ok());
    let err = sandbox::call(&engine, &ast, &mut scope, "evaluate", (1000_i64,)).unwrap_err();
    assert!(
        matches!(
            err,
            ScriptError::Limit {
                limit: Limit::Operations,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(engine.max_operations(), 50);
    assert_eq!(engine.max_call_levels(), 16);
    assert_eq!(engine.max_string_size(), 4096);
}
