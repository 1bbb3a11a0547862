//! Graceful shutdown: wait for SIGTERM or SIGINT, stop accepting, let in-flight requests
//! finish (idle keep-alive connections are closed at once), and give up after a grace period.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};

/// Which signal asked us to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    Terminate,
    Interrupt,
}

impl StopSignal {
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Terminate => "SIGTERM",
            StopSignal::Interrupt => "SIGINT",
        }
    }
}

/// Listens for SIGTERM and SIGINT. Create it before serving, so a signal that arrives
/// during startup is not missed (or left to the default handler, which kills the process).
pub struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves at the first SIGTERM or SIGINT.
    pub async fn recv(&mut self) -> StopSignal {
        tokio::select! {
            _ = self.terminate.recv() => StopSignal::Terminate,
            _ = self.interrupt.recv() => StopSignal::Interrupt,
        }
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every in-flight request finished and every connection closed.
    Clean { took: Duration },
    /// The grace period ran out first; what was still running is abandoned.
    GraceExpired,
}

/// Waits up to `grace` for `server` (already told to shut down) to finish.
pub async fn drain<S: Future>(server: S, grace: Duration) -> Drained {
    let started = Instant::now();
    match tokio::time::timeout(grace, server).await {
        Ok(_) => Drained::Clean {
            took: started.elapsed(),
        },
        Err(_) => Drained::GraceExpired,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_reports_whether_the_server_finished_in_time() {
        let quick = drain(
            tokio::time::sleep(Duration::from_millis(1)),
            Duration::from_secs(5),
        )
        .await;
        assert!(matches!(quick, Drained::Clean { .. }));
        let slow = drain(
            tokio::time::sleep(Duration::from_secs(5)),
            Duration::from_millis(10),
        )
        .await;
        assert_eq!(slow, Drained::GraceExpired);
    }
}
