//! Webhook notifications through `apply` against the simulator, received by a small HTTP
//! server on loopback that records each POST.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::harness::{Cluster, SIM_UPGRADE, SimProcess, apply_via, free_port, small_plan};

/// Records the JSON bodies POSTed to it; answers `status` to each.
struct Receiver {
    port: u16,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    fn start(status: u16) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let mut reader = BufReader::new(stream);
                let mut length = 0usize;
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    line.clear();
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_ok() {
                    kept.lock().expect("lock").push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                }
                let _ =
                    write!(reader.get_mut(), "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            }
        });
        Receiver { port, bodies }
    }

    fn events(&self) -> Vec<String> {
        self.bodies.lock().expect("lock").iter().map(|b| b["event"].as_str().unwrap_or("?").to_owned()).collect()
    }
}

fn plan(sim: &SimProcess, upgrade: &str, notify: &str) -> std::path::PathBuf {
    small_plan(sim.dir.path(), "notified", &format!("notify: {notify}"), upgrade)
}

#[test]
fn a_webhook_hears_start_each_batch_and_the_finish_with_slack_text() {
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    let receiver = Receiver::start(200);
    std::fs::write(sim.dir.path().join("webhook.url"), format!("http://127.0.0.1:{}/hook\n", receiver.port))
        .expect("write");
    let plan = plan(&sim, SIM_UPGRADE, "{webhook: {urlFile: webhook.url}}");
    let out = apply_via(&sim.kubeconfig(), &plan, &[]).output().expect("apply runs");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(receiver.events(), ["started", "batch-done", "batch-done", "finished"]);
    let bodies = receiver.bodies.lock().expect("lock").clone();
    assert_eq!(bodies[0]["text"], "noderoll: rollout `notified` started: 5 node(s) in 2 batch(es)");
    assert_eq!(bodies[1]["text"], "noderoll: rollout `notified`: batch `control-plane` done");
    assert_eq!(bodies[3]["text"], "noderoll: rollout `notified` finished: 5 node(s) upgraded");
    assert!(bodies.iter().all(|b| b["plan"] == "notified" && b["detail"].is_object()));
    let url = format!("127.0.0.1:{}", receiver.port);
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&url), "the URL from the file is not printed");
}

#[test]
fn a_halt_is_announced_with_what_failed_and_what_is_cordoned() {
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    let receiver = Receiver::start(200);
    let webhook = format!("{{webhook: {{url: \"http://127.0.0.1:{}/hook\", events: [halted]}}}}", receiver.port);
    let plan = plan(&sim, "[\"false\"]", &webhook);
    let out = apply_via(&sim.kubeconfig(), &plan, &[]).output().expect("apply runs");
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(receiver.events(), ["halted"], "only the events asked for");
    let text = receiver.bodies.lock().expect("lock")[0]["text"].as_str().unwrap_or_default().to_owned();
    assert!(text.contains("HALTED") && text.contains("cp1/upgrade") && text.contains("Left cordoned: cp1"), "{text}");
}

#[test]
fn a_dead_or_failing_webhook_never_fails_the_rollout() {
    for url in
        [format!("http://127.0.0.1:{}/nobody", free_port()), format!("http://127.0.0.1:{}/", Receiver::start(500).port)]
    {
        let sim = SimProcess::start(&["--sessions-per-node", "0"]);
        let plan = plan(&sim, SIM_UPGRADE, &format!("{{webhook: {{url: \"{url}\", events: [finished]}}}}"));
        let out = apply_via(&sim.kubeconfig(), &plan, &[]).output().expect("apply runs");
        assert_eq!(out.status.code(), Some(0), "{url}: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("1 webhook notification(s) could not be delivered"), "{url}: {stdout}");
        sim.assert_upgraded_once(5);
    }
}

#[test]
fn a_webhook_that_never_answers_is_given_up_on_and_counted() {
    // It accepts connections and says nothing: the first message still hangs in its tries
    // when apply stops waiting (30 s), and the second is still queued behind it. Both count.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/", silent.local_addr().expect("address"));
    let sim = SimProcess::start(&["--sessions-per-node", "0"]);
    let plan = plan(&sim, SIM_UPGRADE, &format!("{{webhook: {{url: \"{url}\", events: [started, finished]}}}}"));
    let out = apply_via(&sim.kubeconfig(), &plan, &[]).output().expect("apply runs");
    drop(silent);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("2 webhook notification(s) could not be delivered"), "{stdout}");
}
