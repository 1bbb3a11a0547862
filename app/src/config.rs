//! Command-line flags. Every flag can also be set by an environment variable, which is how
//! the image's systemd unit configures the app (`/etc/default/demo-app`).
//! The flag and variable names are a contract with the images and the tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// One mebibyte, for readable defaults.
const MIB: u64 = 1024 * 1024;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "demo-app",
    version,
    about = "The instrumented demo service: JSON API, Prometheus metrics, JSON logs to a rotating file.",
    after_help = "Examples:\n  demo-app --listen 127.0.0.1:5000 --log-file ./app.log\n  DEMO_APP_LISTEN=0.0.0.0:8080 demo-app"
)]
pub struct Config {
    /// Address and port to serve HTTP on.
    #[arg(long, env = "DEMO_APP_LISTEN", default_value = "0.0.0.0:5000")]
    pub listen: SocketAddr,

    /// The JSON log file; its directory is created if missing. Rotated copies get `.1`, `.2`, ...
    #[arg(
        long,
        env = "DEMO_APP_LOG_FILE",
        default_value = "/var/log/demo-app/app.log"
    )]
    pub log_file: PathBuf,

    /// Rotate the log once it has grown past this many bytes (whole lines only).
    #[arg(long, env = "DEMO_APP_LOG_MAX_BYTES", default_value_t = 10 * MIB,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub log_max_bytes: u64,

    /// How many rotated log files to keep besides the live one.
    #[arg(long, env = "DEMO_APP_LOG_KEEP", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub log_keep: u64,

    /// How long to wait for in-flight requests after SIGTERM/SIGINT, e.g. `10s`, `500ms`.
    #[arg(long, env = "DEMO_APP_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Longest delay `/api/data?delay_ms=N` may simulate, e.g. `2s`; `0s` (the default) turns
    /// simulated latency off and the parameter is ignored.
    #[arg(long, env = "DEMO_APP_MAX_SIMULATED_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub max_simulated_delay: Duration,
}

/// Parses `10s`, `500ms`, `2m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; write it like `10s`, `500ms` or `2m`"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{text}`; use `ms`, `s` or `m`"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("`{text}` is not a usable duration (too large or negative)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    }

    #[test]
    fn bad_durations_say_how_to_write_one() {
        assert!(parse_duration("soon").unwrap_err().contains("10s"));
        assert!(parse_duration("5h")
            .unwrap_err()
            .contains("unknown duration unit"));
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn defaults_match_the_contract() {
        let config = Config::try_parse_from(["demo-app"]).unwrap();
        assert_eq!(config.listen, "0.0.0.0:5000".parse().unwrap());
        assert_eq!(config.log_file, PathBuf::from("/var/log/demo-app/app.log"));
        assert_eq!(config.log_max_bytes, 10 * MIB);
        assert_eq!(config.log_keep, 5);
        assert_eq!(config.shutdown_grace, Duration::from_secs(10));
        assert_eq!(config.max_simulated_delay, Duration::ZERO);
    }

    #[test]
    fn zero_sizes_are_refused() {
        assert!(Config::try_parse_from(["demo-app", "--log-max-bytes", "0"]).is_err());
        assert!(Config::try_parse_from(["demo-app", "--log-keep", "0"]).is_err());
    }
}
