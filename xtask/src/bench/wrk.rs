//! Drives a server with `wrk` and reads its summary.

use std::time::Duration;

use anyhow::Context;

use super::Sample;
use crate::cmd::Cmd;

/// Runs `wrk` pinned to `core` (when given) against `url` with `connections` connections.
pub fn run(
    url: &str,
    connections: u32,
    duration: Duration,
    core: Option<u32>,
) -> anyhow::Result<Sample> {
    let mut args: Vec<String> = Vec::new();
    if let Some(core) = core {
        args.extend(["-c".into(), core.to_string(), "wrk".into()]);
    }
    args.extend([
        "-t1".into(),
        format!("-c{connections}"),
        format!("-d{}s", duration.as_secs().max(1)),
        "--latency".into(),
        url.into(),
    ]);
    let output = match core {
        Some(_) => Cmd::new("taskset", args),
        None => Cmd::new("wrk", args),
    }
    .read()?;
    parse(&output).with_context(|| format!("cannot read wrk's output:\n{output}"))
}

/// Reads `Requests/sec:` and the 50% and 99% lines of `--latency`'s distribution.
pub fn parse(output: &str) -> anyhow::Result<Sample> {
    let mut requests_per_sec = None;
    let mut p50 = None;
    let mut p99 = None;
    for line in output.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Requests/sec:"), Some(value)) => requests_per_sec = Some(value.parse::<f64>()?),
            (Some("50%"), Some(value)) => p50 = Some(latency_ms(value)?),
            (Some("99%"), Some(value)) => p99 = Some(latency_ms(value)?),
            _ => {}
        }
    }
    Ok(Sample {
        requests_per_sec: requests_per_sec.context("no `Requests/sec:` line")?,
        p50_ms: p50.context("no 50% latency line (was --latency passed?)")?,
        p99_ms: p99.context("no 99% latency line (was --latency passed?)")?,
    })
}

/// wrk prints latencies like `812.00us`, `1.25ms` or `2.00s`.
fn latency_ms(text: &str) -> anyhow::Result<f64> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("latency `{text}` has no unit"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("latency `{text}`"))?;
    Ok(match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        other => anyhow::bail!("unknown latency unit `{other}` in `{text}`"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "Running 10s test @ http://127.0.0.1:5000/api/data
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   612.35us  201.11us   9.87ms   91.23%
    Req/Sec    98.12k     3.21k  105.00k    72.00%
  Latency Distribution
     50%  580.00us
     75%  650.00us
     90%  720.00us
     99%    1.25ms
  976543 requests in 10.00s, 200.12MB read
Requests/sec:  97654.30
Transfer/sec:     20.01MB
";

    #[test]
    fn reads_throughput_and_percentiles() {
        let sample = parse(OUTPUT).unwrap();
        assert_eq!(sample.requests_per_sec, 97654.30);
        assert!((sample.p50_ms - 0.58).abs() < 1e-9);
        assert!((sample.p99_ms - 1.25).abs() < 1e-9);
    }

    #[test]
    fn missing_lines_are_errors() {
        assert!(parse("Requests/sec: 10\n").is_err());
        assert!(latency_ms("12.0qs").is_err());
    }
}
