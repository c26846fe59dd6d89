//! The gates a rollout passes: etcd quorum (and the plan's budget against it), health
//! checks, the notification webhook and maintenance windows.

use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use super::{Checker, HOOK_PLACEHOLDERS, is_url};
use crate::plan::defaults;
use crate::plan::model::{self, Batch, Role};
use crate::plan::resolved::{EtcdPlan, HealthPlan, NodeShare, QuorumPlan, UrlSource, WebhookPlan, WindowPlan};

impl Checker<'_> {
    pub(super) fn quorum(&mut self, quorum: Option<&model::Quorum>) -> QuorumPlan {
        let timeout =
            self.duration_or(quorum.and_then(|q| q.timeout.as_ref()), defaults::QUORUM_TIMEOUT, "quorum timeout");
        let etcd = quorum.and_then(|q| q.etcd.as_ref()).map(|e| {
            if e.endpoints.value.is_empty() {
                self.error(
                    e.endpoints.referenced,
                    "`etcd.endpoints` is empty",
                    "list one client URL per member, e.g. `https://10.0.0.11:2379`, or remove `etcd` to count Ready etcd nodes instead",
                );
            }
            for endpoint in &e.endpoints.value {
                let v = &endpoint.value;
                if !is_url(v) {
                    self.error(
                        endpoint.referenced,
                        format!("`{v}` is not an etcd client URL"),
                        "write `https://HOST:2379` (k3s serves etcd on port 2379 of each server node)",
                    );
                }
            }
            if e.cert_file.is_some() != e.key_file.is_some() {
                self.error(
                    e.endpoints.referenced,
                    "`certFile` and `keyFile` go together: a client certificate needs its key",
                    "k3s keeps both under /var/lib/rancher/k3s/server/tls/etcd/ (client.crt, client.key)",
                );
            }
            EtcdPlan {
                endpoints: e.endpoints.value.iter().map(|s| s.value.clone()).collect(),
                ca_file: e.ca_file.clone(),
                cert_file: e.cert_file.clone(),
                key_file: e.key_file.clone(),
            }
        });
        QuorumPlan { etcd, timeout }
    }

    /// etcd keeps quorum while floor(n/2)+1 members are up, so at most floor((n-1)/2) may be
    /// out of service at once.
    pub(super) fn quorum_budget(
        &mut self,
        raw: &Spanned<Vec<Batch>>,
        limits: &[Option<NodeShare>],
        endpoints: Option<usize>,
    ) {
        let service: Vec<(&Batch, NodeShare)> = raw
            .value
            .iter()
            .zip(limits)
            .filter(|(b, _)| b.role == Role::Service)
            .filter_map(|(b, limit)| Some((b, (*limit)?)))
            .collect();
        if service.is_empty() {
            return;
        }
        let (members, source) = match (endpoints, self.static_service_node_count(&raw.value)) {
            (Some(n), _) if n > 0 => (n, "etcd endpoints"),
            (_, Some(n)) => (n, "service nodes in the plan"),
            _ => {
                self.warn(
                    service[0].0.name.referenced,
                    "the etcd member count is not known before the selector is resolved, so quorum is checked at preview and at run time only",
                    "list the service nodes by name, or give `quorum.etcd.endpoints`",
                );
                return;
            }
        };
        let budget = crate::plan::resolved::etcd_fault_tolerance(members);
        for (b, max_unavailable) in service {
            let size = b.nodes.as_ref().map_or(members, |n| n.value.len());
            let at_once = max_unavailable.lanes(size);
            if at_once > budget {
                let at = b.max_unavailable.as_ref().map_or(b.name.referenced, |m| m.referenced);
                let message = if budget == 0 {
                    format!(
                        "an etcd cluster of {members} member(s) (from the {source}) cannot lose any member without losing quorum, but batch `{}` takes {at_once} out of service",
                        b.name.value
                    )
                } else {
                    format!(
                        "batch `{}` may take {at_once} etcd members out of service at once, but {members} members (from the {source}) keep quorum only with at most {budget} out",
                        b.name.value
                    )
                };
                let help = if budget == 0 {
                    "run at least 3 service (etcd) nodes before rolling them; a rolling upgrade of fewer loses the cluster".to_owned()
                } else {
                    format!("set `maxUnavailable: {budget}` on this batch")
                };
                self.error(at, message, help);
            }
        }
    }

    pub(super) fn health(&mut self, h: &model::Health) -> HealthPlan {
        let prometheus = h.prometheus.as_ref().map(|p| {
            if !is_url(&p.url.value) {
                self.error(
                    p.url.referenced,
                    format!("`{}` is not a Prometheus URL", p.url.value),
                    "write the server's base URL, e.g. `http://prometheus.monitoring:9090`",
                );
            }
            let alerts = p.alerts.as_ref().and_then(|a| self.selector(a, "alert selector"));
            (p.url.value.trim_end_matches('/').to_owned(), alerts)
        });
        let command = h.command.as_ref().and_then(|c| self.template(c, HOOK_PLACEHOLDERS, "health command"));
        HealthPlan {
            per_node: h.before.unwrap_or(defaults::HEALTH_BEFORE) == model::HealthScope::Node,
            previous_batch_ready: h.previous_batch_ready.unwrap_or(defaults::PREVIOUS_BATCH_READY),
            prometheus,
            command,
            timeout: self.duration_or(h.timeout.as_ref(), defaults::HEALTH_TIMEOUT, "health timeout"),
            interval: self.duration_or(h.interval.as_ref(), defaults::HEALTH_INTERVAL, "health interval"),
        }
    }

    pub(super) fn webhook(&mut self, w: &model::Webhook, at: Location) -> Option<WebhookPlan> {
        let url = match (&w.url, &w.url_file) {
            (Some(url), None) => {
                if !is_url(&url.value) {
                    self.error(
                        url.referenced,
                        format!("`{}` is not a webhook URL", url.value),
                        "write an `http://` or `https://` URL, or keep it in a file named by `urlFile`",
                    );
                    return None;
                }
                UrlSource::Inline(url.value.clone())
            }
            (None, Some(file)) => UrlSource::File(file.value.clone()),
            (Some(url), Some(_)) => {
                self.error(
                    url.referenced,
                    "`url` and `urlFile` both given",
                    "keep one: `urlFile` keeps a secret URL out of git",
                );
                return None;
            }
            (None, None) => {
                self.error(
                    at,
                    "the webhook has no `url` or `urlFile`",
                    "add `url: https://...`, or `urlFile: FILE` for a secret URL",
                );
                return None;
            }
        };
        let mut events = w.events.clone().unwrap_or_else(|| {
            use model::NotifyEvent::*;
            vec![Started, BatchDone, Halted, Paused, Interrupted, Finished]
        });
        events.sort();
        events.dedup();
        Some(WebhookPlan { url, events, format: w.format })
    }

    pub(super) fn window(&mut self, w: &model::Window) -> Option<WindowPlan> {
        let cron = match w.cron.value.parse::<croner::Cron>() {
            Ok(c) => Some(c),
            Err(e) => {
                self.error(
                    w.cron.referenced,
                    format!("`{}` is not a valid cron expression: {e}", w.cron.value),
                    "write five fields, minute hour day-of-month month day-of-week, e.g. `0 22 * * 5` for Fridays at 22:00",
                );
                None
            }
        };
        let duration = self.duration(&w.duration, "window duration");
        let timezone_name = w.timezone.as_ref().map_or(defaults::TIMEZONE, |tz| tz.value.as_str()).to_owned();
        let timezone = match jiff::tz::TimeZone::get(&timezone_name) {
            Ok(zone) => Some(zone),
            Err(_) => {
                let help = match closest_timezone(&timezone_name) {
                    Some(best) => format!("did you mean `{best}`? Use an IANA zone name such as `Europe/London`"),
                    None => "use an IANA zone name such as `Europe/London` or `America/Los_Angeles`".into(),
                };
                let at = w.timezone.as_ref().map_or(w.cron.referenced, |tz| tz.referenced);
                self.error(at, format!("unknown time zone `{timezone_name}`"), help);
                None
            }
        };
        if let Some(d) = duration
            && d > Duration::from_secs(7 * 24 * 3600)
        {
            self.error(
                w.duration.referenced,
                "a window longer than a week never closes between weekly openings",
                "give the length of one window, e.g. `8h`",
            );
        }
        Some(WindowPlan {
            cron_text: w.cron.value.clone(),
            cron: cron?,
            duration: duration?,
            timezone: timezone?,
            timezone_name,
            on_end: w.on_window_end.unwrap_or(defaults::ON_WINDOW_END),
        })
    }
}

fn closest_timezone(word: &str) -> Option<String> {
    let lower = word.to_lowercase();
    jiff::tz::db()
        .available()
        .map(|name| {
            let name = name.as_str().to_owned();
            (strsim::jaro_winkler(&lower, &name.to_lowercase()), name)
        })
        .filter(|(score, _)| *score >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, name)| name)
}

#[cfg(test)]
mod tests {
    use super::closest_timezone;

    #[test]
    fn timezone_typos_get_a_suggestion() {
        assert_eq!(closest_timezone("Europe/Londn").as_deref(), Some("Europe/London"));
    }
}
