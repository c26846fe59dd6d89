//! Generators of files a user starts from: `noderoll init` writes a plan from a cluster's
//! nodes, `noderoll manifests` the objects for running inside the cluster. Both are pure:
//! they return text and the CLI writes it.

pub mod init;
pub mod manifests;
