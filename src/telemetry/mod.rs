//! Telemetry: process memory and progress reporting.

mod memory;
mod progress;

pub use memory::{peak_rss_bytes, rss_bytes};
pub use progress::Progress;
