//! Static checks of a compiled script, so that `check` catches what Rhai would only find at run
//! time: a call of a function or method that exists nowhere (`sub.minutez(…)`), and a verdict map
//! with a key the alert policy does not know (`explaination`). Rhai resolves functions when they are
//! called, so a typo in a branch that rarely runs would otherwise pass `check` and `test` and fail on
//! live traffic.
//!
//! What "exists" means: a function defined in the script, one the engine knows (ours, registered in
//! `api`, and Rhai's standard library: `Engine::gen_fn_signatures`), or a keyword function Rhai
//! handles itself. A method is a function whose first argument is the object, so the same list
//! serves both. The type of the object is not known statically (a local map has any field), so a
//! method that exists for another type passes here and fails at run time, as before.

use std::collections::BTreeSet;

use rhai::{ASTNode, Engine, Expr, Position, Stmt, AST};

/// Functions Rhai implements itself, not listed among the engine's functions.
const KEYWORD_FUNCTIONS: &[&str] = &[
    "print",
    "debug",
    "type_of",
    "Fn",
    "call",
    "curry",
    "is_shared",
    "is_def_var",
    "is_def_fn",
    "eval",
];

/// The names of every function the rule engine can call. They are the same for every engine
/// `ruleset` builds (the sandbox's, with `api` registered), so they are listed once per process:
/// a daemon builds a rule set per partition, and listing them costs thousands of signature strings.
pub fn known_functions(engine: &Engine) -> &'static BTreeSet<String> {
    static KNOWN: std::sync::OnceLock<BTreeSet<String>> = std::sync::OnceLock::new();
    KNOWN.get_or_init(|| {
        let mut names: BTreeSet<String> = engine
            .gen_fn_signatures(true)
            .iter()
            .filter_map(|s| s.split('(').next())
            .map(|n| n.rsplit("::").next().unwrap_or(n).to_string())
            .collect();
        names.extend(KEYWORD_FUNCTIONS.iter().map(|s| s.to_string()));
        names
    })
}

/// A problem found, at its place in the script.
pub struct Finding {
    pub position: Position,
    pub message: String,
}

/// Calls of functions and methods that exist nowhere, and verdict maps of `entry` with keys not in
/// `verdict_keys`. One finding per unknown name (its first use) and per unknown key.
pub fn check(
    ast: &AST,
    known: &BTreeSet<String>,
    entry: &str,
    verdict_keys: &[&str],
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let defined: BTreeSet<String> = ast.iter_functions().map(|f| f.name.to_string()).collect();
    let mut reported = BTreeSet::new();
    ast.walk(&mut |path: &[ASTNode]| {
        let (call, what) = match path.last() {
            Some(ASTNode::Expr(Expr::FnCall(f, pos))) if f.op_token.is_none() => {
                ((f, *pos), "function")
            }
            Some(ASTNode::Expr(Expr::MethodCall(f, pos))) => ((f, *pos), "method"),
            _ => return true,
        };
        let (f, pos) = call;
        let name = f.name.as_str();
        let identifier = name
            .chars()
            .next()
            .is_some_and(|c| c.is_alphabetic() || c == '_');
        if f.namespace.is_empty()
            && identifier
            && !defined.contains(name)
            && !known.contains(name)
            && reported.insert(name.to_string())
        {
            findings.push(Finding {
                position: pos,
                message: format!("no {what} named `{name}` exists (a typo?)"),
            });
        }
        true
    });

    // The entry function's verdicts: map literals it returns (`return #{…}`, or a block's last
    // expression, which Rhai returns).
    super::placement::function_only(ast, entry).walk(&mut |path: &[ASTNode]| {
        let map = match path.last() {
            Some(ASTNode::Stmt(Stmt::Return(Some(e), ..))) => e.as_ref(),
            Some(ASTNode::Stmt(Stmt::Expr(e))) => e.as_ref(),
            _ => return true,
        };
        // A map of constants only is folded into one constant by Rhai's optimizer: its keys have no
        // positions of their own, the map's is used.
        let keys: Vec<(String, Position)> = match map {
            Expr::Map(m, _) => {
                m.0.iter()
                    .map(|(k, _)| (k.name.to_string(), k.pos))
                    .collect()
            }
            Expr::DynamicConstant(d, pos) => d
                .read_lock::<rhai::Map>()
                .map(|m| m.keys().map(|k| (k.to_string(), *pos)).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        for (key, position) in keys {
            if !verdict_keys.contains(&key.as_str()) {
                findings.push(Finding {
                    position,
                    message: format!(
                        "unknown verdict key `{key}` (allowed: {})",
                        verdict_keys.join(", ")
                    ),
                });
            }
        }
        true
    });
    findings.extend(unknown_properties(ast, known, entry));
    findings
}

/// Properties read on the views the entry function is given (`rec.minutez`, `sub.countz`): the
/// record, the entity and the account, its first three parameters. A property no view's getter
/// serves fails on every evaluation that reaches it. (Which view a parameter is depends on the
/// rule's triggers and entity, so a getter of any view passes: `rec.credit_limit` still fails only
/// at run time.) Other objects can be maps with any field, and a parameter the function rebinds is
/// no longer a view: neither is checked.
fn unknown_properties(ast: &AST, known: &BTreeSet<String>, entry: &str) -> Vec<Finding> {
    let Some(views) = ast.iter_functions().find(|f| f.name == entry).map(|f| {
        f.params
            .iter()
            .take(3)
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
    }) else {
        return Vec::new();
    };
    let body = super::placement::function_only(ast, entry);
    let rebound = super::placement::rebound(&body);
    let mut findings = Vec::new();
    let mut reported = BTreeSet::new();
    body.walk(&mut |path: &[ASTNode]| {
        let Some(ASTNode::Expr(Expr::Dot(dot, ..))) = path.last() else {
            return true;
        };
        let Expr::Variable(v, ..) = &dot.lhs else {
            return true;
        };
        let var = v.1.as_str();
        // `a.b.c` is `a.(b.c)`: the property read on the view is the leftmost of the right side.
        let mut rhs = &dot.rhs;
        while let Expr::Dot(inner, ..) | Expr::Index(inner, ..) = rhs {
            rhs = &inner.lhs;
        }
        if let Expr::Property(p, pos) = rhs {
            let name = p.2.as_str();
            if views.iter().any(|w| w == var)
                && !rebound.contains(var)
                && !known.contains(&format!("get${name}"))
                && reported.insert((var.to_string(), name.to_string()))
            {
                findings.push(Finding {
                    position: *pos,
                    message: format!("`{var}.{name}`: no view has a property `{name}` (a typo?)"),
                });
            }
        }
        true
    });
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_entry_functions_maps_are_verdicts() {
        let engine = crate::rules::build_engine(&Default::default());
        let ast = engine
            .compile(
                "fn counts(rec) { #{ calls: rec.n, minutes: rec.m } }\n\
                 fn evaluate(rec, sub, acct, params) { let c = counts(rec); #{ explaination: c.calls } }",
            )
            .unwrap();
        let found = check(&ast, &BTreeSet::new(), "evaluate", &["explanation"]);
        let keys: Vec<_> = found
            .iter()
            .filter(|f| f.message.contains("verdict"))
            .map(|f| f.message.as_str())
            .collect();
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert!(keys[0].contains("explaination"), "{keys:?}");
    }
}
