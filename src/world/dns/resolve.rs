//! Asking a DNS server what it serves for the record, over TCP: the primary (signed, to read
//! the record before changing it) and the resolvers users ask (to see a change take
//! effect). TCP, because a UDP question to a server that is not listening yet waits out the
//! whole timeout, and an update's answer must not be truncated.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_client::client::Client;
use hickory_client::proto::op::{Message, Query, ResponseCode};
use hickory_client::proto::rr::{DNSClass, Name, RData, RecordType};
use hickory_client::proto::runtime::TokioRuntimeProvider;
use hickory_client::proto::tcp::TcpClientStream;
use hickory_client::proto::xfer::{DnsHandle, DnsRequestOptions, FirstAnswer};
use hickory_client::proto::{ProtoError, ProtoErrorKind};

use super::{DnsError, RecordSet};

/// How long one question or update may take.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// A connection to one DNS server, optionally signing every message (TSIG).
pub(super) struct Connection {
    client: Client,
    server: String,
    signed_by: Option<String>,
}

/// Where `host:port` is.
pub(super) async fn socket_address(server: &str) -> Result<SocketAddr, DnsError> {
    let unreachable = |reason: String| DnsError::Unreachable { server: server.to_owned(), reason };
    tokio::net::lookup_host(server)
        .await
        .map_err(|e| unreachable(e.to_string()))?
        .next()
        .ok_or_else(|| unreachable("the name has no address".into()))
}

impl Connection {
    /// Connects; `signer` is the TSIG key and its name, for error messages.
    pub(super) async fn open(
        server: &str,
        signer: Option<(Arc<dyn hickory_client::proto::op::MessageFinalizer>, String)>,
    ) -> Result<Connection, DnsError> {
        let address = socket_address(server).await?;
        let (stream, sender) = TcpClientStream::new(address, None, Some(TIMEOUT), TokioRuntimeProvider::new());
        let (finalizer, signed_by) = match signer {
            Some((finalizer, name)) => (Some(finalizer), Some(name)),
            None => (None, None),
        };
        let (client, background) = Client::with_timeout(stream, sender, TIMEOUT, finalizer)
            .await
            .map_err(|e| DnsError::Unreachable { server: server.to_owned(), reason: e.to_string() })?;
        tokio::spawn(background);
        Ok(Connection { client, server: server.to_owned(), signed_by })
    }

    /// The server refused this connection's TSIG key.
    pub(super) fn bad_key(&self, reason: &str) -> DnsError {
        DnsError::BadKey {
            server: self.server.clone(),
            key: self.signed_by.clone().unwrap_or_default(),
            reason: reason.to_owned(),
        }
    }

    /// Turns a transport or TSIG failure into what an operator can act on.
    pub(super) fn error(&self, what: &str, error: &ProtoError) -> DnsError {
        let text = error.to_string();
        if self.signed_by.is_some() && (text.to_ascii_lowercase().contains("tsig") || text.contains("NotAuth")) {
            // A server answers a bad signature unsigned (RFC 8945 §5.3.2), which the
            // client reports as a verification failure in its own words.
            return self.bad_key("its answer is not signed with that key: TSIG BADKEY or BADSIG");
        }
        match error.kind() {
            ProtoErrorKind::Io(_) | ProtoErrorKind::Timeout | ProtoErrorKind::Busy => {
                DnsError::Unreachable { server: self.server.clone(), reason: text }
            }
            _ => DnsError::Refused {
                server: self.server.clone(),
                what: what.to_owned(),
                rcode: text,
                hint: String::new(),
            },
        }
    }

    /// Sends a prepared message (an update) and returns the answer's code.
    pub(super) async fn send(&self, what: &str, message: Message) -> Result<ResponseCode, DnsError> {
        let response = self.client.send(message).first_answer().await.map_err(|e| self.error(what, &e))?;
        Ok(response.response_code())
    }

    /// The A and AAAA addresses served for `name`, with the smallest TTL among them (0
    /// when there are none).
    pub(super) async fn lookup(&self, name: &Name) -> Result<RecordSet, DnsError> {
        let mut addresses = Vec::new();
        let mut ttl: Option<u32> = None;
        for kind in [RecordType::A, RecordType::AAAA] {
            let what = format!("the question {name} {kind}");
            let mut query = Query::query(name.clone(), kind);
            query.set_query_class(DNSClass::IN);
            let response = self
                .client
                .lookup(query, DnsRequestOptions::default())
                .first_answer()
                .await
                .map_err(|e| self.error(&what, &e))?;
            match response.response_code() {
                ResponseCode::NoError | ResponseCode::NXDomain => {}
                ResponseCode::NotAuth if self.signed_by.is_some() => return Err(self.bad_key("NOTAUTH")),
                code => {
                    return Err(DnsError::Refused {
                        server: self.server.clone(),
                        what,
                        rcode: code.to_string(),
                        hint: String::new(),
                    });
                }
            }
            for record in response.answers().iter().filter(|r| r.name() == name) {
                let address = match record.data() {
                    RData::A(a) => IpAddr::V4(a.0),
                    RData::AAAA(a) => IpAddr::V6(a.0),
                    _ => continue,
                };
                addresses.push(address);
                ttl = Some(ttl.map_or(record.ttl(), |t| t.min(record.ttl())));
            }
        }
        Ok(RecordSet { addresses, ttl: ttl.unwrap_or(0) })
    }
}

/// The record name as DNS wants it.
pub(super) fn name(record: &str) -> Result<Name, DnsError> {
    Name::from_ascii(record).map_err(|e| DnsError::BadName { name: record.to_owned(), reason: e.to_string() })
}

/// What `server` serves for `record` now, asked without a signature, as users ask.
pub async fn served(server: &str, record: &str) -> Result<RecordSet, DnsError> {
    let name = name(record)?;
    Connection::open(server, None).await?.lookup(&name).await
}
