//! The host's side of the probe a test VM runs ([`super::guest`]): a bash script sent to
//! the guest over a forwarded port, run there as root, its output and exit status read
//! back. Before the guest's network is up a connection is accepted by qemu and then closed
//! without an answer; [`Probe::run`] retries until its deadline.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Context;

/// The marker the guest's probe ends every answer with.
const EXIT_MARKER: &str = "obstack-probe-exit: ";

/// A command's result in the guest.
#[derive(Debug, Clone)]
pub struct Ran {
    pub status: i32,
    /// stdout and stderr, interleaved as the guest wrote them.
    pub output: String,
}

impl Ran {
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// Reaches the probe of one VM.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    addr: SocketAddr,
}

impl Probe {
    /// The probe behind `addr`, the host's end of the forward to [`super::PROBE_PORT`].
    pub fn new(addr: SocketAddr) -> Probe {
        Probe { addr }
    }

    /// Runs `script` with bash in the guest and returns its status and output. Retries
    /// while the guest does not answer; `timeout` bounds the whole call, the command's own
    /// run time included.
    pub fn run(&self, script: &str, timeout: Duration) -> anyhow::Result<Ran> {
        let deadline = Instant::now() + timeout;
        // The script's length on a line, then the script: no quoting to get wrong.
        let request = format!("{}\n{script}", script.len());
        let mut last_error = String::from("no answer");
        while Instant::now() < deadline {
            match self.once(&request, deadline) {
                Ok(Some(ran)) => return Ok(ran),
                Ok(None) => last_error = "the connection closed without an answer".into(),
                Err(e) => last_error = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        anyhow::bail!(
            "the VM's probe did not answer within {}s ({last_error})",
            timeout.as_secs()
        )
    }

    /// One attempt: `None` when the guest closed the connection without a whole answer.
    fn once(&self, request: &str, deadline: Instant) -> anyhow::Result<Option<Ran>> {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut stream = TcpStream::connect_timeout(&self.addr, left.min(Duration::from_secs(5)))
            .with_context(|| format!("cannot connect to {}", self.addr))?;
        stream.write_all(request.as_bytes())?;
        let mut answer = Vec::new();
        let mut buffer = [0u8; 16 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                anyhow::bail!("the command did not finish in time");
            }
            stream.set_read_timeout(Some(left))?;
            match stream.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    anyhow::bail!("the command did not finish in time")
                }
                // qemu resets a forwarded connection the guest did not accept.
                Err(_) => break,
            }
        }
        let text = String::from_utf8_lossy(&answer);
        let Some((output, status)) = text.rsplit_once(EXIT_MARKER) else {
            return Ok(None);
        };
        let status = status
            .trim()
            .parse()
            .with_context(|| format!("the probe's exit line is garbled: {status}"))?;
        Ok(Some(Ran {
            status,
            output: output.to_string(),
        }))
    }
}
