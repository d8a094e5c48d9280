//! Sinks: where alerts and rejected records go. Files now; Kafka topics with the daemon.

mod dead_letter;

pub use dead_letter::{base64, DeadLetterFile};
