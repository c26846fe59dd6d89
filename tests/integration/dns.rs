//! The ServiceLB DNS steps against a real knotd on a loopback port: TSIG-signed RFC 2136
//! updates (and the command and manual providers, made with knsupdate), checked from the
//! outside with kdig while the rollout runs against the simulator.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Cluster, Random, SimProcess, kill_when, noderoll};
use crate::knot::{
    KEY, Knot, PlanExtra, RECORD, SERVICE_ADDRESSES, WRONG_KEY, Watched, cordoned, finish, rfc2136, rfc2136_keyed,
    roll_and_watch, servicelb_plan, start_apply, watch,
};

/// A ServiceLB plan for cp1..3 alone: workstations add nothing to the DNS steps, and
/// their sessions take a minute to move.
fn plan(dir: &Path, provider: &str, extra: &str) -> PathBuf {
    plan_with(dir, "round-robin", provider, extra)
}

/// `plan` with a record strategy.
fn plan_with(dir: &Path, strategy: &str, provider: &str, extra: &str) -> PathBuf {
    servicelb_plan(dir, strategy, provider, &PlanExtra { dns: extra, ..PlanExtra::default() })
}

/// stderr without miette's frame and line breaks, to search sentences in.
fn flat(stderr: &str) -> String {
    stderr.replace(['│', '×'], " ").split_whitespace().collect::<Vec<_>>().join(" ")
}

fn initial() -> Vec<&'static str> {
    SERVICE_ADDRESSES.to_vec()
}

/// A simulator, a knotd whose record holds `addresses`, its answer now, and a folder for
/// the plan: what every test here starts from.
fn setup(addresses: &[&str]) -> (SimProcess, Knot, Vec<(String, String)>, tempfile::TempDir) {
    let sim = SimProcess::start(&[]);
    let knot = Knot::start(addresses);
    let before = knot.answer();
    (sim, knot, before, tempfile::tempdir().expect("temp dir"))
}

/// The record changes the run reported.
fn changes(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["event"] == "step-progress")
        .filter_map(|e| e["message"].as_str())
        .filter(|m| m.starts_with(RECORD))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_round_robin_rollout_keeps_the_record_served_and_each_node_out_of_it_while_cordoned() {
    let (sim, knot, before, dir) = setup(&initial());
    let plan = plan(dir.path(), &rfc2136(dir.path(), &knot, KEY), "");
    let Watched { code, events, stderr, seen_out, violations, double_outages, samples } =
        roll_and_watch(&sim, &knot, &plan);
    assert!(samples > 100, "the watcher asked knotd and the API server throughout: {samples} samples");
    assert!(violations.is_empty(), "{violations:?}");
    assert_eq!(double_outages, 0, "with no node lost, never two control-plane nodes out");
    assert_eq!(code, 0, "apply failed: {stderr}");
    assert_eq!(seen_out.len(), 3, "every service node was seen cordoned and out of the record: {seen_out:?}");
    assert_eq!(knot.answer(), before, "the record ends as it began, TTLs included");
    assert_eq!(changes(&events).len(), 6, "one withdraw and one restore per service node: {:?}", changes(&events));
    let journal = std::fs::read_to_string(dir.path().join(".noderoll/dns.journal")).expect("journal");
    let output = serde_json::to_string(&events).expect("events");
    assert!(!journal.contains(KEY) && !stderr.contains(KEY) && !output.contains(KEY), "the TSIG secret leaked");
}

#[test]
fn an_hmac_sha512_key_signs_the_updates_too() {
    let sim = SimProcess::start(&[]);
    let knot = Knot::start_keyed(&initial(), "hmac-sha512");
    let before = knot.answer();
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = plan(dir.path(), &rfc2136_keyed(dir.path(), &knot, KEY, "hmac-sha512"), "");
    let Watched { code, events, stderr, violations, .. } = roll_and_watch(&sim, &knot, &plan);
    assert!(violations.is_empty(), "{violations:?}");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(changes(&events).len(), 6);
    assert_eq!(knot.answer(), before);
}

#[test]
fn a_single_record_is_repointed_while_its_node_is_out_and_moved_back() {
    let (sim, knot, before, dir) = setup(&SERVICE_ADDRESSES[..1]);
    let plan = plan_with(dir.path(), "single-record", &rfc2136(dir.path(), &knot, KEY), "");
    let Watched { code, events, stderr, seen_out, violations, .. } = roll_and_watch(&sim, &knot, &plan);
    assert!(violations.is_empty(), "{violations:?}");
    assert_eq!(code, 0, "apply failed: {stderr}");
    assert!(seen_out.contains("cp1"), "cp1 was seen cordoned with the record elsewhere: {seen_out:?}");
    assert_eq!(
        changes(&events),
        [format!("{RECORD}: 10.0.0.11 → 10.0.0.12"), format!("{RECORD}: 10.0.0.12 → 10.0.0.11"),],
        "only the node the record names is repointed, and back"
    );
    assert_eq!(knot.answer(), before);
}

#[test]
fn a_rollout_killed_while_the_record_is_repointed_resumes_and_moves_it_back() {
    // The chaos suite found this: the resume's pre-flight took the repointed record for
    // drift and refused to go on, leaving the record on cp2 and cp1 cordoned.
    let (sim, knot, before, dir) = setup(&SERVICE_ADDRESSES[..1]);
    let plan = plan_with(dir.path(), "single-record", &rfc2136(dir.path(), &knot, KEY), "");
    let mut child = start_apply(&sim, &plan);
    let repointed = kill_when(&mut child, |_, line| line.contains("10.0.0.11 → 10.0.0.12")).join().expect("reader");
    assert!(repointed, "the repoint was reported");
    let _ = child.wait();
    assert_eq!(knot.addresses(), BTreeSet::from(["10.0.0.12".to_owned()]), "killed while repointed");
    let Watched { code, stderr, violations, .. } = roll_and_watch(&sim, &knot, &plan);
    assert!(violations.is_empty(), "{violations:?}");
    assert_eq!(code, 0, "the resume finishes: {stderr}");
    sim.assert_upgraded_once(3);
    assert_eq!(knot.answer(), before);
}

#[test]
fn an_abort_after_apply_died_with_a_node_out_of_the_record_puts_it_back_and_uncordons_it() {
    // apply is SIGKILLed right after cp1 left the record (its lock is then a dead
    // process's, which the abort takes over); the abort finds cp1 before its upgrade.
    let (sim, knot, before, dir) = setup(&initial());
    let plan = plan(dir.path(), &rfc2136(dir.path(), &knot, KEY), "");
    let mut child = start_apply(&sim, &plan);
    let withdrawn =
        kill_when(&mut child, |_, line| line.contains("10.0.0.11, 10.0.0.12, 10.0.0.13 → 10.0.0.12, 10.0.0.13"));
    assert!(withdrawn.join().expect("reader"), "cp1's withdraw was reported");
    let _ = child.wait();
    assert_eq!(knot.addresses().len(), 2, "killed with cp1 out of the record");
    let out = noderoll()
        .arg("abort")
        .arg(&plan)
        .arg("--kubeconfig")
        .arg(sim.kubeconfig())
        .args(["--output", "json"])
        .output()
        .expect("abort runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let events: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let cp1 = events.iter().find(|e| e["event"] == "node-restored" && e["node"] == "cp1").expect("cp1 put back");
    assert!(cp1["actions"].as_array().is_some_and(|a| a.contains(&"DNS record restored".into())), "{cp1}");
    assert_eq!(knot.answer(), before, "the record holds cp1 again, with its TTL");
    assert!(cordoned(&sim).is_empty(), "no service node is left cordoned");
    assert_eq!(events.last().map(|e| e["outcome"].clone()), Some("aborted".into()), "{events:?}");
}

#[test]
fn a_record_is_not_repointed_to_a_node_out_of_service() {
    let (sim, knot, before, dir) = setup(&SERVICE_ADDRESSES[..1]);
    sim.kubectl_ok(&["cordon", "cp2"]);
    let plan = plan_with(dir.path(), "single-record", &rfc2136(dir.path(), &knot, KEY), "");
    let (code, events, stderr) = finish(start_apply(&sim, &plan));
    assert_eq!(code, 4, "{stderr}");
    let failed: Vec<&Value> = events.iter().filter(|e| e["event"] == "step-failed").collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["step"], "cp1/dns-repoint");
    assert!(failed[0]["error"].as_str().is_some_and(|e| e.contains("cannot be moved to cp2")), "{failed:?}");
    assert_eq!(knot.answer(), before);
    assert_eq!(cordoned(&sim), BTreeSet::from(["cp2".to_owned()]), "cp1 was never taken out");
}

#[test]
fn a_resume_killed_while_the_old_ttl_ran_waits_it_out_again() {
    // Killed while caches may still hold cp1's address: the resume finds the record already
    // without cp1, and must still wait the old TTL before cordoning it.
    let (sim, knot, before, dir) = setup(&initial());
    let plan = plan(dir.path(), &rfc2136(dir.path(), &knot, KEY), "");
    let mut child = start_apply(&sim, &plan);
    let killer = kill_when(&mut child, |_, line| line.contains("waiting out the old TTL"));
    let first = watch(&sim, &knot, child);
    assert!(killer.join().expect("killer thread"), "killed during cp1's TTL wait: {}", first.stderr);
    assert!(!knot.addresses().contains(SERVICE_ADDRESSES[0]), "the record was already changed");
    let Watched { code, events, stderr, violations, .. } = roll_and_watch(&sim, &knot, &plan);
    assert!(violations.is_empty(), "{violations:?}");
    assert_eq!(code, 0, "{stderr}");
    let position = |wanted: &dyn Fn(&Value) -> bool| events.iter().position(wanted);
    let waited = position(&|e| {
        e["event"] == "step-progress"
            && e["step"] == "cp1/dns-withdraw"
            && e["message"].as_str().is_some_and(|m| m.contains("waiting out the old TTL"))
    })
    .expect("the resume waited out the old TTL again");
    let cordoned = position(&|e| e["event"] == "step-started" && e["step"] == "cp1/cordon").expect("cp1 cordoned");
    assert!(waited < cordoned, "the wait came before the cordon");
    assert_eq!(knot.answer(), before);
}

#[test]
fn a_member_lost_while_a_service_node_leaves_dns_stops_it_before_its_cordon() {
    // cp2's chain began with every member up; cp3 is lost while caches drop cp2 (the old
    // TTL wait). Cordoning and draining cp2 now would leave one control-plane node serving.
    let (sim, knot, _, dir) = setup(&initial());
    // Without the check, cp2's drain would wait for a budget cp3's loss exhausted.
    let extra = PlanExtra { defaults: "    drain: {timeout: 5s}\n", ..PlanExtra::default() };
    let plan = servicelb_plan(dir.path(), "round-robin", &rfc2136(dir.path(), &knot, KEY), &extra);
    let mut child = start_apply(&sim, &plan);
    let ctl = sim.controller();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let events = seen.clone();
    let loser = kill_when(&mut child, move |_, line| {
        if line.contains("\"cp2/dns-withdraw\"") && line.contains("waiting out the old TTL") {
            ctl.run(&["reboot", "cp3", "--fails"]).success();
        }
        events.lock().expect("events").extend(serde_json::from_str::<Value>(line).ok());
        false
    });
    let Watched { code, stderr, violations, .. } = watch(&sim, &knot, child);
    assert!(!loser.join().expect("reader thread"), "not killed");
    let events = seen.lock().expect("events").clone();
    assert!(violations.is_empty(), "{violations:?}");
    assert_eq!(code, 4, "{stderr}");
    let failed = events.iter().find(|e| e["event"] == "step-failed").expect("a step failed");
    assert_eq!(failed["step"], "cp2/cordon", "{failed}");
    assert!(failed["error"].as_str().unwrap_or_default().contains("cp3"), "the error names cp3: {failed}");
    assert!(cordoned(&sim).is_empty(), "cp2 was not cordoned");
    let served = knot.addresses();
    assert!(!served.is_empty() && !served.contains(SERVICE_ADDRESSES[1]), "cp2 stays out of the record: {served:?}");
}

#[test]
fn a_rollout_killed_at_random_moments_resumes_with_every_record_restored() {
    // Up to three SIGKILLs at random events of one rollout (a 3-node plan reports about 90
    // events; each resume reports only what is left, so a late run may finish first), then
    // a last resume; the record is watched from outside throughout.
    let mut random = Random::from_env();
    let seed = random.seed;
    let (sim, knot, before, dir) = setup(&initial());
    let plan = plan(dir.path(), &rfc2136(dir.path(), &knot, KEY), "");
    for kill in 0..3 {
        let mut child = start_apply(&sim, &plan);
        let stop = 1 + random.below(30) as usize;
        let killer = kill_when(&mut child, move |line, _| line == stop);
        let Watched { code, stderr, violations, .. } = watch(&sim, &knot, child);
        assert!(violations.is_empty(), "{violations:?}");
        let killed = killer.join().expect("killer thread");
        assert!(
            killed || (code == 0 && kill > 0),
            "seed {seed}: run {kill} ended before event {stop} (exit {code}): {stderr}"
        );
        assert!(code == -1 || code == 0, "seed {seed}, kill {kill} at event {stop} (killed: {killed}): {stderr}");
    }
    let Watched { code, stderr, violations, .. } = roll_and_watch(&sim, &knot, &plan);
    assert!(violations.is_empty(), "{violations:?}");
    assert_eq!(code, 0, "seed {seed}: the last resume finishes: {stderr}");
    sim.assert_upgraded_once(3);
    assert_eq!(knot.answer(), before, "seed {seed}: every record is back, TTLs included");
    let journal = std::fs::read_to_string(dir.path().join(".noderoll/dns.journal")).expect("journal");
    assert!(journal.lines().all(|l| serde_json::from_str::<Value>(l).is_ok()), "seed {seed}: a journal line is broken");
}

#[test]
fn a_wrong_tsig_key_is_named_and_changes_nothing() {
    let (sim, knot, before, dir) = setup(&initial());
    let plan = plan(dir.path(), &rfc2136(dir.path(), &knot, WRONG_KEY), "");
    let (code, _, stderr) = finish(start_apply(&sim, &plan));
    assert_eq!(code, 3, "{stderr}");
    assert!(
        flat(&stderr).contains("rejected the TSIG key `noderoll` (its answer is not signed with that key"),
        "{stderr}"
    );
    assert!(!stderr.contains(WRONG_KEY), "{stderr}");
    assert_eq!(knot.answer(), before);
    assert!(cordoned(&sim).is_empty());
}

#[test]
fn a_record_that_differs_from_the_plan_is_refused_before_anything_changes() {
    let (sim, knot, _, dir) = setup(&SERVICE_ADDRESSES[..2]);
    let plan = plan(dir.path(), &rfc2136(dir.path(), &knot, KEY), "");
    let (code, _, stderr) = finish(start_apply(&sim, &plan));
    assert_eq!(code, 3, "{stderr}");
    assert!(
        flat(&stderr).contains("serves 10.0.0.11, 10.0.0.12, but the plan expects 10.0.0.11, 10.0.0.12, 10.0.0.13"),
        "{stderr}"
    );
    assert_eq!(knot.addresses().len(), 2);
    assert!(cordoned(&sim).is_empty());
}

#[test]
fn the_dns_server_going_down_halts_and_the_resume_restores_the_record() {
    let (sim, mut knot, before, dir) = setup(&initial());
    let plan = plan(dir.path(), &rfc2136(dir.path(), &knot, KEY), "");
    let child = start_apply(&sim, &plan);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cordoned(&sim).contains("cp1") {
        assert!(Instant::now() < deadline, "cp1 was not cordoned within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    knot.stop();
    let (code, events, stderr) = finish(child);
    assert_eq!(code, 4, "halted: {stderr}");
    let failed: Vec<&Value> = events.iter().filter(|e| e["event"] == "step-failed").collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["step"], "cp1/dns-restore");
    assert!(failed[0]["error"].as_str().is_some_and(|e| e.contains("cannot reach the DNS server")), "{failed:?}");
    assert!(!cordoned(&sim).contains("cp1"), "cp1 serves again; only its record is out");
    knot.run();
    assert_eq!(knot.addresses(), BTreeSet::from(["10.0.0.12".to_owned(), "10.0.0.13".to_owned()]));
    let (code, _, stderr) = finish(start_apply(&sim, &plan));
    assert_eq!(code, 0, "the resume finishes: {stderr}");
    assert_eq!(knot.answer(), before);
}

#[test]
fn the_command_provider_runs_the_plans_commands_and_waits_for_the_resolver() {
    let (sim, knot, before, dir) = setup(&initial());
    let script = |verb: &str, ttl: &str| {
        format!(
            "[sh, -c, \"printf 'server 127.0.0.1 {}\\\\nzone example.test.\\\\nupdate {verb} %s {ttl} A %s\\\\nsend\\\\n' $0 $1 | knsupdate -y {}\", \"{{record}}\", \"{{address}}\"]",
            knot.port,
            Knot::key_argument()
        )
    };
    let provider = format!(
        "        command:\n          withdraw: {}\n          restore: {}\n",
        script("delete", ""),
        script("add", "1")
    );
    let plan = plan(dir.path(), &provider, &format!("      resolvers: [\"{}\"]\n", knot.server()));
    let Watched { code, stderr, seen_out, violations, .. } = roll_and_watch(&sim, &knot, &plan);
    assert!(violations.is_empty(), "{violations:?}");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(seen_out.len(), 3, "{seen_out:?}");
    assert_eq!(knot.answer(), before);
}

#[test]
fn the_manual_provider_prints_each_change_and_goes_on_once_it_is_approved_and_served() {
    let (sim, knot, before, dir) = setup(&initial());
    let plan =
        plan(dir.path(), "        manual: {}\n", &format!("      ttl: 1\n      resolvers: [\"{}\"]\n", knot.server()));
    let mut child = start_apply(&sim, &plan);
    let stdout = child.stdout.take().expect("stdout");
    let mut made = 0;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        let Ok(event) = serde_json::from_str::<Value>(&line) else { continue };
        match event["event"].as_str() {
            Some("awaiting-dns-change") => {
                let step = event["step"].as_str().expect("step");
                let change = event["change"].as_str().expect("change");
                knot.nsupdate(change);
                noderoll().arg("approve").arg(&plan).arg(step).assert().success();
                made += 1;
            }
            Some("awaiting-approval") => {
                let node = event["node"].as_str().expect("node");
                noderoll().arg("approve").arg(&plan).arg(node).assert().success();
            }
            _ => {}
        }
    }
    let status = child.wait().expect("apply ends");
    assert!(status.success(), "apply failed");
    assert_eq!(made, 6, "one change by hand per withdraw and restore");
    assert_eq!(knot.answer(), before);
}
