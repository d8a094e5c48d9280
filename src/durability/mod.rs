//! Durability: the snapshot format, checkpoints tied to input offsets, the layout of chains of
//! checkpoints in the store, and the store itself (a directory or S3).

pub mod checkpoint;
pub mod layout;
pub mod snapshot;
pub mod store;
