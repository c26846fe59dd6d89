//! `noderoll manifests PLAN`: what a cluster needs to run the plan's rollout by itself in
//! its maintenance windows. A ServiceAccount; a ClusterRole and a Role holding exactly the
//! requests the executor makes (tested against the simulator's request log); their
//! bindings; the plan in a ConfigMap; and a CronJob that starts `noderoll apply
//! --until-window-end` when each window opens, with its journal in a ConfigMap; or, for a
//! plan without a window and without `--schedule`, a Job that runs the rollout once. Pure:
//! the plan in, YAML text out.

use std::path::Path;

use serde_json::{Value, json};

use crate::executor::lock;
use crate::plan::Plan;
use crate::plan::model::LoadBalancerMode;
use crate::plan::resolved::{DnsProviderPlan, UrlSource};

/// Where the plan (and the files it names) is mounted in the pod.
const PLAN_DIR: &str = "/etc/noderoll";
/// The pod's writable folder for hook logs, and its HOME (ssh writes known_hosts there).
const STATE_DIR: &str = "/var/lib/noderoll";
/// The user the pod runs as: not root, so that a namespace enforcing the `restricted` Pod
/// Security level admits it (65532 is distroless' `nonroot`).
const RUN_AS_USER: u32 = 65532;

/// How to write the manifests.
#[derive(Debug, Clone)]
pub struct ManifestOptions {
    /// Namespace of the (Cron)Job, its ServiceAccount, the lock Lease and the journal.
    pub namespace: String,
    /// Container image holding `noderoll` and the tools the plan's hooks run.
    pub image: String,
    /// A cron schedule, for a plan without a window that should run on one; without it
    /// such a plan gets a Job that runs once.
    pub schedule: Option<String>,
}

/// Why manifests cannot be written for a plan.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A schedule CronJob cannot express.
    #[error(
        "`{0}` has {1} fields; a CronJob's schedule has five (minute hour day-of-month month day-of-week), without seconds"
    )]
    Schedule(String, usize),
    /// Output failed.
    #[error("cannot write YAML: {0}")]
    Yaml(String),
}

/// Names of the objects for a plan.
struct Names {
    role: String,
    plan_config: String,
    files_secret: String,
    journal: String,
    lease: String,
}

impl Names {
    fn new(plan: &str) -> Names {
        Names {
            role: format!("noderoll-{plan}"),
            plan_config: format!("noderoll-{plan}-plan"),
            files_secret: format!("noderoll-{plan}-files"),
            journal: format!("noderoll-{plan}-journal"),
            lease: lock::lease_name(plan),
        }
    }
}

/// The files the plan names, relative to its folder: they must sit beside it in the pod.
pub fn referenced_files(plan: &Plan) -> Vec<String> {
    let mut files = Vec::new();
    if let Some(DnsProviderPlan::Rfc2136 { secret_file, .. }) = plan.load_balancer.dns.as_ref().map(|d| &d.provider) {
        files.push(secret_file.clone());
    }
    if let Some(UrlSource::File(file)) = plan.webhook.as_ref().map(|w| &w.url) {
        files.push(file.clone());
    }
    if let Some(etcd) = &plan.quorum.etcd {
        files.extend([&etcd.ca_file, &etcd.cert_file, &etcd.key_file].into_iter().flatten().cloned());
    }
    files
}

/// The RBAC rules of the ClusterRole: cluster-wide reads and writes of the rollout.
pub fn cluster_rules() -> Vec<Value> {
    vec![
        json!({"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "patch"]}),
        json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}),
        json!({"apiGroups": [""], "resources": ["pods/eviction"], "verbs": ["create"]}),
        json!({"apiGroups": ["apps"], "resources": ["daemonsets"], "verbs": ["get"]}),
        json!({"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}),
        json!({"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": ["list", "watch"]}),
    ]
}

/// The Role's rules in the rollout's namespace: its lock Lease and its journal's segments,
/// by name (`create` cannot be limited to a name, so it is a rule of its own).
fn namespace_rules(names: &Names) -> Vec<Value> {
    vec![
        json!({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]}),
        json!({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [names.lease], "verbs": ["get", "update"]}),
        json!({"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]}),
        json!({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": crate::executor::journal_store::segment_names(&names.journal), "verbs": ["get", "update"]}),
    ]
}

fn labels(plan: &str) -> Value {
    json!({"app.kubernetes.io/name": "noderoll", "app.kubernetes.io/instance": plan, crate::labels::MANAGED_BY: "noderoll"})
}

/// The manifests as one YAML stream, with a comment saying what to do with them.
pub fn render(
    plan: &Plan,
    plan_text: &str,
    plan_file: &Path,
    options: &ManifestOptions,
) -> Result<String, ManifestError> {
    let names = Names::new(&plan.name);
    let ns = options.namespace.as_str();
    let meta = |name: &str, namespaced: bool| {
        let mut m = json!({"name": name, "labels": labels(&plan.name)});
        if namespaced {
            m["namespace"] = json!(ns);
        }
        m
    };
    let schedule = match (&options.schedule, &plan.window) {
        (Some(s), _) => Some((s.clone(), plan.window.as_ref().map(|w| w.timezone_name.clone()))),
        (None, Some(w)) => Some((w.cron_text.clone(), Some(w.timezone_name.clone()))),
        (None, None) => None,
    };
    if let Some((text, _)) = &schedule {
        let fields = text.split_whitespace().count();
        if fields != 5 {
            return Err(ManifestError::Schedule(text.clone(), fields));
        }
    }
    let file_name = plan_file.file_name().map_or_else(|| "plan.yaml".into(), |n| n.to_string_lossy().into_owned());
    let files = referenced_files(plan);

    let service_account = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta("noderoll", true)});
    let cluster_role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta(&names.role, false), "rules": cluster_rules()});
    let subjects = json!([{"kind": "ServiceAccount", "name": "noderoll", "namespace": ns}]);
    let cluster_binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": meta(&names.role, false),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": names.role}, "subjects": subjects,
    });
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta(&names.role, true), "rules": namespace_rules(&names)});
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta(&names.role, true),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": names.role}, "subjects": subjects,
    });
    let plan_config = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(&names.plan_config, true), "data": {file_name.clone(): plan_text}});
    let mut sources = vec![json!({"configMap": {"name": names.plan_config}})];
    if !files.is_empty() {
        sources.push(json!({"secret": {"name": names.files_secret}}));
    }
    let mut args = vec![json!("apply"), json!(format!("{PLAN_DIR}/{file_name}")), json!("--yes")];
    if schedule.is_some() {
        args.push(json!("--until-window-end"));
    }
    args.extend(
        [
            "--output",
            "json",
            "--journal-configmap",
            &format!("{ns}/{}", names.journal),
            "--lock-namespace",
            ns,
            "--state-dir",
            STATE_DIR,
        ]
        .map(|a| json!(a)),
    );
    // A failed run is not retried by the Job: a halt needs the operator, and running
    // `apply` again (a new Job) resumes from the journal.
    let job_spec = json!({
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels(&plan.name)},
                "spec": {
                    "serviceAccountName": "noderoll",
                    "restartPolicy": "Never",
                    // What the `restricted` Pod Security level asks of a pod: the real
                    // API server refused the pod without it.
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": RUN_AS_USER,
                        "runAsGroup": RUN_AS_USER,
                        "fsGroup": RUN_AS_USER,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [{
                        "name": "noderoll",
                        "image": options.image,
                        "args": args,
                        "env": [{"name": "HOME", "value": STATE_DIR}],
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": [
                            {"name": "plan", "mountPath": PLAN_DIR, "readOnly": true},
                            {"name": "state", "mountPath": STATE_DIR},
                        ],
                    }],
                    "volumes": [
                        {"name": "plan", "projected": {"sources": sources}},
                        {"name": "state", "emptyDir": {}},
                    ],
                },
            },
    });
    let runner = match &schedule {
        Some((text, timezone)) => {
            let mut cron_spec = json!({
                "schedule": text,
                "concurrencyPolicy": "Forbid",
                "successfulJobsHistoryLimit": 3,
                "failedJobsHistoryLimit": 5,
                "jobTemplate": {"spec": job_spec},
            });
            if let Some(zone) = timezone {
                cron_spec["timeZone"] = json!(zone);
            }
            if let Some(w) = &plan.window {
                // A start missed (controller down, node busy) may still run while the window lasts.
                cron_spec["startingDeadlineSeconds"] = json!(w.duration.as_secs());
            }
            json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": meta(&names.role, true), "spec": cron_spec})
        }
        None => json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta(&names.role, true), "spec": job_spec}),
    };

    let mut documents = vec![service_account, cluster_role, cluster_binding, role, binding];
    if plan.load_balancer.mode == LoadBalancerMode::CiliumL2
        && let Some(l2) = &plan.load_balancer.l2
    {
        let l2_meta = json!({"name": format!("{}-l2", names.role), "namespace": l2.lease_namespace, "labels": labels(&plan.name)});
        documents.push(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": l2_meta.clone(),
            "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["list", "watch"]}],
        }));
        documents.push(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": l2_meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": format!("{}-l2", names.role)},
            "subjects": subjects,
        }));
    }
    documents.extend([plan_config, runner]);
    let yaml = serde_saphyr::to_string_multiple(&documents).map_err(|e| ManifestError::Yaml(e.to_string()))?;
    Ok(header(plan, ns, &names, &files, schedule.is_some()) + &yaml)
}

fn header(plan: &Plan, ns: &str, names: &Names, files: &[String], scheduled: bool) -> String {
    let runs = if scheduled {
        "# The CronJob runs `noderoll apply --until-window-end` at each window's start".to_owned()
    } else {
        format!(
            "# The Job runs `noderoll apply` once, when applied; after a halt, resume with\n\
             #   kubectl delete job -n {ns} {} && kubectl apply -f THIS_FILE\n\
             # The rollout resumes from its journal",
            names.role
        )
    };
    let mut text = format!(
        "# noderoll manifests for plan `{}`: apply with `kubectl apply -f` into an existing namespace `{ns}`.\n\
         {runs}; the journal is\n\
         # the ConfigMap {ns}/{} (`noderoll status PLAN --journal-configmap {ns}/{}`).\n\
         # The image needs noderoll and whatever the plan's hooks run (ssh, ...).\n",
        plan.name, names.journal, names.journal
    );
    if !files.is_empty() {
        let from: Vec<String> = files.iter().map(|f| format!("--from-file={f}")).collect();
        text.push_str(&format!(
            "# The plan names files that must sit beside it in the pod; create their Secret first:\n\
             #   kubectl create secret generic {} -n {ns} {}\n",
            names.files_secret,
            from.join(" ")
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(extra: &str) -> (Plan, String) {
        let text = format!(
            "apiVersion: noderoll.io/v1alpha1\nkind: UpgradePlan\nmetadata: {{name: studio}}\nspec:\n  loadBalancer: {{mode: external}}\n{extra}  defaults: {{upgrade: {{command: [true]}}}}\n  batches: [{{name: b, role: workstation, nodes: [a]}}]\n"
        );
        let checked = crate::plan::check_str("studio.yaml", &text);
        (checked.plan.unwrap_or_else(|| panic!("{:?}", checked.diagnostics)), text)
    }

    fn options() -> ManifestOptions {
        ManifestOptions { namespace: "noderoll".into(), image: "registry.example/noderoll:1".into(), schedule: None }
    }

    #[test]
    fn the_cron_job_runs_in_the_plans_window_and_time_zone() {
        let (plan, text) = plan("  window: {cron: \"0 22 * * 5\", duration: 8h, timezone: Europe/London}\n");
        let yaml = render(&plan, &text, Path::new("plans/studio.yaml"), &options()).expect("manifests");
        let docs: Vec<Value> = serde_saphyr::from_multiple(&yaml).expect("YAML");
        let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        assert_eq!(
            kinds,
            ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ConfigMap", "CronJob"]
        );
        let cron = &docs[6]["spec"];
        assert_eq!(cron["schedule"], "0 22 * * 5");
        assert_eq!(cron["timeZone"], "Europe/London");
        assert_eq!(cron["concurrencyPolicy"], "Forbid");
        assert_eq!(cron["startingDeadlineSeconds"], 8 * 3600);
        let args = &cron["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"];
        assert_eq!(args[1], "/etc/noderoll/studio.yaml");
        assert!(args.as_array().expect("args").iter().any(|a| a == "noderoll/noderoll-studio-journal"));
        assert_eq!(docs[5]["data"]["studio.yaml"], text.as_str());
    }

    #[test]
    fn a_plan_without_window_runs_once_in_a_job_or_on_a_five_field_schedule() {
        let (plan, text) = plan("");
        let yaml = render(&plan, &text, Path::new("p.yaml"), &options()).expect("manifests");
        let docs: Vec<Value> = serde_saphyr::from_multiple(&yaml).expect("YAML");
        let job = docs.last().expect("documents");
        assert_eq!(job["kind"], "Job");
        assert_eq!(job["spec"]["backoffLimit"], 0);
        let args = job["spec"]["template"]["spec"]["containers"][0]["args"].as_array().expect("args");
        assert!(!args.iter().any(|a| a == "--until-window-end"), "{args:?}");
        assert!(args.iter().any(|a| a == "noderoll/noderoll-studio-journal"), "{args:?}");
        assert!(yaml.contains("kubectl delete job -n noderoll noderoll-studio"), "{yaml}");
        let six = ManifestOptions { schedule: Some("0 0 22 * * 5".into()), ..options() };
        assert!(matches!(render(&plan, &text, Path::new("p.yaml"), &six), Err(ManifestError::Schedule(_, 6))));
        let five = ManifestOptions { schedule: Some("0 2 * * 0".into()), ..options() };
        let yaml = render(&plan, &text, Path::new("p.yaml"), &five).expect("manifests");
        let docs: Vec<Value> = serde_saphyr::from_multiple(&yaml).expect("YAML");
        assert_eq!(docs.last().expect("documents")["kind"], "CronJob");
    }

    #[test]
    fn the_cron_jobs_pod_meets_the_restricted_pod_security_level() {
        // The checks of the `restricted` level that a pod spec can fail; the real API
        // server's PodSecurity admission is the referee (tests/integration/real_rbac.rs).
        let (plan, text) = plan("  window: {cron: \"0 22 * * 5\", duration: 8h, timezone: Europe/London}\n");
        let yaml = render(&plan, &text, Path::new("plans/studio.yaml"), &options()).expect("manifests");
        let docs: Vec<Value> = serde_saphyr::from_multiple(&yaml).expect("YAML");
        let pod = &docs[6]["spec"]["jobTemplate"]["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
        let container = &pod["containers"][0]["securityContext"];
        assert_eq!(container["allowPrivilegeEscalation"], false);
        assert_eq!(container["capabilities"]["drop"], json!(["ALL"]));
    }

    #[test]
    fn files_the_plan_names_go_in_a_secret_beside_it() {
        let (plan, text) =
            plan("  notify: {webhook: {urlFile: slack.url}}\n  window: {cron: \"0 1 * * *\", duration: 2h}\n");
        let yaml = render(&plan, &text, Path::new("p.yaml"), &options()).expect("manifests");
        assert!(yaml.contains("kubectl create secret generic noderoll-studio-files -n noderoll --from-file=slack.url"));
        assert!(yaml.contains("name: noderoll-studio-files"));
    }
}
