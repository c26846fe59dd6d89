//! Behaviour through the real `noderoll` binary.

use test_support::{control_plane, etcd, harness, knot};

mod abort;
mod check;
mod cordoned;
mod distribution;
mod dns;
mod incluster;
mod manifests;
mod notify;
mod preview;
mod prometheus;
mod quorum;
mod real_abort;
mod real_bgp;
mod real_cordoned;
mod real_drain;
mod real_failures;
mod real_outage;
mod real_preview;
mod real_rbac;
mod real_resume;
mod real_rollout;
mod real_soak;
mod rollout;
mod schema;
mod sim_conformance;
mod sim_kube;
mod sim_kubectl;
mod windows;
