//! Gates: the guards at the top of a rule script, read from its AST when the rule is loaded and
//! evaluated natively before the script is called. Most evaluations end at the first
//! `if … { return; }`; when the gate sees that guard hold, the interpreter is not called at all.
//!
//! ```rhai
//! fn evaluate(rec, sub, acct, params) {
//!     let calls = sub.count("voice.mo.high_risk", "1h");      // Bind: a pure read, literal args
//!     let minutes = sub.minutes("voice.mo.high_risk", "1h");  // Bind
//!     if calls < params.min_calls && minutes < params.min_minutes { return; }   // Exit
//!     ...                                                     // the script from here on
//! ```
//!
//! **Sound by construction, or no gate.** A gate answers `Skip` only when the script, run at the
//! same moment, would return nothing, raise no error and change nothing. So only what can be
//! evaluated exactly as Rhai does is recognised, and anything else ends the gate where it stands
//! (the guards before it still count; with none, the rule has no gate and runs as before):
//! - leading `let x = view.feature("literal", …);` of the pure accessors of `api::Accessor`, read by
//!   the very functions the script calls (one function serves both), on the rule's entity or account
//!   view, neither rebound before; an accessor a script function's name could shadow is refused;
//! - `if <condition> { return; }` with no `else`, the condition built from `&&`, `||`, `!` and the
//!   six comparisons of such reads, of those `let`s, of `params.name` (the rule's parameter table,
//!   read as the `params` indexer reads it) and of integer and float literals;
//! - comparisons as Rhai 1.27 computes them (`compare`): integers exactly, and a float on either side
//!   with Rhai's relative epsilon (`9.999999999999999 < 10.0` is false in Rhai, true in Rust);
//! - a guard's `||` may end in a part the gate cannot read: its leading parts are still a sufficient
//!   condition (Rhai short-circuits), but such a guard is the gate's last.
//!
//! At run time anything the gate cannot tell — a read that would fail (a window beyond
//! `state.max_window`), a parameter that is missing or not a number — makes it answer `Run`: the
//! script runs and fails or decides as it always did. A gate is only built when the sandbox limits
//! leave the script's own guard path room to run (`fits`): with tight limits the script could fail
//! on an operation count where the gate would not.
//!
//! **Counting.** A skipped evaluation is still an evaluation: it counts in `RuleStats::evaluations`
//! (and the engine's), in the quarantine's recent blocks and in the latency histogram (the gate's own
//! time), exactly as the script returning nothing would; `RuleStats::gated` (and
//! `EngineCounters::gated`) count those of them the gate decided. Debug builds (and so every test)
//! run the script after a `Skip` as well and panic if it answers anything but nothing
//! (`engine::VERIFY_GATES`).
//!
//! ## The shipped rules (2026-12)
//!
//! | rule | gate | why not (further) |
//! |---|---|---|
//! | `irsf_high_risk_destination` | 1 guard: `calls < min_calls && minutes < min_minutes` | next: `let severity = if …` |
//! | `pbx_off_hours_international` | 1 guard: `minutes < min_minutes` (account minutes) | next: the verdict map |
//! | `roaming_high_usage` | 1 guard: `charges < min_charges` | next: the verdict |
//! | `simbox_behaviour` | 1 guard: `mo < min_mo_calls` | next: `let ratio = mo.to_float() / (mt + 1)`, arithmetic |
//! | `impossible_travel` | 2 guards: `km <= min_km`, then `kmh <= min_kmh` | none: both guards are the gate |
//! | `usage_spike_in_arrears` | 1 guard: `recent < min_charges` | next: `rec.time - … - acct.first_seen`, a record field and arithmetic |
//! | `early_life_high_usage` | 1 guard: `age < 0.0 \|\| age >= max_age_days` (`acct.age_days()`) | next: `let by_minutes = minutes >= …`, a `let` of a comparison |
//! | `bill_shock` | part of its guard: `recent < min_charges` | the guard's `\|\| sub.first_seen > rec.time - 604800` reads the record, with arithmetic |
//! | `sms_sim_farm` | none | its reads are followed by `let window = if … else { return; }`, not a guard of the recognised form |
//! | `wangiri_inbound` | none | first guard `listed("wangiri_whitelist", rec.other_number)`: a list lookup of a record field |
//! | `wangiri_callback` | none | `!alerted("wangiri_inbound", rec.destination, …)`: alert memory and a record field |
//! | `call_forwarding_high_risk` | none | `!rec.forwarded \|\| listed(…)`: record fields |
//! | `simultaneous_calls` | none | `rec.duration_s == 0`: a record field |
//! | `credit_limit_exceeded` | none | `exposure < params.exceed_share * limit`: arithmetic (and `exposure()`, `credit_limit()` are not gate accessors) |
//! | `credit_limit_warning` | never | `!edge("above_warning", …)`: `edge` has a side effect (it latches) |
//! | `invoice_overdue` | none | `acct.invoice_remaining(timer.invoice_id)`: an argument read from the trigger |
//! | `payment_reversal` | none | `acct.payment_time(ev.reversed_payment_id)` and `let … = if …`: a trigger field, a branch |
//!
//! Eight of the seventeen are gated (`shipped_rules_are_gated_as_the_survey_says` keeps this table
//! honest). The cheapest next steps, each still exact: numeric record getters (`rec.duration_s`,
//! `rec.time`) for rules whose trigger is always a usage record; `*`, `+`, `-` with Rhai's checked
//! integer arithmetic (an overflow or a division by zero is `Run`); the ledger reads `exposure()`
//! and `credit_limit()`. Together they would gate `simultaneous_calls`, `credit_limit_exceeded`,
//! the rest of `bill_shock`'s guard and the second guards of `usage_spike_in_arrears` and
//! `simbox_behaviour`.

use rhai::{ASTFlags, ASTNode, Expr, ImmutableString, Stmt, AST};

use crate::record::EntityType;

use super::api::{Accessor, AccountView, ParamTable, Reading, View};
use super::placement::function_only;
use super::sandbox::SandboxLimits;

/// What the gate says about one evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A guard at the top of the script holds: the script would return nothing, without an error
    /// and without a side effect. It is not called.
    Skip,
    /// No guard holds, or the gate cannot tell: the script runs.
    Run,
}

/// `let`s a gate keeps values of (more end the gate there).
const MAX_LOCALS: usize = 8;

/// AST nodes a gate reads at most: its guard path then runs well within `fits`'s operation bound.
const MAX_NODES: usize = 48;

/// A value as the script sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Value {
    Int(i64),
    Float(f64),
}

impl From<Reading> for Value {
    fn from(r: Reading) -> Self {
        match r {
            Reading::Int(i) => Value::Int(i),
            Reading::Float(f) => Value::Float(f),
        }
    }
}

/// Which argument of `evaluate` an accessor is called on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Receiver {
    /// The second: the entity (an account view for an account rule).
    Entity,
    /// The third: the account.
    Account,
}

/// A pure read with literal arguments.
#[derive(Clone, Debug)]
struct Read {
    accessor: Accessor,
    on: Receiver,
    args: Box<[ImmutableString]>,
}

#[derive(Clone, Debug)]
enum Operand {
    /// The value of the gate's n-th `let`.
    Local(usize),
    /// A read made where the condition reaches it.
    Read(Read),
    /// `params.name`.
    Param(String),
    Literal(Value),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Debug)]
enum Cond {
    Compare(Cmp, Operand, Operand),
    Not(Box<Cond>),
    /// `&&`, left to right, short-circuit.
    All(Vec<Cond>),
    /// `||`, left to right, short-circuit.
    Any(Vec<Cond>),
}

#[derive(Clone, Debug)]
enum Step {
    /// `let x = <read>;`
    Bind(Read),
    /// `if <cond> { return; }`
    Exit(Cond),
}

/// The guards at the top of one rule's `evaluate`, evaluated natively.
#[derive(Clone, Debug)]
pub struct Gate {
    steps: Vec<Step>,
    /// `if … { return; }` statements read.
    pub guards: usize,
    /// The last guard is read in part (the leading terms of an `||`).
    pub partial: bool,
    /// Why the gate ends where it does (its line in the script, and what it cannot read there).
    pub ends: String,
}

/// Why a rule has no gate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoGate(pub String);

/// What a gate reads at one evaluation.
pub struct Inputs<'a> {
    pub entity: View<'a>,
    pub account: &'a AccountView,
    pub params: &'a ParamTable,
}

impl Gate {
    /// Reads the guards at the top of `entry` in `ast`, a rule keyed by `entity` that runs within
    /// `limits` with `globals` top-level constants in its scope. Names the reason there is none.
    pub fn recognise(
        ast: &AST,
        entry: &str,
        entity: EntityType,
        limits: &SandboxLimits,
        globals: usize,
    ) -> Result<Gate, NoGate> {
        let no = |why: &str| Err(NoGate(why.to_string()));
        let mut entries = ast.iter_functions().filter(|f| f.name == entry);
        let (Some(f), None) = (entries.next(), entries.next()) else {
            return no("not exactly one entry function");
        };
        let &[rec, ent, acct, params] = f.params.as_slice() else {
            return no("the entry function does not take 4 arguments");
        };
        // Top-level statements of the entry function, in order (the walk is pre-order; a body's
        // own statements are the paths of length 1).
        let mut body: Vec<Stmt> = Vec::new();
        function_only(ast, entry).walk(&mut |path: &[ASTNode]| {
            if let [ASTNode::Stmt(s)] = path {
                body.push((*s).clone());
            }
            true
        });
        let mut r = Recogniser {
            entity: ent,
            account: acct,
            params,
            account_entity: entity == EntityType::Account,
            script_functions: ast.iter_functions().map(|f| f.name.to_string()).collect(),
            locals: Vec::new(),
            nodes: 0,
            longest_literal: 0,
        };
        let mut steps = Vec::new();
        let mut guards = 0;
        let mut partial = false;
        let mut ends = String::from("the end of the function");
        for s in &body {
            let line = s.position().line().unwrap_or(0);
            let at = |what: &str| format!("line {line}: {what}");
            match s {
                Stmt::Noop(..) => continue,
                Stmt::Var(x, flags, _) => {
                    let name = x.0.name.as_str();
                    if flags.intersects(!ASTFlags::CONSTANT) {
                        ends = at("an exported variable");
                        break;
                    }
                    if [rec, ent, acct, params].contains(&name) {
                        ends = at("a `let` rebinding an argument");
                        break;
                    }
                    if r.locals.len() == MAX_LOCALS {
                        ends = at("too many `let`s for a gate");
                        break;
                    }
                    let Some(read) = r.read(&x.1) else {
                        ends = at(
                            "a `let` of something other than a pure read with literal arguments",
                        );
                        break;
                    };
                    r.locals.push(name.to_string());
                    steps.push(Step::Bind(read));
                }
                Stmt::If(x, _) => {
                    if !x.branch.is_empty() || !returns_nothing(x.body.statements()) {
                        ends = at("an `if` other than `if … { return; }`");
                        break;
                    }
                    match r.cond(&x.expr) {
                        Some((c, exact)) => {
                            steps.push(Step::Exit(c));
                            guards += 1;
                            if !exact {
                                partial = true;
                                ends = at("a part of the guard the gate cannot read");
                                break;
                            }
                        }
                        None => {
                            ends = at("a guard the gate cannot read");
                            break;
                        }
                    }
                }
                _ => {
                    ends = at("a statement other than `let` or `if … { return; }`");
                    break;
                }
            }
            if r.nodes > MAX_NODES {
                // The statement just read makes the gate too long: drop it.
                if matches!(steps.pop(), Some(Step::Exit(_))) {
                    guards -= 1;
                    partial = false;
                }
                ends = at("a gate longer than it is worth");
                break;
            }
        }
        // `let`s after the last guard decide nothing.
        while matches!(steps.last(), Some(Step::Bind(_))) {
            steps.pop();
        }
        if guards == 0 {
            return Err(NoGate(ends));
        }
        let binds = steps.iter().filter(|s| matches!(s, Step::Bind(_))).count();
        if let Err(why) = fits(limits, r.nodes, globals + 4 + binds, r.longest_literal) {
            return Err(NoGate(why));
        }
        Ok(Gate {
            steps,
            guards,
            partial,
            ends,
        })
    }

    /// Whether the script needs to run.
    pub fn check(&self, at: &Inputs<'_>) -> Verdict {
        let mut locals = [Value::Int(0); MAX_LOCALS];
        let mut bound = 0;
        for step in &self.steps {
            match step {
                Step::Bind(read) => match read.value(at) {
                    Some(v) => {
                        locals[bound] = v;
                        bound += 1;
                    }
                    None => return Verdict::Run,
                },
                Step::Exit(c) => match c.eval(at, &locals[..bound]) {
                    Some(true) => return Verdict::Skip,
                    Some(false) => {}
                    None => return Verdict::Run,
                },
            }
        }
        Verdict::Run
    }
}

/// Whether the sandbox lets the script's guard path run to its `return` whatever the state: its
/// operations (Rhai counts at most a few per AST node; 8 per node and 16 for the call are a wide
/// bound, and under 512 the CPU-time budget, checked from the 512th operation on, cannot stop it),
/// its variables (the scope's constants, the four arguments and the `let`s), its call level (the
/// call of `evaluate` itself) and its string literals.
fn fits(
    limits: &SandboxLimits,
    nodes: usize,
    variables: usize,
    longest_literal: usize,
) -> Result<(), String> {
    let operations = 8 * nodes as u64 + 16;
    if limits.max_operations != 0 && limits.max_operations < operations {
        return Err(format!(
            "rules.sandbox.max_operations {} is below the guard path's bound of {operations}",
            limits.max_operations
        ));
    }
    if limits.max_variables <= variables {
        return Err(format!(
            "rules.sandbox.max_variables {} leaves no room for the guard path's {variables} variables",
            limits.max_variables
        ));
    }
    if limits.max_call_levels < 2 {
        return Err("rules.sandbox.max_call_levels is below 2".into());
    }
    if limits.max_string_size != 0 && limits.max_string_size < longest_literal {
        return Err("rules.sandbox.max_string_size is below a literal of the guard".into());
    }
    Ok(())
}

/// `{ return; }` (or `{ return (); }`).
fn returns_nothing(body: &[Stmt]) -> bool {
    match body {
        [Stmt::Return(value, flags, _)] => {
            !flags.contains(ASTFlags::BREAK)
                && value.as_deref().is_none_or(|e| matches!(e, Expr::Unit(_)))
        }
        _ => false,
    }
}

struct Recogniser<'a> {
    entity: &'a str,
    account: &'a str,
    params: &'a str,
    /// The entity argument is an account view (an account rule).
    account_entity: bool,
    /// Functions the script defines: one named like an accessor would be called instead of it.
    script_functions: Vec<String>,
    /// Names of the `let`s read so far, in order.
    locals: Vec<String>,
    nodes: usize,
    longest_literal: usize,
}

impl Recogniser<'_> {
    /// `view.feature("literal", …)` on the entity or account argument.
    fn read(&mut self, e: &Expr) -> Option<Read> {
        let Expr::Dot(dot, flags, _) = e else {
            return None;
        };
        if flags.contains(ASTFlags::NEGATED) {
            return None; // `?.`
        }
        let Expr::Variable(var, ..) = &dot.lhs else {
            return None;
        };
        if !var.2.is_empty() {
            return None;
        }
        let on = if var.1.as_str() == self.entity {
            Receiver::Entity
        } else if var.1.as_str() == self.account {
            Receiver::Account
        } else {
            return None;
        };
        let Expr::MethodCall(call, _) = &dot.rhs else {
            return None;
        };
        if !call.namespace.is_empty()
            || self
                .script_functions
                .iter()
                .any(|f| f.as_str() == call.name.as_str())
        {
            return None;
        }
        let args = call
            .args
            .iter()
            .map(|a| match a {
                Expr::StringConstant(s, _) => Some(s.clone()),
                _ => None,
            })
            .collect::<Option<Box<[_]>>>()?;
        let account = on == Receiver::Account || self.account_entity;
        let accessor = Accessor::by_call(&call.name, args.len(), account)?;
        self.nodes += 3 + args.len();
        self.longest_literal = args
            .iter()
            .map(|a| a.len())
            .fold(self.longest_literal, usize::max);
        Some(Read { accessor, on, args })
    }

    fn operand(&mut self, e: &Expr) -> Option<Operand> {
        let operand = match e {
            Expr::IntegerConstant(i, _) => Operand::Literal(Value::Int(*i)),
            Expr::FloatConstant(f, _) => Operand::Literal(Value::Float(**f)),
            Expr::Variable(var, ..) if var.2.is_empty() => {
                // The latest `let` of that name (a later one shadows an earlier one).
                Operand::Local(
                    self.locals
                        .iter()
                        .rposition(|l| l.as_str() == var.1.as_str())?,
                )
            }
            Expr::Dot(dot, flags, _) => match (&dot.lhs, &dot.rhs) {
                (Expr::Variable(var, ..), Expr::Property(p, _))
                    if var.2.is_empty()
                        && var.1.as_str() == self.params
                        && !flags.contains(ASTFlags::NEGATED)
                        // `params.segment` is the view's getter, not a parameter.
                        && p.2.as_str() != "segment" =>
                {
                    self.nodes += 2;
                    Operand::Param(p.2.to_string())
                }
                _ => Operand::Read(self.read(e)?),
            },
            _ => return None,
        };
        self.nodes += 1;
        Some(operand)
    }

    /// The condition, and whether it is read whole (`false`: only a sufficient part of it, the
    /// leading terms of an `||`).
    fn cond(&mut self, e: &Expr) -> Option<(Cond, bool)> {
        self.nodes += 1;
        match e {
            Expr::And(terms, _) => {
                let mut all = Vec::new();
                for (k, t) in terms.iter().enumerate() {
                    let (c, exact) = self.cond(t)?;
                    all.push(c);
                    if !exact {
                        // Only the last term of an `&&` may be read in part.
                        return (k + 1 == terms.len()).then_some((Cond::All(all), false));
                    }
                }
                Some((Cond::All(all), true))
            }
            Expr::Or(terms, _) => {
                let mut any = Vec::new();
                for t in terms.iter() {
                    match self.cond(t) {
                        Some((c, true)) => any.push(c),
                        Some((c, false)) => {
                            any.push(c);
                            return Some((Cond::Any(any), false));
                        }
                        None => return (!any.is_empty()).then_some((Cond::Any(any), false)),
                    }
                }
                Some((Cond::Any(any), true))
            }
            Expr::FnCall(call, _) if call.op_token.is_some() && call.namespace.is_empty() => {
                match (call.name.as_str(), call.args.as_slice()) {
                    ("!", [a]) => match self.cond(a)? {
                        (c, true) => Some((Cond::Not(Box::new(c)), true)),
                        (_, false) => None,
                    },
                    (op, [a, b]) => {
                        let cmp = match op {
                            "==" => Cmp::Eq,
                            "!=" => Cmp::Ne,
                            "<" => Cmp::Lt,
                            "<=" => Cmp::Le,
                            ">" => Cmp::Gt,
                            ">=" => Cmp::Ge,
                            _ => return None,
                        };
                        let (a, b) = (self.operand(a)?, self.operand(b)?);
                        Some((Cond::Compare(cmp, a, b), true))
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

impl Read {
    fn value(&self, at: &Inputs<'_>) -> Option<Value> {
        let view = match self.on {
            Receiver::Entity => at.entity,
            Receiver::Account => View::Account(at.account),
        };
        // An error is the script's to raise: it runs.
        self.accessor.read(view, &self.args).ok().map(Value::from)
    }
}

impl Operand {
    fn value(&self, at: &Inputs<'_>, locals: &[Value]) -> Option<Value> {
        match self {
            Operand::Local(k) => locals.get(*k).copied(),
            Operand::Read(r) => r.value(at),
            Operand::Param(name) => {
                let v = at.params.values.get(name)?;
                if let Ok(i) = v.as_int() {
                    Some(Value::Int(i))
                } else {
                    v.as_float().ok().map(Value::Float)
                }
            }
            Operand::Literal(v) => Some(*v),
        }
    }
}

impl Cond {
    /// The condition's value, as Rhai would compute it; `None` when the gate cannot tell.
    fn eval(&self, at: &Inputs<'_>, locals: &[Value]) -> Option<bool> {
        match self {
            Cond::Compare(op, a, b) => compare(*op, a.value(at, locals)?, b.value(at, locals)?),
            Cond::Not(c) => c.eval(at, locals).map(|b| !b),
            Cond::All(cs) => {
                for c in cs {
                    if !c.eval(at, locals)? {
                        return Some(false);
                    }
                }
                Some(true)
            }
            Cond::Any(cs) => {
                for c in cs {
                    if c.eval(at, locals)? {
                        return Some(true);
                    }
                }
                Some(false)
            }
        }
    }
}

/// `x op y` as Rhai 1.27 computes it for numbers (`func/builtin.rs`, `get_builtin_binary_op_fn`,
/// without the `unchecked` feature): two integers exactly; a float on either side compares both as
/// floats within a relative epsilon — `x < y` is `(y - x) / max > EPSILON` with `max` the larger
/// magnitude (1 when either is 0). Copied formula for formula, including its NaN behaviour;
/// `comparisons_agree_with_rhai` holds it to the engine.
fn compare(op: Cmp, x: Value, y: Value) -> Option<bool> {
    let (x, y) = match (x, y) {
        (Value::Int(a), Value::Int(b)) => {
            return Some(match op {
                Cmp::Eq => a == b,
                Cmp::Ne => a != b,
                Cmp::Lt => a < b,
                Cmp::Le => a <= b,
                Cmp::Gt => a > b,
                Cmp::Ge => a >= b,
            })
        }
        (Value::Int(a), Value::Float(b)) => (a as f64, b),
        (Value::Float(a), Value::Int(b)) => (a, b as f64),
        (Value::Float(a), Value::Float(b)) => (a, b),
    };
    const EPSILON: f64 = f64::EPSILON;
    let max = if x * y == 0.0 {
        1.0
    } else {
        x.abs().max(y.abs())
    };
    Some(match op {
        Cmp::Eq => max == 0.0 || (x - y).abs() / max <= EPSILON,
        Cmp::Ne => max != 0.0 && (x - y).abs() / max > EPSILON,
        Cmp::Gt => max != 0.0 && (x - y) / max > EPSILON,
        Cmp::Ge => max == 0.0 || (x - y) / max > -EPSILON,
        Cmp::Lt => max != 0.0 && (y - x) / max > EPSILON,
        Cmp::Le => max == 0.0 || (y - x) / max > -EPSILON,
    })
}
