//! The QEMU Machine Protocol, just enough of it: connect to a VM's QMP socket, leave
//! capabilities negotiation, run one command and read its answer (JSON lines; events that
//! arrive in between are skipped).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

/// Runs `command` (e.g. `system_powerdown`, `stop`, `cont`) on the VM behind `socket`.
pub fn execute(socket: &Path, command: &str) -> anyhow::Result<Value> {
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to QMP at {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    // The greeting, then the handshake.
    read_answer(&mut reader, true)?;
    writer.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")?;
    read_answer(&mut reader, false)?;
    writer.write_all(
        serde_json::json!({ "execute": command })
            .to_string()
            .as_bytes(),
    )?;
    writer.write_all(b"\n")?;
    read_answer(&mut reader, false).with_context(|| format!("QMP {command}"))
}

/// The next line that is not an event: the greeting (`QMP`) or a `return`; an `error` is
/// an error.
fn read_answer(reader: &mut impl BufRead, greeting: bool) -> anyhow::Result<Value> {
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            anyhow::bail!("QMP closed the connection");
        }
        let value: Value = serde_json::from_str(line.trim())
            .with_context(|| format!("QMP sent something that is not JSON: {line}"))?;
        if greeting && value.get("QMP").is_some() {
            return Ok(value);
        }
        if let Some(answer) = value.get("return") {
            return Ok(answer.clone());
        }
        if let Some(error) = value.get("error") {
            anyhow::bail!(
                "{}",
                error["desc"].as_str().unwrap_or("QMP reported an error")
            );
        }
    }
}
