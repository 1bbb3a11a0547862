//! `cargo xtask`: the operator's commands. This file only parses and dispatches; each
//! command lives in its own module of the `xtask` library, and the CLI shape in `cli.rs`.

use clap::Parser;
use xtask::cli::ReleaseCommand;
use xtask::cli::{Cli, Command};
use xtask::{bake, bench, deploy, images, pin, prune, release, report, restore, up};

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(args) => bench::run(args),
        Command::Bake(args) => bake::run(args),
        Command::Images(args) => images::run(args),
        Command::Prune(args) => prune::run(args),
        Command::Pin(args) => pin::run(args),
        Command::Deploy(args) => deploy::run_deploy(args),
        Command::Destroy(args) => deploy::destroy::run(args),
        Command::Restore(args) => restore::run(args),
        Command::Status(args) => deploy::run_status(args),
        Command::Up(args) => up::run_up(args),
        Command::Down(args) => up::run_down(args),
        Command::Ps(args) => up::run_ps(args),
        Command::Release(args) => match args.command {
            ReleaseCommand::Create(args) => release::run_create(args),
        },
        Command::Releases(args) => release::run_list(args),
        Command::Promote(args) => release::run_promote(args),
        Command::Rollback(args) => release::run_rollback(args),
        Command::Verify(args) => xtask::verify::run(args),
        Command::Open(args) => xtask::open::run(args),
    };
    if let Err(error) = result {
        eprintln!("error: {}", report::one_line(&error));
        std::process::exit(1);
    }
}
