use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::harness::noderoll;

const NAMED_NODE_PLANS: &[&str] =
    &["servicelb-round-robin", "servicelb-single-record", "external-lb", "large-facility"];

/// Example plans with selector batches: previewed without a cluster, they are symbolic.
const SELECTOR_PLANS: &[&str] = &["cilium-bgp", "cilium-l2"];

/// Previews an example plan; its maintenance windows are listed from a fixed instant.
fn preview(plan: &str, format: &str) -> String {
    let out = noderoll()
        .args(["preview", "-o", format, &format!("plans/{plan}.yaml"), "--from", "2026-11-25T12:00:00Z"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0), "{plan}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn text_dot_and_mermaid_match_their_snapshots() {
    for plan in NAMED_NODE_PLANS.iter().chain(SELECTOR_PLANS) {
        insta::assert_snapshot!(format!("preview_text__{plan}"), preview(plan, "text"));
    }
    for plan in ["external-lb", "servicelb-single-record", "cilium-bgp"] {
        insta::assert_snapshot!(format!("preview_dot__{plan}"), preview(plan, "dot"));
        insta::assert_snapshot!(format!("preview_mermaid__{plan}"), preview(plan, "mermaid"));
    }
}

#[test]
fn windows_are_listed_and_counted_from_a_rehearsals_figures() {
    let doc: Value = serde_json::from_str(&preview("large-facility", "json")).expect("JSON");
    let windows = &doc["windows"];
    assert_eq!(windows["next"][0]["opens"], "2026-11-27T22:00:00+00:00");
    assert_eq!(windows["next"][0]["closes"], "2026-11-28T06:00:00+00:00");
    assert_eq!(windows["makespanSource"], "estimate");
    let estimate = windows["makespanSeconds"].as_u64().expect("seconds");
    assert_eq!(windows["windowsNeeded"], estimate.div_ceil(8 * 3600));

    let dir = tempfile::tempdir().expect("temp dir");
    let report = dir.path().join("rehearsal.jsonl");
    // The whole report, as `rehearse -o json` writes it: preview reads it as that type.
    let line = serde_json::json!({"event": "report", "report": {
        "plan": "large-facility", "outcome": "finished", "nodes": 323, "realSeconds": 159.0,
        "simulatedSeconds": 100000.0, "criticalPathSeconds": 90000.0, "windowsNeeded": 7,
        "windowsCounted": true, "endsAt": null, "slowestSteps": [{"step": "ws001/wait-sessions", "seconds": 3600.0}],
        "blockers": [], "reboots": {}, "dns": null, "approvals": 0, "journal": "j.jsonl",
    }});
    std::fs::write(&report, format!("{{\"event\":\"started\"}}\n{line}\n")).expect("write");
    let out = noderoll()
        .args(["preview", "plans/large-facility.yaml", "--from", "2026-11-25T12:00:00Z", "--rehearsal"])
        .arg(&report)
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(text.contains("needs 7 window(s), as a rehearsal counted them"), "{text}");

    std::fs::write(&report, "not a report\n").expect("write");
    let out = noderoll().args(["preview", "plans/large-facility.yaml", "--rehearsal"]).arg(&report).assert().code(3);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(stderr.contains("has no rehearsal report"), "{stderr}");
}

#[test]
fn json_follows_the_contract() {
    for plan in NAMED_NODE_PLANS.iter().chain(SELECTOR_PLANS) {
        let doc: Value = serde_json::from_str(&preview(plan, "json")).expect("JSON");
        let steps = doc["steps"].as_array().expect("steps");
        assert!(doc["plan"].is_string(), "{plan}");
        let ids: HashSet<&str> = steps.iter().map(|s| s["id"].as_str().expect("id")).collect();
        assert_eq!(ids.len(), steps.len(), "{plan}: ids are unique");
        let mut per_node: HashMap<&str, Vec<&str>> = HashMap::new();
        for s in steps {
            for key in ["id", "node", "batch", "action", "after"] {
                assert!(s.get(key).is_some(), "{plan}: {s} lacks {key}");
            }
            for dep in s["after"].as_array().expect("after") {
                assert!(ids.contains(dep.as_str().expect("id")), "{plan}: {} depends on unknown {dep}", s["id"]);
            }
            match s["node"].as_str() {
                Some(node) => per_node.entry(node).or_default().push(s["action"].as_str().expect("action")),
                None => assert!(
                    ["window", "quorum", "batch-start", "batch-done"].contains(&s["action"].as_str().expect("action")),
                    "{plan}: node-less step {s}"
                ),
            }
        }
        for (node, actions) in &per_node {
            let unique: HashSet<&&str> = actions.iter().collect();
            assert_eq!(unique.len(), actions.len(), "{plan}: {node} has a step twice: {actions:?}");
            for required in ["cordon", "drain", "upgrade", "wait-ready", "verify", "uncordon"] {
                assert!(actions.contains(&required), "{plan}: {node} lacks {required}");
            }
        }
    }
}

#[test]
fn json_says_which_parts_are_symbolic_without_a_cluster() {
    let doc: Value = serde_json::from_str(&preview("cilium-bgp", "json")).expect("JSON");
    let batches = doc["batches"].as_array().expect("batches");
    assert_eq!(batches[0]["nodes"], 3);
    assert!(batches[0].get("symbolic").is_none(), "a named batch is not symbolic: {}", batches[0]);
    let farm = &batches[1];
    assert_eq!(farm["name"], "render-farm");
    for key in ["nodes", "maxUnavailable", "maxFailures"] {
        assert!(farm[key].is_null(), "{key} is unknown without a cluster: {farm}");
    }
    assert_eq!(
        farm["symbolic"],
        serde_json::json!({"selector": "juno-innovations.com/workstation=true,rack in (r1,r2)", "maxUnavailable": "25%", "maxFailures": "0"})
    );
    let steps = doc["steps"].as_array().expect("steps");
    for s in steps {
        let stand_in = s["node"] == "<render-farm>";
        assert_eq!(s.get("symbolic").is_some(), stand_in, "only the stand-in's steps are symbolic: {s}");
        if stand_in {
            assert_eq!(s["symbolic"], true);
            assert_eq!(s["batch"], "render-farm");
        }
    }
    let farm_steps: Vec<&str> =
        steps.iter().filter(|s| s["symbolic"] == true).map(|s| s["action"].as_str().expect("action")).collect();
    assert_eq!(
        farm_steps,
        [
            "cordon",
            "wait-sessions",
            "drain",
            "bgp-withdraw",
            "upgrade",
            "wait-ready",
            "verify",
            "uncordon",
            "bgp-restore"
        ]
    );
}

#[test]
fn a_selector_service_batch_is_refused_without_a_cluster() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = dir.path().join("plan.yaml");
    let text = std::fs::read_to_string("plans/cilium-bgp.yaml")
        .expect("example")
        .replace("nodes: [cp1, cp2, cp3]", "selector: node-role.kubernetes.io/control-plane");
    std::fs::write(&plan, text).expect("write");
    for format in ["text", "json", "dot", "mermaid"] {
        noderoll()
            .args(["preview", "-o", format])
            .arg(&plan)
            .assert()
            .code(1)
            .stderr(predicates::str::contains("cannot plan"))
            .stderr(predicates::str::contains("service batch `control-plane`"))
            .stderr(predicates::str::contains("--snapshot FILE or --kubeconfig PATH"));
    }
}

#[test]
fn json_lists_every_node_of_the_plan() {
    let doc: Value = serde_json::from_str(&preview("large-facility", "json")).expect("JSON");
    let nodes: HashSet<&str> =
        doc["steps"].as_array().expect("steps").iter().filter_map(|s| s["node"].as_str()).collect();
    assert_eq!(nodes.len(), 323);
}

#[test]
fn invalid_plans_exit_1() {
    noderoll()
        .args(["preview", "tests/fixtures/invalid/after-cycle.yaml"])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("after-cycle.yaml:14:15"));
}

mod with_a_cluster {
    use serde_json::Value;

    use crate::harness::{Cluster, SimProcess, noderoll};

    /// A snapshot of a simulated studio where ws01 and ws02 sit in rack r1 and coredns has a
    /// budget that allows no disruption.
    fn snapshot(sim: &SimProcess) -> std::path::PathBuf {
        sim.kubectl_ok(&["label", "node", "ws01", "ws02", "rack=r1"]);
        sim.create(
            "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: strict, namespace: kube-system}\nspec: {maxUnavailable: 0, selector: {matchLabels: {k8s-app: kube-dns}}}\n",
        );
        sim.eventually("the PDB has a status", || {
            sim.kubectl_ok(&["get", "pdb", "-n", "kube-system", "strict", "-o", "jsonpath={.status.expectedPods}"])
                == "1"
        });
        let yaml = sim.kubectl_ok(&["get", "nodes,pods,pdb,deploy,sts,ds", "-A", "-o", "yaml"]);
        let path = sim.dir.path().join("snapshot.yaml");
        std::fs::write(&path, yaml).expect("write snapshot");
        path
    }

    #[test]
    fn preview_with_a_snapshot_resolves_selectors_and_surveys_the_nodes() {
        let sim = SimProcess::start(&[]);
        let snapshot = snapshot(&sim);
        let out = noderoll()
            .args(["preview", "plans/cilium-bgp.yaml", "--output", "json", "--snapshot"])
            .arg(&snapshot)
            .assert()
            .success();
        let preview: Value = serde_json::from_slice(&out.get_output().stdout).expect("JSON");
        let farm: Vec<&str> = preview["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .filter(|s| s["batch"] == "render-farm" && s["action"] == "cordon")
            .filter_map(|s| s["node"].as_str())
            .collect();
        assert_eq!(farm, ["ws01", "ws02"]);
        let live = noderoll()
            .args(["preview", "plans/cilium-bgp.yaml", "--output", "json", "--kubeconfig"])
            .arg(sim.kubeconfig())
            .assert()
            .success();
        let live: Value = serde_json::from_slice(&live.get_output().stdout).expect("JSON");
        assert_eq!(live["steps"], preview["steps"], "a live cluster and its snapshot plan the same");
        let survey = &preview["survey"];
        assert_eq!(survey["uncovered"], serde_json::json!(["ws03", "ws04", "ws05", "ws06"]));
        let nodes = survey["nodes"].as_array().expect("nodes");
        let blocked: Vec<&str> = nodes
            .iter()
            .filter(|n| n["blockingBudgets"].as_array().is_some_and(|b| b.iter().any(|b| b == "kube-system/strict")))
            .filter_map(|n| n["node"].as_str())
            .collect();
        assert_eq!(blocked.len(), 1, "the one node running coredns: {survey}");
        let coredns = nodes.iter().find(|n| n["node"] == blocked[0]).expect("coredns's node");
        assert_eq!(
            coredns["hopelessBudgets"],
            serde_json::json!([
                "kube-system/strict: maxUnavailable 0 with 1 pod(s) it covers: it must keep 1 healthy, so it can never allow an eviction"
            ]),
            "a budget that allows no disruption ever is told from one that allows none now"
        );
        let ws01 = nodes.iter().find(|n| n["node"] == "ws01").expect("ws01");
        assert!(!ws01["sessions"].as_array().expect("sessions").is_empty(), "{ws01}");
        assert!(
            ws01["leftAlone"]
                .as_array()
                .expect("left")
                .iter()
                .any(|p| p.as_str().is_some_and(|p| p.contains("svclb-traefik")))
        );

        let text =
            noderoll().args(["preview", "plans/external-lb.yaml", "--snapshot"]).arg(&snapshot).assert().success();
        let text = String::from_utf8_lossy(&text.get_output().stdout).into_owned();
        assert!(text.contains("plan nodes the cluster does not have: cp-a, cp-b, cp-c"), "{text}");
    }

    #[test]
    fn init_reads_servicelb_from_its_pods_and_check_accepts_the_plan_once_its_dns_is_filled_in() {
        let sim = SimProcess::start(&[]);
        let snapshot = snapshot(&sim);
        let out = noderoll()
            .args(["init", "--batch-size", "4", "--name", "studio", "--snapshot"])
            .arg(&snapshot)
            .assert()
            .success();
        let written = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
        assert!(written.contains("svclb pods serve kube-system/traefik") && written.contains("    mode: servicelb\n"));
        let plan = sim.dir.path().join("init.yaml");
        std::fs::write(&plan, &written).expect("write");
        // The record and its server are the operator's to give: check names them as missing.
        let refused = noderoll().arg("check").arg(&plan).assert().code(1);
        let text = String::from_utf8_lossy(&refused.get_output().stderr).into_owned();
        assert!(text.contains("init.yaml:") && text.contains("dns"), "{text}");
        let filled: Vec<String> = written
            .lines()
            .scan(false, |inside, line| {
                let body = line.trim_start();
                *inside = body.starts_with("# dns:") || (*inside && body.starts_with('#'));
                Some(if *inside { line.replacen("# ", "", 1) } else { line.to_owned() })
            })
            .collect();
        std::fs::write(&plan, filled.join("\n") + "\n").expect("write");
        let checked = noderoll().arg("check").arg(&plan).assert().success();
        let text = String::from_utf8_lossy(&checked.get_output().stdout).into_owned();
        assert!(text.contains("3 batch(es), 9 node(s) by name"), "{text}");
        let yaml = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
        assert!(yaml.contains("nodes: [cp1, cp2, cp3]") && yaml.contains("nodes: [ws01, ws02, ws03, ws04]"), "{yaml}");
    }
}
