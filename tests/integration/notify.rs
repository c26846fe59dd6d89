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

/// Whether `value` is an object holding `required` and nothing outside `allowed`.
fn keys(value: &Value, required: &[&str], allowed: &[&str]) -> Result<(), String> {
    let object = value.as_object().ok_or_else(|| format!("not an object: {value}"))?;
    if let Some(missing) = required.iter().find(|k| !object.contains_key(**k)) {
        return Err(format!("`{missing}` missing: {value}"));
    }
    if let Some(extra) = object.keys().find(|k| !allowed.contains(&k.as_str()) && !required.contains(&k.as_str())) {
        return Err(format!("`{extra}` is not a field of this body: {value}"));
    }
    Ok(())
}

fn string(value: &Value, what: &str) -> Result<String, String> {
    value
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| format!("{what} is not a string: {value}"))
}

/// The body's shape as each service documents what its webhook takes; returns the text
/// people read.
fn conforms(format: &str, body: &Value) -> Result<String, String> {
    match format {
        // Slack's incoming webhooks: `text` (or blocks); other top-level fields are ignored.
        "slack" => {
            keys(body, &["text", "plan", "event", "detail"], &[])?;
            string(&body["text"], "text")
        }
        // Mattermost's incoming webhooks: text, and the optional fields it names.
        "mattermost" => {
            keys(
                body,
                &["text"],
                &["username", "icon_url", "icon_emoji", "channel", "attachments", "props", "type", "priority"],
            )?;
            string(&body["username"], "username")?;
            keys(&body["props"], &["plan", "event", "detail"], &[])?;
            string(&body["text"], "text")
        }
        // A Teams workflow's webhook trigger: a message whose attachments are Adaptive Cards.
        "teams" => {
            keys(body, &["type", "attachments"], &[])?;
            (body["type"] == "message").then_some(()).ok_or("type is not `message`")?;
            let [attachment] = body["attachments"].as_array().map(Vec::as_slice).unwrap_or_default() else {
                return Err(format!("not one attachment: {body}"));
            };
            keys(attachment, &["contentType", "content"], &["contentUrl"])?;
            (attachment["contentType"] == "application/vnd.microsoft.card.adaptive")
                .then_some(())
                .ok_or("not an Adaptive Card")?;
            let card = &attachment["content"];
            keys(card, &["type", "version", "body"], &["$schema", "actions", "msteams"])?;
            (card["type"] == "AdaptiveCard").then_some(()).ok_or("content is not an AdaptiveCard")?;
            let version = string(&card["version"], "version")?;
            version.strip_prefix("1.").and_then(|m| m.parse::<u8>().ok()).filter(|m| *m <= 5).ok_or(version)?;
            let mut text = None;
            for element in card["body"].as_array().ok_or("body is not a list")? {
                match element["type"].as_str() {
                    Some("TextBlock") => {
                        keys(element, &["type", "text"], &["wrap", "weight", "size"])?;
                        text.get_or_insert(string(&element["text"], "a TextBlock's text")?);
                    }
                    Some("FactSet") => {
                        keys(element, &["type", "facts"], &[])?;
                        for fact in element["facts"].as_array().ok_or("facts is not a list")? {
                            keys(fact, &["title", "value"], &[])?;
                            string(&fact["title"], "a fact's title")?;
                            string(&fact["value"], "a fact's value")?;
                        }
                    }
                    _ => return Err(format!("an element Teams would not render: {element}")),
                }
            }
            text.ok_or_else(|| format!("no TextBlock: {card}"))
        }
        "json" => {
            keys(body, &["plan", "event", "text", "detail"], &[])?;
            string(&body["text"], "text")
        }
        other => Err(format!("no such format {other}")),
    }
}

#[test]
fn each_webhook_format_sends_the_body_its_service_takes() {
    for format in ["slack", "teams", "mattermost", "json"] {
        let sim = SimProcess::start(&["--sessions-per-node", "0"]);
        let receiver = Receiver::start(200);
        let webhook = format!(
            "{{webhook: {{url: \"http://127.0.0.1:{}/hook\", events: [started, halted], format: {format}}}}}",
            receiver.port
        );
        let out = apply_via(&sim.kubeconfig(), &plan(&sim, "[\"false\"]", &webhook), &[]).output().expect("apply runs");
        assert_eq!(out.status.code(), Some(4), "{format}: {}", String::from_utf8_lossy(&out.stderr));
        let bodies = receiver.bodies.lock().expect("lock").clone();
        let texts: Vec<String> =
            bodies.iter().map(|b| conforms(format, b).unwrap_or_else(|e| panic!("{format}: {e}"))).collect();
        assert_eq!(texts.len(), 2, "{format}: {bodies:?}");
        assert_eq!(texts[0], "noderoll: rollout `notified` started: 5 node(s) in 2 batch(es)", "{format}");
        assert!(texts[1].contains("HALTED") && texts[1].contains("cp1/upgrade"), "{format}: {}", texts[1]);
    }
}

#[test]
fn the_format_check_refuses_bodies_its_service_would_not_take() {
    // The checker above is what the format test relies on: it must fail where it should.
    let card = |element: Value| {
        serde_json::json!({"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive",
            "content": {"type": "AdaptiveCard", "version": "1.4", "body": [element]}}]})
    };
    assert!(conforms("teams", &card(serde_json::json!({"type": "TextBlock", "text": "hi"}))).is_ok());
    assert!(conforms("teams", &card(serde_json::json!({"type": "Image", "url": "x"}))).is_err());
    assert!(conforms("teams", &serde_json::json!({"text": "hi"})).is_err(), "a Slack body is no Teams message");
    assert!(conforms("mattermost", &serde_json::json!({"text": "hi", "plan": "p"})).is_err(), "no top-level plan");
    assert!(conforms("json", &serde_json::json!({"plan": "p", "event": "e", "text": ""})).is_err());
}
