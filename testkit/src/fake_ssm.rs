//! Stand-ins for the AWS CLI (`aws ssm start-session`) and the Session Manager plugin, for
//! the tunnel tests: put first on `PATH`, they record every call and forward the local port
//! to a port on loopback, the way the real pair forwards it to the instance.
//!
//! Like the real CLI, `aws` ignores Ctrl-C and runs `session-manager-plugin --version`, then
//! `session-manager-plugin <response> <region> StartSession <profile> <request> <endpoint>`
//! as its child, in its process group. The plugin listens on 127.0.0.1:`localPortNumber`,
//! prints the real plugin's `Port N opened for sessionId ...` and `Waiting for
//! connections...`, forwards each connection to the loopback port configured for
//! `<instance>:<portNumber>`, and on SIGINT records that and exits, as the real one ends
//! its session. `aws` answers `TargetNotConnected` for an instance told to be offline (for
//! its first N attempts), as StartSession does for an instance whose agent is not online.
//! Both are Python (python3 runs moto already).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const AWS: &str = r#"#!/usr/bin/env python3
import json, os, signal, subprocess, sys

here = os.path.dirname(os.path.abspath(__file__))
args = sys.argv[1:]
with open(os.path.join(here, "calls.jsonl"), "a") as log:
    log.write(json.dumps({"program": "aws", "args": args}) + "\n")
if args[:2] != ["ssm", "start-session"]:
    print("stand-in aws: unexpected call: " + " ".join(args), file=sys.stderr)
    sys.exit(252)
options, i = {}, 2
while i + 1 < len(args):
    if args[i].startswith("--"):
        options[args[i][2:]] = args[i + 1]
        i += 2
    else:
        i += 1
parameters = {}
for pair in options.get("parameters", "").split(","):
    if "=" in pair:
        key, value = pair.split("=", 1)
        parameters[key] = [value]
target = options.get("target", "")
request = {"Target": target, "DocumentName": options.get("document-name"), "Parameters": parameters}

config = json.load(open(os.path.join(here, "config.json")))
offline = config.get("offline", {})
if target in offline:
    counter = os.path.join(here, "attempts-" + target)
    attempts = int(open(counter).read()) if os.path.exists(counter) else 0
    open(counter, "w").write(str(attempts + 1))
    if offline[target] < 0 or attempts < offline[target]:
        print("\nAn error occurred (TargetNotConnected) when calling the StartSession operation: "
              + target + " is not connected.", file=sys.stderr)
        sys.exit(254)

subprocess.check_output(["session-manager-plugin", "--version"])
response = {"SessionId": "tester-" + target, "TokenValue": "token",
            "StreamUrl": "wss://ssmmessages.invalid/v1/data-channel/tester-" + target}
# The real CLI ignores what a terminal sends: the plugin handles it and ends the session.
for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP):
    signal.signal(sig, signal.SIG_IGN)
sys.exit(subprocess.call(["session-manager-plugin", json.dumps(response), options.get("region", ""),
                          "StartSession", "", json.dumps(request), "https://ssm.invalid"]))
"#;

const PLUGIN: &str = r#"#!/usr/bin/env python3
import json, os, signal, socket, sys, threading

here = os.path.dirname(os.path.abspath(__file__))
if sys.argv[1:] == ["--version"]:
    print("1.2.896.0")
    sys.exit(0)

def record(entry):
    with open(os.path.join(here, "calls.jsonl"), "a") as log:
        log.write(json.dumps(entry) + "\n")

response, region, operation, profile, request, endpoint = sys.argv[1:7]
request = json.loads(request)
session = json.loads(response)["SessionId"]
record({"program": "session-manager-plugin", "operation": operation, "region": region,
        "request": request, "pid": os.getpid()})
if request.get("DocumentName") != "AWS-StartPortForwardingSession":
    print("stand-in plugin: not a port-forwarding session: %s" % request.get("DocumentName"), file=sys.stderr)
    sys.exit(1)
remote = request["Parameters"]["portNumber"][0]
local = int(request["Parameters"]["localPortNumber"][0])
config = json.load(open(os.path.join(here, "config.json")))
destination = config["forwards"].get("%s:%s" % (request["Target"], remote))

def on_signal(signum, frame):
    print("\nTerminate signal received, exiting.", flush=True)
    record({"program": "session-manager-plugin", "event": "terminated",
            "signal": signal.Signals(signum).name, "session": session, "port": local})
    os._exit(0)

for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP):
    signal.signal(sig, on_signal)

listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", local))
listener.listen(64)
print("\nStarting session with SessionId: %s" % session, flush=True)
print("Port %d opened for sessionId %s." % (local, session), flush=True)
print("Waiting for connections...", flush=True)

def pump(source, sink):
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    for s in (source, sink):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

def serve(client):
    print("\nConnection accepted for session [%s]" % session, flush=True)
    if destination is None:
        print("\nConnection to destination port failed, check SSM Agent logs.", flush=True)
        client.close()
        return
    try:
        upstream = socket.create_connection(("127.0.0.1", destination))
    except OSError:
        print("\nConnection to destination port failed, check SSM Agent logs.", flush=True)
        client.close()
        return
    threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
    pump(upstream, client)

while True:
    client, _ = listener.accept()
    threading.Thread(target=serve, args=(client,), daemon=True).start()
"#;

/// The installed stand-ins.
pub struct FakeSsm {
    bin: PathBuf,
}

impl FakeSsm {
    /// Installs both programs under `dir`; `forwards` maps (instance, port on it) to the
    /// loopback port that stands in for it.
    pub fn install(dir: &Path, forwards: &[(&str, u16, u16)]) -> FakeSsm {
        crate::require_tool("python3");
        let bin = dir.join("fake-ssm-bin");
        std::fs::create_dir_all(&bin).expect("create the stand-ins' directory");
        for (name, script) in [("aws", AWS), ("session-manager-plugin", PLUGIN)] {
            let path = bin.join(name);
            std::fs::write(&path, script).expect("write a stand-in");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .expect("make a stand-in executable");
        }
        let fake = FakeSsm { bin };
        fake.configure(forwards, &[]);
        fake
    }

    /// Rewrites what the stand-ins do: the forwards, and the instances whose agent is not
    /// online for their first N session attempts (`-1`: never).
    pub fn configure(&self, forwards: &[(&str, u16, u16)], offline: &[(&str, i64)]) {
        let forwards: serde_json::Map<String, serde_json::Value> = forwards
            .iter()
            .map(|(instance, port, to)| (format!("{instance}:{port}"), (*to).into()))
            .collect();
        let offline: serde_json::Map<String, serde_json::Value> = offline
            .iter()
            .map(|(instance, times)| (instance.to_string(), (*times).into()))
            .collect();
        std::fs::write(
            self.bin.join("config.json"),
            serde_json::json!({"forwards": forwards, "offline": offline}).to_string(),
        )
        .expect("write the stand-ins' configuration");
    }

    /// The directory holding both programs.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// `PATH` with the stand-ins first.
    pub fn path(&self) -> std::ffi::OsString {
        let rest = std::env::var_os("PATH").unwrap_or_default();
        std::env::join_paths(std::iter::once(self.bin.clone()).chain(std::env::split_paths(&rest)))
            .expect("a PATH entry with a colon")
    }

    /// Puts the stand-ins first on `command`'s `PATH`.
    pub fn apply_env<'a>(&self, command: &'a mut Command) -> &'a mut Command {
        command.env("PATH", self.path())
    }

    /// Every call and event so far, one JSON object each, in order.
    pub fn records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.bin.join("calls.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON record"))
            .collect()
    }

    /// The argument lists `aws` was called with.
    pub fn aws_calls(&self) -> Vec<Vec<String>> {
        self.records()
            .iter()
            .filter(|r| r["program"] == "aws")
            .map(|r| {
                r["args"]
                    .as_array()
                    .expect("args")
                    .iter()
                    .map(|a| a.as_str().expect("a string argument").to_string())
                    .collect()
            })
            .collect()
    }

    /// The StartSession requests the plugin was handed (`Target`, `DocumentName`,
    /// `Parameters`).
    pub fn sessions(&self) -> Vec<serde_json::Value> {
        self.records()
            .into_iter()
            .filter(|r| {
                r["program"] == "session-manager-plugin" && r["operation"] == "StartSession"
            })
            .map(|r| r["request"].clone())
            .collect()
    }

    /// The sessions that ended on a signal, as (signal name, local port).
    pub fn terminated(&self) -> Vec<(String, u16)> {
        self.records()
            .iter()
            .filter(|r| r["event"] == "terminated")
            .map(|r| {
                (
                    r["signal"].as_str().unwrap_or_default().to_string(),
                    r["port"].as_u64().unwrap_or_default() as u16,
                )
            })
            .collect()
    }
}
