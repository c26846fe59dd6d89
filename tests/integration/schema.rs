use crate::harness::{noderoll, repo};

#[test]
fn committed_schema_is_what_the_binary_prints() {
    let out = noderoll().arg("schema").assert().success().get_output().stdout.clone();
    let printed = String::from_utf8(out).expect("utf-8");
    let committed = std::fs::read_to_string(repo().join("schemas/plan.schema.json")).expect("schemas/plan.schema.json");
    assert_eq!(
        printed.trim_end(),
        committed.trim_end(),
        "schemas/plan.schema.json is stale: run `cargo run -- schema > schemas/plan.schema.json`"
    );
}

#[test]
fn every_field_of_the_schema_has_a_description() {
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("schemas/plan.schema.json")).expect("schema"))
            .expect("json");
    let mut missing = Vec::new();
    let mut visit = vec![("$".to_owned(), &schema)];
    while let Some((path, node)) = visit.pop() {
        if let Some(props) = node.get("properties").and_then(|p| p.as_object()) {
            for (name, prop) in props {
                if prop.get("description").is_none() {
                    missing.push(format!("{path}.{name}"));
                }
            }
        }
        if let Some(obj) = node.as_object() {
            for (key, child) in obj {
                visit.push((format!("{path}/{key}"), child));
            }
        }
    }
    assert!(missing.is_empty(), "fields without a description: {missing:?}");
}

#[test]
fn example_plans_point_editors_at_the_schema() {
    for plan in crate::harness::yaml_files("plans") {
        let text = std::fs::read_to_string(repo().join(&plan)).expect("plan");
        assert!(
            text.starts_with("# yaml-language-server: $schema=../schemas/plan.schema.json"),
            "{} does not start with the yaml-language-server $schema comment",
            plan.display()
        );
    }
}
