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
//! - leading `let x = <operand>;`, no argument of `evaluate` rebound before, where an operand is
//!   - a pure accessor of `api::Accessor` on the rule's entity or account view —
//!     `view.feature("literal", …)`, the ledger reads `acct.exposure()`, `credit_limit()`,
//!     `unpaid()`, `unbilled()`, the property `view.first_seen`, `sub.concurrent_calls(rec.time,
//!     rec.end_time)` — read by the very function the script calls (one function serves both), its
//!     arguments string or integer literals or integer record fields, of the types the registered
//!     function takes (Rhai picks it by them); an accessor a script function's name could shadow is
//!     refused;
//!   - a numeric getter of the usage record (`api::RecordField`: `rec.duration_s`, `time`,
//!     `end_time`, `minutes`, `charge`, `bytes`, `local_hour`), again by the getter's own
//!     function, and only in rules all of whose triggers are usage records (the first argument of
//!     an event or timer rule is another type, whose `time` is another getter);
//!   - `params.name` (the rule's parameter table, read as the `params` indexer reads it), an
//!     earlier `let`, an integer or float literal;
//!   - `a + b`, `a - b`, `a * b`, `a / b` of operands, and `x.to_float()`, as Rhai 1.27 computes
//!     them (`arith`): integers with checked arithmetic (an overflow, a division by zero or
//!     `i64::MIN / -1` is Rhai's error: the gate answers `Run` and the script raises it); a float
//!     on either side makes both floats and IEEE arithmetic; a float division by zero (Rhai's
//!     ±inf or NaN, no error) is left to the script too;
//! - `if <condition> { return; }` with no `else`, the condition built from `&&`, `||`, `!` and the
//!   six comparisons of operands;
//! - comparisons as Rhai 1.27 computes them (`compare`): integers exactly, and a float on either side
//!   with Rhai's relative epsilon (`9.999999999999999 < 10.0` is false in Rhai, true in Rust, and so
//!   is `+inf > 0.0`);
//! - a guard's `||` may end in a part the gate cannot read: its leading parts are still a sufficient
//!   condition (Rhai short-circuits), but such a guard is the gate's last.
//!
//! At run time anything the gate cannot tell — a read that would fail (a window beyond
//! `state.max_window`), a parameter that is missing or not a number, arithmetic that fails, a
//! record field without a usage record — makes it answer `Run`: the
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
//! | `simbox_behaviour` | 2 guards: `mo < min_mo_calls`, then `ratio < min_mo_mt_ratio \|\| sub.count("data\|sms.mo", "24h") > 0` with `let ratio = mo.to_float() / (mt + 1)` | the third guard (`called < … \|\| cells > …`) would make the gate longer than `MAX_NODES` |
//! | `impossible_travel` | 2 guards: `km <= min_km`, then `kmh <= min_kmh` | none: both guards are the gate |
//! | `usage_spike_in_arrears` | 2 guards: `recent < min_charges`, then `history_days < min_baseline_days` with `let history_days = (rec.time - 259200 - acct.first_seen) / 86400` | next: `let days = if …`, a branch |
//! | `early_life_high_usage` | 1 guard: `age < 0.0 \|\| age >= max_age_days` (`acct.age_days()`) | next: `let by_minutes = minutes >= …`, a `let` of a comparison |
//! | `bill_shock` | 2 guards: `recent < min_charges \|\| sub.first_seen > rec.time - 604800`, then `recent < shock_factor * average` with `let average = sub.charges("all", "7d", "30m") / 336.0` | none: both guards are the gate |
//! | `simultaneous_calls` | 2 guards: `rec.duration_s == 0`, then `at_once < min_concurrent` with `let at_once = sub.concurrent_calls(rec.time, rec.end_time)` | none: both guards are the gate |
//! | `credit_limit_exceeded` | 1 guard: `exposure < exceed_share * limit` (`acct.exposure()`, `acct.credit_limit()`) | none: its guard is the gate |
//! | `sms_sim_farm` | none | its reads are followed by `let window = if … else { return; }`, not a guard of the recognised form |
//! | `wangiri_inbound` | none | first guard `listed("wangiri_whitelist", rec.other_number)`: a list lookup of a record field |
//! | `wangiri_callback` | none | `!alerted("wangiri_inbound", rec.destination, …)`: alert memory and a record field |
//! | `call_forwarding_high_risk` | none | `!rec.forwarded \|\| listed(…)`: a boolean record field and a list lookup |
//! | `credit_limit_warning` | never | `!edge("above_warning", …)`: `edge` has a side effect (it latches) |
//! | `invoice_overdue` | none | `acct.invoice_remaining(timer.invoice_id)`: a string argument read from the trigger |
//! | `payment_reversal` | none | `acct.payment_time(ev.reversed_payment_id)` and `let … = if …`: a trigger field, a branch |
//!
//! Ten of the seventeen are gated, none of them in part any more
//! (`shipped_rules_are_gated_as_the_survey_says` keeps this table honest). What would go further,
//! each still exact: boolean record getters (`rec.forwarded`, `rec.answered`) and `listed(…)` of a
//! record field (a pure lookup); `let`s of comparisons; a larger `MAX_NODES` (its bound on Rhai's
//! operations allows about 60 nodes before the CPU-time check at the 512th operation matters), for
//! `simbox_behaviour`'s third guard.

use rhai::{ASTFlags, ASTNode, Expr, ImmutableString, Stmt, AST};

use crate::record::EntityType;

use super::api::{
    Accessor, AccountView, Arg, ArgType, ParamTable, Reading, RecordField, UsageView, View,
};
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

/// Arguments of an accessor at most.
const MAX_ARGS: usize = 3;

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

/// An argument of a read: a literal, or a numeric field of the triggering usage record.
#[derive(Clone, Debug)]
enum ArgOf {
    Str(ImmutableString),
    Int(i64),
    Field(RecordField),
}

/// A pure read with literal (or record-field) arguments.
#[derive(Clone, Debug)]
struct Read {
    accessor: Accessor,
    on: Receiver,
    args: Box<[ArgOf]>,
}

/// Rhai's four arithmetic operators on numbers (`arith`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
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
    /// `rec.name`: a numeric getter of the usage record (only in rules all of whose triggers are
    /// usage records).
    Field(RecordField),
    /// `a op b`.
    Arith(Op, Box<Operand>, Box<Operand>),
    /// `x.to_float()`.
    ToFloat(Box<Operand>),
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
    /// `let x = <operand>;`
    Bind(Operand),
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
    /// The usage record that triggered the evaluation (`None` for an event or a timer).
    pub record: Option<&'a UsageView>,
    pub entity: View<'a>,
    pub account: &'a AccountView,
    pub params: &'a ParamTable,
}

impl Gate {
    /// Reads the guards at the top of `entry` in `ast`, a rule keyed by `entity` that runs within
    /// `limits` with `globals` top-level constants in its scope. `usage` says that every trigger of
    /// the rule is a usage record (only then are `rec.field` getters read). Names the reason there
    /// is none.
    pub fn recognise(
        ast: &AST,
        entry: &str,
        entity: EntityType,
        usage: bool,
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
            record: usage.then_some(rec),
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
            let nodes_before = r.nodes;
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
                    let Some(value) = r.operand(&x.1) else {
                        ends = at("a `let` of something the gate cannot compute");
                        break;
                    };
                    r.locals.push(name.to_string());
                    steps.push(Step::Bind(value));
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
                r.nodes = nodes_before;
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
                Step::Bind(value) => match value.value(at, &locals[..bound]) {
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
    /// The record argument, when every trigger of the rule is a usage record.
    record: Option<&'a str>,
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
    /// `view.feature("literal", …)` (or `view.property`) on the entity or account argument.
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
        let account = on == Receiver::Account || self.account_entity;
        let call = match &dot.rhs {
            Expr::MethodCall(call, _) => call,
            // A getter (scripts cannot define one).
            Expr::Property(p, _) => {
                let accessor = Accessor::by_property(p.2.as_str())?;
                self.nodes += 3;
                return Some(Read {
                    accessor,
                    on,
                    args: Box::new([]),
                });
            }
            _ => return None,
        };
        if !call.namespace.is_empty() || self.shadowed(&call.name) {
            return None;
        }
        let mut nodes = 3;
        let mut args = Vec::new();
        let mut types = Vec::new();
        for a in call.args.iter() {
            nodes += 1;
            let (arg, ty) = match a {
                Expr::StringConstant(s, _) => (ArgOf::Str(s.clone()), ArgType::Str),
                Expr::IntegerConstant(i, _) => (ArgOf::Int(*i), ArgType::Int),
                _ => match self.field(a)? {
                    f if f.is_int() => {
                        nodes += 2;
                        (ArgOf::Field(f), ArgType::Int)
                    }
                    // No accessor takes a float.
                    _ => return None,
                },
            };
            args.push(arg);
            types.push(ty);
        }
        if args.len() > MAX_ARGS {
            return None;
        }
        let accessor = Accessor::by_call(&call.name, &types, account)?;
        self.nodes += nodes;
        for a in &args {
            if let ArgOf::Str(s) = a {
                self.longest_literal = self.longest_literal.max(s.len());
            }
        }
        Some(Read {
            accessor,
            on,
            args: args.into(),
        })
    }

    /// A script function of that name would be called instead of a native one.
    fn shadowed(&self, name: &str) -> bool {
        self.script_functions.iter().any(|f| f.as_str() == name)
    }

    /// `rec.name`, a numeric getter of the usage record, when every trigger is one.
    fn field(&self, e: &Expr) -> Option<RecordField> {
        let Expr::Dot(dot, flags, _) = e else {
            return None;
        };
        match (&dot.lhs, &dot.rhs) {
            (Expr::Variable(var, ..), Expr::Property(p, _))
                if var.2.is_empty()
                    && Some(var.1.as_str()) == self.record
                    && !flags.contains(ASTFlags::NEGATED) =>
            {
                RecordField::by_name(p.2.as_str())
            }
            _ => None,
        }
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
                // `x.to_float()`: Rhai's `to_float` of an `INT` or a `FLOAT`.
                (lhs, Expr::MethodCall(call, _))
                    if call.name.as_str() == "to_float"
                        && call.args.is_empty()
                        && call.namespace.is_empty()
                        && !flags.contains(ASTFlags::NEGATED)
                        && !self.shadowed("to_float") =>
                {
                    self.nodes += 2;
                    Operand::ToFloat(Box::new(self.operand(lhs)?))
                }
                _ => match self.field(e) {
                    Some(f) => {
                        self.nodes += 2;
                        Operand::Field(f)
                    }
                    None => Operand::Read(self.read(e)?),
                },
            },
            Expr::FnCall(call, _) if call.op_token.is_some() && call.namespace.is_empty() => {
                let op = match call.name.as_str() {
                    "+" => Op::Add,
                    "-" => Op::Sub,
                    "*" => Op::Mul,
                    "/" => Op::Div,
                    _ => return None,
                };
                let [a, b] = &call.args[..] else {
                    return None; // unary minus
                };
                Operand::Arith(op, Box::new(self.operand(a)?), Box::new(self.operand(b)?))
            }
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
                match (call.name.as_str(), &call.args[..]) {
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
        let mut args = [Arg::Int(0); MAX_ARGS];
        for (slot, a) in args.iter_mut().zip(self.args.iter()) {
            *slot = match a {
                ArgOf::Str(s) => Arg::Str(s),
                ArgOf::Int(i) => Arg::Int(*i),
                ArgOf::Field(f) => match f.read(at.record?) {
                    Reading::Int(i) => Arg::Int(i),
                    Reading::Float(_) => return None,
                },
            };
        }
        // An error is the script's to raise: it runs.
        self.accessor
            .read(view, &args[..self.args.len()])
            .ok()
            .map(Value::from)
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
            // No record (an event or a timer): the script's getter would be another one.
            Operand::Field(f) => Some(f.read(at.record?).into()),
            Operand::Arith(op, a, b) => arith(*op, a.value(at, locals)?, b.value(at, locals)?),
            Operand::ToFloat(a) => Some(Value::Float(match a.value(at, locals)? {
                Value::Int(i) => i as f64,
                Value::Float(f) => f,
            })),
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

/// `x op y` for `+ - * /` as Rhai 1.27 computes it for numbers (`func/builtin.rs`,
/// `get_builtin_binary_op_fn`, and `packages/arithmetic.rs` without the `unchecked` feature): two
/// integers with checked arithmetic, an overflow or a division by zero an error (`None`: the
/// script runs, and fails); a float on either side makes both floats (`as f64`) and IEEE
/// arithmetic. A float division by zero is no error in Rhai (it gives an infinity or NaN), but
/// the gate leaves it to the script all the same. `arithmetic_agrees_with_rhai` holds it to the
/// engine.
fn arith(op: Op, x: Value, y: Value) -> Option<Value> {
    let (x, y) = match (x, y) {
        (Value::Int(a), Value::Int(b)) => {
            return match op {
                Op::Add => a.checked_add(b),
                Op::Sub => a.checked_sub(b),
                Op::Mul => a.checked_mul(b),
                Op::Div if b == 0 => None,
                Op::Div => a.checked_div(b),
            }
            .map(Value::Int)
        }
        (Value::Int(a), Value::Float(b)) => (a as f64, b),
        (Value::Float(a), Value::Int(b)) => (a, b as f64),
        (Value::Float(a), Value::Float(b)) => (a, b),
    };
    Some(Value::Float(match op {
        Op::Add => x + y,
        Op::Sub => x - y,
        Op::Mul => x * y,
        Op::Div if y == 0.0 => return None,
        Op::Div => x / y,
    }))
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

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::{Path, PathBuf};
    use std::rc::Rc;

    use crate::rules::api::EntityView;
    use crate::rules::library::RuleSources;
    use crate::rules::{RuleSet, Shared};

    fn shipped() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")
    }

    fn shipped_set() -> RuleSet {
        let store = Rc::new(std::cell::RefCell::new(crate::state::WindowStore::new(
            Default::default(),
        )));
        let sources = RuleSources::read(&shipped()).unwrap();
        RuleSet::build(
            &sources,
            &Default::default(),
            &Shared::new(store, Default::default()),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The survey in the module docs, rule by rule: (guards, last one read in part).
    #[test]
    fn shipped_rules_are_gated_as_the_survey_says() {
        let expected: &[(&str, Option<(usize, bool)>)] = &[
            ("irsf_high_risk_destination", Some((1, false))),
            ("pbx_off_hours_international", Some((1, false))),
            ("roaming_high_usage", Some((1, false))),
            ("simbox_behaviour", Some((2, false))),
            ("impossible_travel", Some((2, false))),
            ("usage_spike_in_arrears", Some((2, false))),
            ("early_life_high_usage", Some((1, false))),
            ("bill_shock", Some((2, false))),
            ("sms_sim_farm", None),
            ("wangiri_inbound", None),
            ("wangiri_callback", None),
            ("call_forwarding_high_risk", None),
            ("simultaneous_calls", Some((2, false))),
            ("credit_limit_exceeded", Some((1, false))),
            ("credit_limit_warning", None),
            ("invoice_overdue", None),
            ("payment_reversal", None),
        ];
        let set = shipped_set();
        assert_eq!(
            set.rules.len(),
            expected.len(),
            "a rule was added: survey it"
        );
        for (id, want) in expected {
            let rule = set
                .rules
                .iter()
                .find(|r| r.id() == *id)
                .unwrap_or_else(|| panic!("{id} is shipped"));
            let got = rule.gate.as_ref().map(|g| (g.guards, g.partial));
            assert_eq!(
                got,
                *want,
                "{id}: {:?}",
                rule.gate.as_ref().map(|g| &g.ends)
            );
        }
    }

    /// The gate of `body` in `fn evaluate(rec, sub, acct, params)` of a subscriber rule (with
    /// `extra` script before it), or why there is none.
    fn gate_of(extra: &str, body: &str, limits: &SandboxLimits) -> Result<Gate, NoGate> {
        let engine = crate::rules::build_engine(&Default::default());
        let script = format!("{extra}\nfn evaluate(rec, sub, acct, params) {{\n{body}\n#{{}}\n}}");
        let ast = engine
            .compile(&script)
            .unwrap_or_else(|e| panic!("{script}: {e}"));
        Gate::recognise(&ast, "evaluate", EntityType::Subscriber, true, limits, 1)
    }

    fn guards(body: &str) -> Option<(usize, bool)> {
        gate_of("", body, &Default::default())
            .ok()
            .map(|g| (g.guards, g.partial))
    }

    #[test]
    fn the_recogniser_reads_pure_guards() {
        for (body, want) in [
            (
                r#"let c = sub.count("voice", "1h"); if c < params.n { return; }"#,
                (1, false),
            ),
            (r#"if sub.count("voice", "1h") < 3 { return; }"#, (1, false)),
            (
                r#"let c = sub.count("voice", "1h"); let m = acct.minutes("voice", "1h", "2h");
                   if c < 1 || c > params.n { return; }
                   if !(m >= 2.5) && sub.travel_km() <= params.km { return; }"#,
                (2, false),
            ),
            (
                r#"const c = sub.distinct_called("24h"); if c != 0 { return (); }"#,
                (1, false),
            ),
            // The leading part of an `||` is enough for `return`; the gate ends there.
            (
                r#"let c = sub.count("v", "1h"); if c < 1 || rec.answered { return; }
                   if c > 5 { return; }"#,
                (1, true),
            ),
            // Record fields, arithmetic, `to_float`, ledger reads, record-field arguments.
            (r#"if rec.duration_s == 0 { return; }"#, (1, false)),
            (
                r#"let c = sub.count("v", "1h"); if c < params.n * 2 - 1 { return; }
                   if c.to_float() / (c + 1) < 2.0 { return; }"#,
                (2, false),
            ),
            (
                r#"if acct.exposure() < params.s * acct.credit_limit() + acct.unpaid() - acct.unbilled() { return; }"#,
                (1, false),
            ),
            (
                r#"let n = sub.concurrent_calls(rec.time, rec.end_time); if n < 3 { return; }"#,
                (1, false),
            ),
            (
                r#"let n = 3; let d = (rec.time - 259200 - acct.first_seen) / 86400;
                   if sub.count("v", "1h") < n || d < sub.first_seen { return; }"#,
                (1, false),
            ),
            // An `else` that does nothing is no `else` (Rhai's optimizer drops it).
            (
                r#"if sub.count("v", "1h") < 1 { return; } else { }"#,
                (1, false),
            ),
            // `let`s after the last guard are dropped; the guards before a statement it cannot
            // read stay.
            (
                r#"if sub.count("v", "1h") < 1 { return; } let x = rec.msisdn; if x == "" { return; }"#,
                (1, false),
            ),
        ] {
            assert_eq!(guards(body), Some(want), "{body}");
        }
    }

    #[test]
    fn the_recogniser_refuses_near_misses() {
        for body in [
            // A function that is not a pure state accessor.
            r#"if listed("l", rec.msisdn) { return; }"#,
            // `edge` latches: a side effect.
            r#"if !edge("x", sub.count("v", "1h") > 1) { return; }"#,
            // A `let` with a side effect.
            r#"let e = edge("x", true); if e { return; }"#,
            // A window that is not a literal.
            r#"let c = sub.count("voice", params.window); if c < 1 { return; }"#,
            r#"let c = sub.count("voice", `${params.h}h`); if c < 1 { return; }"#,
            // A record field that is not a number, a method on a number other than `to_float`,
            // an operator other than `+ - * /`, a unary minus.
            r#"if rec.msisdn == "" { return; }"#,
            r#"let c = sub.count("v", "1h"); if c.abs() < 2 { return; }"#,
            r#"let c = sub.count("v", "1h"); if c % 2 == 0 { return; }"#,
            r#"let c = sub.count("v", "1h"); if c ** 2 == 0 { return; }"#,
            r#"let c = sub.count("v", "1h"); if -c < 0 { return; }"#,
            // A `let` of a literal is fine, of a string is not.
            r#"let w = "1h"; if sub.count("v", w) < 1 { return; }"#,
            // Accessor arguments of other types than the function takes: Rhai would find none.
            r#"if sub.concurrent_calls(rec.minutes, rec.end_time) > 1 { return; }"#,
            r#"if sub.concurrent_calls("a", "b") > 1 { return; }"#,
            r#"if sub.count(rec.time, "1h") > 1 { return; }"#,
            // An argument computed: only literals and record fields are.
            r#"if sub.concurrent_calls(rec.time, rec.end_time - 1) > 1 { return; }"#,
            r#"if sub.concurrent_calls(params.a, 1) > 1 { return; }"#,
            // The ledger is the account's: a subscriber has none.
            r#"if sub.credit_limit() < 1.0 { return; }"#,
            // A `let` of a comparison, read later.
            r#"let ok = sub.count("v", "1h") > 2; if !ok { return; }"#,
            // An `if` that does something else than return nothing.
            r#"if sub.count("v", "1h") < 1 { return #{}; }"#,
            r#"if sub.count("v", "1h") < 1 { throw "no"; }"#,
            r#"if sub.count("v", "1h") < 1 { return; } else { print("x"); }"#,
            // `?.`, a rebound argument, an accessor of another view, an unknown feature.
            r#"if sub?.count("v", "1h") < 1 { return; }"#,
            r#"let sub = acct; if sub.count("v", "1h") < 1 { return; }"#,
            r#"if sub.age_days() < 1.0 { return; }"#,
            r#"if sub.exposure() < 1.0 { return; }"#,
            // `params.segment` is a string getter, not a parameter; a `let` of a literal.
            r#"if sub.count("v", "1h") < params.segment { return; }"#,
            // An `&&` whose first term the gate cannot read.
            r#"if rec.answered && sub.count("v", "1h") < 1 { return; }"#,
            // `!` of a part of an `||`.
            r#"if !(sub.count("v", "1h") < 1 || rec.answered) { return; }"#,
        ] {
            let got = gate_of("const RULE = #{};", body, &Default::default());
            assert!(got.is_err(), "{body}: {got:?}");
        }
        // A script function named like an accessor is what `sub.count(…)` calls.
        let shadowed = gate_of(
            "fn count(f, w) { 0 }",
            r#"if sub.count("v", "1h") < 1 { return; }"#,
            &Default::default(),
        );
        assert!(shadowed.is_err(), "{shadowed:?}");
        // Likewise `to_float`.
        let shadowed = gate_of(
            "fn to_float() { 0.0 }",
            r#"let c = sub.count("v", "1h"); if c.to_float() < 1.0 { return; }"#,
            &Default::default(),
        );
        assert!(shadowed.is_err(), "{shadowed:?}");
        // Limits too tight for the script's own guard path: the script could fail where the gate
        // would not.
        let body = r#"let c = sub.count("v", "1h"); if c < params.n { return; }"#;
        for limits in [
            SandboxLimits {
                max_operations: 50,
                ..Default::default()
            },
            SandboxLimits {
                max_variables: 6,
                ..Default::default()
            },
        ] {
            let got = gate_of("", body, &limits);
            assert!(
                got.as_ref().is_err_and(|e| e.0.contains("rules.sandbox")),
                "{limits:?}: {got:?}"
            );
        }
        assert!(gate_of("", body, &Default::default()).is_ok());
    }

    /// Views of a subscriber nobody has seen, at one instant: every window feature reads 0.
    fn quiet() -> (EntityView, AccountView) {
        let store = Rc::new(std::cell::RefCell::new(crate::state::WindowStore::new(
            Default::default(),
        )));
        let shared = Shared::new(store, Default::default());
        let at = crate::record::EventTime::parse("2026-11-01T12:00:00+01:00").unwrap();
        let n = crate::record::Number::parse("33612000001").unwrap();
        (
            EntityView::new(shared.clone(), EntityType::Subscriber, n, at.utc),
            AccountView::new(shared, None, at),
        )
    }

    fn table(values: &[(&str, rhai::Dynamic)]) -> ParamTable {
        ParamTable {
            rule_id: "irsf_high_risk_destination".into(),
            segment: "consumer",
            values: values
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }

    #[test]
    fn a_gate_skips_what_its_guard_decides_and_runs_what_it_cannot_tell() {
        let set = shipped_set();
        let irsf = set
            .rules
            .iter()
            .find(|r| r.id() == "irsf_high_risk_destination")
            .unwrap();
        let gate = irsf.gate.as_ref().unwrap();
        let (sub, acct) = quiet();
        let verdict = |params: &ParamTable| {
            gate.check(&Inputs {
                record: None,
                entity: View::Entity(&sub),
                account: &acct,
                params,
            })
        };
        // 0 calls < 3 and 0 minutes < 10: the script would return nothing.
        assert_eq!(verdict(irsf.params[0].as_ref()), Verdict::Skip);
        let int = |i: i64| rhai::Dynamic::from(i);
        let float = |f: f64| rhai::Dynamic::from(f);
        // 0 < 0 is false: the script decides.
        let zero = table(&[("min_calls", int(0)), ("min_minutes", float(0.0))]);
        assert_eq!(verdict(&zero), Verdict::Run);
        // A missing parameter, or one that is not a number: the script's to fail or decide.
        assert_eq!(verdict(&table(&[])), Verdict::Run);
        let text = table(&[("min_calls", "3".into()), ("min_minutes", float(10.0))]);
        assert_eq!(verdict(&text), Verdict::Run);
        // A read that fails (a window beyond state.max_window): the script runs, and fails.
        let far = gate_of(
            "",
            r#"if sub.count("voice", "400d") < 1 { return; }"#,
            &Default::default(),
        )
        .unwrap();
        let far = far.check(&Inputs {
            record: None,
            entity: View::Entity(&sub),
            account: &acct,
            params: &table(&[]),
        });
        assert_eq!(far, Verdict::Run);
    }

    #[test]
    fn comparisons_agree_with_rhai() {
        // The rules' own engine: its operators are the ones scripts use.
        let engine = crate::rules::build_engine(&Default::default());
        let values = [
            Value::Int(0),
            Value::Int(3),
            Value::Int(-3),
            Value::Int(10),
            Value::Int(i64::MAX),
            Value::Int(i64::MIN),
            Value::Float(0.0),
            Value::Float(-0.0),
            Value::Float(3.0),
            Value::Float(10.0),
            Value::Float(9.999999999999998),
            Value::Float(10.000000000000002),
            Value::Float(0.1 + 0.2),
            Value::Float(0.3),
            Value::Float(1e-300),
            Value::Float(-1e-300),
            Value::Float(9.2e18),
            Value::Float(f64::INFINITY),
            Value::Float(f64::NEG_INFINITY),
            Value::Float(f64::NAN),
        ];
        let dynamic = |v: Value| match v {
            Value::Int(i) => rhai::Dynamic::from(i),
            Value::Float(f) => rhai::Dynamic::from(f),
        };
        let ops = [
            (Cmp::Eq, "=="),
            (Cmp::Ne, "!="),
            (Cmp::Lt, "<"),
            (Cmp::Le, "<="),
            (Cmp::Gt, ">"),
            (Cmp::Ge, ">="),
        ];
        let mut differs_from_rust = 0;
        for x in values {
            for y in values {
                for (op, text) in ops {
                    let mut scope = rhai::Scope::new();
                    scope.push_dynamic("x", dynamic(x));
                    scope.push_dynamic("y", dynamic(y));
                    let rhai: bool = engine
                        .eval_with_scope(&mut scope, &format!("x {text} y"))
                        .unwrap();
                    assert_eq!(compare(op, x, y), Some(rhai), "{x:?} {text} {y:?}");
                    if let (Value::Float(a), Value::Float(b)) = (x, y) {
                        let rust = match op {
                            Cmp::Eq => a == b,
                            Cmp::Ne => a != b,
                            Cmp::Lt => a < b,
                            Cmp::Le => a <= b,
                            Cmp::Gt => a > b,
                            Cmp::Ge => a >= b,
                        };
                        differs_from_rust += usize::from(rust != rhai);
                    }
                }
            }
        }
        // Why the gate does not use Rust's own float comparisons.
        assert!(differs_from_rust > 0);
    }

    #[test]
    fn arithmetic_agrees_with_rhai() {
        let engine = crate::rules::build_engine(&Default::default());
        let values = [
            Value::Int(0),
            Value::Int(1),
            Value::Int(-1),
            Value::Int(3),
            Value::Int(-7),
            Value::Int(86_400),
            Value::Int(i64::MAX),
            Value::Int(i64::MIN),
            Value::Int(i64::MAX / 2 + 1),
            Value::Int(1 << 53),
            Value::Int((1 << 53) + 1),
            Value::Float(0.0),
            Value::Float(-0.0),
            Value::Float(0.1),
            Value::Float(0.2),
            Value::Float(0.3),
            Value::Float(3.0),
            Value::Float(-2.5),
            Value::Float(1e308),
            Value::Float(5e-324),
            Value::Float(9.2e18),
            Value::Float(f64::INFINITY),
            Value::Float(f64::NEG_INFINITY),
            Value::Float(f64::NAN),
        ];
        let dynamic = |v: Value| match v {
            Value::Int(i) => rhai::Dynamic::from(i),
            Value::Float(f) => rhai::Dynamic::from(f),
        };
        let same = |a: Value, d: &rhai::Dynamic| match a {
            Value::Int(i) => d.as_int() == Ok(i),
            Value::Float(f) => d
                .as_float()
                .is_ok_and(|g| f.to_bits() == g.to_bits() || (f.is_nan() && g.is_nan())),
        };
        let ops = [
            (Op::Add, "+"),
            (Op::Sub, "-"),
            (Op::Mul, "*"),
            (Op::Div, "/"),
        ];
        let (mut errors, mut float_by_zero) = (0, 0);
        for x in values {
            for y in values {
                for (op, text) in ops {
                    let mut scope = rhai::Scope::new();
                    scope.push_dynamic("x", dynamic(x));
                    scope.push_dynamic("y", dynamic(y));
                    let rhai =
                        engine.eval_with_scope::<rhai::Dynamic>(&mut scope, &format!("x {text} y"));
                    match (arith(op, x, y), &rhai) {
                        (Some(v), Ok(d)) => {
                            assert!(same(v, d), "{x:?} {text} {y:?}: {v:?} vs {d:?}")
                        }
                        (None, Err(_)) => errors += 1,
                        // A float division by zero is left to the script (Rhai gives ±inf or NaN).
                        (None, Ok(d)) if op == Op::Div && d.is_float() => {
                            assert!(matches!(y, Value::Float(z) if z == 0.0) || y == Value::Int(0));
                            float_by_zero += 1;
                        }
                        (got, _) => panic!("{x:?} {text} {y:?}: gate {got:?}, Rhai {rhai:?}"),
                    }
                }
            }
            // `x.to_float()`.
            let mut scope = rhai::Scope::new();
            scope.push_dynamic("x", dynamic(x));
            let rhai: rhai::Dynamic = engine.eval_with_scope(&mut scope, "x.to_float()").unwrap();
            let gate = Operand::ToFloat(Box::new(Operand::Literal(x)));
            let (sub, acct) = quiet();
            let at = Inputs {
                record: None,
                entity: View::Entity(&sub),
                account: &acct,
                params: &table(&[]),
            };
            assert!(
                same(gate.value(&at, &[]).unwrap(), &rhai),
                "{x:?}.to_float()"
            );
        }
        // Overflows (i64::MAX + 1, i64::MIN / -1, …) and integer divisions by zero were met, and
        // are errors in Rhai.
        assert!(errors > 10 && float_by_zero > 0, "{errors} {float_by_zero}");
        // The classic: 0.1 + 0.2 is not 0.3 in IEEE arithmetic, and Rhai's `==` says they are
        // equal all the same (its epsilon); the gate says both.
        let sum = arith(Op::Add, Value::Float(0.1), Value::Float(0.2)).unwrap();
        assert_ne!(sum, Value::Float(0.3));
        assert_eq!(compare(Cmp::Eq, sum, Value::Float(0.3)), Some(true));
        // INT * FLOAT is a FLOAT.
        assert_eq!(
            arith(Op::Mul, Value::Int(3), Value::Float(0.5)),
            Some(Value::Float(1.5))
        );
    }

    /// The views `quiet` makes, with the usage record `rec` (an answered MO call of `duration_s`
    /// seconds, at the views' instant), and an engine with the rules' API over the same state.
    fn world(duration_s: u32) -> (rhai::Engine, UsageView, EntityView, AccountView) {
        use crate::classify::{RecordClass, SHORT};
        use crate::record::{Direction, RecordType};
        let store = Rc::new(std::cell::RefCell::new(crate::state::WindowStore::new(
            Default::default(),
        )));
        let shared = Shared::new(store, Default::default());
        let mut engine = crate::rules::build_engine(&Default::default());
        crate::rules::api::register(&mut engine, &shared, Default::default());
        let json = format!(
            r#"{{"record_id":"r1","record_type":"voice","direction":"mo","event_start":"2026-11-01T12:00:00+01:00","duration_s":{duration_s},"answered":true,"served":{{"msisdn":"33612000001"}},"other_party":{{"number":"33611111111"}}}}"#
        );
        let r = crate::record::Decoder::default()
            .usage(json.as_bytes())
            .unwrap();
        let rec = UsageView::new(
            &r,
            RecordClass::new(RecordType::Voice, Some(Direction::Mo), SHORT),
        );
        let at = r.event_start;
        let n = r.served.msisdn;
        (
            engine,
            rec,
            EntityView::new(shared.clone(), EntityType::Subscriber, n, at.utc),
            AccountView::new(shared, None, at),
        )
    }

    /// What the gate of `body` says, and what the script says (`Ok(true)`: it returned nothing),
    /// for a call of `duration_s` seconds with `params`. A `Skip` must be a script's nothing.
    fn both(
        body: &str,
        duration_s: u32,
        params: &[(&str, rhai::Dynamic)],
    ) -> (Verdict, Result<bool, String>) {
        let (engine, rec, sub, acct) = world(duration_s);
        let script = format!("fn evaluate(rec, sub, acct, params) {{\n{body}\n#{{}}\n}}");
        let ast = engine.compile(&script).unwrap();
        let gate = Gate::recognise(
            &ast,
            "evaluate",
            EntityType::Subscriber,
            true,
            &Default::default(),
            0,
        )
        .unwrap_or_else(|e| panic!("{body}: no gate: {e:?}"));
        let params = Rc::new(table(params));
        let verdict = gate.check(&Inputs {
            record: Some(&rec),
            entity: View::Entity(&sub),
            account: &acct,
            params: &params,
        });
        let script = engine
            .call_fn::<rhai::Dynamic>(
                &mut rhai::Scope::new(),
                &ast,
                "evaluate",
                (
                    rhai::Dynamic::from(rec),
                    rhai::Dynamic::from(sub),
                    rhai::Dynamic::from(acct),
                    rhai::Dynamic::from(crate::rules::api::ParamsView(params)),
                ),
            )
            .map(|d| d.is_unit())
            .map_err(|e| e.to_string());
        if verdict == Verdict::Skip {
            assert_eq!(
                script,
                Ok(true),
                "{body}: the gate skipped what the script answers"
            );
        }
        (verdict, script)
    }

    #[test]
    fn record_fields_arithmetic_and_ledger_reads_gate_exactly() {
        use Verdict::{Run, Skip};
        let int = |i: i64| rhai::Dynamic::from(i);
        let float = |f: f64| rhai::Dynamic::from(f);
        let share = [("share", float(1.0))];
        /// (body, call duration, params, gate, script returned nothing)
        type Case<'a> = (
            &'a str,
            u32,
            &'a [(&'a str, rhai::Dynamic)],
            Verdict,
            Result<bool, ()>,
        );
        let cases: &[Case] = &[
            // Record getters.
            ("if rec.duration_s == 0 { return; }", 0, &[], Skip, Ok(true)),
            ("if rec.duration_s == 0 { return; }", 60, &[], Run, Ok(false)),
            ("if rec.end_time - rec.time < 61 { return; }", 60, &[], Skip, Ok(true)),
            ("if rec.end_time - rec.time < 61 { return; }", 61, &[], Run, Ok(false)),
            ("if rec.minutes * 60 < rec.duration_s + 0.5 { return; }", 90, &[], Skip, Ok(true)),
            ("if rec.local_hour != 12 { return; }", 1, &[], Run, Ok(false)),
            // An accessor with record-field arguments (nobody is in state: 0 calls at once).
            (
                "let n = sub.concurrent_calls(rec.time, rec.end_time); if n < params.k { return; }",
                60,
                &[("k", int(1))],
                Skip,
                Ok(true),
            ),
            (
                "let n = sub.concurrent_calls(rec.time, rec.end_time); if n < params.k { return; }",
                60,
                &[("k", int(0))],
                Run,
                Ok(false),
            ),
            // A property of the entity, with arithmetic on the record's time.
            ("if sub.first_seen > rec.time - 604800 { return; }", 1, &[], Run, Ok(false)),
            ("if sub.first_seen < rec.time - 604800 { return; }", 1, &[], Skip, Ok(true)),
            // Ledger reads (no account: all 0.0), with mixed arithmetic.
            (
                "if acct.exposure() < params.share * acct.credit_limit() { return; }",
                1,
                &share,
                Run,
                Ok(false),
            ),
            (
                "if acct.exposure() <= params.share * acct.credit_limit() { return; }",
                1,
                &share,
                Skip,
                Ok(true),
            ),
            (
                "if acct.unpaid() + acct.unbilled() == 0 { return; }",
                1,
                &[],
                Skip,
                Ok(true),
            ),
            // `let`s of arithmetic, `to_float`, a division.
            (
                r#"let mo = sub.count("voice", "1h"); let r = mo.to_float() / (mo + 1);
                   if r < 0.5 { return; }"#,
                1,
                &[],
                Skip,
                Ok(true),
            ),
            (
                r#"if 10 / (sub.count("voice", "1h") + 1) > 5 { return; }"#,
                1,
                &[],
                Skip,
                Ok(true),
            ),
            (
                r#"if 10 / (sub.count("voice", "1h") + 3) > 5 { return; }"#,
                1,
                &[],
                Run,
                Ok(false),
            ),
            // Guards that fail in Rhai: the gate runs the script, which fails.
            // An overflow.
            ("if rec.time * 4611686018427387904 > 0 { return; }", 1, &[], Run, Err(())),
            ("if rec.time + 9223372036854775807 > 0 { return; }", 1, &[], Run, Err(())),
            // i64::MIN / -1.
            (
                "let m = rec.time - rec.time - 9223372036854775807 - 1; if m / (rec.duration_s - 2) > 0 { return; }",
                1,
                &[],
                Run,
                Err(()),
            ),
            // An integer division by zero.
            (r#"if 10 / sub.count("voice", "1h") > 0 { return; }"#, 1, &[], Run, Err(())),
            ("if rec.time / rec.duration_s > 0 { return; }", 0, &[], Run, Err(())),
            // A missing parameter in arithmetic.
            ("if rec.duration_s * params.nope > 0 { return; }", 1, &[], Run, Err(())),
            // A float division by zero is no error in Rhai: it gives +inf, and `+inf > 0.0` is
            // false there (its epsilon formula divides inf by inf). The gate leaves it to the
            // script.
            (
                r#"if 1.0 / sub.count("voice", "1h") > 0.0 { return; }"#,
                1,
                &[],
                Run,
                Ok(false),
            ),
        ];
        for (body, duration, params, verdict, script) in cases {
            let (got, ran) = both(body, *duration, params);
            assert_eq!(got, *verdict, "{body} ({duration} s)");
            assert_eq!(ran.map_err(|_| ()), *script, "{body} ({duration} s)");
        }
    }

    #[test]
    fn record_fields_are_read_only_where_every_trigger_is_a_usage_record() {
        let engine = crate::rules::build_engine(&Default::default());
        let ast = engine
            .compile(
                "fn evaluate(rec, sub, acct, params) { if rec.duration_s == 0 { return; } #{} }",
            )
            .unwrap();
        let limits = Default::default();
        assert!(
            Gate::recognise(&ast, "evaluate", EntityType::Subscriber, true, &limits, 0).is_ok()
        );
        assert!(
            Gate::recognise(&ast, "evaluate", EntityType::Subscriber, false, &limits, 0).is_err()
        );
        // Without a record at run time (it cannot happen with usage triggers), the gate runs it.
        let gate =
            Gate::recognise(&ast, "evaluate", EntityType::Subscriber, true, &limits, 0).unwrap();
        let (sub, acct) = quiet();
        let verdict = gate.check(&Inputs {
            record: None,
            entity: View::Entity(&sub),
            account: &acct,
            params: &table(&[]),
        });
        assert_eq!(verdict, Verdict::Run);
    }

    /// A copy of the shipped library whose gated rules' thresholds are drawn at random, some of
    /// them round values that measured features often equal exactly.
    fn library_with_random_thresholds(dir: &Path, rng: &mut fastrand::Rng) {
        fn copy(from: &Path, to: &Path) {
            std::fs::create_dir_all(to).unwrap();
            for e in std::fs::read_dir(from).unwrap() {
                let e = e.unwrap();
                if e.path().is_dir() {
                    copy(&e.path(), &to.join(e.file_name()));
                } else {
                    std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
                }
            }
        }
        copy(&shipped(), dir);
        let text = std::fs::read_to_string(dir.join("params.toml")).unwrap();
        let mut params: toml::Table = toml::from_str(&text).unwrap();
        let mut float = |max: f64| {
            const ROUND: [f64; 8] = [0.5, 1.0, 2.0, 2.5, 3.0, 5.0, 10.0, 20.0];
            if rng.bool() {
                ROUND[rng.usize(..ROUND.len())].min(max)
            } else {
                (rng.f64() * max * 100.0).round() / 100.0
            }
        };
        // (rule, parameter, the random draw's maximum, how the draw becomes the value), drawn in
        // this order.
        let int_from_one = |x: f64| toml::Value::Integer(1 + x as i64);
        let int = |x: f64| toml::Value::Integer(x as i64);
        let float_from_one = |x: f64| toml::Value::Float(1.0 + x);
        let float_value = toml::Value::Float;
        type Draw = fn(f64) -> toml::Value;
        let table: [(&str, &str, f64, Draw); 15] = [
            ("irsf_high_risk_destination", "min_calls", 5.0, int_from_one),
            (
                "irsf_high_risk_destination",
                "min_minutes",
                20.0,
                float_value,
            ),
            (
                "pbx_off_hours_international",
                "min_minutes",
                90.0,
                float_value,
            ),
            ("roaming_high_usage", "min_charges", 400.0, float_value),
            ("simbox_behaviour", "min_mo_calls", 60.0, int_from_one),
            ("impossible_travel", "min_km", 100.0, float_value),
            ("impossible_travel", "min_kmh", 1500.0, float_value),
            ("usage_spike_in_arrears", "min_charges", 50.0, float_value),
            ("early_life_high_usage", "max_age_days", 60.0, float_value),
            ("bill_shock", "min_charges", 20.0, float_value),
            ("bill_shock", "shock_factor", 5.0, float_from_one),
            ("simbox_behaviour", "min_mo_mt_ratio", 20.0, float_value),
            ("usage_spike_in_arrears", "min_baseline_days", 10.0, int),
            ("simultaneous_calls", "min_concurrent", 3.0, int_from_one),
            ("credit_limit_exceeded", "exceed_share", 2.0, float_value),
        ];
        for (rule, key, max, value) in table {
            params
                .get_mut(rule)
                .and_then(|t| t.as_table_mut())
                .unwrap()
                .insert(key.into(), value(float(max)));
        }
        std::fs::write(dir.join("params.toml"), toml::to_string(&params).unwrap()).unwrap();
    }

    /// Gated and ungated evaluation give the same verdicts: generated traffic with every story,
    /// over the shipped rules with random thresholds. In a debug build the engine calls the script
    /// after every `Skip` of a gate and panics unless it returned nothing (`VERIFY_GATES`), so this
    /// replay compares every gated evaluation with Rhai's own verdict on the same state.
    #[test]
    #[cfg_attr(
        not(debug_assertions),
        ignore = "release builds trust the gates: the script is not re-run after a skip"
    )]
    fn gated_and_ungated_evaluation_agree_on_random_states() {
        use crate::demo::gen::{generate, stories::STORY_RULES, GenConfig};
        use crate::modes::replay::{run_to, ReplayOptions, RulesChoice};
        let mut rng = fastrand::Rng::with_seed(15);
        let mut totals: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
        for seed in 1..=3 {
            let dir = tempfile::tempdir().unwrap();
            library_with_random_thresholds(&dir.path().join("rules"), &mut rng);
            let cfg = GenConfig {
                subscribers: 600,
                records: 6_000,
                days: 4,
                seed,
                inject: STORY_RULES.iter().map(|r| (r.to_string(), 1)).collect(),
                ..GenConfig::default()
            };
            let (mut usage, mut events) = (Vec::new(), Vec::new());
            generate(&cfg, &mut usage, &mut events).unwrap();
            std::fs::write(dir.path().join("u.ndjson"), usage).unwrap();
            std::fs::write(dir.path().join("e.ndjson"), events).unwrap();
            let opts = ReplayOptions {
                usage: dir.path().join("u.ndjson"),
                events: Some(dir.path().join("e.ndjson")),
                no_dead_letter: true,
                rules: RulesChoice::Dir(dir.path().join("rules")),
                ..Default::default()
            };
            let (_, pipeline) = run_to(&opts, &mut std::io::sink()).unwrap();
            let engine = pipeline.rules.as_ref().unwrap();
            for s in engine.stats() {
                let t = totals.entry(s.id.clone()).or_default();
                t.0 += s.evaluations;
                t.1 += s.gated;
            }
        }
        let set = shipped_set();
        for (id, (evaluations, gated)) in &totals {
            let has_gate = set.rules.iter().any(|r| r.id() == id && r.gate.is_some());
            assert!(has_gate || *gated == 0, "{id}: gated without a gate");
            // A gated evaluation is an evaluation too.
            assert!(gated <= evaluations, "{id}");
            // Every gate was put to the test (and some evaluations still ran the script).
            if has_gate && *evaluations >= 50 {
                assert!(*gated > 0, "{id}: {evaluations} evaluations, none gated");
            }
        }
        for (id, (evaluations, gated)) in &totals {
            eprintln!("{id:32} {evaluations:7} evaluations {gated:7} gated");
        }
        let gated: u64 = totals.values().map(|t| t.1).sum();
        let evaluations: u64 = totals.values().map(|t| t.0).sum();
        assert!(0 < gated && gated < evaluations, "{totals:?}");
    }
}
