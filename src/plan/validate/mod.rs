//! Semantic validation: from the document as written to a [`Plan`], collecting every fault
//! (not only the first) with the location of the YAML node it is about. One `Checker`
//! gathers the diagnostics; its checks are split by concern: [`network`] (load balancer,
//! DNS, API servers), [`gates`] (quorum, health, webhooks, windows), [`layers`] (defaults
//! layered into each batch) and [`batches`].

mod batches;
mod gates;
mod layers;
mod network;

use std::sync::Arc;
use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use super::diagnostic::{Diagnostic, SourceFile};
use super::model::{self, PlanDocument};
use super::resolved::Plan;
use super::selector::Selector;
use super::template::{CommandTemplate, TemplateError};
use layers::Layer;

/// Placeholders the upgrade, verify and health hooks may use.
const HOOK_PLACEHOLDERS: &[&str] = &["node", "batch", "plan"];

/// Validates a parsed document. Returns the plan when there is no error (warnings may
/// still be present), and every diagnostic found.
pub fn validate(source: &Arc<SourceFile>, doc: &PlanDocument) -> (Option<Plan>, Vec<Diagnostic>) {
    let mut c = Checker { source, diagnostics: Vec::new() };
    c.header(doc);
    let name = c.plan_name(&doc.metadata.name);
    let batches_raw = &doc.spec.batches;
    let static_service_nodes = c.static_service_node_count(&batches_raw.value);
    let load_balancer = c.load_balancer(&doc.spec.load_balancer, static_service_nodes);
    let quorum = c.quorum(doc.spec.quorum.as_ref());
    let api_servers = c.api_servers(doc.spec.api_servers.as_ref());
    let window = doc.spec.window.as_ref().and_then(|w| c.window(w));
    let health = doc.spec.health.as_ref().map(|h| c.health(h));
    let webhook = doc.spec.notify.as_ref().and_then(|n| c.webhook(&n.webhook.value, n.webhook.referenced));
    let defaults = c.layer(&Layer::builtin(), (&doc.spec.defaults).into());
    let limits: Vec<_> = batches_raw.value.iter().map(|b| c.max_unavailable(b)).collect();
    let batches = c.batches(batches_raw, &limits, &defaults);
    c.quorum_budget(batches_raw, &limits, quorum.etcd.as_ref().map(|e| e.endpoints.len()));

    let Checker { diagnostics, .. } = c;
    let has_errors = diagnostics.iter().any(|d| d.severity == super::Severity::Error);
    let plan = (!has_errors).then(|| Plan {
        name,
        description: doc.metadata.description.clone(),
        load_balancer,
        api_servers,
        quorum,
        window,
        health,
        webhook,
        batches,
    });
    (plan, diagnostics)
}

/// An `http://` or `https://` URL with a host.
pub(super) fn is_url(text: &str) -> bool {
    ["http://", "https://"].iter().any(|scheme| {
        text.strip_prefix(scheme).is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace))
    })
}

/// Collects the diagnostics of one plan document.
struct Checker<'a> {
    source: &'a Arc<SourceFile>,
    diagnostics: Vec<Diagnostic>,
}

/// What every check shares: reporting, and the field kinds that occur in every section.
impl Checker<'_> {
    pub(super) fn error(&mut self, at: Location, message: impl Into<String>, help: impl Into<String>) {
        self.diagnostics.push(Diagnostic::error(self.source, at, message).with_help(help));
    }

    pub(super) fn warn(&mut self, at: Location, message: impl Into<String>, help: impl Into<String>) {
        self.diagnostics.push(Diagnostic::warning(self.source, at, message).with_help(help));
    }

    fn header(&mut self, doc: &PlanDocument) {
        if doc.api_version.value != model::API_VERSION {
            self.error(
                doc.api_version.referenced,
                format!("unsupported apiVersion `{}`", doc.api_version.value),
                format!("this noderoll reads `apiVersion: {}`", model::API_VERSION),
            );
        }
        if doc.kind.value != model::KIND {
            self.error(
                doc.kind.referenced,
                format!("unsupported kind `{}`", doc.kind.value),
                format!("a plan has `kind: {}`", model::KIND),
            );
        }
    }

    fn plan_name(&mut self, name: &Spanned<String>) -> String {
        let n = &name.value;
        let ok = !n.is_empty()
            && n.len() <= 63
            && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !n.starts_with('-')
            && !n.ends_with('-');
        if !ok {
            self.error(
                name.referenced,
                format!("`{n}` is not a valid plan name"),
                "use 1 to 63 lowercase letters, digits and `-`, starting and ending with a letter or digit (it names the journal and the lock Lease)",
            );
        }
        n.clone()
    }

    pub(super) fn duration(&mut self, field: &Spanned<String>, what: &str) -> Option<Duration> {
        match crate::plan::duration::parse_positive(&field.value) {
            Ok(d) => Some(d),
            Err(why) => {
                self.error(
                    field.referenced,
                    format!("`{}` is not a valid {what}: {why}", field.value),
                    "write a positive duration such as `90s`, `15m`, `8h` or `1h 30m`",
                );
                None
            }
        }
    }

    pub(super) fn duration_or(&mut self, field: Option<&Spanned<String>>, fallback: Duration, what: &str) -> Duration {
        field.and_then(|f| self.duration(f, what)).unwrap_or(fallback)
    }

    /// A grace period may be zero (delete at once), unlike the timeouts.
    pub(super) fn duration_zero_ok(&mut self, field: &Spanned<String>, what: &str) -> Option<Duration> {
        if crate::plan::duration::parse(&field.value) == Ok(Duration::ZERO) {
            return Some(Duration::ZERO);
        }
        self.duration(field, what)
    }

    pub(super) fn selector(&mut self, field: &Spanned<String>, what: &str) -> Option<Selector> {
        match field.value.parse::<Selector>() {
            Ok(s) => Some(s),
            Err(e) => {
                self.error(
                    field.referenced,
                    format!("invalid {what} `{}`: {e}", field.value),
                    "use Kubernetes label-selector syntax: `key=value`, `key!=value`, `key in (a,b)`, `key notin (a)`, `key`, `!key`, joined by commas",
                );
                None
            }
        }
    }

    pub(super) fn template(
        &mut self,
        field: &Spanned<Vec<Spanned<String>>>,
        allowed: &[&str],
        what: &str,
    ) -> Option<CommandTemplate> {
        if field.value.is_empty() || field.value[0].value.trim().is_empty() {
            self.error(
                field.referenced,
                format!("the {what} is empty"),
                "give the program and its arguments as a list, e.g. `[ssh, \"{node}\", sudo, /usr/local/sbin/upgrade-node]`",
            );
            return None;
        }
        let args: Vec<String> = field.value.iter().map(|a| a.value.clone()).collect();
        match CommandTemplate::parse(&args, allowed) {
            Ok(t) => Some(t),
            Err(e) => {
                let at = field.value[e.arg()].referenced;
                let names = allowed.iter().map(|p| format!("{{{p}}}")).collect::<Vec<_>>().join(", ");
                let help = match &e {
                    TemplateError::Unknown { name, .. } => match closest(name, allowed) {
                        Some(best) => format!("did you mean `{{{best}}}`? The {what} may use {names}"),
                        None => format!("the {what} may use {names}"),
                    },
                    TemplateError::Unbalanced { .. } => {
                        format!("placeholders are {names}; write `{{{{` and `}}}}` for literal braces")
                    }
                };
                self.error(at, format!("{e} in the {what}"), help);
                None
            }
        }
    }

    pub(super) fn template_strings(
        &mut self,
        field: &Spanned<Vec<String>>,
        allowed: &[&str],
        what: &str,
    ) -> Option<CommandTemplate> {
        let as_spanned = Spanned {
            value: field
                .value
                .iter()
                .map(|a| Spanned { value: a.clone(), referenced: field.referenced, defined: field.defined })
                .collect(),
            referenced: field.referenced,
            defined: field.defined,
        };
        self.template(&as_spanned, allowed, what)
    }
}

/// The candidate closest to `word`, if any is close enough to be a likely typo.
pub(super) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(word, c), *c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}
