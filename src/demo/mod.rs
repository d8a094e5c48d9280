//! Demo: generated traffic (`gen`) and the embedded broker of `cdrguard run` without `kafka.brokers`.

pub mod embedded;
pub mod gen;
