//! The outside world noderoll talks to, each behind one module: Kubernetes API servers
//! ([`kube`], with [`retry`] for their trouble and [`inventory`] for reading a cluster),
//! etcd ([`etcd`]), the ServiceLB DNS record ([`dns`]) and HTTP services such as
//! Prometheus and webhooks ([`http`]). Nothing here decides what to do; the executor does.

pub mod dns;
pub mod etcd;
pub mod http;
pub mod inventory;
pub mod kube;
pub mod retry;
