//! `cargo xtask bench bake`: wall time of a no-op bake of the four roles, against a local
//! moto server (the goal is under 5 s: hashing, one AMI listing, no Packer).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// moto's built-in Canonical images (Ubuntu 16.04), standing in for the real base image.
const MOTO_BASE_AMI_NAME: &str = "ubuntu/images/hvm-ssd/ubuntu-xenial-16.04-amd64-server-*";

/// A moto server killed when dropped.
struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn bench() -> anyhow::Result<()> {
    let moto_bin = crate::cmd::require_tool(
        "moto_server",
        "install it with `pip install 'moto[server]'`",
    )?;
    crate::packer::check_installed()?;
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("cannot find a free loopback port")?
        .port();
    let _moto = Moto(
        Command::new(moto_bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start moto_server")?,
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "moto_server did not listen on {addr} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let bake = |label: &str| -> anyhow::Result<Duration> {
        let exe = std::env::current_exe().context("cannot find the xtask binary")?;
        let started = Instant::now();
        let output = Command::new(exe)
            .args(["bake", "--smoke", "--json"])
            .env("AWS_ENDPOINT_URL", format!("http://{addr}"))
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("OBSTACK_BASE_AMI_NAME", MOTO_BASE_AMI_NAME)
            .env_remove("AWS_PROFILE")
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("cannot run the {label} bake"))?;
        let elapsed = started.elapsed();
        anyhow::ensure!(output.status.success(), "the {label} bake failed");
        let summary: serde_json::Value = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("the {label} bake printed no JSON summary"))?;
        let states: Vec<&str> = summary["roles"]
            .as_array()
            .map(|roles| roles.iter().filter_map(|r| r["state"].as_str()).collect())
            .unwrap_or_default();
        eprintln!(
            "{label} bake: {:.2}s, states {states:?}",
            elapsed.as_secs_f64()
        );
        if label == "no-op" {
            anyhow::ensure!(
                states.len() == crate::project::ROLES.len()
                    && states.iter().all(|s| *s == "up-to-date"),
                "the second bake was not a no-op: {states:?}"
            );
        }
        Ok(elapsed)
    };
    bake("first")?;
    let noop = bake("no-op")?;
    println!(
        "bench bake: no-op bake of {} roles against moto: {:.2} s (goal < 5 s)",
        crate::project::ROLES.len(),
        noop.as_secs_f64()
    );
    Ok(())
}
