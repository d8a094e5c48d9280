//! # cdrguard
//!
//! Real-time fraud and arrears detection over telecom usage records (CDRs) and account events.
//!
//! ```text
//!  usage records ─┐  source       decode        classify       state                   rules ─► alerts
//!  (NDJSON/Kafka) ├─► lines ──► typed record ──► record ──► windows per subscriber,   (Rhai,    per
//!  account events ┘  merged by   (bad → dead     class      account, calling number;  next)     department
//!                    event time   letter)                   ledger; timers; dedup
//! ```
//!
//! Modules in data-flow order: [`source`] reads lines, [`record`] decodes them, [`classify`] gives each
//! record its class, [`state`] keeps the windows, ledgers and timers, [`rules`] holds the sandbox rule scripts run in, [`pipeline`] wires those stages per
//! record, [`sink`] writes dead letters and alerts (files, Kafka), [`replay`] drives it from files and
//! [`daemon`] from Kafka; [`inspect`] explains one entity, [`ruletest`] runs rule test cases.
// One call into librdkafka has no safe wrapper (`source::kafka::end_offsets`); it is the only
// `unsafe` in the crate, allowed there with its justification.
#![deny(unsafe_code)]

pub mod source;
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
pub mod demo;

pub mod cli;
pub mod config;
pub mod telemetry;
