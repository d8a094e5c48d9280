//! Alerts: the policy that turns a rule's verdict into an alert, and the memory it keeps per entity.

pub mod memory;
pub mod policy;
