//! Telemetry: internal events that log and count, the metrics they count into, the HTTP endpoint that
//! serves them, process memory and progress reporting.

pub mod events;
pub mod http;
mod memory;
pub mod metrics;
mod progress;

pub use memory::{peak_rss_bytes, rss_bytes};
pub use progress::Progress;
