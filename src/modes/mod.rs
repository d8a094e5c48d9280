//! The offline commands: `replay`, `inspect`, `test` (rule cases) and `state` (snapshot tools).

pub mod inspect;
pub mod replay;
pub mod ruletest;
pub mod state;
