//! `cargo xtask open` against moto (the stack's instances, found by their tags) with the
//! stand-in AWS CLI and Session Manager plugin on PATH (testkit::FakeSsm), which record what
//! they are asked and forward the local port to a loopback server standing in for the UI.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use testkit::http::{Response, TestServer};
use testkit::FakeSsm;

const STACK: &str = "team-a";
const PASSWORD_PARAMETER: &str = "/obstack/team-a/grafana/admin-password";

/// moto with a few instances of two stacks.
pub struct Aws {
    pub moto: testkit::Moto,
    runtime: tokio::runtime::Runtime,
    client: aws_sdk_ec2::Client,
    image: String,
}

impl Aws {
    pub fn start() -> Aws {
        let moto = testkit::Moto::start();
        let config = aws_sdk_ec2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(moto.endpoint())
            .credentials_provider(Credentials::new("test", "test", None, None, "moto"))
            .build();
        let client = aws_sdk_ec2::Client::from_conf(config);
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let image = runtime.block_on(async {
            let images = client
                .describe_images()
                .owners("amazon")
                .send()
                .await
                .unwrap();
            images.images()[0].image_id().unwrap().to_string()
        });
        Aws {
            moto,
            runtime,
            client,
            image,
        }
    }

    /// Launches `count` instances tagged as `role` of `stack` (plus `extra` tags); their ids.
    pub fn launch(
        &self,
        stack: &str,
        role: &str,
        count: i32,
        extra: &[(&str, &str)],
    ) -> Vec<String> {
        let mut tags = TagSpecification::builder().resource_type(ResourceType::Instance);
        for (key, value) in [("obstack:deployment", stack), ("obstack:role", role)]
            .iter()
            .chain(extra)
        {
            tags = tags.tags(Tag::builder().key(*key).value(*value).build());
        }
        self.runtime.block_on(async {
            let run = self
                .client
                .run_instances()
                .image_id(&self.image)
                .min_count(count)
                .max_count(count)
                .tag_specifications(tags.build())
                .send()
                .await
                .unwrap();
            let mut ids: Vec<String> = run
                .instances()
                .iter()
                .map(|i| i.instance_id().unwrap().to_string())
                .collect();
            ids.sort();
            ids
        })
    }

    pub fn stop(&self, id: &str) {
        self.runtime.block_on(async {
            self.client
                .stop_instances()
                .instance_ids(id)
                .send()
                .await
                .unwrap();
        });
    }
}

fn xtask(aws: &Aws, fake: &FakeSsm, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    aws.moto.apply_env(&mut command);
    fake.apply_env(&mut command);
    command.args(args);
    command
}

/// A running `xtask open` whose first stdout line (the URL) has been read.
struct Opened {
    child: Child,
    url: String,
    port: u16,
    stderr: mpsc::Receiver<String>,
}

/// Starts `command` and waits for the URL it prints, failing with its stderr if it exits.
fn open(mut command: Command) -> Opened {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (line_tx, line_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = line_tx.send(lines.next().and_then(Result::ok));
        for _ in lines {}
    });
    let (err_tx, err_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        let _ = err_tx.send(text);
    });
    let line = line_rx.recv_timeout(Duration::from_secs(90)).ok().flatten();
    let Some(url) = line else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "xtask open printed no URL:\n{}",
            err_rx
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_default()
        );
    };
    let port = url
        .strip_prefix("http://127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("not a loopback URL: {url:?}"));
    Opened {
        child,
        url,
        port,
        stderr: err_rx,
    }
}

impl Opened {
    /// Ctrl-C, as a terminal sends it; the exit status and stderr.
    fn interrupt(mut self) -> (std::process::ExitStatus, String) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("xtask open did not end within 20 s of Ctrl-C");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stderr = self
            .stderr
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_default();
        (status, stderr)
    }
}

/// Runs `command`, which must end by itself (a refusal) within a minute: one that opened a
/// tunnel instead would wait for Ctrl-C, so it is killed and the test fails.
fn refused_within(mut command: Command) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "the command did not refuse: it was still running after a minute\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// The single error line, after checking the command failed.
fn error_line(output: &Output) -> String {
    assert!(!output.status.success(), "the command succeeded");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr
        .lines()
        .rfind(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no `error:` line in:\n{stderr}"))
        .to_string();
    assert_eq!(
        stderr.lines().rfind(|l| !l.trim().is_empty()),
        Some(line.as_str()),
        "the error is the last line"
    );
    line
}

/// A loopback stand-in for Grafana's HTTP API.
fn grafana() -> TestServer {
    TestServer::start(|request| match request.path.as_str() {
        "/api/health" => Response::ok(r#"{"database":"ok","version":"stand-in"}"#),
        _ => Response::not_found(),
    })
}

fn server_port(server: &TestServer) -> u16 {
    server.url().rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn open_grafana_tunnels_to_the_stacks_grafana_until_ctrl_c_and_frees_the_port() {
    let aws = Aws::start();
    let scratch = tempfile::tempdir().unwrap();
    let ours = aws.launch(
        STACK,
        "grafana",
        1,
        &[("obstack:grafana-admin-password-param", PASSWORD_PARAMETER)],
    )[0]
    .clone();
    let theirs = aws.launch("team-b", "grafana", 1, &[])[0].clone();
    aws.launch(STACK, "prometheus", 1, &[]);
    let server = grafana();
    let fake = FakeSsm::install(
        scratch.path(),
        &[(&ours, 3000, server_port(&server)), (&theirs, 3000, 1)],
    );

    // `--port`: a port of this test's choosing (Grafana's own 3000, the default when free,
    // may be the local stack's in a parallel test).
    let chosen = testkit::free_port();
    let opened = open(xtask(
        &aws,
        &fake,
        &[
            "open",
            "grafana",
            "--stack",
            STACK,
            "--port",
            &chosen.to_string(),
        ],
    ));
    assert_eq!(opened.port, chosen, "{}", opened.url);
    // The printed URL answers: it is Grafana's port 3000 on our stack's instance.
    let health = reqwest::blocking::get(format!("{}/api/health", opened.url)).unwrap();
    assert_eq!(health.status().as_u16(), 200);
    assert!(health.text().unwrap().contains("stand-in"));
    assert_eq!(
        fake.sessions(),
        [serde_json::json!({
            "Target": ours,
            "DocumentName": "AWS-StartPortForwardingSession",
            "Parameters": {"portNumber": ["3000"], "localPortNumber": [opened.port.to_string()]},
        })]
    );
    let call = &fake.aws_calls()[0];
    assert_eq!(&call[..2], ["ssm", "start-session"]);
    let region = call.iter().position(|a| a == "--region").unwrap();
    assert_eq!(call[region + 1], "us-east-1");

    let port = opened.port;
    let (status, stderr) = opened.interrupt();
    assert!(
        status.success(),
        "Ctrl-C is how `open` ends: {status}\n{stderr}"
    );
    assert!(stderr.contains("tunnel closed"), "{stderr}");
    // How to read the admin password, from the parameter Grafana's instance names.
    assert!(
        stderr.contains(&format!(
            "aws ssm get-parameter --region us-east-1 --with-decryption --name {PASSWORD_PARAMETER}"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("Log in as `admin`"), "{stderr}");
    // The plugin ended its session on SIGINT, and the port is free again.
    assert_eq!(fake.terminated(), [("SIGINT".to_string(), port)]);
    assert!(port_is_free(port), "port {port} is still taken");
}

#[test]
fn open_app_takes_a_running_fleet_instance_of_the_stack_or_the_one_asked_for() {
    let aws = Aws::start();
    let scratch = tempfile::tempdir().unwrap();
    let fleet = aws.launch(STACK, "app", 3, &[]);
    aws.stop(&fleet[0]);
    let other_stack = aws.launch("team-b", "app", 1, &[])[0].clone();
    let app = TestServer::start(|_| Response::ok("demo app"));
    let forwards: Vec<(&str, u16, u16)> = fleet
        .iter()
        .map(|id| (id.as_str(), 5000, server_port(&app)))
        .collect();
    let fake = FakeSsm::install(scratch.path(), &forwards);
    let target = |n: usize| fake.sessions()[n]["Target"].as_str().unwrap().to_string();

    // The best running one: both pass their checks and launched together, so the first id.
    let opened = open(xtask(&aws, &fake, &["open", "app", "--stack", STACK]));
    assert_eq!(
        reqwest::blocking::get(&opened.url).unwrap().text().unwrap(),
        "demo app"
    );
    assert!(opened.interrupt().0.success());
    assert_eq!(
        target(0),
        fleet[1],
        "not the stopped one, not another stack's"
    );

    let opened = open(xtask(
        &aws,
        &fake,
        &["open", "app", "--stack", STACK, "--instance", &fleet[2]],
    ));
    assert!(opened.interrupt().0.success());
    assert_eq!(target(1), fleet[2]);

    // A stopped instance, or another stack's, is refused before any session starts.
    for refused in [&fleet[0], &other_stack] {
        let output = refused_within(xtask(
            &aws,
            &fake,
            &["open", "app", "--stack", STACK, "--instance", refused],
        ));
        let line = error_line(&output);
        assert!(
            line.contains(&format!(
                "{refused} is not a running app instance of the stack {STACK}; running: {}, {}",
                fleet[1], fleet[2]
            )),
            "{line}"
        );
    }
    assert_eq!(fake.sessions().len(), 2);

    // A stack with nothing running says so.
    let output = refused_within(xtask(&aws, &fake, &["open", "loki", "--stack", STACK]));
    assert!(
        error_line(&output).contains("has no running loki instance"),
        "{}",
        error_line(&output)
    );
}

/// A directory holding only the named programs (each a no-op), for a `PATH` lacking others.
fn only(dir: &Path, programs: &[&str]) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join(programs.join("+"));
    std::fs::create_dir_all(&bin).unwrap();
    for program in programs {
        let path = bin.join(program);
        std::fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

#[test]
fn open_without_the_aws_cli_or_the_plugin_says_which_to_install_in_one_line() {
    let scratch = tempfile::tempdir().unwrap();
    for (present, missing, install) in [
        (
            &["session-manager-plugin"][..],
            "`aws` (the AWS CLI) is not on PATH",
            "https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html",
        ),
        (
            &["aws"][..],
            "`session-manager-plugin` is not on PATH",
            "https://docs.aws.amazon.com/systems-manager/latest/userguide/session-manager-working-with-install-plugin.html",
        ),
        (&[][..], "neither `aws` (the AWS CLI) nor `session-manager-plugin`", "install AWS CLI v2"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["open", "grafana"])
            .env("PATH", only(scratch.path(), present))
            // A closed port: a command that called AWS would fail differently.
            .env(
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", testkit::free_port()),
            )
            .env("AWS_REGION", "us-east-1")
            .output()
            .unwrap();
        let line = error_line(&output);
        assert!(line.contains(missing), "{present:?}: {line}");
        assert!(line.contains(install), "{present:?}: {line}");
    }
}

#[test]
fn open_on_a_port_in_use_says_so_and_opens_nothing() {
    let aws = Aws::start();
    let scratch = tempfile::tempdir().unwrap();
    let grafana = aws.launch(STACK, "grafana", 1, &[])[0].clone();
    let fake = FakeSsm::install(scratch.path(), &[(&grafana, 3000, 1)]);
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();

    let output = refused_within(xtask(
        &aws,
        &fake,
        &[
            "open",
            "grafana",
            "--stack",
            STACK,
            "--port",
            &port.to_string(),
        ],
    ));
    let line = error_line(&output);
    assert!(
        line.contains(&format!("port {port} on 127.0.0.1 is in use")) && line.contains("--port"),
        "{line}"
    );
    assert!(fake.sessions().is_empty(), "a session was started");
}

#[test]
fn open_an_unknown_ui_lists_the_ones_there_are() {
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["open", "kibana"])
        .output()
        .unwrap();
    let line = error_line(&output);
    assert!(line.contains("`kibana` is not a UI of the stack"), "{line}");
    for ui in ["grafana", "prometheus", "alertmanager", "loki", "app"] {
        assert!(line.contains(ui), "{line}");
    }
}
