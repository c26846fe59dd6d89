//! The executor's peak memory against a facility-sized simulated cluster: 10,000 nodes
//! (3 control-plane, 9,997 workstations) with 30 sessions each, about 300,000 pods. `apply`
//! runs a plan of every node for 90 s of real time (the simulator at time scale 0.02, so
//! 75 simulated minutes: the control plane and the first waves of workstations), its peak
//! RSS (VmHWM) read from /proc meanwhile; then it is stopped with SIGTERM, as an operator
//! would. (At time scale 0.001 the simulator's own clock work at 300,000 pods saturates the
//! machine and it stops answering; that is the simulator's limit, not the executor's.)
//!
//! `cargo bench --bench executor_memory` (about 3 GiB of memory for the simulator)

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WORKSTATIONS: usize = 9_997;
const SESSIONS: usize = 30;
const RUN: Duration = Duration::from_secs(90);

/// A `/proc/<pid>/status` field, in MiB.
fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    let program = env!("CARGO_BIN_EXE_noderoll");
    let started = Instant::now();
    let mut sim = Command::new(program)
        .args(["sim", "serve", "--listen", "127.0.0.1:0", "--time-scale", "0.02", "--seed", "7"])
        .args(["--workstations", &WORKSTATIONS.to_string(), "--sessions-per-node", &SESSIONS.to_string()])
        .arg("--kubeconfig-out")
        .arg(&kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("noderoll sim serve starts");
    while !kubeconfig.exists() {
        assert!(started.elapsed() < Duration::from_secs(600), "the simulator did not start within 10 minutes");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "simulator: {} nodes, ~{} pods, up in {:.0} s, {:.0} MiB",
        3 + WORKSTATIONS,
        WORKSTATIONS * (SESSIONS + 1),
        started.elapsed().as_secs_f64(),
        status_mib(sim.id(), "VmRSS:")
    );
    let plan = dir.path().join("facility.yaml");
    std::fs::write(
        &plan,
        format!(
            "apiVersion: noderoll.io/v1alpha1\nkind: UpgradePlan\nmetadata: {{name: facility}}\nspec:\n  loadBalancer: {{mode: external}}\n  defaults:\n    upgrade:\n      command: [{program}, sim, ctl, upgrade, \"{{node}}\", --kubelet-version, v1.31.4+k3s1]\n      timeout: 1h\n    verify: {{kubeletVersion: v1.31.4+k3s1}}\n  batches:\n    - {{name: control-plane, role: service, nodes: [cp1, cp2, cp3], maxUnavailable: 1}}\n    - {{name: workstations, role: workstation, selector: juno-innovations.com/workstation=true, maxUnavailable: 100}}\n"
        ),
    )
    .expect("write plan");
    let mut apply = Command::new(program)
        .arg("apply")
        .arg(&plan)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--yes", "--output", "json"])
        .env("KUBECONFIG", &kubeconfig)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("apply starts");
    let pid = apply.id();
    let stdout = apply.stdout.take().expect("stdout");
    let counter = std::thread::spawn(move || {
        let mut done = 0usize;
        let mut steps = 0usize;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("\"event\":\"node-done\"") {
                done += 1;
            }
            if line.contains("\"event\":\"step-finished\"") {
                steps += 1;
            }
        }
        (done, steps)
    });
    let running = Instant::now();
    let mut peak: f64 = 0.0;
    while running.elapsed() < RUN && apply.try_wait().expect("poll apply").is_none() {
        peak = peak.max(status_mib(pid, "VmHWM:"));
        std::thread::sleep(Duration::from_millis(200));
    }
    peak = peak.max(status_mib(pid, "VmHWM:"));
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let _ = apply.wait();
    let (done, steps) = counter.join().expect("counter");
    let _ = sim.kill();
    let _ = sim.wait();
    println!();
    println!("| cluster | apply ran | steps finished | nodes done | executor peak RSS (VmHWM) |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    println!(
        "| {} nodes, ~{} pods | {:.0} s | {steps} | {done} | {peak:.1} MiB |",
        3 + WORKSTATIONS,
        WORKSTATIONS * (SESSIONS + 1),
        running.elapsed().as_secs_f64()
    );
}
