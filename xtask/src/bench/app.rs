//! `cargo xtask bench app`: the instrumented demo app against a bare warp server serving
//! the same `/api/data` handler. Each server is pinned to core 0 and the load generator to
//! core 1, runs are interleaved (so drift in the machine affects both alike), and the
//! figures are printed with the targets next to them.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::{loadgen, wrk, Sample};
use crate::cmd::Cmd;
use crate::project;

const CONCURRENCIES: [u32; 2] = [10, 64];
const WARM_UP: Duration = Duration::from_secs(2);
const PATH: &str = "/api/data";
const SERVER_CORE: u32 = 0;
const LOAD_CORE: u32 = 1;

// The targets.
const TARGET_RATIO_C64: f64 = 0.85;
const TARGET_P99_C10_MS: f64 = 2.0;
const TARGET_RSS_MB: f64 = 30.0;

pub fn run(duration: Duration, rounds: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        duration >= Duration::from_secs(1),
        "--duration must be at least 1s"
    );
    let pinning = Pinning::detect();
    let generator = Generator::detect();
    let (app_bin, bare_bin) = build()?;
    let scratch = tempfile::tempdir().context("cannot create a temporary directory")?;

    let log_file = scratch.path().join("app.log");
    let app = Server::start(
        "demo-app",
        &app_bin,
        &["--log-file".into(), log_file.display().to_string()],
        pinning,
    )?;
    let bare = Server::start("bare warp", &bare_bin, &[], pinning)?;

    for server in [&bare, &app] {
        eprintln!("warming up {}", server.name);
        generator.drive(server.addr, 10, WARM_UP, pinning)?;
    }

    let mut results = Results::default();
    for round in 0..rounds {
        for &connections in &CONCURRENCIES {
            // Alternate which server goes first, so neither always runs on a warmer machine.
            let order = if (round + connections as usize).is_multiple_of(2) {
                [&bare, &app]
            } else {
                [&app, &bare]
            };
            for server in order {
                eprintln!(
                    "round {}/{rounds}: {} at c={connections} for {}",
                    round + 1,
                    server.name,
                    humantime::format_duration(duration)
                );
                let sample = generator.drive(server.addr, connections, duration, pinning)?;
                results.push(round, server.name == "demo-app", connections, sample);
            }
        }
    }

    let app_rss = app.peak_rss_mb()?;
    let bare_rss = bare.peak_rss_mb()?;
    let log_bytes = log_size(&log_file);
    drop(app);
    drop(bare);

    println!();
    println!(
        "demo-app vs bare warp, GET {PATH}, {} per run, {rounds} interleaved rounds (mean), load by {}{}",
        humantime::format_duration(duration),
        generator.name(),
        pinning.describe()
    );
    let rows = CONCURRENCIES.iter().map(|&connections| {
        let app = results.mean(true, connections);
        let bare = results.mean(false, connections);
        [
            connections.to_string(),
            format!("{:.0}", app.requests_per_sec),
            format!("{:.0}", bare.requests_per_sec),
            format!("{:.3}", app.requests_per_sec / bare.requests_per_sec),
            format!("{:.3} ms", app.p50_ms),
            format!("{:.3} ms", bare.p50_ms),
            format!("{:.3} ms", app.p99_ms),
            format!("{:.3} ms", bare.p99_ms),
        ]
    });
    print!(
        "{}",
        crate::table::render(
            &[
                "C",
                "APP REQ/S",
                "BARE REQ/S",
                "RATIO",
                "APP P50",
                "BARE P50",
                "APP P99",
                "BARE P99"
            ],
            rows
        )
    );
    // The spread says how far one round can be trusted on this machine.
    let per_round: Vec<f64> = (0..rounds)
        .filter_map(|round| results.round_ratio(round, 64))
        .collect();
    let listed: Vec<String> = per_round.iter().map(|r| format!("{r:.3}")).collect();
    println!(
        "ratio at c=64 per round: {} (median {:.3})",
        listed.join(" "),
        median(&per_round).unwrap_or(f64::NAN)
    );
    println!("peak RSS (VmHWM): demo-app {app_rss:.1} MB, bare {bare_rss:.1} MB");
    println!(
        "demo-app wrote {:.1} MB of JSON log lines",
        log_bytes as f64 / 1e6
    );

    let ratio = results.mean(true, 64).requests_per_sec / results.mean(false, 64).requests_per_sec;
    let p99 = results.mean(true, 10).p99_ms;
    println!();
    println!("targets:");
    verdict(
        &format!("ratio at c=64 {ratio:.3} >= {TARGET_RATIO_C64}"),
        ratio >= TARGET_RATIO_C64,
    );
    verdict(
        &format!("p99 at c=10 {p99:.3} ms < {TARGET_P99_C10_MS} ms"),
        p99 < TARGET_P99_C10_MS,
    );
    verdict(
        &format!("peak RSS {app_rss:.1} MB < {TARGET_RSS_MB} MB"),
        app_rss < TARGET_RSS_MB,
    );
    Ok(())
}

fn verdict(what: &str, met: bool) {
    println!("  [{}] {what}", if met { "met" } else { "MISSED" });
}

/// Builds both servers in release mode and returns their paths.
fn build() -> anyhow::Result<(PathBuf, PathBuf)> {
    Cmd::cargo([
        "build",
        "--release",
        "-p",
        "demo-app",
        "--bin",
        "demo-app",
        "--example",
        "bare",
    ])
    .map(|e| e.dir(project::root()))
    .run()
    .context("building the benchmark's release binaries")?;
    let release = project::target_dir().join("release");
    Ok((
        release.join("demo-app"),
        release.join("examples").join("bare"),
    ))
}

/// Whether servers and load can each have their own core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pinning {
    Pinned,
    Unpinned,
}

impl Pinning {
    fn detect() -> Pinning {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let taskset = crate::cmd::require_tool("taskset", "install util-linux").is_ok();
        if cores >= 2 && taskset {
            Pinning::Pinned
        } else {
            eprintln!(
                "warning: {cores} core(s), taskset {}: running unpinned, figures are less comparable",
                if taskset { "present" } else { "missing" }
            );
            Pinning::Unpinned
        }
    }

    fn core(self, core: u32) -> Option<u32> {
        (self == Pinning::Pinned).then_some(core)
    }

    fn describe(self) -> String {
        match self {
            Pinning::Pinned => format!("; servers on core {SERVER_CORE}, load on core {LOAD_CORE}"),
            Pinning::Unpinned => "; unpinned".into(),
        }
    }
}

/// wrk when installed, otherwise the built-in generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Generator {
    Wrk,
    BuiltIn,
}

impl Generator {
    fn detect() -> Generator {
        if crate::cmd::require_tool("wrk", "").is_ok() {
            Generator::Wrk
        } else {
            eprintln!("note: wrk is not installed (apt-get install wrk); using the built-in load generator");
            Generator::BuiltIn
        }
    }

    fn name(self) -> &'static str {
        match self {
            Generator::Wrk => "wrk",
            Generator::BuiltIn => "the built-in generator",
        }
    }

    fn drive(
        self,
        addr: SocketAddr,
        connections: u32,
        duration: Duration,
        pinning: Pinning,
    ) -> anyhow::Result<Sample> {
        match self {
            Generator::Wrk => wrk::run(
                &format!("http://{addr}{PATH}"),
                connections,
                duration,
                pinning.core(LOAD_CORE),
            ),
            Generator::BuiltIn => {
                if let Some(core) = pinning.core(LOAD_CORE) {
                    pin_this_process(core)?;
                }
                loadgen::run(addr, PATH, connections, duration)
            }
        }
    }
}

/// Moves every thread of this process (and the threads it starts later) to `core`.
fn pin_this_process(core: u32) -> anyhow::Result<()> {
    Cmd::new(
        "taskset",
        [
            "-a",
            "-p",
            "-c",
            &core.to_string(),
            &std::process::id().to_string(),
        ],
    )
    .map(|e| e.stdout_null())
    .run()
    .map(drop)
}

/// A server under test; stopped when dropped.
struct Server {
    name: &'static str,
    addr: SocketAddr,
    handle: duct::Handle,
    pid: u32,
}

impl Server {
    fn start(
        name: &'static str,
        binary: &Path,
        extra: &[String],
        pinning: Pinning,
    ) -> anyhow::Result<Server> {
        let addr = free_loopback_addr()?;
        let mut args: Vec<String> = Vec::new();
        if let Some(core) = pinning.core(SERVER_CORE) {
            args.extend(["-c".into(), core.to_string()]);
            args.push(binary.display().to_string());
        }
        args.extend(["--listen".into(), addr.to_string()]);
        args.extend(extra.iter().cloned());
        let command = match pinning {
            Pinning::Pinned => Cmd::new("taskset", args),
            Pinning::Unpinned => Cmd::new(binary, args),
        };
        let handle = command
            .map(|e| e.stdout_null().stderr_null())
            .start()
            .with_context(|| format!("cannot start {name} ({})", binary.display()))?;
        // taskset execs the server, so the child's pid is the server's.
        let pid = *handle
            .pids()
            .first()
            .context("no pid for the started server")?;
        wait_for_port(addr, Duration::from_secs(10))
            .with_context(|| format!("{name} did not start"))?;
        Ok(Server {
            name,
            addr,
            handle,
            pid,
        })
    }

    /// Peak resident set size, from the kernel's `VmHWM`.
    fn peak_rss_mb(&self) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .with_context(|| format!("cannot read /proc/{}/status", self.pid))?;
        let kib: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmHWM line in /proc/PID/status")?;
        Ok(kib / 1024.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM first so the app drains and flushes like in production; then make sure.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.handle.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.handle.kill();
    }
}

fn free_loopback_addr() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free loopback port")?;
    Ok(listener.local_addr()?)
}

fn wait_for_port(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!(
        "nothing listened on {addr} within {}",
        humantime::format_duration(timeout)
    )
}

fn log_size(path: &Path) -> u64 {
    let Some(dir) = path.parent() else { return 0 };
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| entry.metadata().ok())
                .map(|meta| meta.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Samples per (round, server, concurrency).
#[derive(Default)]
struct Results {
    samples: Vec<(usize, bool, u32, Sample)>,
}

impl Results {
    fn push(&mut self, round: usize, is_app: bool, connections: u32, sample: Sample) {
        self.samples.push((round, is_app, connections, sample));
    }

    /// app req/s over bare req/s within one round.
    fn round_ratio(&self, round: usize, connections: u32) -> Option<f64> {
        let find = |is_app: bool| {
            self.samples
                .iter()
                .find(|(r, app, c, _)| *r == round && *app == is_app && *c == connections)
                .map(|(.., sample)| sample.requests_per_sec)
        };
        Some(find(true)? / find(false)?)
    }

    fn mean(&self, is_app: bool, connections: u32) -> Sample {
        let matching: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|(_, app, c, _)| *app == is_app && *c == connections)
            .map(|(.., sample)| sample)
            .collect();
        let n = matching.len().max(1) as f64;
        Sample {
            requests_per_sec: matching.iter().map(|s| s.requests_per_sec).sum::<f64>() / n,
            p50_ms: matching.iter().map(|s| s.p50_ms).sum::<f64>() / n,
            p99_ms: matching.iter().map(|s| s.p99_ms).sum::<f64>() / n,
        }
    }
}

/// The middle value (the mean of the two middle ones for an even count); robust to the odd
/// round that a noisy neighbour spoils.
fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[mid]),
        _ => Some((sorted[mid - 1] + sorted[mid]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(requests_per_sec: f64) -> Sample {
        Sample {
            requests_per_sec,
            p50_ms: 0.1,
            p99_ms: 1.0,
        }
    }

    #[test]
    fn ratios_pair_each_rounds_app_and_bare_runs_and_means_average_rounds() {
        let mut results = Results::default();
        results.push(0, true, 64, sample(80.0));
        results.push(0, false, 64, sample(100.0));
        results.push(1, false, 64, sample(200.0));
        results.push(1, true, 64, sample(180.0));
        results.push(1, true, 10, sample(5.0));
        assert_eq!(results.round_ratio(0, 64), Some(0.8));
        assert_eq!(results.round_ratio(1, 64), Some(0.9));
        assert_eq!(results.round_ratio(1, 10), None, "no bare run at c=10");
        assert_eq!(results.mean(true, 64).requests_per_sec, 130.0);
        assert_eq!(results.mean(false, 64).requests_per_sec, 150.0);
    }

    #[test]
    fn the_median_ignores_one_outlying_round() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[0.9]), Some(0.9));
        assert_eq!(median(&[0.9, 0.5, 1.4]), Some(0.9));
        assert_eq!(median(&[1.0, 0.5, 0.25, 0.75]), Some(0.625));
    }
}
