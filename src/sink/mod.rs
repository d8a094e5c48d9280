//! Sinks: where alerts and rejected records go. Files for `replay`; Kafka topics for the daemon.

pub mod ack;
mod file;
pub mod kafka;

pub use file::{base64, DeadLetterFile};
