//! A sandbox for running `cargo xtask bake` against moto: a copy of the images tree (so a
//! test can change a byte without touching the checkout), stand-in release binaries, its
//! own target directory and Packer home, and an EC2 client on the same moto.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::types::{Filter, Image, Tag};
use serde_json::Value;
use xtask::roles::Registry;

/// moto's built-in Canonical images stand in for Ubuntu 24.04.
pub const MOTO_BASE_AMI_NAME: &str = xtask::moto::BASE_AMI_NAME;

/// The role registry of the checkout's `images/` (the sandbox bakes a copy of it).
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        Registry::load(&testkit::workspace_root().join("images"))
            .unwrap_or_else(|e| panic!("the role registry: {e}"))
    })
}

/// Every role, in the registry's (start) order.
pub fn roles() -> Vec<&'static str> {
    registry().names()
}

pub struct Sandbox {
    pub moto: testkit::Moto,
    pub dir: tempfile::TempDir,
    pub runtime: tokio::runtime::Runtime,
    pub client: aws_sdk_ec2::Client,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox::on(testkit::Moto::start())
    }

    /// A sandbox on a moto that enforces IAM for `users` (name, policy document); the
    /// sandbox's own client and [`Sandbox::xtask`] use the admin's keys.
    pub fn enforcing(users: &[(&str, &str)]) -> Sandbox {
        Sandbox::on(testkit::Moto::start_enforcing(users))
    }

    fn on(moto: testkit::Moto) -> Sandbox {
        testkit::require_tool("packer");
        let dir = tempfile::tempdir().unwrap();
        copy_images(
            &testkit::workspace_root().join("images"),
            &dir.path().join("images"),
        );
        write_stand_in_binaries(&dir.path().join("artifacts"), registry());
        let env: BTreeMap<&str, String> = moto.env().into_iter().collect();
        let config = aws_sdk_ec2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(moto.endpoint())
            .credentials_provider(Credentials::new(
                &env["AWS_ACCESS_KEY_ID"],
                &env["AWS_SECRET_ACCESS_KEY"],
                None,
                None,
                "moto",
            ))
            .build();
        Sandbox {
            moto,
            dir,
            runtime: tokio::runtime::Runtime::new().unwrap(),
            client: aws_sdk_ec2::Client::from_conf(config),
        }
    }

    pub fn images(&self) -> PathBuf {
        self.dir.path().join("images")
    }

    /// `xtask ARGS` pointed at this sandbox.
    pub fn xtask(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
        self.moto.apply_env(&mut command);
        let home = self.dir.path().join("home");
        command
            .args(args)
            .env("OBSTACK_IMAGES_DIR", self.images())
            .env("OBSTACK_ARTIFACTS_DIR", self.dir.path().join("artifacts"))
            .env("OBSTACK_BASE_AMI_NAME", MOTO_BASE_AMI_NAME)
            .env("CARGO_TARGET_DIR", self.dir.path().join("target"))
            .env("HOME", &home)
            .env("PACKER_CACHE_DIR", home.join("packer-cache"))
            .env("PACKER_CONFIG_DIR", &home)
            .env("CHECKPOINT_DISABLE", "1")
            .env_remove("PACKER_LOG");
        command
    }

    /// `xtask ARGS` pointed at this sandbox, signed with the keys of moto user `user`.
    pub fn xtask_as(&self, user: &str, args: &[&str]) -> Command {
        let mut command = self.xtask(args);
        self.moto.apply_user_env(&mut command, user);
        command
    }

    /// Runs `xtask bake ARGS --json`, returning the output and the parsed summary.
    pub fn bake_json(&self, args: &[&str]) -> (Output, Value) {
        let mut all = vec!["bake", "--json"];
        all.extend_from_slice(args);
        let output = self.xtask(&all).output().unwrap();
        let summary = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("no JSON summary ({e}):\n{}", describe(&output)));
        (output, summary)
    }

    pub fn project_images(&self) -> Vec<Image> {
        self.runtime.block_on(async {
            self.client
                .describe_images()
                .owners("self")
                .filters(
                    Filter::builder()
                        .name("tag:obstack:project")
                        .values("obstack")
                        .build(),
                )
                .send()
                .await
                .unwrap()
                .images()
                .to_vec()
        })
    }

    /// Instances that are not terminated.
    pub fn live_instances(&self) -> usize {
        self.runtime.block_on(async {
            let out = self.client.describe_instances().send().await.unwrap();
            out.reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter(|i| {
                    i.state().and_then(|s| s.name()).map(|n| n.as_str()) != Some("terminated")
                })
                .count()
        })
    }

    /// Every instance ever launched (any state).
    pub fn all_instances(&self) -> usize {
        self.runtime.block_on(async {
            let out = self.client.describe_instances().send().await.unwrap();
            out.reservations().iter().map(|r| r.instances().len()).sum()
        })
    }

    /// Registers an AMI tagged like a baked one of `role` with `hash`.
    pub fn register(&self, role: &str, hash: &str, name: &str) -> String {
        self.runtime.block_on(async {
            let id = self
                .client
                .register_image()
                .name(name)
                .root_device_name("/dev/sda1")
                .send()
                .await
                .unwrap()
                .image_id()
                .unwrap()
                .to_string();
            tag_as_baked(&self.client, &id, role, hash).await;
            id
        })
    }
}

/// A stand-in for every workspace binary an image ships (`OBSTACK_ARTIFACTS_DIR`), so a
/// bake builds nothing.
pub fn write_stand_in_binaries(dir: &Path, registry: &Registry) {
    std::fs::create_dir_all(dir).unwrap();
    for binary in registry.workspace_binaries() {
        std::fs::write(dir.join(&binary), format!("stand-in {binary}")).unwrap();
    }
}

/// Tags AMI `id` as the bake tags one of `role` with `hash`.
pub async fn tag_as_baked(client: &aws_sdk_ec2::Client, id: &str, role: &str, hash: &str) {
    let tags = [
        ("obstack:project", "obstack"),
        ("obstack:role", role),
        ("obstack:input-hash", hash),
    ];
    client
        .create_tags()
        .resources(id)
        .set_tags(Some(
            tags.iter()
                .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
                .collect(),
        ))
        .send()
        .await
        .unwrap();
}

pub fn tags(image: &Image) -> BTreeMap<String, String> {
    image
        .tags()
        .iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_string(),
                t.value().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// role → (state, hash, ami) from a summary.
pub fn states(summary: &Value) -> BTreeMap<String, (String, String, Option<String>)> {
    summary["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["role"].as_str().unwrap().to_string(),
                (
                    r["state"].as_str().unwrap().to_string(),
                    r["input_hash"].as_str().unwrap_or_default().to_string(),
                    r["ami_id"].as_str().map(str::to_string),
                ),
            )
        })
        .collect()
}

pub fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Flips the last byte of a file.
pub fn flip_last_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(path, bytes).unwrap();
}

/// Copies what a bake reads: `versions.toml`, `plugins.pkr.hcl`, `common/` and the roles.
pub fn copy_images(from: &Path, to: &Path) {
    for entry in walkdir::WalkDir::new(from) {
        let entry = entry.unwrap();
        let relative = entry.path().strip_prefix(from).unwrap();
        let top = relative
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().to_string());
        if matches!(top.as_deref(), Some("agent" | "checks" | "target")) {
            continue;
        }
        let dest = to.join(relative);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
        } else if entry.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), &dest).unwrap();
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// An EC2 endpoint in front of moto on which no instance ever finishes booting: every
/// `DescribeInstances` answer shows `running` instances as `pending`. Packer's builder then
/// waits (cancellably) for its instance, so a test can interrupt a bake while every Packer is
/// mid-build, with an instance and a security group to clean up.
pub struct StallingEc2 {
    pub server: testkit::http::TestServer,
}

impl StallingEc2 {
    pub fn start(moto_endpoint: &str) -> StallingEc2 {
        use testkit::http::{Response, TestServer};
        let upstream = moto_endpoint.to_string();
        let client = reqwest::blocking::Client::new();
        let server = TestServer::start(move |request| {
            let mut forward = client.request(
                reqwest::Method::from_bytes(request.method.as_bytes()).unwrap(),
                format!("{upstream}{}", request.path),
            );
            for name in [
                "content-type",
                "authorization",
                "x-amz-date",
                "x-amz-target",
            ] {
                if let Some(value) = request.header(name) {
                    forward = forward.header(name, value);
                }
            }
            let answer = forward.body(request.body.clone()).send().unwrap();
            let status = answer.status().as_u16();
            let content_type = answer
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("text/xml")
                .to_string();
            let mut body = answer.text().unwrap();
            if is_action(&request.body, "DescribeInstances") {
                body = body
                    .replace("<code>16</code>", "<code>0</code>")
                    .replace("<name>running</name>", "<name>pending</name>");
            }
            Response::status(status)
                .header("Content-Type", &content_type)
                .body(body)
        });
        StallingEc2 { server }
    }

    pub fn endpoint(&self) -> &str {
        self.server.url()
    }
}

/// Whether an EC2 query-protocol request body (`Action=...&...`) is `action`.
fn is_action(body: &[u8], action: &str) -> bool {
    String::from_utf8_lossy(body)
        .split('&')
        .any(|pair| pair == format!("Action={action}"))
}
