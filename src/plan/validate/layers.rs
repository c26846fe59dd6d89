//! Step settings in layers: the built-in defaults, then the plan's `defaults` section, then
//! each batch's own sections, field by field.

use std::time::Duration;

use serde_saphyr::Spanned;

use super::{Checker, HOOK_PLACEHOLDERS};
use crate::plan::defaults;
use crate::plan::model::{
    self, AlreadyCordonedPolicy, Batch, DrainTimeoutPolicy, SoakScope, StepSettings, UncordonPolicy,
};
use crate::plan::resolved::{DrainPlan, SessionsPlan, SoakPlan, VerifyPlan};
use crate::plan::selector::is_dns_label;

/// Step settings with everything but the upgrade command known: the defaults section may
/// leave the command to each batch.
#[derive(Clone)]
pub(super) struct Layer {
    pub(super) drain: DrainPlan,
    pub(super) sessions: SessionsPlan,
    pub(super) upgrade_command: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) shell: bool,
    pub(super) upgrade_timeout: Duration,
    pub(super) verify: VerifyPlan,
    pub(super) uncordon: UncordonPolicy,
    pub(super) already_cordoned: AlreadyCordonedPolicy,
    /// `soak`; zero when there is none.
    pub(super) soak: Duration,
    pub(super) soak_per: SoakScope,
}

impl Layer {
    /// The soak these settings ask for, if any.
    pub(super) fn soak(&self) -> Option<SoakPlan> {
        (!self.soak.is_zero()).then_some(SoakPlan { duration: self.soak, per: self.soak_per })
    }

    /// The built-in defaults, under the plan's `defaults` section.
    pub(super) fn builtin() -> Self {
        Layer {
            drain: DrainPlan {
                timeout: defaults::DRAIN_TIMEOUT,
                ignore_daemon_sets: defaults::IGNORE_DAEMON_SETS,
                delete_empty_dir_data: defaults::DELETE_EMPTY_DIR_DATA,
                force: defaults::FORCE,
                grace_period: None,
                pod_selector: None,
                skip_wait_for_delete_timeout: None,
                on_timeout: defaults::DRAIN_ON_TIMEOUT,
                delete_namespaces: Vec::new(),
            },
            sessions: SessionsPlan {
                annotation: defaults::SESSION_ANNOTATION.into(),
                timeout: defaults::SESSION_TIMEOUT,
                on_timeout: defaults::SESSION_ON_TIMEOUT,
            },
            upgrade_command: None,
            shell: defaults::SHELL,
            upgrade_timeout: defaults::UPGRADE_TIMEOUT,
            verify: VerifyPlan {
                ready_timeout: defaults::READY_TIMEOUT,
                kubelet_version: None,
                os_image: None,
                command: None,
            },
            uncordon: defaults::UNCORDON,
            already_cordoned: defaults::ALREADY_CORDONED,
            soak: Duration::ZERO,
            soak_per: defaults::SOAK_PER,
        }
    }
}

impl Checker<'_> {
    /// Applies one layer of settings (the plan's defaults, or a batch's overrides) on top of
    /// `base`, field by field.
    pub(super) fn layer(&mut self, base: &Layer, over: Overrides<'_>) -> Layer {
        let mut out = base.clone();
        if let Some(d) = over.drain {
            out.drain.timeout = self.duration_or(d.timeout.as_ref(), base.drain.timeout, "drain timeout");
            out.drain.ignore_daemon_sets = d.ignore_daemon_sets.unwrap_or(base.drain.ignore_daemon_sets);
            out.drain.delete_empty_dir_data = d.delete_empty_dir_data.unwrap_or(base.drain.delete_empty_dir_data);
            out.drain.force = d.force.unwrap_or(base.drain.force);
            if let Some(g) = &d.grace_period {
                out.drain.grace_period = self.duration_zero_ok(g, "grace period");
            }
            if let Some(s) = &d.pod_selector {
                out.drain.pod_selector = self.selector(s, "pod selector");
            }
            if let Some(t) = &d.skip_wait_for_delete_timeout {
                out.drain.skip_wait_for_delete_timeout = self.duration(t, "skip-wait-for-delete timeout");
            }
            if let Some(namespaces) = &d.delete_namespaces {
                out.drain.delete_namespaces = self.namespaces(namespaces);
            }
            if let Some(policy) = &d.on_timeout {
                out.drain.on_timeout = policy.value;
                if policy.value == DrainTimeoutPolicy::Delete && out.drain.delete_namespaces.is_empty() {
                    self.error(
                        policy.referenced,
                        "`drain.onTimeout: delete` names no namespace whose pods it may delete",
                        "list them beside it, e.g. `deleteNamespaces: [juno]`: pods elsewhere are never deleted, and the drain halts on them",
                    );
                }
            }
        }
        if let Some(s) = over.sessions {
            if let Some(a) = &s.annotation {
                out.sessions.annotation = a.clone();
            }
            out.sessions.timeout = self.duration_or(s.timeout.as_ref(), base.sessions.timeout, "session timeout");
            out.sessions.on_timeout = s.on_timeout.unwrap_or(base.sessions.on_timeout);
        }
        if let Some(u) = over.upgrade {
            if let Some(cmd) = &u.command {
                out.upgrade_command = Some(cmd.clone());
            }
            out.shell = u.shell.unwrap_or(base.shell);
            out.upgrade_timeout = self.duration_or(u.timeout.as_ref(), base.upgrade_timeout, "upgrade timeout");
        }
        if let Some(v) = over.verify {
            out.verify.ready_timeout =
                self.duration_or(v.ready_timeout.as_ref(), base.verify.ready_timeout, "ready timeout");
            if let Some(k) = &v.kubelet_version {
                out.verify.kubelet_version = Some(k.clone());
            }
            if let Some(o) = &v.os_image {
                out.verify.os_image = Some(o.clone());
            }
            if let Some(cmd) = &v.command {
                out.verify.command = self.template(cmd, HOOK_PLACEHOLDERS, "verify command");
            }
        }
        if let Some(u) = over.uncordon {
            out.uncordon = u;
        }
        if let Some(a) = over.already_cordoned {
            out.already_cordoned = a;
        }
        if let Some(soak) = over.soak {
            out.soak = self.duration_zero_ok(soak, "soak").unwrap_or(base.soak);
        }
        out.soak_per = over.soak_per.unwrap_or(base.soak_per);
        out
    }
}

impl Checker<'_> {
    /// `drain.deleteNamespaces`: namespace names (DNS labels), at least one.
    fn namespaces(&mut self, written: &Spanned<Vec<Spanned<String>>>) -> Vec<String> {
        if written.value.is_empty() {
            self.error(
                written.referenced,
                "`drain.deleteNamespaces` is empty",
                "list the namespaces whose pods `onTimeout: delete` may delete, or remove the field",
            );
        }
        for ns in &written.value {
            if !is_dns_label(&ns.value) {
                self.error(
                    ns.referenced,
                    format!("`{}` is not a valid namespace name", ns.value),
                    "namespace names are lowercase letters, digits and `-`, at most 63, as `kubectl get namespaces` shows them",
                );
            }
        }
        written.value.iter().map(|ns| ns.value.clone()).collect()
    }
}

/// One layer of overrides, borrowed from `defaults` or from a batch, so both share one
/// layering function.
#[derive(Clone, Copy)]
pub(super) struct Overrides<'a> {
    drain: Option<&'a model::DrainSettings>,
    sessions: Option<&'a model::SessionSettings>,
    upgrade: Option<&'a model::UpgradeSettings>,
    verify: Option<&'a model::VerifySettings>,
    uncordon: Option<UncordonPolicy>,
    already_cordoned: Option<AlreadyCordonedPolicy>,
    soak: Option<&'a Spanned<String>>,
    soak_per: Option<SoakScope>,
}

impl<'a> From<&'a StepSettings> for Overrides<'a> {
    fn from(s: &'a StepSettings) -> Self {
        Overrides {
            drain: s.drain.as_ref(),
            sessions: s.sessions.as_ref(),
            upgrade: s.upgrade.as_ref(),
            verify: s.verify.as_ref(),
            uncordon: s.uncordon,
            already_cordoned: s.already_cordoned,
            soak: s.soak.as_ref(),
            soak_per: s.soak_per,
        }
    }
}

impl<'a> From<&'a Batch> for Overrides<'a> {
    fn from(b: &'a Batch) -> Self {
        Overrides {
            drain: b.drain.as_ref(),
            sessions: b.sessions.as_ref(),
            upgrade: b.upgrade.as_ref(),
            verify: b.verify.as_ref(),
            uncordon: b.uncordon,
            already_cordoned: b.already_cordoned,
            soak: b.soak.as_ref(),
            soak_per: b.soak_per,
        }
    }
}
