//! Durability: the snapshot format, checkpoints tied to input offsets, and the state directory.

pub mod checkpoint;
pub mod snapshot;
