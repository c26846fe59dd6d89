//! Preview cost at 1k and 10k nodes, side by side in one run: parse + validate + plan +
//! render (JSON and text). The figure that matters is the ratio, which must stay near 10
//! (linear growth); absolute times depend on the machine. Run: `cargo bench --bench preview`.

use std::fmt::Write;
use std::time::{Duration, Instant};

use noderoll::{plan, planner};

/// A facility plan: 3 service nodes, then workstations in racks of 100, 10 at a time.
fn facility(workstations: usize) -> String {
    let mut y = String::from(
        "apiVersion: noderoll.io/v1alpha1\nkind: UpgradePlan\nmetadata: {name: bench}\nspec:\n  loadBalancer:\n    mode: servicelb\n    dns: {name: juno.example., provider: {manual: {}}, resolvers: [\"127.0.0.1:53\"]}\n  defaults: {upgrade: {command: [upgrade, \"{node}\"]}}\n  batches:\n    - {name: cp, role: service, nodes: [cp1, cp2, cp3]}\n",
    );
    for rack in 0..workstations.div_ceil(100) {
        let nodes: Vec<String> = (0..100.min(workstations - rack * 100)).map(|i| format!("ws-{rack}-{i}")).collect();
        let _ = writeln!(
            y,
            "    - {{name: rack-{rack}, role: workstation, maxUnavailable: 10, nodes: [{}]}}",
            nodes.join(", ")
        );
    }
    y
}

fn once(text: &str) -> Duration {
    let start = Instant::now();
    let checked = plan::check_str("bench.yaml", text);
    let plan = checked.plan.expect("the generated plan is valid");
    let planned = planner::build(&plan).expect("plans");
    let json = planner::render::json(&plan, &planned, None, None).expect("json");
    let text = planner::render::text(&plan, &planned);
    std::hint::black_box((json.len(), text.len()));
    start.elapsed()
}

fn best_of(runs: usize, text: &str) -> Duration {
    (0..runs).map(|_| once(text)).min().unwrap_or_default()
}

fn main() {
    let small = facility(1_000);
    let large = facility(10_000);
    once(&small);
    let t1 = best_of(7, &small);
    let t10 = best_of(5, &large);
    println!("| nodes | preview (best of runs) |\n| ---: | ---: |");
    println!("| 1,003 | {:.1} ms |", t1.as_secs_f64() * 1e3);
    println!("| 10,003 | {:.1} ms |", t10.as_secs_f64() * 1e3);
    println!("\n10k / 1k = {:.2} (linear growth is 10; the goal is at most 12)", t10.as_secs_f64() / t1.as_secs_f64());
}
