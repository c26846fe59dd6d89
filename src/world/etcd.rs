//! Reading etcd's own view of its health: members, per-member health, leader and raft
//! index, through etcd's JSON gateway (`/v3/cluster/member/list`, `/v3/maintenance/status`,
//! `/health`) on each member's client URL, with the client certificate k3s uses
//! (`/var/lib/rancher/k3s/server/tls/etcd/{client.crt,client.key,server-ca.crt}`).
//!
//! Why the gateway and not the etcd-client crate: noderoll needs three read-only calls, and
//! the gateway serves them as plain HTTP+JSON on the same port, with the same TLS client
//! certificates. The gRPC client would bring tonic, prost and a protoc build step for those
//! three calls. Every call has a short timeout: a dead member must cost a second, not the
//! five etcdctl spends.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::Value;

use crate::plan::resolved::EtcdPlan;

/// How long one call to one member may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// Why etcd cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// A TLS file cannot be read or used.
    #[error("cannot use {path} for etcd's TLS: {message}")]
    Tls {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// No endpoint answered the member list.
    #[error("no etcd endpoint answered ({endpoints}): {last}")]
    Unreachable {
        /// The endpoints tried.
        endpoints: String,
        /// The last error.
        last: String,
    },
}

/// One member and how it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// Member id (decimal, as the gateway writes it).
    pub id: String,
    /// Member name (k3s names members after their node, with a suffix).
    pub name: String,
    /// Peer URLs.
    pub peer_urls: Vec<String>,
    /// Client URLs.
    pub client_urls: Vec<String>,
    /// `/health` said true and the status has no error.
    pub healthy: bool,
    /// It is the leader.
    pub leader: bool,
    /// Its raft index, when it answered.
    pub raft_index: Option<u64>,
    /// Raised alarms (NOSPACE, CORRUPT), as its status reports them.
    pub alarms: Vec<String>,
    /// Why it is not healthy.
    pub problem: Option<String>,
}

/// The cluster as etcd sees it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// Every member.
    pub members: Vec<Member>,
}

impl Health {
    /// Members that are healthy.
    pub fn healthy(&self) -> usize {
        self.members.iter().filter(|m| m.healthy).count()
    }

    /// The leader's raft index.
    pub fn leader_index(&self) -> Option<u64> {
        self.members.iter().find(|m| m.leader).and_then(|m| m.raft_index)
    }
}

type HttpClient = Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Full<Bytes>>;

/// A client for one etcd cluster.
#[derive(Clone)]
pub struct Etcd {
    endpoints: Vec<String>,
    http: HttpClient,
    /// The plan names a client certificate (for the hint when etcd refuses the handshake).
    client_cert: bool,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd").field("endpoints", &self.endpoints).finish()
    }
}

fn tls_error(path: &str) -> impl Fn(String) -> EtcdError + '_ {
    move |message| EtcdError::Tls { path: path.to_owned(), message }
}

fn tls_config(plan: &EtcdPlan) -> Result<rustls::ClientConfig, EtcdError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &plan.ca_file {
        for cert in CertificateDer::pem_file_iter(ca).map_err(|e| tls_error(ca)(e.to_string()))? {
            let cert = cert.map_err(|e| tls_error(ca)(e.to_string()))?;
            roots.add(cert).map_err(|e| tls_error(ca)(e.to_string()))?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("the TLS settings")(e.to_string()))?
        .with_root_certificates(roots);
    match (&plan.cert_file, &plan.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| tls_error(cert)(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| tls_error(cert)(e.to_string()))?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_error(key)(e.to_string()))?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| tls_error(cert)(e.to_string()))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

impl Etcd {
    /// A client for the plan's endpoints.
    pub fn new(plan: &EtcdPlan) -> Result<Etcd, EtcdError> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(plan)?)
            .https_or_http()
            .enable_http1()
            .build();
        let http = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Etcd { endpoints: plan.endpoints.clone(), http, client_cert: plan.cert_file.is_some() })
    }

    async fn call(&self, base: &str, path: &str, post: bool) -> Result<Value, String> {
        let uri = format!("{}{path}", base.trim_end_matches('/'));
        let request = http::Request::builder()
            .method(if post { http::Method::POST } else { http::Method::GET })
            .uri(&uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(if post { b"{}" } else { b"" })))
            .map_err(|e| e.to_string())?;
        let answer = async {
            let response = self.http.request(request).await.map_err(|e| crate::world::http::describe(&e))?;
            let status = response.status();
            let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if status.is_success() { Ok(value) } else { Err(format!("{uri} answered {status} {value}")) }
        };
        tokio::time::timeout(CALL_TIMEOUT, answer).await.map_err(|_| format!("{uri} did not answer within 1s"))?
    }

    /// Reads every member's health, leader and raft index.
    pub async fn health(&self) -> Result<Health, EtcdError> {
        let mut last = String::from("no endpoint configured");
        // From any endpoint: the last one may have timed out where another refused the TLS.
        let mut hint = None;
        let mut listed = None;
        for endpoint in &self.endpoints {
            match self.call(endpoint, "/v3/cluster/member/list", true).await {
                Ok(list) => {
                    listed = Some(list);
                    break;
                }
                Err(e) => {
                    hint = hint.or_else(|| tls_hint(&e, self.client_cert));
                    last = e;
                }
            }
        }
        let Some(list) = listed else {
            if let Some(hint) = hint {
                last = format!("{last}; {hint}");
            }
            return Err(EtcdError::Unreachable { endpoints: self.endpoints.join(", "), last });
        };
        let strings = |v: &Value| -> Vec<String> {
            v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_owned)).collect()
        };
        let mut members = Vec::new();
        for m in list["members"].as_array().into_iter().flatten() {
            let mut member = Member {
                id: m["ID"].as_str().unwrap_or_default().to_owned(),
                name: m["name"].as_str().unwrap_or_default().to_owned(),
                peer_urls: strings(&m["peerURLs"]),
                client_urls: strings(&m["clientURLs"]),
                healthy: false,
                leader: false,
                raft_index: None,
                alarms: Vec::new(),
                problem: None,
            };
            let Some(url) = member.client_urls.first().cloned() else {
                member.problem = Some("it has no client URL (not started yet?)".into());
                members.push(member);
                continue;
            };
            let health = self.call(&url, "/health", false).await;
            match self.call(&url, "/v3/maintenance/status", true).await {
                Ok(status) => {
                    let errors = strings(&status["errors"]);
                    member.alarms = errors
                        .iter()
                        .filter_map(|e| e.split_once("alarm:").map(|(_, a)| a.trim().to_owned()))
                        .collect();
                    member.raft_index = status["raftIndex"].as_str().and_then(|s| s.parse().ok());
                    member.leader = status["leader"].as_str() == Some(member.id.as_str());
                    member.healthy = errors.is_empty() && health.as_ref().is_ok_and(|h| h["health"] == "true");
                    if !member.healthy {
                        member.problem = Some(match (errors.is_empty(), health) {
                            (false, _) => errors.join("; "),
                            (true, Err(e)) => e,
                            (true, Ok(h)) => format!("health {h}"),
                        });
                    }
                }
                Err(e) => member.problem = Some(e),
            }
            members.push(member);
        }
        Ok(Health { members })
    }
}

/// What to change in the plan when the TLS handshake failed: rustls names the alert or the
/// verification error, not the file behind it.
fn tls_hint(error: &str, client_cert: bool) -> Option<&'static str> {
    let refused = ["alert: BadCertificate", "alert: CertificateRequired", "alert: UnknownCA"];
    if error.contains("invalid peer certificate") {
        Some("caFile does not verify etcd's serving certificate (k3s: server/tls/etcd/server-ca.crt)")
    } else if refused.iter().any(|alert| error.contains(alert)) {
        Some(if client_cert {
            "etcd refused certFile: its CA did not sign it (k3s: server/tls/etcd/client.crt and client.key)"
        } else {
            "etcd wants a client certificate: set certFile and keyFile (k3s: server/tls/etcd/client.crt and client.key)"
        })
    } else {
        None
    }
}

/// The node a member runs on: same name (k3s appends `-<hash>`), or a peer or client URL on
/// one of the node's addresses.
pub fn node_of<'a>(member: &Member, nodes: &'a BTreeMap<String, Vec<String>>) -> Option<&'a str> {
    let host = |url: &str| -> Option<String> {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let authority = rest.split('/').next()?;
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
        Some(host.trim_matches(['[', ']']).to_owned())
    };
    let hosts: Vec<String> = member.peer_urls.iter().chain(&member.client_urls).filter_map(|u| host(u)).collect();
    nodes.iter().find_map(|(node, addresses)| {
        let named = member.name == *node || member.name.strip_prefix(node.as_str()).is_some_and(|r| r.starts_with('-'));
        let addressed = addresses.iter().any(|a| hosts.contains(a));
        (named || addressed).then_some(node.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, peer: &str) -> Member {
        Member {
            id: "1".into(),
            name: name.into(),
            peer_urls: vec![peer.into()],
            client_urls: vec![],
            healthy: true,
            leader: false,
            raft_index: None,
            alarms: Vec::new(),
            problem: None,
        }
    }

    #[test]
    fn members_map_to_nodes_by_name_or_address() {
        let nodes = BTreeMap::from([
            ("cp1".to_owned(), vec!["10.0.0.11".to_owned()]),
            ("cp2".to_owned(), vec!["10.0.0.12".to_owned()]),
        ]);
        assert_eq!(node_of(&member("cp1-6f3a2b1c", "https://192.168.9.9:2380"), &nodes), Some("cp1"));
        assert_eq!(node_of(&member("etcd-b", "https://10.0.0.12:2380"), &nodes), Some("cp2"));
        assert_eq!(node_of(&member("cp10", "https://10.0.0.99:2380"), &nodes), None);
    }
}
