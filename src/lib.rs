//! # cdrguard
//!
//! Real-time fraud and arrears detection over telecom usage records (CDRs) and account events.
//!
//! ```text
//!  usage records ─┐ source        record       classify    state            rules        alert         sink
//!  account events ┘ files/Kafka ─► decode ─────► class ───► windows per ───► Rhai, by ──► policy, ────► Kafka topics,
//!                   aligned in     (bad → dead              subscriber,       trigger;     memory,       webhooks,
//!                   event time      letter)                 account, caller;  sandboxed    route, wire   files
//!                   (align)                                 ledger; timers                               └► ack tracker
//! ```
//!
//! Modules in data-flow order:
//! - [`source`]: where records come from — NDJSON files (`replay`) and Kafka (`run`) — and
//!   `source::align`, the one event-time alignment every mode uses.
//! - [`repartition`]: input keyed other than by account, moved to its account's partition through
//!   Kafka topics and put back in event-time order before any state sees it.
//! - [`record`]: wire types and decoding (no I/O); [`classify`]: each record's class.
//! - [`state`]: windows per entity, account ledgers, timers, dedup — the only owner of heavy state.
//! - [`rules`]: the Rhai library (`rules::runtime` finds, validates and reloads it for every mode), the
//!   sandbox, the engine.
//! - [`alert`]: from a rule's verdict to an alert — policy, memory, routing, wire format.
//! - [`pipeline`]: the stages per record, built from one `PipelineOptions`.
//! - [`sink`]: the `Output` trait and its Kafka, webhook and file outputs, and the ack tracker that
//!   keeps commits behind acknowledgements.
//! - [`durability`]: the snapshot format, checkpoints tied to offsets, the checkpoint directory.
//! - [`modes`]: the offline commands (`replay`, `inspect`, `test`, `state`); [`daemon`]: `run`.
//! - [`telemetry`]: internal events that log and count, metrics, `/metrics` and `/health`.
//! - [`demo`]: generated traffic and the embedded broker; [`cli`] and [`config`]; [`client`], the
//!   Kafka client settings (brokers, TLS, SASL) every client shares.
//!
//! Imports flow one way: `source`, `sink` and `durability` never import `daemon`; `pipeline` never
//! imports `source`.
// One call into librdkafka has no safe wrapper (`source::kafka::end_offsets`); it is the only
// `unsafe` in the crate, allowed there with its justification.
#![deny(unsafe_code)]

pub mod source;
pub mod repartition;
pub mod record;
pub mod classify;
pub mod state;
pub mod rules;
pub mod alert;
pub mod pipeline;
pub mod sink;
pub mod durability;
pub mod modes;
pub mod daemon;
pub mod telemetry;
pub mod demo;

pub mod cli;
pub mod client;
pub mod config;
