//! Sources: where records come from. Files and stdin (NDJSON) now; Kafka with the daemon.

mod merge;
mod ndjson;

pub use merge::{Decoded, InputKind, Item, MergedSource};
pub use ndjson::LineReader;
