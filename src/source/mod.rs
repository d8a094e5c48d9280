//! Sources: where records come from, and the one event-time alignment (`align`) that interleaves
//! inputs — files for `replay`, a partition's two topics for the daemon, source partitions for the
//! repartition sequencers.

pub mod align;
mod files;
pub mod kafka;
pub mod lane_header;
mod ndjson;

pub use files::{lane, FileSource};
pub use ndjson::LineReader;
