//! `cargo xtask`: the operator's commands. This file only dispatches; each command
//! lives in its own module with a `run` function, and the CLI shape lives in `cli.rs`.

mod ami;
mod bake;
mod bench;
mod cargo_env;
mod cli;
mod cmd;
mod deploy;
mod hash;
mod images;
mod packer;
mod pin;
mod project;
mod prune;
mod up;
mod versions;

use clap::Parser;
use cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(args) => bench::run(args),
        Command::Bake(args) => bake::run(args),
        Command::Images(args) => images::run(args),
        Command::Prune(args) => prune::run(args),
        Command::Pin(args) => pin::run(args),
        Command::Deploy(args) => deploy::run_deploy(args),
        Command::Destroy(args) => deploy::run_destroy(args),
        Command::Status(args) => deploy::run_status(args),
        Command::Up(args) => up::run_up(args),
        Command::Down(args) => up::run_down(args),
        Command::Ps(args) => up::run_ps(args),
    };
    if let Err(error) = result {
        // One line for the reason chain, so the user sees what failed and why at a glance.
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
