//! The commands beside the daemon: `replay` (with its `backtest` page and label score), `inspect`,
//! `test` (rule cases), `state` (snapshot tools) and the daemon's pre-flight (`run --check`).

pub mod backtest;
pub mod diff;
pub mod feedback;
pub mod inspect;
pub mod preflight;
pub mod replay;
pub mod replay_split;
pub mod ruletest;
pub mod state;
