//! The back-test of `replay`: what the replay collects for it (`tally`), the score against confirmed
//! cases (`labels`, `replay --labels`), and the HTML page (`page`, `replay --report`) drawn with
//! `svg` from text passed through `escape`.

mod escape;
pub mod labels;
pub mod page;
mod svg;
pub mod tally;

pub use labels::{Labels, Score};
pub use page::Page;
pub use tally::{AlertTally, InputVolume, Tally};
