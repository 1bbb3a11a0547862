//! `cargo xtask bench bake`: wall time of a no-op bake of every role, against a local moto
//! server (the goal is under 5 s: hashing, one AMI listing, no Packer).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::moto::Moto;
use crate::roles::Registry;

pub fn bench() -> anyhow::Result<()> {
    let roles = Registry::load_default()?.roles().len();
    crate::packer::check_installed()?;
    let moto = Moto::start()?;

    let bake = |label: &str| -> anyhow::Result<Duration> {
        let exe = std::env::current_exe().context("cannot find the xtask binary")?;
        let started = Instant::now();
        let mut command = Command::new(exe);
        moto.apply_env(&mut command)
            .args(["bake", "--smoke", "--json"])
            .env("OBSTACK_BASE_AMI_NAME", crate::moto::BASE_AMI_NAME)
            .stderr(Stdio::inherit());
        let output = command
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
            "{label} bake: {:.2}s, states: {}",
            elapsed.as_secs_f64(),
            states.join(", ")
        );
        if label == "no-op" {
            anyhow::ensure!(
                states.len() == roles && states.iter().all(|s| *s == "up-to-date"),
                "the second bake was not a no-op (states: {})",
                states.join(", ")
            );
        }
        Ok(elapsed)
    };
    bake("first")?;
    let noop = bake("no-op")?;
    println!(
        "bench bake: no-op bake of {roles} roles against moto: {:.2} s (goal < 5 s)",
        noop.as_secs_f64()
    );
    Ok(())
}
