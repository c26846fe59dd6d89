//! A record set in memory, for rehearsals: it keeps every state it went through, so the
//! rehearsal can prove the set was never empty.

use std::net::IpAddr;
use std::sync::Mutex;

use futures::future::BoxFuture;

use super::{Applied, Change, DnsError, DnsProvider, RecordSet, show};

/// The simulated record.
#[derive(Debug)]
pub struct SimulatedDns {
    record: String,
    ttl: u32,
    state: Mutex<(Vec<IpAddr>, Vec<Vec<IpAddr>>)>,
}

impl SimulatedDns {
    /// A record with these addresses and TTL.
    pub fn new(record: &str, addresses: Vec<IpAddr>, ttl: u32) -> Self {
        SimulatedDns { record: record.to_owned(), ttl, state: Mutex::new((addresses.clone(), vec![addresses])) }
    }

    /// Every state the record set went through, the first being the initial one.
    pub fn history(&self) -> Vec<Vec<IpAddr>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1.clone()
    }
}

impl DnsProvider for SimulatedDns {
    fn read(&self) -> BoxFuture<'_, Result<RecordSet, DnsError>> {
        let addresses = self.state.lock().unwrap_or_else(|e| e.into_inner()).0.clone();
        Box::pin(async move { Ok(RecordSet { addresses, ttl: self.ttl }) })
    }

    fn apply<'a>(&'a self, change: &'a Change<'a>) -> BoxFuture<'a, Result<Applied, DnsError>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let result = if state.0 == change.before {
            state.0 = change.after.to_vec();
            state.1.push(change.after.to_vec());
            Ok(Applied::Done)
        } else {
            Err(DnsError::Changed { record: self.record.clone(), expected: show(change.before), found: show(&state.0) })
        };
        Box::pin(async move { result })
    }
}
