//! `demo-app`: parse flags, open the log and metrics, serve until SIGTERM/SIGINT, drain.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use slog::{error, info, warn, Logger};

use demo_app::config::Config;
use demo_app::logging::{self, LogFileConfig};
use demo_app::metrics::Metrics;
use demo_app::shutdown::{self, Drained, Signals};
use demo_app::{AppContext, VERSION};

fn main() -> ExitCode {
    let config = Config::parse();
    match run(config) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("demo-app: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> anyhow::Result<ExitCode> {
    let metrics = Metrics::new(VERSION)?;
    let log_config = LogFileConfig {
        path: config.log_file.clone(),
        max_bytes: config.log_max_bytes,
        keep: usize::try_from(config.log_keep).context("--log-keep is too large")?,
    };
    let (logger, guard) = logging::open(&log_config, metrics.log_records_dropped())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(serve(config, metrics, logger.clone()));
    if let Err(error) = &result {
        error!(logger, "failed"; "error" => format!("{error:#}"));
    }
    // Abandon whatever outlived the grace period, then write every last log line.
    runtime.shutdown_background();
    drop(logger);
    drop(guard);
    result
}

async fn serve(config: Config, metrics: Metrics, logger: Logger) -> anyhow::Result<ExitCode> {
    let mut signals = Signals::install().context("cannot install SIGTERM/SIGINT handlers")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}; is another process using it? choose another with --listen",
                config.listen
            )
        })?;
    let local = listener
        .local_addr()
        .context("cannot read the listening address")?;
    let ctx = AppContext::new(metrics, logger.clone(), config.max_simulated_delay);

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(demo_app::serve(listener, ctx.clone(), async {
        let _ = stop_rx.await;
    }));
    info!(logger, "listening";
        "pid" => std::process::id(),
        "log_keep" => config.log_keep,
        "log_max_bytes" => config.log_max_bytes,
        "log_file" => %config.log_file.display(),
        "listen" => %local,
        "version" => VERSION,
    );
    eprintln!("demo-app {VERSION} listening on http://{local}");

    let signal = signals.recv().await;
    let in_flight = ctx.metrics.in_flight().get();
    info!(logger, "shutdown signal received";
        "grace_ms" => config.shutdown_grace.as_millis() as u64,
        "in_flight" => in_flight,
        "signal" => signal.name(),
    );
    let _ = stop_tx.send(());
    match shutdown::drain(server, config.shutdown_grace).await {
        Drained::Clean { took } => {
            info!(logger, "shutdown complete";
                "drain_ms" => took.as_secs_f64() * 1000.0,
                "signal" => signal.name(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Drained::GraceExpired => {
            let abandoned = ctx.metrics.in_flight().get();
            warn!(logger, "shutdown grace period expired; abandoning requests";
                "abandoned" => abandoned,
                "grace_ms" => config.shutdown_grace.as_millis() as u64,
                "signal" => signal.name(),
            );
            Ok(ExitCode::FAILURE)
        }
    }
}
