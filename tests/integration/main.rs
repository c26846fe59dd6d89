//! Behaviour through the real `noderoll` binary.

mod check;
mod distribution;
mod dns;
mod etcd;
mod harness;
mod incluster;
mod knot;
mod manifests;
mod notify;
mod preview;
mod prometheus;
mod quorum;
mod rollout;
mod schema;
mod sim_kube;
mod sim_kubectl;
mod windows;
