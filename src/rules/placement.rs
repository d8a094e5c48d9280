//! Which pipeline of the daemon runs a rule: a partition's lines, accounts and devices, or its
//! calling numbers (the calls lane, `repartition::calls`), decided from the script itself.
//!
//! A calling number rings subscribers of every partition, so its state and the rules keyed by it
//! live in the partition of the number, fed by every partition's calls merged in event time. A
//! subscriber rule that reads those rules' alerts — `alerted("wangiri_inbound", rec.destination,
//! …)`, a victim calling a flagged Wangiri source back — must see every call before its record
//! applied, in event time, whatever partition the calls came from. So such a rule runs there too:
//! its partition hands the record over with the account facts of that moment
//! (`engine::AccountFacts`), keyed by the number it asks about, and the calls lane evaluates it at
//! its place in the merge, after exactly the rings before it. Nothing waits; the partition goes on
//! with its next record at once. (Holding the record in its partition until every calling number
//! has caught up stalled partitions on each other: 12k holds per million records cost a third of
//! the Kafka backlog throughput, measured in `benches/kafka.rs`.)
//!
//! The calls lane keeps no subscriber or account state, so such a rule may read the record, its
//! parameters and alerts, but not `sub` or `acct`: the library is refused otherwise, in every mode,
//! so that what `check` accepts runs the same in replay and in the daemon. Found by walking the AST.
//!
//! The number the record goes to must be known before any script runs: the record's destination
//! (`UsageRecord::destination`). So every `alerted` of a calling-number rule must ask about
//! `rec.destination`, written so (`AlertedCall`): another number's alerts are not there. Refused
//! otherwise, in every mode too.

use std::collections::BTreeSet;

use rhai::{ASTNode, Expr, FnCallExpr, Position, Stmt, AST};

/// A call of `alerted` in a script: the rule id it asks about when it is written as a literal, and
/// whether the entity it asks about is the record's destination.
pub struct AlertedCall {
    pub rule: Option<String>,
    /// The key is `rec.destination` written in the entry function, `rec` being its first parameter
    /// (the record) and never rebound there. A helper's parameter of that name, a variable holding
    /// the destination or a string built from it are not: that they are the destination cannot be
    /// told from the script.
    pub keyed_by_destination: bool,
    pub position: Position,
}

/// Every call of `alerted` anywhere in the script (helper functions included); `entry` names the
/// function whose first parameter is the record.
pub fn alerted_calls(ast: &AST, entry: &str) -> Vec<AlertedCall> {
    let body = function_only(ast, entry);
    let rebound = rebound(&body);
    let record = ast
        .iter_functions()
        .find(|f| f.name == entry)
        .and_then(|f| f.params.first().map(|p| p.to_string()))
        .filter(|r| !rebound.contains(r));
    let mut by_destination = Vec::new();
    if let Some(record) = &record {
        body.walk(&mut |path: &[ASTNode]| {
            if let Some((f, pos)) = alerted(path) {
                if f.args
                    .get(1)
                    .is_some_and(|k| is_property(k, record, "destination"))
                {
                    by_destination.push(pos);
                }
            }
            true
        });
    }
    let mut calls = Vec::new();
    ast.walk(&mut |path: &[ASTNode]| {
        if let Some((f, position)) = alerted(path) {
            let rule = match f.args.first() {
                Some(Expr::StringConstant(s, _)) => Some(s.to_string()),
                _ => None,
            };
            calls.push(AlertedCall {
                rule,
                keyed_by_destination: by_destination.contains(&position),
                position,
            });
        }
        true
    });
    calls
}

/// The call of `alerted` a walk is at, if it is one. A call that is a statement of its own (a
/// block's last, which is its value) is a `Stmt::FnCall`, not an expression.
fn alerted<'a>(path: &[ASTNode<'a>]) -> Option<(&'a FnCallExpr, Position)> {
    let (f, pos) = match path.last()? {
        ASTNode::Expr(Expr::FnCall(f, pos)) | ASTNode::Stmt(Stmt::FnCall(f, pos)) => (f, pos),
        _ => return None,
    };
    (f.name == "alerted" && f.namespace.is_empty()).then_some((&**f, *pos))
}

/// Whether `e` is `var.name`, `var` a plain variable.
fn is_property(e: &Expr, var: &str, name: &str) -> bool {
    let Expr::Dot(dot, ..) = e else { return false };
    matches!(&dot.lhs, Expr::Variable(v, ..) if v.1 == var && v.2.is_empty())
        && matches!(&dot.rhs, Expr::Property(p, _) if p.2 == name)
}

/// Names a function body binds or assigns (`let`, `const`, `=`, `for`, `catch`): a parameter among
/// them no longer holds what the function was given.
pub fn rebound(body: &AST) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    body.walk(&mut |path: &[ASTNode]| {
        match path.last() {
            Some(ASTNode::Stmt(Stmt::Var(v, ..))) => {
                names.insert(v.0.name.to_string());
            }
            Some(ASTNode::Stmt(Stmt::Assignment(a))) => {
                if let Expr::Variable(v, ..) = &a.1.lhs {
                    names.insert(v.1.to_string());
                }
            }
            Some(ASTNode::Stmt(Stmt::For(f, _))) => {
                names.insert(f.0.name.to_string());
                names.extend(f.1.as_ref().map(|i| i.name.to_string()));
            }
            Some(ASTNode::Stmt(Stmt::TryCatch(t, _))) => {
                if let Expr::Variable(v, ..) = &t.expr {
                    names.insert(v.1.to_string());
                }
            }
            _ => {}
        }
        true
    });
    names
}

/// Where the function `func` reads its variable `var` (the first read, if any).
pub fn first_read(ast: &AST, func: &str, var: &str) -> Option<Position> {
    let mut found = None;
    function_only(ast, func).walk(&mut |nodes: &[ASTNode]| {
        if let Some(ASTNode::Expr(Expr::Variable(v, _, pos))) = nodes.last() {
            if v.1 == var && v.2.is_empty() {
                found = Some(*pos);
                return false;
            }
        }
        true
    });
    found
}

/// An AST holding the functions named `name` only (overloads together): walking it walks their
/// bodies and nothing else. (`AST::clone_functions_only_filtered` does not filter: rhai 1.27's
/// `Module::merge_filtered` copies every function into an empty module.)
pub fn function_only(ast: &AST, name: &str) -> AST {
    let mut only = ast.clone_functions_only();
    only.retain_functions(|_, _, f, _| f == name);
    only
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_is_looked_for_in_the_named_function_only() {
        let engine = crate::rules::build_engine(&Default::default());
        let ast = engine
            .compile(
                "fn describe(sub) { sub.msisdn }\n\
                 fn evaluate(rec, sub, acct, params) { rec.destination }",
            )
            .unwrap();
        assert_eq!(first_read(&ast, "evaluate", "sub"), None);
        assert_eq!(
            first_read(&ast, "describe", "sub"),
            Some(Position::new(1, 20))
        );
    }

    /// (rule, keyed by the destination) of each `alerted` call in `script`, in walk order.
    fn calls(script: &str) -> Vec<(Option<String>, bool)> {
        let engine = crate::rules::build_engine(&Default::default());
        let ast = engine.compile(script).unwrap();
        alerted_calls(&ast, "evaluate")
            .into_iter()
            .map(|c| (c.rule, c.keyed_by_destination))
            .collect()
    }

    #[test]
    fn only_the_records_destination_written_in_the_entry_function_is_the_destination() {
        let w = Some("w".to_string());
        for (body, destination) in [
            (r#"alerted("w", rec.destination, "1h")"#, true),
            (r#"!alerted("w", rec.destination, "1h")"#, true),
            (r#"alerted("w", rec.other_number, "1h")"#, false),
            (r#"alerted("w", sub.destination, "1h")"#, false),
            (r#"let n = rec.destination; alerted("w", n, "1h")"#, false),
            (r#"alerted("w", "" + rec.destination, "1h")"#, false),
            (
                r#"let rec = #{ destination: "1" }; alerted("w", rec.destination, "1h")"#,
                false,
            ),
            (
                r#"for rec in [] { alerted("w", rec.destination, "1h"); }"#,
                false,
            ),
        ] {
            let script = format!("fn evaluate(rec, sub, acct, params) {{ {body} }}");
            assert_eq!(calls(&script), [(w.clone(), destination)], "{body}");
        }
        // In a helper, `rec` is the helper's own parameter, whatever its caller passed. (A call
        // that is a block's last statement was once not seen at all, and its rule was not placed
        // beside the calling numbers: in the daemon it never saw their alerts.)
        let helper = "fn flagged(rec) { alerted(\"w\", rec.destination, \"1h\") }\n\
                      fn evaluate(rec, sub, acct, params) { flagged(rec) }";
        assert_eq!(calls(helper), [(w.clone(), false)]);
        // The record's name is the entry function's to choose.
        let named = r#"fn evaluate(cdr, s, a, p) { alerted("w", cdr.destination, "1h") }"#;
        assert_eq!(calls(named), [(w, true)]);
        let dynamic = r#"fn evaluate(r, s, a, p) { alerted("w" + r.kind, r.destination, "1h") }"#;
        assert_eq!(calls(dynamic), [(None, true)]);
    }
}
