//! Telemetry: metrics, process memory and progress reporting.

mod memory;
pub mod metrics;
mod progress;

pub use memory::{peak_rss_bytes, rss_bytes};
pub use progress::Progress;
