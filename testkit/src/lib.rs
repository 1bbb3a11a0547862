//! Fixtures shared by the workspace's integration tests.
//!
//! Tests that need third-party software (moto, promtool, packer, ...) call
//! [`require_tool`]: a missing tool is a test *failure* with an install hint, never a
//! silent skip, so CI cannot go green without having run them.

pub mod fake_ssm;
pub mod fake_terraform;
pub mod http;
pub mod iam;
pub mod services;

pub use fake_ssm::FakeSsm;
pub use fake_terraform::FakeTerraform;

/// Real block devices for the data-volume tests.
pub use xtask::loopdev;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use xtask::cargo_env::is_set_by_cargo_for_a_crate;

/// Returns the full path of `tool`, or panics with a message saying how to install it.
///
/// Panicking is right here: this runs only inside tests, and a missing tool must fail them.
pub fn require_tool(tool: &str) -> PathBuf {
    match find_on_path(tool) {
        Some(path) => path,
        None => panic!(
            "required test tool `{tool}` is not on PATH; run the README's test command \
             (scripts/test.sh) once to install every test dependency"
        ),
    }
}

/// Looks `tool` up on `PATH` like a shell would.
pub fn find_on_path(tool: &str) -> Option<PathBuf> {
    xtask::cmd::find_tool(tool)
}

/// Asks the kernel for a free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    listener
        .local_addr()
        .expect("local address of a bound socket")
        .port()
}

/// Polls until something accepts TCP connections on `addr`, or panics after `timeout`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listened on {addr} within {timeout:?}");
}

/// A moto server (a real EC2/SSM API implementation) on a free loopback port: xtask's
/// launcher, failing the test when it cannot start. It is killed when dropped, so every
/// test gets a fresh, empty AWS.
pub struct Moto {
    server: xtask::moto::Moto,
    /// With [`Moto::start_enforcing`]: the users' keys, and the decision log with its directory.
    iam: Option<Iam>,
}

struct Iam {
    keys: std::collections::BTreeMap<String, iam::Keys>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Moto {
    /// Starts `moto_server` and waits until it answers HTTP. Any credentials are accepted.
    pub fn start() -> Moto {
        Moto {
            server: started(xtask::moto::Moto::start()),
            iam: None,
        }
    }

    /// Starts moto enforcing IAM (see [`iam`]): each `(name, policy document)` becomes a
    /// user holding exactly that policy, with its own keys ([`Moto::user_env`]); every call
    /// is then allowed or refused by the policies of the user who signed it, SSM calls by
    /// the parameters they name, as in AWS. [`Moto::env`] hands out [`iam::ADMIN`]'s keys.
    pub fn start_enforcing(users: &[(&str, &str)]) -> Moto {
        let python = require_tool("python3");
        let dir = tempfile::tempdir().expect("a temporary directory for moto's launcher");
        let launcher = dir.path().join("moto_iam.py");
        std::fs::write(&launcher, iam::LAUNCHER).expect("write moto's launcher");
        let log = dir.path().join("decisions.jsonl");
        let server = started(xtask::moto::Moto::start_with(|port| {
            let mut command = Command::new(&python);
            command
                .arg(&launcher)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .env(
                    "INITIAL_NO_AUTH_ACTION_COUNT",
                    iam::setup_calls(users.len()).to_string(),
                )
                .env("OBSTACK_MOTO_IAM_LOG", &log);
            Ok(command)
        }));
        let keys = iam::create_users(&server.endpoint(), users);
        Moto {
            server,
            iam: Some(Iam {
                keys,
                log,
                _dir: dir,
            }),
        }
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// The endpoint URL, e.g. `http://127.0.0.1:41234`.
    pub fn endpoint(&self) -> String {
        self.server.endpoint()
    }

    /// Environment that points the AWS SDKs, the AWS CLI and Packer at this server, with
    /// credentials that may do anything (the admin's, when IAM is enforced).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        match &self.iam {
            Some(_) => self.user_env(iam::ADMIN),
            None => self.server.env(),
        }
    }

    /// [`Moto::env`] with the keys of `user` (of [`Moto::start_enforcing`]).
    pub fn user_env(&self, user: &str) -> Vec<(&'static str, String)> {
        let keys = self.keys(user);
        self.server
            .env()
            .into_iter()
            .map(|(name, value)| match name {
                "AWS_ACCESS_KEY_ID" => (name, keys.access_key_id.clone()),
                "AWS_SECRET_ACCESS_KEY" => (name, keys.secret_access_key.clone()),
                _ => (name, value),
            })
            .collect()
    }

    /// The keys of `user` (of [`Moto::start_enforcing`]).
    pub fn keys(&self, user: &str) -> iam::Keys {
        let iam = self
            .iam
            .as_ref()
            .expect("moto was started without IAM: use Moto::start_enforcing");
        iam.keys
            .get(user)
            .unwrap_or_else(|| panic!("no moto user {user}"))
            .clone()
    }

    /// Every authorization decision moto made so far (IAM enforced only), oldest first.
    pub fn decisions(&self) -> Vec<iam::Decision> {
        self.iam
            .as_ref()
            .map(|iam| iam::read_decisions(&iam.log))
            .unwrap_or_default()
    }

    /// Applies [`Moto::env`] to a command.
    pub fn apply_env<'a>(&self, command: &'a mut Command) -> &'a mut Command {
        apply(command, self.env())
    }

    /// Applies [`Moto::user_env`] to a command.
    pub fn apply_user_env<'a>(&self, command: &'a mut Command, user: &str) -> &'a mut Command {
        apply(command, self.user_env(user))
    }
}

fn started(result: anyhow::Result<xtask::moto::Moto>) -> xtask::moto::Moto {
    result.unwrap_or_else(|error| {
        panic!(
            "{}; run the README's test command (scripts/test.sh) once to install every \
             test dependency",
            xtask::report::one_line(&error)
        )
    })
}

/// Sets `env` on `command`; an empty value removes the variable.
fn apply<'a>(command: &'a mut Command, env: Vec<(&'static str, String)>) -> &'a mut Command {
    for (key, value) in env {
        if value.is_empty() {
            command.env_remove(key);
        } else {
            command.env(key, value);
        }
    }
    command
}

/// The workspace root (testkit lives one level below it).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| here.to_path_buf())
}

/// Builds (if needed) the debug binary `bin` of workspace package `package` and returns its
/// path. For tests in one crate that run another crate's binary (cargo only hands a crate
/// its own binaries through `CARGO_BIN_EXE_*`). Cargo releases its build lock before running
/// tests, so the nested build is safe.
///
/// It runs `cargo test --workspace --all-targets --no-run`, the suite's own build, so under the
/// suite it is a no-op. (`cargo build -p package --bin bin`, or even `cargo build
/// --all-targets`, resolves other features and rebuilds the AWS SDKs: minutes of CI for nothing.)
pub fn workspace_bin(package: &str, bin: &str) -> PathBuf {
    // Once per test process: tests that start many commands ask for the same binary often.
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, path)) = built
        .iter()
        .find(|(name, _)| name == &format!("{package}/{bin}"))
    {
        return path.clone();
    }
    let path = build_workspace_bin(package, bin);
    built.push((format!("{package}/{bin}"), path.clone()));
    path
}

fn build_workspace_bin(package: &str, bin: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let build = |args: &[&str]| {
        let mut command = Command::new(&cargo);
        // Not the variables cargo set for this test: ring's build script reruns when
        // CARGO_MANIFEST_DIR changes, which would rebuild the AWS SDKs twice per suite.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if is_set_by_cargo_for_a_crate(&name) {
                command.env_remove(name.as_ref());
            }
        }
        command
            .current_dir(workspace_root())
            .args(args)
            .status()
            .map(|status| status.success())
            .unwrap_or(false)
    };
    // While another crate is mid-edit the workspace may not build: fall back to the package.
    let built = build(&[
        "test",
        "--quiet",
        "--workspace",
        "--all-targets",
        "--no-run",
    ]) || build(&["build", "--quiet", "-p", package, "--bin", bin]);
    assert!(built, "cargo could not build {package}'s `{bin}` binary");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let path = target.join("debug").join(bin);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}
