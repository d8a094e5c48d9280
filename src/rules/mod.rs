//! Rules: the Rhai rule library, from files on disk to alerts.
//!
//! ```text
//! library (files) ─► ruleset (compile, validate, dispatch tables) ─► engine (per trigger: views,
//!   sandboxed calls, error counts, quarantine) ─► policy (cooldown, min-hits, id, VIP overlay,
//!   routing) ─► alerts           watch: file changes / SIGHUP ─► reload (atomic swap)
//! ```

pub mod sandbox;
pub mod library;
pub mod meta;
pub mod param_types;
pub mod params;
pub mod api;
pub mod lint;
pub mod gate;
pub mod placement;
pub mod ruleset;
pub mod engine;
pub mod report;
pub mod runtime;
pub mod watch;

pub use api::{Shared, SharedStore};
pub use engine::{EngineCounters, RuleEngine, RuleStats};
pub use library::RuleSources;
pub use report::RulesReport;
pub use ruleset::{BuildErrors, Problem, RuleSet};
pub use runtime::{Library, Reloader};
pub use sandbox::{build_engine, Limit, SandboxLimits, ScriptError};
