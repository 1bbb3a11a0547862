//! A local webhook receiver for the stack's Alertmanager, so a person can watch a test alert
//! arrive: it answers every POST, and prints each alert of it as one line (and appends it to
//! its log). On EC2 the webhook is a Slack-style URL from SSM; locally it is this.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;
use serde_json::Value;

/// The path Alertmanager posts to.
const PATH: &str = "/alerts";

/// A receiver on a free loopback port; it stops when dropped.
pub struct Receiver {
    url: String,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Listens on 127.0.0.1 (a free port), printing alerts to stderr and to `log`.
    pub fn start(log: PathBuf) -> anyhow::Result<Receiver> {
        let server = tiny_http::Server::http("127.0.0.1:0")
            .map_err(|e| anyhow::anyhow!("cannot listen for alerts on 127.0.0.1: {e}"))?;
        let addr = server
            .server_addr()
            .to_ip()
            .context("the alert receiver has no IP address")?;
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let server = Arc::new(server);
        let serving = server.clone();
        let thread = std::thread::spawn(move || {
            for request in serving.incoming_requests() {
                answer(request, &log);
            }
        });
        Ok(Receiver {
            url: format!("http://{addr}{PATH}"),
            server,
            thread: Some(thread),
        })
    }

    /// The URL Alertmanager's webhook posts to.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn answer(mut request: tiny_http::Request, log: &Path) {
    let mut body = Vec::new();
    let read = std::io::Read::read_to_end(request.as_reader(), &mut body);
    let status = match (request.method(), request.url(), read) {
        (tiny_http::Method::Post, PATH, Ok(_)) => match serde_json::from_slice::<Value>(&body) {
            Ok(notification) => {
                for line in describe(&notification) {
                    eprintln!("{line}");
                    append(log, &line);
                }
                200
            }
            Err(_) => 400,
        },
        (tiny_http::Method::Post, PATH, Err(_)) => 400,
        _ => 404,
    };
    // Alertmanager retries a failed delivery; nothing to do here if it gave up.
    let _ = request.respond(tiny_http::Response::empty(status));
}

/// One line per alert: `alert firing: AppDown (severity critical, instance 127.0.0.1:5000)
/// via receiver page`.
pub fn describe(notification: &Value) -> Vec<String> {
    let text = |value: &Value| value.as_str().unwrap_or("?").to_string();
    let receiver = text(&notification["receiver"]);
    notification["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|alert| {
            let labels = &alert["labels"];
            let mut details = vec![format!("severity {}", text(&labels["severity"]))];
            if let Some(instance) = labels["instance"].as_str() {
                details.push(format!("instance {instance}"));
            }
            format!(
                "alert {}: {} ({}) via receiver {receiver}",
                text(&alert["status"]),
                text(&labels["alertname"]),
                details.join(", ")
            )
        })
        .collect()
}

fn append(log: &Path, line: &str) {
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .and_then(|mut file| writeln!(file, "{line}"));
    if let Err(error) = written {
        eprintln!("warning: cannot append to {}: {error}", log.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_alert_is_one_line_with_its_status_name_severity_and_receiver() {
        let notification = serde_json::json!({
            "receiver": "page",
            "status": "firing",
            "alerts": [
                {"status": "firing", "labels": {"alertname": "AppDown", "severity": "critical", "instance": "127.0.0.1:5000"}},
                {"status": "resolved", "labels": {"alertname": "DiskFilling", "severity": "warning"}},
            ],
        });
        assert_eq!(
            describe(&notification),
            [
                "alert firing: AppDown (severity critical, instance 127.0.0.1:5000) via receiver page",
                "alert resolved: DiskFilling (severity warning) via receiver page",
            ]
        );
        assert!(describe(&serde_json::json!({})).is_empty());
    }

    #[test]
    fn the_receiver_answers_alertmanagers_posts_and_logs_them() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("logs/alert-receiver.log");
        let receiver = Receiver::start(log.clone()).unwrap();
        let client = reqwest::blocking::Client::new();
        let body = serde_json::json!({
            "receiver": "ticket",
            "alerts": [{"status": "firing", "labels": {"alertname": "TargetMissing", "severity": "warning"}}],
        });
        let response = client.post(receiver.url()).json(&body).send().unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let bad = client.post(receiver.url()).body("not json").send().unwrap();
        assert_eq!(bad.status().as_u16(), 400);
        let elsewhere = receiver.url().replace(PATH, "/other");
        assert_eq!(
            client.post(elsewhere).send().unwrap().status().as_u16(),
            404
        );
        drop(receiver);
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "alert firing: TargetMissing (severity warning) via receiver ticket\n"
        );
    }
}
