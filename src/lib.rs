#![forbid(unsafe_code)]
pub mod record;
