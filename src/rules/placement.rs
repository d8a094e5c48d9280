//! Which pipeline of the daemon runs a rule: a partition (lines, accounts, devices) or the caller
//! shard (calling numbers), decided from the script itself.
//!
//! A calling number rings subscribers of every partition, so its state and the rules keyed by it
//! live in the caller shard. A subscriber rule that reads those rules' alerts — `alerted(
//! "wangiri_inbound", rec.destination, …)`, a victim calling a flagged Wangiri source back — must
//! see every call before its record applied, in event time, whatever partition the calls came from.
//! The shard already merges the partitions' calls in event time, so such a rule runs there: its
//! partition hands it the record and the account facts of that moment (`engine::AccountFacts`), and
//! the shard evaluates it at its place in the merge. Nothing waits; the partition goes on with its
//! next record at once. (The alternative — holding the record in its partition until the shard has
//! caught up — stalled partitions on each other: 12k holds per million records cost a third of the
//! Kafka backlog throughput, measured in `benches/kafka.rs`.)
//!
//! The shard keeps no subscriber or account state, so such a rule may read the record, its
//! parameters and alerts, but not `sub` or `acct`: the library is refused otherwise, in every mode,
//! so that what `check` accepts runs the same in replay and in the daemon. Found by walking the AST.

use rhai::{ASTNode, Expr, Position, AST};

/// A call of `alerted` in a script: the rule id it asks about when it is written as a literal.
pub struct AlertedCall {
    pub rule: Option<String>,
    pub position: Position,
}

/// Every call of `alerted` anywhere in the script (helper functions included).
pub fn alerted_calls(ast: &AST) -> Vec<AlertedCall> {
    let mut calls = Vec::new();
    ast.walk(&mut |path: &[ASTNode]| {
        if let Some(ASTNode::Expr(Expr::FnCall(f, pos))) = path.last() {
            if f.name == "alerted" && f.namespace.is_empty() {
                let rule = match f.args.first() {
                    Some(Expr::StringConstant(s, _)) => Some(s.to_string()),
                    _ => None,
                };
                calls.push(AlertedCall {
                    rule,
                    position: *pos,
                });
            }
        }
        true
    });
    calls
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
}
