//! noderoll plans and runs batched rolling upgrades of Kubernetes (k3s) nodes without
//! disrupting the people who use them.
//!
//! The crate is laid out the way the work flows: [`plan`] reads and validates the YAML plan
//! (pure data), [`planner`] turns it into a step graph (pure), and [`cli`] is the only place
//! that prints. `main.rs` only maps the result to an exit code.

pub mod cli;
pub mod client;
pub mod dns;
pub mod error;
pub mod etcd;
pub mod executor;
pub mod exit_code;
pub mod http_client;
pub mod inventory;
pub mod labels;
pub mod manifests;
pub mod metrics;
pub mod notify;
pub mod plan;
pub mod planner;
pub mod rehearse;
pub mod sim;

pub use error::{Error, Result};
