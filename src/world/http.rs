//! A small HTTP(S) JSON client for the services noderoll talks to besides Kubernetes and
//! etcd: Prometheus (health gates) and webhooks (notifications). HTTPS trusts the system's
//! roots, as curl would.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// What went wrong with one request, worded for the operator.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{url}: {message}")]
pub struct HttpError {
    /// The URL, with any query string.
    pub url: String,
    /// What happened.
    pub message: String,
}

/// A shared client; cheap to clone.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

impl HttpClient {
    /// A client trusting the system's root certificates.
    pub fn new() -> Result<HttpClient, HttpError> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider)
            .map_err(|e| HttpError { url: "(system roots)".into(), message: e.to_string() })?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(HttpClient { inner: Client::builder(TokioExecutor::new()).build(connector) })
    }

    /// GETs `url` and parses the answer as JSON; a non-2xx status is an error.
    pub async fn get_json(&self, url: &str, timeout: Duration) -> Result<Value, HttpError> {
        let body = self.send(http::Method::GET, url, Bytes::new(), timeout).await?;
        serde_json::from_slice(&body).map_err(|e| HttpError { url: url.to_owned(), message: format!("not JSON: {e}") })
    }

    /// POSTs `body` as JSON; a non-2xx status is an error.
    pub async fn post_json(&self, url: &str, body: &Value, timeout: Duration) -> Result<(), HttpError> {
        self.send(http::Method::POST, url, Bytes::from(body.to_string()), timeout).await.map(|_| ())
    }

    async fn send(&self, method: http::Method, url: &str, body: Bytes, timeout: Duration) -> Result<Bytes, HttpError> {
        let error = |message: String| HttpError { url: url.to_owned(), message };
        let request = http::Request::builder()
            .method(method)
            .uri(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, concat!("noderoll/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(body))
            .map_err(|e| error(e.to_string()))?;
        let exchange = async {
            let response = self.inner.request(request).await.map_err(|e| error(describe(&e)))?;
            let status = response.status();
            let body = response.into_body().collect().await.map_err(|e| error(e.to_string()))?.to_bytes();
            if status.is_success() {
                Ok(body)
            } else {
                let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                Err(error(format!("answered {status}: {text}")))
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| error(format!("no answer within {} s", timeout.as_secs_f64())))?
    }
}

/// A client error with its causes ("client error (Connect): invalid peer certificate:
/// UnknownIssuer" rather than "client error (Connect)"): hyper's own message names only the
/// phase that failed, the causes say why.
pub(crate) fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut inner = error;
    while let Some(next) = inner.source() {
        let cause = next.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
        inner = next;
    }
    text
}
