use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::harness::noderoll;

const NAMED_NODE_PLANS: &[&str] =
    &["servicelb-round-robin", "servicelb-single-record", "external-lb", "large-facility"];

fn preview(plan: &str, format: &str) -> String {
    let out = noderoll().args(["preview", "-o", format, &format!("plans/{plan}.yaml")]).output().expect("runs");
    assert_eq!(out.status.code(), Some(0), "{plan}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn text_dot_and_mermaid_match_their_snapshots() {
    for plan in NAMED_NODE_PLANS {
        insta::assert_snapshot!(format!("preview_text__{plan}"), preview(plan, "text"));
    }
    for plan in ["external-lb", "servicelb-single-record"] {
        insta::assert_snapshot!(format!("preview_dot__{plan}"), preview(plan, "dot"));
        insta::assert_snapshot!(format!("preview_mermaid__{plan}"), preview(plan, "mermaid"));
    }
}

#[test]
fn json_follows_the_contract() {
    for plan in NAMED_NODE_PLANS {
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
fn json_lists_every_node_of_the_plan() {
    let doc: Value = serde_json::from_str(&preview("large-facility", "json")).expect("JSON");
    let nodes: HashSet<&str> =
        doc["steps"].as_array().expect("steps").iter().filter_map(|s| s["node"].as_str()).collect();
    assert_eq!(nodes.len(), 323);
}

#[test]
fn invalid_and_unplannable_plans_exit_1() {
    noderoll()
        .args(["preview", "tests/fixtures/invalid/after-cycle.yaml"])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("after-cycle.yaml:14:15"));
    noderoll()
        .args(["preview", "plans/cilium-bgp.yaml"])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("batch `render-farm` selects its nodes"));
}
