//! noderoll plans and runs batched rolling upgrades of Kubernetes (k3s) nodes without
//! disrupting the people who use them.
//!
//! The crate is laid out the way the work flows: [`plan`] reads and validates the YAML plan
//! (pure data), [`planner`] turns it into a step graph (pure), and [`cli`] is the only place
//! that prints. `main.rs` only maps the result to an exit code.

pub mod cli;
pub mod executor;
pub mod exit_code;
pub mod labels;
pub mod observe;
pub mod plan;
pub mod planner;
pub mod rehearse;
pub mod scaffold;
pub mod sim;
pub mod world;
