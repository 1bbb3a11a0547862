//! Waiting until every component answers its health endpoint, with a progress line per
//! component. Fails fast when a component exits or the user presses Ctrl-C.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// One component to watch.
pub struct Check {
    pub name: String,
    pub health_url: String,
    /// Where its output goes, named when it fails.
    pub log: std::path::PathBuf,
}

pub fn client() -> anyhow::Result<reqwest::blocking::Client> {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        // Only loopback is ever probed; a proxy setting must not redirect it.
        .no_proxy()
        .build()
        .context("cannot build an HTTP client")
}

/// True when `url` answers 2xx.
pub fn probe(client: &reqwest::blocking::Client, url: &str) -> bool {
    client
        .get(url)
        .send()
        .is_ok_and(|response| response.status().is_success())
}

/// Polls every check until all are healthy. `exited(i)` reports why check `i`'s process
/// is no longer running (`None` while it runs).
pub fn wait_all(
    checks: &[Check],
    timeout: Duration,
    interrupted: &AtomicBool,
    mut exited: impl FnMut(usize) -> Option<String>,
) -> anyhow::Result<()> {
    let client = client()?;
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template("{spinner} {prefix:14} {msg} ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let bars: Vec<ProgressBar> = checks
        .iter()
        .map(|check| {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(style.clone());
            bar.set_prefix(check.name.clone());
            bar.set_message(format!("waiting for {}", check.health_url));
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        })
        .collect();
    let mut healthy = vec![false; checks.len()];
    let started = Instant::now();
    let result = loop {
        if interrupted.load(Ordering::SeqCst) {
            break Err(anyhow::anyhow!(
                "interrupted while waiting for the stack to become healthy"
            ));
        }
        for (i, check) in checks.iter().enumerate() {
            if healthy[i] {
                continue;
            }
            if let Some(how) = exited(i) {
                bars[i].abandon_with_message(format!("exited ({how})"));
                return Err(anyhow::anyhow!(
                    "{} exited before it became healthy ({how}); its output is in {}",
                    check.name,
                    check.log.display()
                ));
            }
            if probe(&client, &check.health_url) {
                healthy[i] = true;
                bars[i].finish_with_message(format!(
                    "healthy after {:.1}s",
                    started.elapsed().as_secs_f64()
                ));
                // Also a plain line, for logs and terminals without progress bars.
                multi.suspend(|| eprintln!("{} is healthy ({})", check.name, check.health_url));
            }
        }
        if healthy.iter().all(|&ok| ok) {
            break Ok(());
        }
        if started.elapsed() >= timeout {
            let waiting: Vec<String> = checks
                .iter()
                .zip(&healthy)
                .filter(|(_, ok)| !**ok)
                .map(|(check, _)| format!("{} (log: {})", check.name, check.log.display()))
                .collect();
            break Err(anyhow::anyhow!(
                "not healthy within {}: {}; raise --timeout or read the logs",
                humantime::format_duration(timeout),
                waiting.join(", ")
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    for bar in bars.iter().filter(|bar| !bar.is_finished()) {
        bar.abandon();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    #[test]
    fn a_component_that_exits_fails_the_wait_with_its_log() {
        let checks = [Check {
            name: "thing".into(),
            // Nothing listens on the discard port.
            health_url: "http://127.0.0.1:9/health".into(),
            log: "/tmp/thing.log".into(),
        }];
        let error = wait_all(
            &checks,
            Duration::from_secs(10),
            &AtomicBool::new(false),
            |_| Some("exit status: 1".into()),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("thing exited") && error.contains("/tmp/thing.log"),
            "{error}"
        );
    }

    #[test]
    fn a_silent_component_times_out_and_a_healthy_one_passes() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/ready", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            }
        });
        let healthy = [Check {
            name: "ok".into(),
            health_url: url,
            log: "/tmp/ok.log".into(),
        }];
        wait_all(
            &healthy,
            Duration::from_secs(10),
            &AtomicBool::new(false),
            |_| None,
        )
        .unwrap();

        let silent = [Check {
            name: "silent".into(),
            health_url: "http://127.0.0.1:9/ready".into(),
            log: "/tmp/silent.log".into(),
        }];
        let error = wait_all(
            &silent,
            Duration::from_millis(300),
            &AtomicBool::new(false),
            |_| None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("not healthy within 300ms") && error.contains("silent"),
            "{error}"
        );
    }
}
