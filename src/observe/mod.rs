//! Observers of a rollout's events: they watch what the executor reports and tell others,
//! without ever steering the run.

pub mod metrics;
pub mod notify;
