//! Running Packer 1.6.6 in tests: a sealed environment (no phoning home, no user config, a
//! throwaway cache), and var files shaped exactly like the ones `cargo xtask bake` writes.
//!
//! Each test binary uses only part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

/// Every role the template builds.
pub const ROLES: [&str; 4] = ["app", "prometheus", "loki", "grafana"];

/// `images/` in the checkout.
pub fn images_dir() -> PathBuf {
    testkit::workspace_root().join("images")
}

/// The directory of the one Packer template, as `cargo xtask bake` passes it to Packer.
pub fn template_dir() -> PathBuf {
    images_dir().join("common/packer")
}

/// A `packer` command that cannot reach the network on its own and ignores the developer's
/// own Packer settings: HOME and the plugin cache point into `sandbox`.
pub fn packer(sandbox: &Path) -> Command {
    let mut command = Command::new(testkit::require_tool("packer"));
    command
        .env("HOME", sandbox)
        .env("PACKER_CACHE_DIR", sandbox.join("cache"))
        .env("PACKER_CONFIG_DIR", sandbox)
        .env("CHECKPOINT_DISABLE", "1")
        .env("PACKER_LOG", "0")
        .env_remove("PACKER_LOG_PATH")
        .env_remove("AWS_PROFILE");
    command
}

/// Runs `command`, returning its output; the panic message shows what ran and what it said.
pub fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"))
}

pub fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// One component of images/versions.toml, as far as the var file needs it.
#[derive(Debug, serde::Deserialize)]
pub struct Component {
    pub version: String,
    pub roles: Vec<String>,
    pub url: String,
    pub sha256: BTreeMap<String, String>,
}

#[derive(Debug, serde::Deserialize)]
struct Manifest {
    components: BTreeMap<String, Component>,
}

/// The components `role` ships, by name, from the checked-in manifest.
pub fn components_for(role: &str) -> BTreeMap<String, Component> {
    let text = std::fs::read_to_string(images_dir().join("versions.toml")).unwrap();
    let manifest: Manifest = toml::from_str(&text).unwrap();
    manifest
        .components
        .into_iter()
        .filter(|(_, component)| component.roles.iter().any(|r| r == role))
        .collect()
}

/// A var file for `role` with every variable the bake passes (images/README.md), built from
/// the real versions manifest, plus `extra` on top. The artifacts directory holds stand-in
/// binaries: validate and the smoke source never run them.
pub fn write_var_file(dir: &Path, role: &str, input_hash: &str, extra: Value) -> PathBuf {
    let artifacts = dir.join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    for binary in ["demo-app", "stack-agent"] {
        std::fs::write(artifacts.join(binary), "#!/bin/sh\n").unwrap();
    }
    let components = components_for(role);
    let versions: BTreeMap<_, _> = components.iter().map(|(n, c)| (n, &c.version)).collect();
    let urls: BTreeMap<_, _> = components
        .iter()
        .map(|(n, c)| {
            (
                n,
                c.url
                    .replace("{version}", &c.version)
                    .replace("{arch}", "amd64"),
            )
        })
        .collect();
    let sums: BTreeMap<_, _> = components
        .iter()
        .map(|(n, c)| (n, &c.sha256["amd64"]))
        .collect();
    let shipped = if role == "app" {
        vec!["demo-app", "stack-agent"]
    } else {
        vec!["stack-agent"]
    };
    let mut vars = json!({
        "role": role,
        "artifacts": shipped,
        "region": "us-east-1",
        "input_hash": input_hash,
        "git_revision": "0123456789abcdef0123456789abcdef01234567",
        "artifacts_dir": artifacts,
        "component_versions": versions,
        "component_urls": urls,
        "component_sha256": sums,
        "manifest_path": dir.join(format!("{role}-manifest.json")),
    });
    if let (Some(vars), Value::Object(extra)) = (vars.as_object_mut(), extra) {
        vars.extend(extra);
    }
    let path = dir.join(format!("{role}.pkrvars.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&vars).unwrap()).unwrap();
    path
}

/// A distinct, valid input hash per role, so tests can tell the AMIs apart.
pub fn sample_hash(role: &str) -> String {
    let digit = match role {
        "app" => 'a',
        "prometheus" => 'b',
        "loki" => 'c',
        _ => 'd',
    };
    std::iter::repeat_n(digit, 64).collect()
}
