//! Alerts: from a rule's verdict to a message a department receives.
//!
//! `policy` decides (cooldown, min-hits, deterministic id) and builds the alert; `memory` is what it
//! remembers per (rule, entity), which scripts read too (`alerted`, `edge`); `route` picks the
//! departments (VIP overlay); `wire` is the encoding and metadata every sink shares; `feedback` is
//! what analysts say back about alerts (dispositions, snoozes).

pub mod feedback;
pub mod memory;
pub mod overlap;
pub mod policy;
pub mod route;
pub mod wire;
