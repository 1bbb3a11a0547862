//! A moto server (a real implementation of the EC2 and SSM APIs) on a free loopback port,
//! for `cargo xtask bench bake`, the README's smoke bake and the tests (through testkit).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// moto's built-in Canonical images (Ubuntu 16.04), standing in for the real base image.
pub const BASE_AMI_NAME: &str = "ubuntu/images/hvm-ssd/ubuntu-xenial-16.04-amd64-server-*";

/// How long moto may take to answer: about two seconds on an idle machine, many times that
/// while a whole test suite starts servers at once.
const STARTUP_DEADLINE: Duration = Duration::from_secs(90);

/// A running `moto_server`, stopped when dropped.
pub struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    /// Starts `moto_server -H 127.0.0.1 -p <free port>` and waits until it listens.
    pub fn start() -> anyhow::Result<Moto> {
        let program = crate::cmd::require_tool(
            "moto_server",
            "install it with `pip install 'moto[server]'`",
        )?;
        Moto::start_with(|port| {
            let mut command = Command::new(&program);
            command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            Ok(command)
        })
    }

    /// Starts the server `command(port)` describes (moto_server, or a launcher that sets it
    /// up first) on a free loopback port and waits until it answers.
    pub fn start_with(
        command: impl FnOnce(u16) -> anyhow::Result<Command>,
    ) -> anyhow::Result<Moto> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .context("cannot find a free loopback port")?
            .port();
        let child = command(port)?
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start moto_server")?;
        let mut moto = Moto { child, port };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .context("cannot build an HTTP client")?;
        let deadline = Instant::now() + STARTUP_DEADLINE;
        // moto's own dashboard endpoint answers once the server is up.
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err()
            || client
                .get(format!("{}/moto-api/", moto.endpoint()))
                .send()
                .is_err()
        {
            if let Ok(Some(status)) = moto.child.try_wait() {
                anyhow::bail!("moto_server exited before it answered ({status})");
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "moto_server did not answer on {addr} within {} s",
                STARTUP_DEADLINE.as_secs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(moto)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment that points the AWS SDKs, the AWS CLI, Packer and xtask at this
    /// server. An empty value means "remove the variable".
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
            // Never let a developer's own profile or IMDS leak in.
            ("AWS_PROFILE", String::new()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// Applies [`Moto::env`] to a command.
    pub fn apply_env<'a>(&self, command: &'a mut Command) -> &'a mut Command {
        for (key, value) in self.env() {
            if value.is_empty() {
                command.env_remove(key);
            } else {
                command.env(key, value);
            }
        }
        command
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
