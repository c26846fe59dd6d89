//! The operator makes each change: noderoll prints it in nsupdate syntax, waits for
//! `noderoll approve`, and then sees it take effect by asking the resolvers.

use futures::future::BoxFuture;

use super::{Applied, Change, DnsError, DnsProvider, RecordSet, resolve};

/// A record an operator edits by hand; read from the first resolver.
#[derive(Debug)]
pub struct ManualDns {
    record: String,
    resolver: String,
}

impl ManualDns {
    /// `resolvers` is never empty: the plan check requires it for this provider.
    pub fn new(record: &str, resolvers: &[String]) -> ManualDns {
        ManualDns { record: record.to_owned(), resolver: resolvers.first().cloned().unwrap_or_default() }
    }
}

impl DnsProvider for ManualDns {
    fn read(&self) -> BoxFuture<'_, Result<RecordSet, DnsError>> {
        Box::pin(resolve::served(&self.resolver, &self.record))
    }

    fn apply<'a>(&'a self, change: &'a Change<'a>) -> BoxFuture<'a, Result<Applied, DnsError>> {
        Box::pin(async move { Ok(Applied::ByOperator(change.nsupdate())) })
    }
}
