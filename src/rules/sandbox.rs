//! The Rhai sandbox: the one place an engine for rule scripts is built, and the one place script
//! failures are classified.
//!
//! Rule scripts are written by risk analysts and hot-reloaded into a process that handles every CDR of
//! the operator, so a script must never hang, exhaust memory, read files or pull in code. Every limit is
//! set explicitly here (Rhai's defaults differ between debug and release builds, so relying on them
//! would make tests and production disagree): operations per call, call depth, expression depth,
//! string/array/map sizes, variables and functions; `eval` is disabled; `import` resolves nothing (a
//! resolver that finds no module, so the error names the module the analyst tried); variables must be declared (a typo is a compile error, not a silent `()`);
//! `print`/`debug` go to the log, never to stdout, at most `PRINT_LINES_PER_S` lines a second.
//!
//! **Time budget.** The operation limit does not bound time: one operation can be a native call that
//! sorts a thousand items. Every evaluation also has a CPU-time budget (`max_eval_ms`), checked every
//! `CHECK_EVERY` operations from Rhai's progress callback, which Rhai calls at every operation: the
//! callback is a mask test, and the check itself is out of line (inlined, its frame set-up ran at
//! every operation and cost 7% of a loop-heavy evaluation; now under 3%, `benches/budget.rs`). CPU
//! time of the worker thread, not wall-clock time: a wall-clock budget would stop an ordinary
//! evaluation whenever the thread is preempted on a busy machine, and which alerts are raised would
//! depend on the load. Reading the thread's CPU clock is a system call (~0.5 µs here, against ~25 ns
//! for `Instant`), so the wall clock is read at each checkpoint from the first (most evaluations end
//! before it), and the CPU clock only once the evaluation has run `CPU_FROM` of wall-clock time, and
//! after that only once the wall clock says the budget may be spent. CPU time is counted from that
//! first read, so an evaluation is stopped once it has used `max_eval_ms` of CPU time plus what
//! ran before the first checkpoint past `CPU_FROM` (at most `CPU_FROM` and one checkpoint interval
//! of operations). That uncounted part holds less CPU time on a busy machine, so an evaluation
//! within a millisecond or so above the budget may be stopped under load and not on an idle
//! machine; one under the budget is never stopped, whatever the load. A rule stopped by the budget fails like any other limit: counted,
//! logged with its position, quarantined when it keeps failing.

use std::cell::Cell;
use std::fmt;
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine, EvalAltResult, Position, Scope, AST};

/// Resource limits for one rule evaluation. Defaults fit the shipped rule catalogue with a wide margin
/// (the largest rule runs in a few hundred operations).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxLimits {
    /// Operations per call (a loop iteration, an expression, a function call each count). Default 100,000.
    pub max_operations: u64,
    /// Nested function calls (recursion depth). Default 16.
    pub max_call_levels: usize,
    /// Nesting depth of expressions at top level / inside functions. Defaults 64 / 32.
    pub max_expr_depth: usize,
    pub max_function_expr_depth: usize,
    /// Longest string, in bytes. Default 4,096.
    pub max_string_size: usize,
    /// Largest array / object map. Defaults 1,024 / 256.
    pub max_array_size: usize,
    pub max_map_size: usize,
    /// Variables in scope / functions defined per script. Defaults 256 / 64.
    pub max_variables: usize,
    pub max_functions: usize,
    /// CPU time one evaluation may take, in milliseconds. Default 20 (the slowest shipped rule takes
    /// ~0.03 ms at p99). 0 is refused.
    pub max_eval_ms: u64,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            max_operations: 100_000,
            max_call_levels: 16,
            max_expr_depth: 64,
            max_function_expr_depth: 32,
            max_string_size: 4096,
            max_array_size: 1024,
            max_map_size: 256,
            max_variables: 256,
            max_functions: 64,
            max_eval_ms: 20,
        }
    }
}

/// Operations between two looks at the clock.
const CHECK_EVERY: u64 = 256;

/// Lines of script output (`print`, `debug`) logged per second; the rest are counted.
const PRINT_LINES_PER_S: u64 = 20;

/// Wall-clock time an evaluation runs before its CPU time is counted (see the module docs).
const CPU_FROM: Duration = Duration::from_millis(1);

/// Where the evaluation running on this thread stands against its time budget: the wall clock at
/// its first checkpoint, and both clocks once its CPU time is counted. Rhai counts operations from
/// 0 in every call, so the first checkpoint of a call is recognisable and nothing is done per call
/// — most evaluations never reach it.
#[derive(Clone, Copy)]
struct EvalClock {
    started: Instant,
    counted: Option<(Instant, Duration)>,
}

thread_local! {
    static CLOCK: Cell<Option<EvalClock>> = const { Cell::new(None) };
}

fn thread_cpu() -> Duration {
    cpu_time::ThreadTime::now().as_duration()
}

/// At a checkpoint (`ops` a multiple of `CHECK_EVERY`): true when the evaluation on this thread has
/// spent more CPU time than `budget` since its CPU time was first counted. Out of line: inlined,
/// its frame set-up would run at every operation, not every `CHECK_EVERY`.
#[cold]
#[inline(never)]
fn over_budget(ops: u64, budget: Duration) -> bool {
    if ops == CHECK_EVERY {
        let started = Instant::now();
        CLOCK.with(|c| {
            c.set(Some(EvalClock {
                started,
                counted: None,
            }))
        });
        return false;
    }
    let Some(c) = CLOCK.with(Cell::get) else {
        return false;
    };
    match c.counted {
        None => {
            let now = Instant::now();
            if now.duration_since(c.started) >= CPU_FROM {
                let counted = Some((now, thread_cpu()));
                CLOCK.with(|cell| cell.set(Some(EvalClock { counted, ..c })));
            }
            false
        }
        // The wall clock bounds the CPU time from above: only then is the CPU clock worth reading.
        Some((at, cpu)) => at.elapsed() > budget && thread_cpu().saturating_sub(cpu) > budget,
    }
}

/// Script output, rate-limited: a script printing in a loop must not fill the disk.
fn script_output(text: &str, debug: bool) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SECOND: AtomicU64 = AtomicU64::new(0);
    static LINES: AtomicU64 = AtomicU64::new(0);
    static DROPPED: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if SECOND.swap(now, Ordering::Relaxed) != now {
        LINES.store(0, Ordering::Relaxed);
    }
    if LINES.fetch_add(1, Ordering::Relaxed) >= PRINT_LINES_PER_S {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let dropped = DROPPED.swap(0, Ordering::Relaxed);
    if debug {
        tracing::debug!(target: "cdrguard::rules::debug", dropped, "{text}");
    } else {
        tracing::info!(target: "cdrguard::rules::print", dropped, "{text}");
    }
}

/// Builds the engine every rule runs in: every limit and the CPU-time budget. This is the only
/// constructor of `rhai::Engine` in cdrguard (through `build_unwatched_engine`).
pub fn build_engine(limits: &SandboxLimits) -> Engine {
    let mut engine = build_unwatched_engine(limits);
    let budget = Duration::from_millis(limits.max_eval_ms.max(1));
    engine.on_progress(move |ops| {
        (ops % CHECK_EVERY == 0 && over_budget(ops, budget))
            .then(|| Dynamic::from(budget.as_millis() as i64))
    });
    engine
}

/// The same engine without the time budget: what `benches/budget.rs` measures the budget against.
/// Rules never run in it.
pub fn build_unwatched_engine(limits: &SandboxLimits) -> Engine {
    let mut engine = Engine::new();
    engine
        .set_max_operations(limits.max_operations)
        .set_max_call_levels(limits.max_call_levels)
        .set_max_expr_depths(limits.max_expr_depth, limits.max_function_expr_depth)
        .set_max_string_size(limits.max_string_size)
        .set_max_array_size(limits.max_array_size)
        .set_max_map_size(limits.max_map_size)
        .set_max_variables(limits.max_variables)
        .set_max_functions(limits.max_functions)
        .set_strict_variables(true);
    engine.disable_symbol("eval");
    engine.set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
    engine.on_print(|text| script_output(text, false));
    engine.on_debug(|text, source, pos| {
        let at = format!(
            "{}:{}: {text}",
            source.unwrap_or(""),
            pos.line().unwrap_or(0)
        );
        script_output(&at, true)
    });
    engine
}

/// What went wrong in a script, precise enough to count per rule and to show an analyst.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScriptError {
    /// The script does not compile (syntax, undeclared variable, `eval`).
    Compile {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// A sandbox limit stopped the script.
    Limit {
        limit: Limit,
        line: usize,
        column: usize,
    },
    /// `import` of any module.
    Import {
        line: usize,
        column: usize,
        module: String,
    },
    /// The script threw or failed at run time (division by zero, a missing function, `throw`).
    Runtime {
        line: usize,
        column: usize,
        message: String,
    },
    /// The script returned something its caller cannot use.
    BadReturn { expected: &'static str, got: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Operations,
    Time,
    CallDepth,
    ExpressionDepth,
    DataSize,
    Variables,
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let ScriptError::Compile { file, .. } = self {
            write!(f, "{file}:")?;
        }
        let (line, column) = self.position();
        // Some failures (stack overflow, a bad return value) come without a position.
        if line > 0 {
            write!(f, "{line}:{column}: ")?;
        }
        f.write_str(&self.detail())
    }
}

impl ScriptError {
    /// What went wrong, without the position.
    pub fn detail(&self) -> String {
        match self {
            ScriptError::Compile { message, .. } | ScriptError::Runtime { message, .. } => {
                message.clone()
            }
            ScriptError::Limit { limit, .. } => {
                let what = match limit {
                    Limit::Operations => "too many operations (runaway loop?)",
                    Limit::Time => {
                        "over the CPU-time budget of one evaluation (rules.sandbox.max_eval_ms)"
                    }
                    Limit::CallDepth => "calls nested too deep (runaway recursion?)",
                    Limit::ExpressionDepth => "expression nested too deep",
                    Limit::DataSize => "string, array or map too large",
                    Limit::Variables => "too many variables",
                };
                format!("sandbox limit: {what}")
            }
            ScriptError::Import { module, .. } => {
                format!("import of {module:?} is not allowed in rules")
            }
            ScriptError::BadReturn { expected, got } => {
                format!("returned {got}, expected {expected}")
            }
        }
    }

    /// Line and column of the failure (0, 0 when Rhai gives none).
    pub fn position(&self) -> (usize, usize) {
        match self {
            ScriptError::Compile { line, column, .. }
            | ScriptError::Limit { line, column, .. }
            | ScriptError::Import { line, column, .. }
            | ScriptError::Runtime { line, column, .. } => (*line, *column),
            ScriptError::BadReturn { .. } => (0, 0),
        }
    }

    /// A short stable name for counting errors by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            ScriptError::Compile { .. } => "compile",
            ScriptError::Limit { limit, .. } => match limit {
                Limit::Operations => "limit_operations",
                Limit::Time => "limit_time",
                Limit::CallDepth => "limit_call_depth",
                Limit::ExpressionDepth => "limit_expression_depth",
                Limit::DataSize => "limit_data_size",
                Limit::Variables => "limit_variables",
            },
            ScriptError::Import { .. } => "import",
            ScriptError::Runtime { .. } => "runtime",
            ScriptError::BadReturn { .. } => "bad_return",
        }
    }
}

fn line_col(p: Position) -> (usize, usize) {
    (p.line().unwrap_or(0), p.position().unwrap_or(0))
}

/// Classifies a run-time failure. Errors inside functions arrive wrapped (`ErrorInFunctionCall`): the
/// innermost cause and position are the useful ones.
pub fn classify(err: &EvalAltResult) -> ScriptError {
    let mut err = err;
    // Some causes (stack overflow) carry no position: then the innermost call site that has one.
    let mut pos = err.position();
    while let EvalAltResult::ErrorInFunctionCall(_, _, inner, at) = err {
        if !at.is_none() {
            pos = *at;
        }
        err = inner;
    }
    if !err.position().is_none() {
        pos = err.position();
    }
    let (line, column) = line_col(pos);
    let limit = |limit| ScriptError::Limit {
        limit,
        line,
        column,
    };
    match err {
        EvalAltResult::ErrorTooManyOperations(..) => limit(Limit::Operations),
        EvalAltResult::ErrorTerminated(..) => limit(Limit::Time),
        EvalAltResult::ErrorStackOverflow(..) => limit(Limit::CallDepth),
        EvalAltResult::ErrorDataTooLarge(..) => limit(Limit::DataSize),
        EvalAltResult::ErrorTooManyVariables(..) => limit(Limit::Variables),
        EvalAltResult::ErrorModuleNotFound(m, ..) => ScriptError::Import {
            line,
            column,
            module: m.clone(),
        },
        EvalAltResult::ErrorTooManyModules(..) => ScriptError::Import {
            line,
            column,
            module: String::new(),
        },
        EvalAltResult::ErrorParsing(rhai::ParseErrorType::ExprTooDeep, ..) => {
            limit(Limit::ExpressionDepth)
        }
        other => ScriptError::Runtime {
            line,
            column,
            message: other.to_string(),
        },
    }
}

/// Compiles a script and runs its top level once (where rules declare their metadata), so that an
/// `import` or a failing top-level statement is refused at load time, not on the first record.
pub fn load(
    engine: &Engine,
    file: &str,
    source: &str,
) -> Result<(AST, Scope<'static>), ScriptError> {
    let ast = engine.compile(source).map_err(|e| {
        let (line, column) = line_col(e.position());
        let message = match e.err_type() {
            rhai::ParseErrorType::ExprTooDeep => {
                "expression nested too deep (sandbox limit)".to_string()
            }
            other => other.to_string(),
        };
        ScriptError::Compile {
            file: file.to_string(),
            line,
            column,
            message,
        }
    })?;
    let mut scope = Scope::new();
    engine
        .run_ast_with_scope(&mut scope, &ast)
        .map_err(|e| classify(&e))?;
    Ok((ast, scope))
}

/// Calls `function` of a loaded script without re-running its top level.
pub fn call(
    engine: &Engine,
    ast: &AST,
    scope: &mut Scope,
    function: &str,
    args: impl rhai::FuncArgs,
) -> Result<Dynamic, ScriptError> {
    let options = rhai::CallFnOptions::new()
        .eval_ast(false)
        .rewind_scope(true);
    engine
        .call_fn_with_options::<Dynamic>(options, scope, ast, function, args)
        .map_err(|e| classify(&e))
}

/// A rule's verdict must be nothing (`()`) or an object map describing the alert.
pub fn expect_map_or_unit(value: Dynamic) -> Result<Option<rhai::Map>, ScriptError> {
    if value.is_unit() {
        return Ok(None);
    }
    let got = value.type_name().to_string();
    value
        .try_cast::<rhai::Map>()
        .map(Some)
        .ok_or(ScriptError::BadReturn {
            expected: "() or an object map",
            got,
        })
}
