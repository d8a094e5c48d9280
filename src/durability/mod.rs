//! Durability: the snapshot format, checkpoints tied to input offsets, and the directory they live in.

pub mod checkpoint;
pub mod dir;
pub mod snapshot;
