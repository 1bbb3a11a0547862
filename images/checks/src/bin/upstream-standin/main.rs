//! `upstream-standin`: small stand-ins for the upstream programs that cannot be installed on
//! the test machine (Loki, Promtail, Grafana), for the VMs that boot the golden images
//! (images/README.md, "Booting the images"). Installed under the real program's name, it
//! acts as that program, which it finds in its own name (`loki`, `loki-linux-amd64`,
//! `promtail`, `grafana`, `grafana-server`).
//!
//! Each one refuses to start, naming the problem, unless the config the agent rendered parses
//! and names what the real program needs; it then creates what the real program would on
//! disk (as the unit's user: a permission the unit lacks shows here too), listens where the
//! config says and answers the health path the unit and `deploy`'s gate use. It also does the
//! small part of the program's job a test can observe: Loki stores pushed lines on its data
//! volume and answers `{label="value"} |= "text"` queries, Promtail tails its file and
//! pushes to its client URL, Grafana answers its API with the admin password it was given.
//! The version each reports is the one pinned in images/versions.toml.

mod grafana;
mod http;
mod loki;
mod promtail;
mod yaml;

use std::process::ExitCode;

/// The pinned versions, read when the stand-in is built.
const VERSIONS: &str = include_str!("../../../../versions.toml");

/// The program a stand-in acts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Program {
    Loki,
    Promtail,
    Grafana,
}

impl Program {
    /// From the name it was run as: `/usr/local/bin/loki`, `loki-linux-amd64`, ...
    fn from_name(argv0: &str) -> Option<Program> {
        let name = argv0.rsplit('/').next().unwrap_or(argv0);
        let name = name.split("-linux-").next().unwrap_or(name);
        match name {
            "loki" => Some(Program::Loki),
            "promtail" => Some(Program::Promtail),
            "grafana" | "grafana-server" => Some(Program::Grafana),
            _ => None,
        }
    }

    /// Its component in images/versions.toml.
    fn component(self) -> &'static str {
        match self {
            Program::Loki => "loki",
            Program::Promtail => "promtail",
            Program::Grafana => "grafana",
        }
    }

    fn version(self) -> String {
        toml::from_str::<toml::Value>(VERSIONS)
            .ok()
            .and_then(|versions| {
                versions
                    .get("components")?
                    .get(self.component())?
                    .get("version")?
                    .as_str()
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "unknown".to_string())
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let argv0 = args.first().cloned().unwrap_or_default();
    let Some(program) = Program::from_name(&argv0) else {
        eprintln!(
            "upstream-standin: run me as loki, promtail or grafana (a link or copy of that \
             name), not as `{argv0}`"
        );
        return ExitCode::from(2);
    };
    let args = &args[1..];
    let version = program.version();
    if args
        .iter()
        .any(|a| matches!(a.as_str(), "-version" | "--version" | "-v" | "version"))
    {
        // As the real programs print it (the bake's self-check reads the version).
        match program {
            Program::Grafana => println!("grafana version {version} (obstack stand-in)"),
            _ => println!(
                "{}, version {version} (obstack stand-in)",
                program.component()
            ),
        }
        return ExitCode::SUCCESS;
    }
    let result = match program {
        Program::Loki => loki::main(args, &version),
        Program::Promtail => promtail::main(args, &version),
        Program::Grafana => grafana::main(args, &version),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{} (obstack stand-in): {error:#}", program.component());
            ExitCode::FAILURE
        }
    }
}

/// The value of a Go-style flag: `-name=value`, `--name=value`, `-name value`.
fn flag(args: &[String], name: &str) -> Option<String> {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let bare = arg.trim_start_matches('-');
        if bare.len() == arg.len() {
            continue;
        }
        if let Some(value) = bare.strip_prefix(name).and_then(|v| v.strip_prefix('=')) {
            return Some(value.to_string());
        }
        if bare == name {
            return args.next().cloned();
        }
    }
    None
}

/// Whether a boolean flag (`-name` or `--name`) is given.
fn switch(args: &[String], name: &str) -> bool {
    args.iter()
        .any(|arg| arg.trim_start_matches('-') == name && arg.starts_with('-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_comes_from_the_name_and_flags_from_go_style_arguments() {
        assert_eq!(
            Program::from_name("/usr/local/bin/loki"),
            Some(Program::Loki)
        );
        assert_eq!(
            Program::from_name("promtail-linux-amd64"),
            Some(Program::Promtail)
        );
        assert_eq!(
            Program::from_name("/opt/grafana/bin/grafana-server"),
            Some(Program::Grafana)
        );
        assert_eq!(Program::from_name("upstream-standin"), None);
        assert_ne!(Program::Loki.version(), "unknown");
        let args: Vec<String> = ["-config.file=/a", "--homepath", "/h", "-verify-config"]
            .map(String::from)
            .to_vec();
        assert_eq!(flag(&args, "config.file").as_deref(), Some("/a"));
        assert_eq!(flag(&args, "homepath").as_deref(), Some("/h"));
        assert_eq!(flag(&args, "config"), None);
        assert!(switch(&args, "verify-config"));
        assert!(!switch(&args, "check-syntax"));
    }
}
