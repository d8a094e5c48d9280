//! Sinks: where alerts and rejected records go. Files for `replay`; Kafka topics for the daemon.

mod dead_letter;
pub mod kafka;

pub use dead_letter::{base64, DeadLetterFile};
