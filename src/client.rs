//! Connecting to a Kubernetes API server the way kubectl does: an explicit kubeconfig file,
//! or `KUBECONFIG`, `~/.kube/config` and in-cluster configuration in that order.

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::error::{Error, Result};

/// A client for the cluster a kubeconfig names (its current context).
pub async fn connect(kubeconfig: Option<&Path>) -> Result<kube::Client> {
    let failed =
        |context: String| move |e: kube::config::KubeconfigError| Error::Client { context, message: e.to_string() };
    let config = match kubeconfig {
        Some(path) => {
            let shown = path.display();
            let file = Kubeconfig::read_from(path).map_err(failed(format!("read the kubeconfig {shown}")))?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(failed(format!("use the kubeconfig {shown}")))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| Error::Client { context: "find a kubeconfig".into(), message: e.to_string() })?,
    };
    client_for(config)
}

/// A client for an API server URL with no credentials (the in-process simulator).
pub fn for_url(url: &str) -> Result<kube::Client> {
    let uri = url.parse().map_err(|e: http::uri::InvalidUri| Error::Client {
        context: format!("use the URL {url}"),
        message: e.to_string(),
    })?;
    client_for(kube::Config::new(uri))
}

fn client_for(mut config: kube::Config) -> Result<kube::Client> {
    // kube-rs retries 429s by itself, up to 15 times with backoff growing to minutes. An
    // eviction's 429 is the PDB saying no, which the caller must see at once (to watch the
    // budget, or report it), so noderoll retries what it chooses, itself.
    config.default_retry = false;
    kube::Client::try_from(config)
        .map_err(|e| Error::Client { context: "create a Kubernetes client".into(), message: e.to_string() })
}
