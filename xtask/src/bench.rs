//! `cargo xtask bench`: performance figures, printed (never asserted in tests).

mod app;
mod boot;
mod loadgen;
mod mount;
mod wrk;

use crate::cli::{BenchArgs, BenchTarget};

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.roles.is_empty() || matches!(args.target, BenchTarget::Boot),
        "--role picks the roles of `cargo xtask bench boot` only; drop it"
    );
    match args.target {
        BenchTarget::App => app::run(args.duration, args.rounds as usize),
        BenchTarget::Bake => crate::bake::bench(),
        BenchTarget::Mount => mount::run(args.rounds as usize),
        BenchTarget::Boot => boot::run(&args.roles),
    }
}

/// One load run's figures.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}
