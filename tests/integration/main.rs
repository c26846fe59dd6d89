//! Behaviour through the real `noderoll` binary.

mod check;
mod harness;
mod preview;
mod schema;
mod sim_kube;
mod sim_kubectl;
