//! Connecting to a Kubernetes API server the way kubectl does: an explicit kubeconfig file,
//! or `KUBECONFIG`, `~/.kube/config` and in-cluster configuration in that order.

use std::path::Path;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::exit_code::{self, KnowsExitCode};

/// Why no client can be made for an API server.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The kubeconfig cannot be read or used.
    #[error("cannot {context}")]
    Kubeconfig {
        /// What was being done, naming the file.
        context: String,
        /// The cause.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// No kubeconfig was given and none can be found (nor in-cluster configuration).
    #[error("cannot find a kubeconfig")]
    Infer(#[source] kube::config::InferConfigError),
    /// An API server URL does not parse.
    #[error("cannot use the API server {url}")]
    Url {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: http::uri::InvalidUri,
    },
    /// The client cannot be built from the configuration (its TLS settings).
    #[error("cannot create a Kubernetes client")]
    Client(#[source] kube::Error),
}

impl KnowsExitCode for ConnectError {
    fn exit_code(&self) -> i32 {
        exit_code::FAILURE
    }
}

type Result<T, E = ConnectError> = std::result::Result<T, E>;

/// A client for the cluster a kubeconfig names (its current context).
pub async fn connect(kubeconfig: Option<&Path>) -> Result<kube::Client> {
    client_for(load(kubeconfig, None).await?)
}

/// Like [`connect`], with a context other than the current one.
pub async fn connect_context(kubeconfig: Option<&Path>, context: Option<&str>) -> Result<kube::Client> {
    client_for(load(kubeconfig, context).await?)
}

/// Like [`connect`], but when `servers` names other API servers of the same cluster, each
/// request goes to the server in use and a server that cannot be reached (its node is
/// being upgraded) hands over to the next one. The kubeconfig's credentials and CA serve
/// for all of them, as they do for the k3s servers of one cluster.
pub async fn connect_with_failover(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
    servers: &[String],
) -> Result<kube::Client> {
    let config = load(kubeconfig, context).await?;
    let mut urls = vec![config.cluster_url.to_string()];
    for server in servers {
        let same = |u: &String| u.trim_end_matches('/') == server.trim_end_matches('/');
        if !urls.iter().any(same) {
            urls.push(server.clone());
        }
    }
    if urls.len() == 1 {
        return client_for(config);
    }
    let mut endpoints = Vec::with_capacity(urls.len());
    for url in urls {
        let mut one = config.clone();
        one.cluster_url = url.parse().map_err(|source| ConnectError::Url { url: url.clone(), source })?;
        endpoints.push((url, client_for(one)?));
    }
    let service = Failover { endpoints: Arc::new(endpoints), current: Arc::new(AtomicUsize::new(0)) };
    Ok(kube::Client::new(service, config.default_namespace))
}

/// Sends to the API server in use; moves on to the next when it cannot be reached. The
/// request that failed is not resent here: the caller's retry sends it again, now to the
/// next server.
#[derive(Clone)]
struct Failover {
    endpoints: Arc<Vec<(String, kube::Client)>>,
    current: Arc<AtomicUsize>,
}

impl tower_service::Service<http::Request<kube::client::Body>> for Failover {
    type Response = http::Response<kube::client::Body>;
    type Error = kube::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<kube::client::Body>) -> Self::Future {
        let endpoints = self.endpoints.clone();
        let current = self.current.clone();
        Box::pin(async move {
            let index = current.load(Ordering::SeqCst) % endpoints.len();
            let (url, client) = &endpoints[index];
            let result = client.send(request).await;
            if let Err(kube::Error::HyperError(_) | kube::Error::Service(_)) = &result {
                let next = (index + 1) % endpoints.len();
                if current.compare_exchange(index, next, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                    tracing::warn!(from = %url, to = %endpoints[next].0, "API server unreachable; failing over");
                }
            }
            result
        })
    }
}

async fn load(kubeconfig: Option<&Path>, context: Option<&str>) -> Result<kube::Config> {
    let failed = |context: String| move |source| ConnectError::Kubeconfig { context, source };
    let options = KubeConfigOptions { context: context.map(str::to_owned), ..KubeConfigOptions::default() };
    match kubeconfig {
        Some(path) => {
            let shown = path.display();
            let file = Kubeconfig::read_from(path).map_err(failed(format!("read the kubeconfig {shown}")))?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(failed(format!("use the kubeconfig {shown}")))
        }
        None if context.is_some() => {
            kube::Config::from_kubeconfig(&options).await.map_err(failed("use the kubeconfig's context".to_owned()))
        }
        None => kube::Config::infer().await.map_err(ConnectError::Infer),
    }
}

/// A client for an API server URL with no credentials (the in-process simulator).
pub fn for_url(url: &str) -> Result<kube::Client> {
    let uri = url.parse().map_err(|source| ConnectError::Url { url: url.to_owned(), source })?;
    client_for(kube::Config::new(uri))
}

fn client_for(mut config: kube::Config) -> Result<kube::Client> {
    // kube-rs retries 429s by itself, up to 15 times with backoff growing to minutes. An
    // eviction's 429 is the PDB saying no, which the caller must see at once (to watch the
    // budget, or report it), so noderoll retries what it chooses, itself.
    config.default_retry = false;
    kube::Client::try_from(config).map_err(ConnectError::Client)
}
