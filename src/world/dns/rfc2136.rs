//! RFC 2136 dynamic updates signed with TSIG (RFC 8945), through hickory's client.
//!
//! Every update carries the record set noderoll read as its prerequisite (RFC 2136
//! §2.4.2 "RRset exists, value dependent", or §2.4.3 "RRset does not exist" for a type with
//! no address), so the server applies it only if nobody changed the record meanwhile; the
//! deletions and additions then go in the same message, atomically.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use futures::future::BoxFuture;
use hickory_client::proto::dnssec::rdata::tsig::TsigAlgorithm as HickoryAlgorithm;
use hickory_client::proto::dnssec::tsig::TSigner;
use hickory_client::proto::op::{Message, MessageFinalizer, MessageType, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_client::proto::rr::rdata::{A, AAAA};
use hickory_client::proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::resolve::{self, Connection};
use super::{Applied, Change, ChangeKind, DnsError, DnsProvider, RecordSet, show};
use crate::plan::model::TsigAlgorithm;

/// How far apart noderoll's and the server's clocks may be (RFC 8945 recommends 300 s).
const FUDGE_SECONDS: u16 = 300;

/// An authoritative primary that takes signed updates.
pub struct Rfc2136Dns {
    server: String,
    zone: Name,
    record: Name,
    record_text: String,
    key_name: String,
    signer: Arc<dyn MessageFinalizer>,
}

impl std::fmt::Debug for Rfc2136Dns {
    /// Leaves the key out: a TSIG secret must never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rfc2136Dns")
            .field("server", &self.server)
            .field("zone", &self.zone.to_ascii())
            .field("record", &self.record_text)
            .field("key", &self.key_name)
            .finish_non_exhaustive()
    }
}

/// Reads the base64 secret; errors name the file, never its content.
fn read_secret(path: &Path) -> Result<Vec<u8>, DnsError> {
    let secret_error = |reason: String| DnsError::Secret { path: path.display().to_string(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| secret_error(e.to_string()))?;
    let key = base64::engine::general_purpose::STANDARD.decode(text.trim()).map_err(|_| {
        secret_error("it does not hold a base64 secret (as `keymgr -t NAME hmac-sha256` prints)".into())
    })?;
    if key.is_empty() {
        return Err(secret_error("it is empty".into()));
    }
    Ok(key)
}

impl Rfc2136Dns {
    /// A provider for `record` in `zone` on `server`, signing with the key in `secret_file`.
    pub fn new(
        server: &str,
        zone: &str,
        record: &str,
        key_name: &str,
        algorithm: TsigAlgorithm,
        secret_file: &Path,
    ) -> Result<Rfc2136Dns, DnsError> {
        let key = read_secret(secret_file)?;
        let algorithm = match algorithm {
            TsigAlgorithm::HmacSha256 => HickoryAlgorithm::HmacSha256,
            TsigAlgorithm::HmacSha512 => HickoryAlgorithm::HmacSha512,
        };
        let signer = TSigner::new(key, algorithm, resolve::name(key_name)?, FUDGE_SECONDS).map_err(|e| {
            DnsError::Secret { path: secret_file.display().to_string(), reason: format!("unusable key: {e}") }
        })?;
        Ok(Rfc2136Dns {
            server: server.to_owned(),
            zone: resolve::name(zone)?,
            record: resolve::name(record)?,
            record_text: record.to_owned(),
            key_name: key_name.to_owned(),
            signer: Arc::new(signer),
        })
    }

    async fn connect(&self) -> Result<Connection, DnsError> {
        Connection::open(&self.server, Some((self.signer.clone(), self.key_name.clone()))).await
    }

    fn record(&self, address: IpAddr, ttl: u32, class: DNSClass) -> Record {
        let data = match address {
            IpAddr::V4(v4) => RData::A(A(v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        };
        let mut record = Record::from_rdata(self.record.clone(), ttl, data);
        record.set_dns_class(class);
        record
    }

    /// Sends the update for `change` and reads the server's verdict.
    async fn update_with(&self, change: &Change<'_>, what: &str) -> Result<(), DnsError> {
        let connection = self.connect().await?;
        let code = connection.send(what, self.update(change)).await?;
        let refused = |hint: &str| DnsError::Refused {
            server: self.server.clone(),
            what: what.to_owned(),
            rcode: code.to_string(),
            hint: hint.to_owned(),
        };
        match code {
            ResponseCode::NoError => Ok(()),
            ResponseCode::NXRRSet | ResponseCode::YXRRSet => {
                let found = self.read().await.map(|set| show(&set.addresses)).unwrap_or_else(|e| e.to_string());
                Err(DnsError::Changed { record: self.record_text.clone(), expected: show(change.before), found })
            }
            ResponseCode::NotAuth => Err(connection.bad_key("NOTAUTH")),
            ResponseCode::Refused => Err(refused(
                "; the server's ACL must allow updates of this zone with this key (knot: `acl: action: update`)",
            )),
            ResponseCode::NotZone => Err(refused(&format!(
                "; the record is not in the zone {}, or the server is not its primary",
                self.zone.to_ascii()
            ))),
            _ => Err(refused("")),
        }
    }

    /// The update message: prerequisites from `before`, deletions and additions to `after`.
    fn update(&self, change: &Change<'_>) -> Message {
        let mut message = Message::new();
        message.set_message_type(MessageType::Query).set_op_code(OpCode::Update).set_recursion_desired(false);
        let mut zone = Query::new();
        zone.set_name(self.zone.clone()).set_query_class(DNSClass::IN).set_query_type(RecordType::SOA);
        message.add_zone(zone);
        for kind in [RecordType::A, RecordType::AAAA] {
            let of_kind: Vec<IpAddr> =
                change.before.iter().copied().filter(|a| super::record_type(*a) == kind.to_string()).collect();
            if of_kind.is_empty() {
                let mut absent = Record::update0(self.record.clone(), 0, kind);
                absent.set_dns_class(DNSClass::NONE);
                message.add_pre_requisite(absent);
            } else {
                for address in of_kind {
                    message.add_pre_requisite(self.record(address, 0, DNSClass::IN));
                }
            }
        }
        for address in change.before.iter().filter(|a| !change.after.contains(a)) {
            message.add_update(self.record(*address, 0, DNSClass::NONE));
        }
        for address in change.after.iter().filter(|a| !change.before.contains(a)) {
            message.add_update(self.record(*address, change.ttl, DNSClass::IN));
        }
        message
    }
}

impl DnsProvider for Rfc2136Dns {
    fn read(&self) -> BoxFuture<'_, Result<RecordSet, DnsError>> {
        Box::pin(async move { self.connect().await?.lookup(&self.record).await })
    }

    fn apply<'a>(&'a self, change: &'a Change<'a>) -> BoxFuture<'a, Result<Applied, DnsError>> {
        Box::pin(async move {
            self.update_with(change, &format!("the update of {}", self.record_text)).await.map(|()| Applied::Done)
        })
    }

    fn probe<'a>(&'a self, current: &'a [IpAddr]) -> BoxFuture<'a, Result<(), DnsError>> {
        Box::pin(async move {
            let unchanged = Change {
                kind: ChangeKind::Restore,
                record: &self.record_text,
                node: "",
                address: current.first().copied().unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
                before: current,
                after: current,
                ttl: 0,
            };
            self.update_with(&unchanged, &format!("a test update (no change) of {}", self.record_text)).await
        })
    }
}
