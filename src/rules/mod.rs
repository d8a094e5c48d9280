//! Rules: the Rhai rule library. For now the sandbox every rule runs in; the rule set, dispatch, alert
//! policy and hot reload build on it.

pub mod sandbox;

pub use sandbox::{build_engine, Limit, SandboxLimits, ScriptError};
