//! The IMDS tag source against a tiny fake instance metadata service on loopback that
//! implements the IMDSv2 token handshake, and the refusal to go on without a token.

use crate::common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use testkit::http::{Request, Response, TestServer};

use common::*;

const TOKEN: &str = "test-session-token";
const INSTANCE_ID: &str = "i-0fromimds";

/// How the fake answers `PUT /latest/api/token`.
#[derive(Clone, Copy, PartialEq)]
enum TokenMode {
    Issue,
    /// A service with IMDSv2 turned off (403), or one that only knows IMDSv1 (404).
    Refuse(u16),
}

#[derive(Default)]
struct Seen {
    token_requests: usize,
    gets_with_token: usize,
    gets_without_token: usize,
}

struct FakeImds {
    server: TestServer,
    seen: Arc<Mutex<Seen>>,
}

impl FakeImds {
    fn start(mode: TokenMode, tags: &[(&str, &str)]) -> FakeImds {
        let tags: BTreeMap<String, String> = tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = seen.clone();
        let server = TestServer::start(move |request| answer(request, mode, &tags, &shared));
        FakeImds { server, seen }
    }

    fn endpoint(&self) -> &str {
        self.server.url()
    }
}

/// Answers like a minimal IMDS that only speaks IMDSv2.
fn answer(
    request: &Request,
    mode: TokenMode,
    tags: &BTreeMap<String, String>,
    seen: &Mutex<Seen>,
) -> Response {
    let path = request.path.as_str();
    if request.method == "PUT" && path == "/latest/api/token" {
        seen.lock().unwrap().token_requests += 1;
        return match mode {
            TokenMode::Issue => Response::ok(TOKEN)
                .header("X-aws-ec2-metadata-token-ttl-seconds", "21600")
                .header("Content-Type", "text/plain"),
            TokenMode::Refuse(status) => Response::status(status).body("no"),
        };
    }
    if request.header("x-aws-ec2-metadata-token") != Some(TOKEN) {
        // IMDSv2-only: a request without a session token is unauthorized. The fake still
        // counts it, so a test can prove the agent never tried the IMDSv1 way.
        seen.lock().unwrap().gets_without_token += 1;
        return Response::status(401);
    }
    seen.lock().unwrap().gets_with_token += 1;
    let listing = tags.keys().cloned().collect::<Vec<_>>().join("\n");
    match path {
        "/latest/meta-data/instance-id" => Response::ok(INSTANCE_ID),
        "/latest/meta-data/tags/instance" => Response::ok(listing),
        _ => match path
            .strip_prefix("/latest/meta-data/tags/instance/")
            .and_then(|k| tags.get(k))
        {
            Some(value) => Response::ok(value.clone()),
            None => Response::not_found(),
        },
    }
}

fn agent_on_imds(imds: &FakeImds, root: &std::path::Path, extra: &[&str]) -> std::process::Command {
    let mut args = vec!["--tags-from", "imds"];
    args.extend_from_slice(extra);
    let mut command = agent("render", "app", root, &args);
    command.env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.endpoint());
    command
}

#[test]
fn renders_from_imds_tags_with_a_session_token() {
    let imds = FakeImds::start(
        TokenMode::Issue,
        &[
            ("obstack:role", "app"),
            ("obstack:peer:loki", "10.0.2.7"),
            ("Name", "has spaces ok"),
        ],
    );
    let root = tempfile::tempdir().unwrap();
    let output = run(
        &mut agent_on_imds(&imds, root.path(), &[]),
        Duration::from_secs(60),
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let promtail = read(&root.path().join("etc/promtail/config.yaml"));
    assert!(
        promtail.contains("url: http://10.0.2.7:3100/"),
        "{promtail}"
    );
    assert!(
        promtail.contains(&format!("instance: {INSTANCE_ID}")),
        "id from IMDS: {promtail}"
    );
    let seen = imds.seen.lock().unwrap();
    assert!(seen.token_requests >= 1);
    assert!(
        seen.gets_with_token >= 4,
        "listing, instance id and each tag"
    );
    assert_eq!(
        seen.gets_without_token, 0,
        "every request must carry the token"
    );
}

#[test]
fn refuses_to_proceed_without_a_token() {
    for status in [403, 404] {
        let imds = FakeImds::start(
            TokenMode::Refuse(status),
            &[("obstack:peer:loki", "10.0.2.7")],
        );
        let root = tempfile::tempdir().unwrap();
        let extra = [
            "--wait-timeout",
            "0.3",
            "--min-delay",
            "0.1",
            "--max-delay",
            "0.1",
        ];
        let output = run(
            &mut agent_on_imds(&imds, root.path(), &extra),
            Duration::from_secs(60),
        );
        let log = stderr(&output);
        assert_eq!(
            output.status.code(),
            Some(6),
            "token status {status}: {log}"
        );
        assert!(log.contains("no IMDSv2 session token"), "{log}");
        assert!(!root.path().join("etc").exists(), "rendered without IMDSv2");
        let seen = imds.seen.lock().unwrap();
        assert!(
            seen.token_requests >= 1,
            "the agent must have asked for a token"
        );
        assert_eq!(
            seen.gets_without_token + seen.gets_with_token,
            0,
            "token status {status}: the agent fell back to IMDSv1"
        );
    }
}

#[test]
fn an_empty_tag_listing_waits_for_required_tags() {
    // A service that issues tokens but lists no tags.
    let imds = FakeImds::start(TokenMode::Issue, &[]);
    let root = tempfile::tempdir().unwrap();
    let extra = [
        "--wait-timeout",
        "0.2",
        "--min-delay",
        "0.1",
        "--max-delay",
        "0.1",
    ];
    let output = run(
        &mut agent_on_imds(&imds, root.path(), &extra),
        Duration::from_secs(60),
    );
    let log = stderr(&output);
    // An empty listing is a 200 with no keys: the agent then waits for the Loki tag.
    assert_eq!(output.status.code(), Some(3), "{log}");
    assert!(log.contains("obstack:peer:loki"), "{log}");
}
