//! The machine path (`xtask::tunnel::reach`, what deploy's health gate, the app-fleet gate,
//! `verify` and `status` use): a stack with no direct route is reached through Session
//! Manager tunnels (the stand-in AWS CLI and plugin, testkit::FakeSsm, forwarding to loopback
//! services), a published one that answers directly is not, `--tunnel` forces them, an
//! instance whose agent is not online yet is retried, and the tunnels close with the result:
//! when it is dropped, and when `status` is interrupted.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use testkit::http::{Response, TestServer};
use testkit::{FakeSsm, FakeTerraform};
use xtask::deploy::health::{self, Checker, StackEndpoints};
use xtask::roles::Registry;
use xtask::tunnel::reach::{reach, Route};
use xtask::tunnel::{Tools, TunnelError};

use crate::open::Aws;

/// Loopback stand-ins for Grafana, Prometheus and Loki, each answering its health path
/// (Prometheus also its targets: one, up).
struct Services {
    grafana: TestServer,
    prometheus: TestServer,
    loki: TestServer,
}

impl Services {
    fn start() -> Services {
        Services::answering_after(Duration::ZERO)
    }

    /// Each answers only after `delay`.
    fn answering_after(delay: Duration) -> Services {
        let slow = move |answer: fn(&str) -> Response| {
            TestServer::start(move |r| {
                std::thread::sleep(delay);
                answer(&r.path)
            })
        };
        Services {
            grafana: slow(|path| match path {
                "/api/health" => Response::ok(r#"{"database":"ok"}"#),
                _ => Response::not_found(),
            }),
            prometheus: slow(|path| match path {
                "/-/ready" => Response::ok("Prometheus Server is Ready."),
                "/api/v1/targets?state=active" => Response::ok(
                    r#"{"status":"success","data":{"activeTargets":[{"labels":{"job":"node","instance":"x"},"health":"up"}]}}"#,
                ),
                _ => Response::not_found(),
            }),
            loki: slow(|path| match path {
                "/ready" => Response::ok("ready"),
                _ => Response::not_found(),
            }),
        }
    }

    /// (role, loopback port) of each.
    fn ports(&self) -> [(&'static str, u16); 3] {
        [
            ("grafana", port_of(&self.grafana)),
            ("prometheus", port_of(&self.prometheus)),
            ("loki", port_of(&self.loki)),
        ]
    }
}

fn port_of(server: &TestServer) -> u16 {
    server.url().rsplit(':').next().unwrap().parse().unwrap()
}

const REMOTE_PORTS: [(&str, u16); 3] = [("grafana", 3000), ("prometheus", 9090), ("loki", 3100)];

fn instance(role: &str) -> String {
    format!("i-{role}0123456789")
}

/// A closed loopback port: where Terraform's public URLs point when there is no route.
fn closed_url() -> String {
    format!("http://127.0.0.1:{}", testkit::free_port())
}

/// Terraform's view: every role's URL unreachable, Grafana published (but not reachable
/// from here, like a runner outside allowed_web_cidrs), the others not published.
fn unreachable_stack() -> (StackEndpoints, BTreeMap<String, String>) {
    let stack = StackEndpoints {
        urls: REMOTE_PORTS
            .iter()
            .map(|(role, _)| (role.to_string(), closed_url()))
            .collect(),
        exposed: REMOTE_PORTS
            .iter()
            .map(|(role, _)| (role.to_string(), *role == "grafana"))
            .collect(),
        grafana_auth: None,
    };
    let instances = REMOTE_PORTS
        .iter()
        .map(|(role, _)| (role.to_string(), instance(role)))
        .collect();
    (stack, instances)
}

/// (instance, port on it, loopback port standing in for it) of every role, `ids` giving the
/// instance of each.
fn forwards(ids: &BTreeMap<String, String>, services: &Services) -> Vec<(String, u16, u16)> {
    REMOTE_PORTS
        .iter()
        .zip(services.ports())
        .map(|((role, remote), (_, local))| (ids[*role].clone(), *remote, local))
        .collect()
}

fn install(dir: &std::path::Path, forwards: &[(String, u16, u16)]) -> FakeSsm {
    let forwards: Vec<(&str, u16, u16)> = forwards
        .iter()
        .map(|(id, remote, local)| (id.as_str(), *remote, *local))
        .collect();
    FakeSsm::install(dir, &forwards)
}

fn targets(fake: &FakeSsm) -> Vec<String> {
    let mut targets: Vec<String> = fake
        .sessions()
        .iter()
        .map(|s| s["Target"].as_str().unwrap().to_string())
        .collect();
    targets.sort();
    targets
}

#[test]
fn a_stack_without_a_route_is_reached_through_tunnels_that_close_with_it() {
    let scratch = tempfile::tempdir().unwrap();
    let services = Services::start();
    let registry = Registry::load_default().unwrap();
    let (stack, instances) = unreachable_stack();
    let forwards = forwards(&instances, &services);
    let fake = install(scratch.path(), &forwards);
    // Loki's agent is not online for the first attempt (a new instance still registering).
    let borrowed: Vec<(&str, u16, u16)> = forwards
        .iter()
        .map(|(id, remote, local)| (id.as_str(), *remote, *local))
        .collect();
    fake.configure(&borrowed, &[(&instance("loki"), 1)]);
    let tools = || Tools::search(&fake.path());

    let mut reached = reach(
        &registry,
        &stack,
        &instances,
        "us-east-1",
        Route::Auto,
        tools,
        Instant::now() + Duration::from_secs(90),
    )
    .unwrap();
    let mut expected: Vec<String> = REMOTE_PORTS.iter().map(|(r, _)| instance(r)).collect();
    expected.sort();
    assert_eq!(
        targets(&fake),
        expected,
        "one tunnel per role that runs as one instance"
    );
    assert_eq!(
        fake.aws_calls()
            .iter()
            .filter(|call| call.contains(&instance("loki")))
            .count(),
        2,
        "Loki's session was retried once its agent came online"
    );
    for (role, remote) in REMOTE_PORTS {
        let url = &reached.endpoints.urls[role];
        assert!(url.starts_with("http://127.0.0.1:"), "{role}: {url}");
        assert!(reached.endpoints.exposed[role], "{role}");
        assert!(
            reached.routes[role].starts_with(&format!("tunnel to {}", instance(role))),
            "{role}: {}",
            reached.routes[role]
        );
        let session = fake
            .sessions()
            .into_iter()
            .find(|s| s["Target"] == instance(role))
            .unwrap();
        assert_eq!(
            session["Parameters"]["portNumber"],
            json!([remote.to_string()])
        );
    }
    // The health checks pass through them.
    let checks = health::stack_checks(&reached.endpoints);
    let outcomes = Checker::new(Duration::from_secs(5))
        .unwrap()
        .run_all(&checks);
    assert_eq!(
        outcomes.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(),
        [
            "prometheus /-/ready",
            "prometheus targets up",
            "loki /ready",
            "grafana /api/health"
        ]
    );
    assert!(outcomes.iter().all(|o| o.healthy), "{outcomes:?}");
    assert_eq!(reached.ended_tunnels(), None);

    // Dropping the result ends every session and frees every port.
    let ports: Vec<u16> = reached.tunnels().iter().map(|t| t.local_port()).collect();
    drop(reached);
    let mut ended: Vec<u16> = fake.terminated().iter().map(|(_, port)| *port).collect();
    ended.sort();
    let mut opened = ports.clone();
    opened.sort();
    assert_eq!(ended, opened);
    assert!(fake
        .terminated()
        .iter()
        .all(|(signal, _)| signal == "SIGINT"));
    for port in ports {
        assert!(
            TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} still taken"
        );
    }
}

#[test]
fn a_published_ui_that_answers_is_reached_directly_unless_tunnels_are_forced() {
    let scratch = tempfile::tempdir().unwrap();
    let services = Services::start();
    let registry = Registry::load_default().unwrap();
    let (mut stack, instances) = unreachable_stack();
    let fake = install(scratch.path(), &forwards(&instances, &services));
    stack
        .urls
        .insert("grafana".into(), services.grafana.url().to_string());
    let deadline = || Instant::now() + Duration::from_secs(60);

    let reached = reach(
        &registry,
        &stack,
        &instances,
        "us-east-1",
        Route::Auto,
        || Tools::search(&fake.path()),
        deadline(),
    )
    .unwrap();
    assert_eq!(reached.endpoints.urls["grafana"], services.grafana.url());
    assert_eq!(reached.routes["grafana"], services.grafana.url());
    assert_eq!(
        targets(&fake),
        [instance("loki"), instance("prometheus")],
        "only the unpublished roles get a tunnel"
    );
    drop(reached);

    let forced = reach(
        &registry,
        &stack,
        &instances,
        "us-east-1",
        Route::Tunnel,
        || Tools::search(&fake.path()),
        deadline(),
    )
    .unwrap();
    assert!(forced.endpoints.urls["grafana"].starts_with("http://127.0.0.1:"));
    assert_ne!(forced.endpoints.urls["grafana"], services.grafana.url());
    assert!(targets(&fake).contains(&instance("grafana")));
    drop(forced);

    // Without the tools: forced is an error naming what is missing; automatic keeps what
    // Terraform published, as before tunnels existed.
    let missing = || {
        Err(TunnelError::MissingTools(
            "`aws` (the AWS CLI) is not on PATH".into(),
        ))
    };
    let error = reach(
        &registry,
        &stack,
        &instances,
        "us-east-1",
        Route::Tunnel,
        missing,
        deadline(),
    )
    .err()
    .unwrap();
    assert!(error.to_string().contains("`aws` (the AWS CLI)"), "{error}");
    let unchanged = reach(
        &registry,
        &stack,
        &instances,
        "us-east-1",
        Route::Auto,
        missing,
        deadline(),
    )
    .unwrap();
    assert_eq!(unchanged.endpoints.urls, stack.urls);
    assert!(unchanged.tunnels().is_empty());
}

/// `xtask status` of a stack Terraform (the stand-in) says is deployed on moto's instances,
/// whose UIs are published nowhere; the stand-in AWS CLI and plugin on `PATH`.
fn status_command(
    aws: &Aws,
    fake: &FakeSsm,
    terraform: &FakeTerraform,
    target_dir: &std::path::Path,
    args: &[&str],
) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    aws.moto.apply_env(&mut command);
    terraform.apply_env(&mut command);
    let path = std::env::join_paths(
        std::iter::once(terraform.bin_dir().to_path_buf())
            .chain(std::env::split_paths(&fake.path())),
    )
    .unwrap();
    command
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", target_dir)
        .args(["status", "--region", "us-east-1"])
        .args(args);
    command
}

fn deployed(aws: &Aws, dir: &std::path::Path) -> (BTreeMap<String, String>, FakeTerraform) {
    let ids: BTreeMap<String, String> = REMOTE_PORTS
        .iter()
        .map(|(role, _)| {
            (
                role.to_string(),
                aws.launch("obstack", role, 1, &[])[0].clone(),
            )
        })
        .collect();
    let outputs = json!({
        "instance_ids": {"value": ids},
        "urls": {"value": REMOTE_PORTS.iter().map(|(r, _)| (r.to_string(), closed_url())).collect::<BTreeMap<_, _>>()},
        "exposed": {"value": REMOTE_PORTS.iter().map(|(r, _)| (r.to_string(), false)).collect::<BTreeMap<_, _>>()},
        "public_services": {"value": {}},
    });
    (ids, FakeTerraform::install_with_outputs(dir, &outputs))
}

#[test]
fn status_checks_a_stack_without_open_ports_through_tunnels_and_says_how_each_ui_is_reached() {
    let aws = Aws::start();
    let scratch = tempfile::tempdir().unwrap();
    let services = Services::start();
    let (ids, terraform) = deployed(&aws, scratch.path());
    let fake = install(scratch.path(), &forwards(&ids, &services));

    let output = status_command(&aws, &fake, &terraform, &scratch.path().join("target"), &[])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for check in [
        "prometheus /-/ready",
        "prometheus targets up",
        "loki /ready",
        "grafana /api/health",
    ] {
        let row = stdout
            .lines()
            .find(|l| l.contains(check))
            .unwrap_or_else(|| panic!("no {check} row:\n{stdout}"));
        assert!(row.trim_start().starts_with("ok "), "{row}");
    }
    for ui in ["grafana", "prometheus", "alertmanager", "loki", "app"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(ui) && l.contains(&format!("cargo xtask open {ui}"))),
            "{ui} is reached by a tunnel:\n{stdout}"
        );
    }
    assert_eq!(fake.sessions().len(), 3, "{stderr}");
    assert_eq!(
        fake.terminated().len(),
        3,
        "every tunnel closed when status ended"
    );
}

#[test]
fn ctrl_c_during_status_closes_its_tunnels() {
    let aws = Aws::start();
    let scratch = tempfile::tempdir().unwrap();
    let services = Services::answering_after(Duration::from_secs(30));
    let (ids, terraform) = deployed(&aws, scratch.path());
    let forwards = forwards(&ids, &services);
    let fake = install(scratch.path(), &forwards);
    // Grafana's agent stays offline: status keeps asking for its tunnel (for two minutes),
    // the other two open, when Ctrl-C comes. A window that long holds on a loaded machine,
    // where the few seconds of status's checks may pass before this test gets to run.
    let refs: Vec<(&str, u16, u16)> = forwards
        .iter()
        .map(|(id, remote, local)| (id.as_str(), *remote, *local))
        .collect();
    let grafana = ids["grafana"].as_str();
    fake.configure(&refs, &[(grafana, -1)]);

    let mut child = status_command(
        &aws,
        &fake,
        &terraform,
        &scratch.path().join("target"),
        &["--tunnel"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while fake.sessions().len() < 2
        || !fake
            .aws_calls()
            .iter()
            .any(|call| call.iter().any(|arg| arg == grafana))
    {
        assert!(
            Instant::now() < deadline,
            "status did not open two tunnels and ask for Grafana's"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    // The two open tunnels, and the attempt for Grafana's when it was still in flight.
    assert!(
        stderr.contains("interrupted: closed 2 Session Manager tunnels")
            || stderr.contains("interrupted: closed 3 Session Manager tunnels"),
        "{stderr}"
    );
    // Both plugins that listened ended their sessions (Grafana's never started one).
    let ended = fake.terminated();
    assert_eq!(ended.len(), 2, "{stderr}");
    for (_, port) in ended {
        assert!(
            TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} still taken"
        );
    }
}
