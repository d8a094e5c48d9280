//! Sources: where records come from. Files and stdin (NDJSON) for `replay`; Kafka for the daemon.

pub mod kafka;
mod merge;
mod ndjson;

pub use merge::{Decoded, InputKind, Item, MergedSource};
pub use ndjson::LineReader;
