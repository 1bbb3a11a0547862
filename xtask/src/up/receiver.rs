//! A local stand-in for a Slack incoming webhook, so a person can watch a test alert arrive
//! as Slack would show it: it answers like Slack (`crate::slack`: `200 ok`, or `400 no_text`
//! to a message without text) and prints each accepted message's title and text (and
//! appends them to its log). On EC2 the Slack URL comes from SSM; locally it is this.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;

use crate::slack;

/// The path Alertmanager posts to (a Slack webhook's is `/services/T.../B.../...`).
const PATH: &str = "/services/local";

/// A receiver on a free loopback port; it stops when dropped.
pub struct Receiver {
    url: String,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Listens on 127.0.0.1 (a free port), printing messages to stderr and to `log`.
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

    /// The URL Alertmanager's Slack integration posts to.
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
    let (status, answer) = match (request.method(), request.url(), read) {
        (tiny_http::Method::Post, PATH, Ok(_)) => match slack::receive(&body) {
            Ok(message) => {
                for line in message.lines() {
                    eprintln!("{line}");
                    append(log, &line);
                }
                (200, slack::ACCEPTED)
            }
            Err(refusal) => {
                let line = format!(
                    "refused a message as Slack would: {} {}",
                    refusal.status, refusal.error
                );
                eprintln!("{line}");
                append(log, &line);
                (refusal.status, refusal.error)
            }
        },
        (tiny_http::Method::Post, PATH, Err(_)) => (400, "invalid_payload"),
        _ => (404, "no_service"),
    };
    let response = tiny_http::Response::from_string(answer).with_status_code(status);
    let response = match tiny_http::Header::from_bytes("Content-Type", "text/plain") {
        Ok(header) => response.with_header(header),
        Err(()) => response,
    };
    // Alertmanager retries a failed delivery; nothing to do here if it gave up.
    let _ = request.respond(response);
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
    fn the_receiver_answers_like_slack_and_logs_what_it_shows() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("logs/alert-receiver.log");
        let receiver = Receiver::start(log.clone()).unwrap();
        let client = reqwest::blocking::Client::new();
        let message = serde_json::json!({
            "attachments": [{
                "title": "[FIRING:1] TargetMissing (warning)",
                "text": "*TargetMissing* is firing: a scrape target is missing\n",
            }],
        });
        let response = client.post(receiver.url()).json(&message).send().unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(response.text().unwrap(), "ok");
        // Alertmanager's webhook JSON, which Slack refuses.
        let webhook = serde_json::json!({
            "receiver": "ticket",
            "alerts": [{"status": "firing", "labels": {"alertname": "TargetMissing"}}],
        });
        let refused = client.post(receiver.url()).json(&webhook).send().unwrap();
        assert_eq!(refused.status().as_u16(), 400);
        assert_eq!(refused.text().unwrap(), "no_text");
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
            "[FIRING:1] TargetMissing (warning)\n  *TargetMissing* is firing: a scrape target is missing\n\
             refused a message as Slack would: 400 no_text\n\
             refused a message as Slack would: 400 invalid_payload\n"
        );
    }
}
