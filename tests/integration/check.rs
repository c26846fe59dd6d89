use serde_json::Value;

use crate::harness::{noderoll, yaml_files};

/// Each invalid fixture, the line and column of its fault, and a fragment of the message.
const INVALID: &[(&str, u64, u64, &str)] = &[
    ("after-cycle", 14, 15, "`after` forms a cycle: cp → ws wait for each other"),
    ("after-itself", 19, 15, "batch `ws` cannot run after itself"),
    ("after-unknown-batch", 19, 15, "`after` names an unknown batch `control-plane`"),
    ("dns-record-outside-zone", 9, 13, "the record `juno.other.example.` is not inside the zone `studio.example.`"),
    ("dns-server-without-port", 12, 19, "`127.0.0.1` is not a valid DNS server address"),
    ("dns-without-servicelb", 9, 7, "`dns` is only used with `mode: servicelb`, not `external`"),
    (
        "drain-delete-without-namespaces",
        13,
        18,
        "`drain.onTimeout: delete` names no namespace whose pods it may delete",
    ),
    ("drain-timeout-invalid", 9, 22, "`soon` is not a valid drain timeout"),
    ("duplicate-batch-name", 15, 13, "batch name `cp` is used twice"),
    ("etcd-endpoint-not-url", 10, 19, "`10.0.0.11:2379` is not an etcd client URL"),
    ("health-alert-selector-invalid", 11, 15, "invalid alert selector `severity in (critical`"),
    ("invalid-cron", 12, 11, "`0 25 * * 5` is not a valid cron expression"),
    ("invalid-plan-name", 4, 9, "`Studio_Plan` is not a valid plan name"),
    ("manual-dns-without-resolvers", 11, 9, "the manual and command DNS providers need `resolvers`"),
    ("max-failures-negative", 18, 20, "maxFailures -1 is below 0"),
    ("max-failures-over-100-percent", 18, 20, "maxFailures 120% is over 100%"),
    ("max-unavailable-not-a-number", 18, 23, "maxUnavailable `lots` is neither a count nor a percentage"),
    ("max-unavailable-over-100-percent", 18, 23, "maxUnavailable 150% is over 100%"),
    ("max-unavailable-wrong-type", 18, 7, "invalid type: sequence, expected a node count"),
    ("max-unavailable-zero-percent", 18, 23, "maxUnavailable 0% would never take a node out of service"),
    ("max-unavailable-zero", 18, 23, "maxUnavailable 0 would never take a node out of service"),
    ("missing-spec", 3, 1, "missing field `spec`"),
    ("no-batches", 11, 12, "the plan has no batches"),
    ("node-in-two-batches", 17, 20, "node `cp2` is in batch `ws` and already in batch `cp`"),
    ("node-twice-in-batch", 17, 20, "node `ws1` is listed twice in batch `ws`"),
    ("nodes-and-selector", 18, 17, "batch `ws` has both `nodes` and `selector`"),
    ("plan-is-a-list", 1, 1, "the plan is a YAML list, not a mapping"),
    (
        "quorum-broken-by-max-unavailable",
        15,
        23,
        "batch `cp` may take 2 etcd members out of service at once, but 3 members",
    ),
    ("quorum-broken-etcd-endpoints", 18, 23, "5 members (from the etcd endpoints) keep quorum only with at most 2 out"),
    (
        "quorum-two-members",
        12,
        13,
        "an etcd cluster of 2 member(s) (from the service nodes in the plan) cannot lose any member",
    ),
    ("round-robin-single-service-node", 9, 7, "withdrawing the only node's record would leave the record set empty"),
    (
        "selector-invalid",
        17,
        17,
        "invalid node selector `rack in (a`: found the end of the selector, expected `,` or `)`",
    ),
    ("servicelb-without-dns", 7, 11, "`servicelb` needs `loadBalancer.dns`"),
    ("soak-invalid", 20, 13, "`a while` is not a valid soak"),
    ("tsig-inline-secret", 14, 66, "the TSIG secret is given inline"),
    ("tsig-without-secret-file", 14, 24, "the TSIG key has no `secretFile`"),
    ("unknown-field-typo", 18, 7, "unknown field `maxUnavailabel`"),
    ("unknown-lb-mode", 7, 11, "unknown variant `servicelbb`"),
    ("unknown-time-zone", 14, 15, "unknown time zone `Europe/Londn`"),
    ("unknown-top-level-field", 3, 1, "unknown field `metdata`"),
    ("upgrade-command-empty", 10, 16, "the upgrade command is empty"),
    ("upgrade-command-missing", 9, 13, "batch `cp` has no upgrade command"),
    ("upgrade-shell-with-arguments", 10, 16, "with `shell: true` the upgrade command is one shell script string"),
    ("upgrade-unbalanced-brace", 10, 31, "unbalanced brace in `{node` in the upgrade command"),
    ("upgrade-unknown-placeholder", 10, 31, "unknown placeholder `{nodes}` in the upgrade command"),
    ("webhook-url-invalid", 10, 12, "`hooks.slack.com/services/T000/B000/XXXX` is not a webhook URL"),
    ("webhook-without-url", 10, 7, "the webhook has no `url` or `urlFile`"),
    ("window-duration-invalid", 13, 15, "`all night` is not a valid window duration"),
    ("wrong-api-version", 1, 13, "unsupported apiVersion `noderoll.io/v1`"),
    ("wrong-kind", 2, 7, "unsupported kind `Plan`"),
    ("yaml-syntax-error", 18, 21, ""),
];

/// Helps the test name a few faults with their suggestion, which the table above does not.
const SUGGESTIONS: &[(&str, &str)] = &[
    ("unknown-field-typo", "did you mean `maxUnavailable`?"),
    ("unknown-top-level-field", "did you mean `metadata`?"),
    ("unknown-lb-mode", "did you mean `servicelb`?"),
    ("unknown-time-zone", "did you mean `Europe/London`?"),
    ("after-unknown-batch", "known batches: cp, ws"),
    ("upgrade-unknown-placeholder", "did you mean `{node}`?"),
    ("quorum-broken-by-max-unavailable", "set `maxUnavailable: 1` on this batch"),
];

fn check_json(path: &str) -> (i32, Vec<Value>) {
    let out = noderoll().args(["check", "--output", "json", path]).output().expect("runs");
    let list: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{path}: not JSON ({e})"));
    (out.status.code().expect("exit code"), list.as_array().expect("a JSON list").clone())
}

#[test]
fn every_invalid_fixture_is_listed_and_every_listed_fixture_exists() {
    let on_disk: Vec<String> = yaml_files("tests/fixtures/invalid")
        .iter()
        .map(|p| p.file_stem().expect("stem").to_string_lossy().into_owned())
        .collect();
    let listed: Vec<String> = INVALID.iter().map(|(name, ..)| (*name).to_owned()).collect();
    assert_eq!(on_disk, listed);
    assert!(listed.len() >= 25);
}

#[test]
fn invalid_fixtures_fail_with_their_message_at_their_line_and_column() {
    for (name, line, column, fragment) in INVALID {
        let path = format!("tests/fixtures/invalid/{name}.yaml");
        let (code, diagnostics) = check_json(&path);
        assert_eq!(code, 1, "{name}: exit code");
        let found = diagnostics.iter().any(|d| {
            d["severity"] == "error"
                && d["path"] == path.as_str()
                && d["line"] == *line
                && d["column"] == *column
                && d["message"].as_str().is_some_and(|m| m.contains(fragment))
        });
        assert!(found, "{name}: no error at {line}:{column} containing {fragment:?}; got {diagnostics:#?}");
    }
}

#[test]
fn suggestions_name_the_likely_fix() {
    for (name, help) in SUGGESTIONS {
        let (_, diagnostics) = check_json(&format!("tests/fixtures/invalid/{name}.yaml"));
        assert!(
            diagnostics.iter().any(|d| d["help"].as_str().is_some_and(|h| h.contains(help))),
            "{name}: no help containing {help:?}; got {diagnostics:#?}"
        );
    }
}

#[test]
fn text_output_names_path_line_and_column() {
    for (name, line, column, _) in INVALID {
        let path = format!("tests/fixtures/invalid/{name}.yaml");
        let out = noderoll().args(["check", &path]).assert().code(1).get_output().stderr.clone();
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.contains(&format!("{path}:{line}:{column}")), "{name}: {text}");
    }
}

#[test]
fn rendered_diagnostics_match_their_snapshots() {
    for (name, ..) in INVALID {
        let path = format!("tests/fixtures/invalid/{name}.yaml");
        let out = noderoll().args(["check", &path]).output().expect("runs");
        insta::assert_snapshot!(format!("check__{name}"), String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn all_errors_of_a_plan_are_reported_at_once() {
    let (code, diagnostics) = check_json("tests/fixtures/multiple-faults.yaml");
    assert_eq!(code, 1);
    let errors: Vec<_> = diagnostics.iter().filter(|d| d["severity"] == "error").collect();
    assert_eq!(errors.len(), 5, "{diagnostics:#?}");
}

#[test]
fn example_plans_and_valid_fixtures_pass() {
    let mut plans = yaml_files("plans");
    plans.extend(yaml_files("tests/fixtures/valid"));
    assert!(plans.len() >= 6);
    for plan in plans {
        let out = noderoll().arg("check").arg(&plan).output().expect("runs");
        assert_eq!(out.status.code(), Some(0), "{}: {}", plan.display(), String::from_utf8_lossy(&out.stderr));
        let (_, diagnostics) = check_json(&plan.to_string_lossy());
        assert!(diagnostics.is_empty(), "{}: {diagnostics:#?}", plan.display());
    }
}

#[test]
fn several_plans_in_one_call_exit_1_if_any_is_invalid() {
    noderoll()
        .args(["check", "plans/external-lb.yaml", "tests/fixtures/invalid/wrong-kind.yaml"])
        .assert()
        .code(1)
        .stdout(predicates::str::contains("plans/external-lb.yaml: ok"));
}

#[test]
fn garbage_input_gives_a_clear_error_never_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let big = dir.path().join("big.yaml");
    let line = "# padding padding padding padding padding padding padding padding padding\n";
    std::fs::write(&big, line.repeat(50 * 1024 * 1024 / line.len())).expect("write");
    let cases: Vec<(std::path::PathBuf, &str)> = vec![
        (write(&dir, "binary.yaml", &(0..=255u8).cycle().take(4096).collect::<Vec<_>>()), "is not UTF-8 text"),
        (write(&dir, "empty.yaml", b""), "the plan is empty"),
        (write(&dir, "blank.yaml", b"   \n\n# only a comment\n"), "the plan is empty"),
        (write(&dir, "list.yaml", b"- a\n- b\n"), "the plan is a YAML list"),
        (write(&dir, "scalar.yaml", b"hello\n"), "the plan is a single value, not a mapping"),
        (write(&dir, "deep.yaml", "[".repeat(100_000).as_bytes()), ""),
        (
            write(&dir, "bomb.yaml", b"a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n"),
            "",
        ),
        (big, "larger than 8 MiB"),
        (dir.path().join("missing.yaml"), "cannot read the plan"),
    ];
    for (path, fragment) in cases {
        let out = noderoll().arg("check").arg(&path).output().expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", path.display());
        assert!(!stderr.contains("panicked"), "{}: {stderr}", path.display());
        assert!(stderr.contains(fragment), "{}: {stderr}", path.display());
        assert!(stderr.contains(&path.display().to_string()), "{}: names the file: {stderr}", path.display());
    }
}

fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("write");
    path
}

#[test]
fn usage_errors_exit_2() {
    noderoll().assert().code(2);
    noderoll().arg("check").assert().code(2);
    noderoll().args(["check", "--output", "yaml", "plans/external-lb.yaml"]).assert().code(2);
    noderoll().arg("frobnicate").assert().code(2);
}
