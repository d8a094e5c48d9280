//! Sources: where records come from. Files and stdin (NDJSON) for `replay`; Kafka for the daemon.

pub mod kafka;
mod files;
mod ndjson;

pub use files::{Decoded, InputKind, Item, MergedSource};
pub use ndjson::LineReader;
