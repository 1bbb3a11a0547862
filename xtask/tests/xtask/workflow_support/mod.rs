//! Rehearsing a GitHub Actions workflow here: its jobs in `needs` order, each `run:` step
//! with bash as GitHub runs it (`bash -e {0}`, or `bash --noprofile --norc -eo pipefail {0}`
//! for `shell: bash`) as a non-root user, the job's and step's `env:` with `vars` and
//! `secrets` from a map, `$GITHUB_OUTPUT`, `$GITHUB_ENV`, `$GITHUB_PATH` and
//! `$GITHUB_STEP_SUMMARY` honoured, `if:` conditions evaluated, and job outputs handed to the
//! jobs that need them. A `uses:` step runs the caller's stand-in for that action.
//!
//! Stricter than GitHub where GitHub would hide a bug: an expression that reads a step or job
//! output nobody set is an error ([`expr`]), not an empty string.
#![allow(dead_code)]

pub mod expr;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use expr::{Context, Val};
use serde_yaml_ng::Value;

/// A system user the steps run as, made for one test and removed with its home after it.
pub struct SystemUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    sudo_rule: Option<PathBuf>,
}

impl SystemUser {
    /// `useradd` a fresh user (the test runs as root, as its test group says).
    pub fn create() -> SystemUser {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the workflow rehearsal creates a user to run the jobs as, which needs root: \
             scripts/test.sh runs it with sudo (test group root-users)"
        );
        let useradd = testkit::require_tool("useradd");
        testkit::require_tool("setpriv");
        // Unique per process and per user made in it; short (user names are at most 32 bytes).
        static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("obstack-rh{}-{n}", std::process::id() % 100_000);
        let status = Command::new(useradd)
            .args([
                "--create-home",
                "--shell",
                "/bin/bash",
                "--user-group",
                &name,
            ])
            .status()
            .unwrap();
        assert!(status.success(), "useradd {name} failed");
        let id = |flag: &str| -> u32 {
            let out = Command::new("id").arg(flag).arg(&name).output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        let home = PathBuf::from(format!("/home/{name}"));
        SystemUser {
            uid: id("-u"),
            gid: id("-g"),
            name,
            home,
            sudo_rule: None,
        }
    }

    /// Password-less sudo, as GitHub's hosted runners give their `runner` user.
    pub fn allow_sudo(&mut self) {
        testkit::require_tool("sudo");
        let rule = PathBuf::from(format!("/etc/sudoers.d/{}", self.name));
        std::fs::write(&rule, format!("{} ALL=(ALL) NOPASSWD:ALL\n", self.name)).unwrap();
        std::fs::set_permissions(&rule, std::fs::Permissions::from_mode(0o440)).unwrap();
        self.sudo_rule = Some(rule);
    }

    /// Hands `path` (recursively) to this user.
    pub fn own(&self, path: &Path) {
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", self.uid, self.gid))
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "chown {}", path.display());
    }

    /// A command that runs `program` as this user (setpriv keeps no root privilege).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("setpriv");
        command
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--init-groups")
            .arg("--")
            .arg(program);
        command
    }
}

impl Drop for SystemUser {
    fn drop(&mut self) {
        if let Some(rule) = &self.sudo_rule {
            let _ = std::fs::remove_file(rule);
        }
        let _ = Command::new("userdel")
            .args(["--remove", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    Skipped,
}

impl Outcome {
    fn text(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Skipped => "skipped",
        }
    }
}

/// A `uses:` step, as its stand-in sees it.
pub struct UsesCall<'a> {
    pub job: &'a str,
    /// `actions/checkout@v4`.
    pub action: &'a str,
    /// Its `with:` inputs, evaluated.
    pub with: BTreeMap<String, String>,
    /// The job's environment at this step.
    pub env: &'a BTreeMap<String, String>,
    /// The job's (empty until a checkout stand-in fills it).
    pub workspace: &'a Path,
    pub user: &'a SystemUser,
}

/// What a stand-in did: variables it exported (as an action's `core.exportVariable`),
/// directories it put on PATH, and its outputs.
#[derive(Debug, Default)]
pub struct UsesEffect {
    pub env: Vec<(String, String)>,
    pub path: Vec<PathBuf>,
    pub outputs: BTreeMap<String, String>,
}

pub type StandIn<'a> = dyn Fn(&UsesCall) -> Result<UsesEffect, String> + 'a;

#[derive(Debug, Clone)]
pub struct StepRun {
    pub name: String,
    pub id: Option<String>,
    pub outcome: Outcome,
    pub outputs: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct JobRun {
    pub result: Outcome,
    pub outputs: BTreeMap<String, String>,
    pub steps: Vec<StepRun>,
    pub log: String,
}

impl JobRun {
    pub fn step(&self, name: &str) -> Option<&StepRun> {
        self.steps.iter().find(|s| s.name == name)
    }
}

pub struct Rehearsal<'a> {
    pub workflow: &'a Value,
    pub user: &'a SystemUser,
    pub vars: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, String>,
    /// The runner's own environment (PATH, HOME, ...), before any job's.
    pub base_env: BTreeMap<String, String>,
    /// Where each job gets its own `$GITHUB_WORKSPACE`, `<workspaces>/<job>` (jobs run on
    /// fresh runners: nothing a job leaves there reaches another); owned by [`Rehearsal::user`].
    pub workspaces: PathBuf,
    /// `$RUNNER_TEMP`, owned by [`Rehearsal::user`].
    pub temp: PathBuf,
    pub stand_in: &'a StandIn<'a>,
    pub step_timeout: Duration,
}

/// The order jobs run in: each after the jobs it needs, otherwise in the file's order.
pub fn job_order(workflow: &Value) -> Result<Vec<String>, String> {
    let jobs = workflow["jobs"].as_mapping().ok_or("no jobs")?;
    let names: Vec<String> = jobs
        .keys()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    let mut done: Vec<String> = Vec::new();
    while done.len() < names.len() {
        let next = names
            .iter()
            .find(|n| {
                !done.contains(n) && needs(workflow, n).iter().all(|need| done.contains(need))
            })
            .ok_or_else(|| format!("the jobs' needs form a cycle or name no job: {names:?}"))?;
        done.push(next.clone());
    }
    Ok(done)
}

pub fn needs(workflow: &Value, job: &str) -> Vec<String> {
    match &workflow["jobs"][job]["needs"] {
        Value::String(one) => vec![one.clone()],
        Value::Sequence(many) => many
            .iter()
            .filter_map(|n| n.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// What expressions in one job see.
struct JobContext<'a> {
    rehearsal: &'a Rehearsal<'a>,
    job: &'a str,
    needs: &'a [String],
    runs: &'a BTreeMap<String, JobRun>,
    env: &'a BTreeMap<String, String>,
    steps: &'a [StepRun],
    /// Whether every step so far (or, for a job's `if:`, every needed job) succeeded.
    succeeded: bool,
    reads: &'a std::cell::RefCell<BTreeSet<String>>,
}

impl Context for JobContext<'_> {
    fn lookup(&self, path: &[String]) -> Result<Val, String> {
        let r = self.rehearsal;
        let get = |map: &BTreeMap<String, String>, key: &str| {
            map.get(key).map_or(Val::Null, |v| Val::Str(v.clone()))
        };
        let part = |i: usize| path.get(i).map(String::as_str).unwrap_or("");
        self.reads.borrow_mut().insert(path.join("."));
        match part(0) {
            "vars" => Ok(get(&r.vars, part(1))),
            "secrets" => Ok(get(&r.secrets, part(1))),
            "env" => Ok(get(self.env, part(1))),
            "inputs" => Ok(Val::Null),
            "github" => Ok(match part(1) {
                "workspace" => Val::Str(r.workspaces.join(self.job).display().to_string()),
                "event_name" => Val::Str("schedule".into()),
                "ref" => Val::Str("refs/heads/main".into()),
                "ref_name" => Val::Str("main".into()),
                "repository" => Val::Str("obstack/obstack".into()),
                "token" => get(&r.secrets, "GITHUB_TOKEN"),
                other => return Err(format!("github.{other} is not rehearsed")),
            }),
            "runner" => Ok(match part(1) {
                "temp" => Val::Str(r.temp.display().to_string()),
                "os" => Val::Str("Linux".into()),
                "arch" => Val::Str("X64".into()),
                other => return Err(format!("runner.{other} is not rehearsed")),
            }),
            "steps" => {
                let id = part(1);
                let Some(step) = self.steps.iter().find(|s| s.id.as_deref() == Some(id)) else {
                    return Err(format!(
                        "job {}: steps.{id} is read, but no step with id `{id}` ran before it",
                        self.job
                    ));
                };
                match (part(2), part(3)) {
                    ("outputs", name) => match (step.outcome, step.outputs.get(name)) {
                        (_, Some(value)) => Ok(Val::Str(value.clone())),
                        (Outcome::Success, None) => Err(format!(
                            "job {}: steps.{id}.outputs.{name} is read, but step `{id}` never sets {name} (it wrote {:?} to $GITHUB_OUTPUT)",
                            self.job,
                            step.outputs.keys().collect::<Vec<_>>()
                        )),
                        _ => Ok(Val::Str(String::new())),
                    },
                    ("outcome" | "conclusion", _) => Ok(Val::Str(step.outcome.text().into())),
                    (other, _) => Err(format!("steps.{id}.{other} is not rehearsed")),
                }
            }
            "needs" => {
                let job = part(1);
                if !self.needs.iter().any(|n| n == job) {
                    return Err(format!(
                        "job {}: needs.{job} is read, but the job does not need {job}",
                        self.job
                    ));
                }
                let run = self
                    .runs
                    .get(job)
                    .ok_or_else(|| format!("job {job} has not run"))?;
                match (part(2), part(3)) {
                    ("result", _) => Ok(Val::Str(run.result.text().into())),
                    ("outputs", name) => {
                        let declared = r.workflow["jobs"][job]["outputs"].get(name).is_some();
                        if !declared {
                            return Err(format!(
                                "job {}: needs.{job}.outputs.{name} is read, but job {job} declares no output {name}",
                                self.job
                            ));
                        }
                        Ok(Val::Str(run.outputs.get(name).cloned().unwrap_or_default()))
                    }
                    (other, _) => Err(format!("needs.{job}.{other} is not rehearsed")),
                }
            }
            other => Err(format!("the context `{other}` is not rehearsed")),
        }
    }

    fn succeeded(&self) -> bool {
        self.succeeded
    }
}

/// Parses a `$GITHUB_OUTPUT`/`$GITHUB_ENV` file: `name=value` lines and `name<<DELIMITER`
/// blocks.
pub fn parse_assignments(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.is_empty() {
            continue;
        }
        if let Some((name, delimiter)) = line.split_once("<<") {
            let mut value = Vec::new();
            loop {
                match lines.next() {
                    Some(l) if l == delimiter => break,
                    Some(l) => value.push(l),
                    None => return Err(format!("{name}<<{delimiter} is not closed")),
                }
            }
            out.push((name.to_string(), value.join("\n")));
        } else if let Some((name, value)) = line.split_once('=') {
            out.push((name.to_string(), value.to_string()));
        } else {
            return Err(format!(
                "`{line}` is neither name=value nor name<<DELIMITER"
            ));
        }
    }
    Ok(out)
}

impl Rehearsal<'_> {
    /// Runs every job; an error is a defect of the workflow the rehearsal found (a bad
    /// expression, an output nobody sets), not a failed step (that is a job's result).
    pub fn run(&self) -> Result<BTreeMap<String, JobRun>, String> {
        let mut runs: BTreeMap<String, JobRun> = BTreeMap::new();
        for job in job_order(self.workflow)? {
            let run = self.run_job(&job, &runs)?;
            runs.insert(job, run);
        }
        Ok(runs)
    }

    fn write_user_file(&self, path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
        self.user.own(path);
    }

    fn run_job(&self, job: &str, runs: &BTreeMap<String, JobRun>) -> Result<JobRun, String> {
        let spec = &self.workflow["jobs"][job];
        let needs = needs(self.workflow, job);
        let needs_ok = needs
            .iter()
            .all(|n| runs.get(n).is_some_and(|r| r.result == Outcome::Success));
        let reads = std::cell::RefCell::new(BTreeSet::new());
        let no_env = BTreeMap::new();
        let at_start = JobContext {
            rehearsal: self,
            job,
            needs: &needs,
            runs,
            env: &no_env,
            steps: &[],
            succeeded: needs_ok,
            reads: &reads,
        };
        let runs_it = match spec.get("if").and_then(text_of) {
            Some(condition) => expr::condition(&condition, &at_start)?,
            None => needs_ok,
        };
        if !runs_it {
            let outputs = spec["outputs"]
                .as_mapping()
                .map(|m| {
                    m.keys()
                        .filter_map(|k| k.as_str().map(|k| (k.to_string(), String::new())))
                        .collect()
                })
                .unwrap_or_default();
            return Ok(JobRun {
                result: Outcome::Skipped,
                outputs,
                steps: Vec::new(),
                log: String::new(),
            });
        }

        let mut env: BTreeMap<String, String> = BTreeMap::new();
        if let Some(job_env) = spec["env"].as_mapping() {
            for (key, value) in job_env {
                let key = key.as_str().ok_or("an env key is not a string")?;
                let value = text_of(value).ok_or_else(|| format!("env.{key} is not a scalar"))?;
                let value = expr::interpolate(&value, &at_start)?;
                env.insert(key.to_string(), value);
            }
        }
        let job_files = self.temp.join(job);
        std::fs::create_dir_all(&job_files).unwrap();
        self.user.own(&job_files);
        let workspace = self.workspaces.join(job);
        std::fs::create_dir_all(&workspace).unwrap();
        self.user.own(&workspace);
        let env_file = job_files.join("env");
        let path_file = job_files.join("path");
        self.write_user_file(&env_file, "");
        self.write_user_file(&path_file, "");

        let mut steps: Vec<StepRun> = Vec::new();
        let mut log = String::new();
        let mut exported: BTreeMap<String, String> = BTreeMap::new();
        let mut extra_path: Vec<PathBuf> = Vec::new();
        for (index, step) in spec["steps"]
            .as_sequence()
            .ok_or_else(|| format!("job {job} has no steps"))?
            .iter()
            .enumerate()
        {
            let name = step
                .get("name")
                .and_then(text_of)
                .or_else(|| step.get("uses").and_then(text_of))
                .unwrap_or_else(|| format!("step {}", index + 1));
            let id = step.get("id").and_then(text_of);
            let succeeded = steps.iter().all(|s| s.outcome != Outcome::Failure);
            let mut job_env = env.clone();
            job_env.extend(exported.clone());
            let mut step_env = job_env.clone();
            let context = JobContext {
                rehearsal: self,
                job,
                needs: &needs,
                runs,
                env: &job_env,
                steps: &steps,
                succeeded,
                reads: &reads,
            };
            let runs_step = match step.get("if").and_then(text_of) {
                Some(condition) => expr::condition(&condition, &context)?,
                None => succeeded,
            };
            if !runs_step {
                log.push_str(&format!("\n=== {job} / {name}: skipped\n"));
                steps.push(StepRun {
                    name,
                    id,
                    outcome: Outcome::Skipped,
                    outputs: BTreeMap::new(),
                });
                continue;
            }
            if let Some(own) = step["env"].as_mapping() {
                let mut added = BTreeMap::new();
                for (key, value) in own {
                    let key = key.as_str().ok_or("an env key is not a string")?;
                    let value =
                        text_of(value).ok_or_else(|| format!("env.{key} is not a scalar"))?;
                    added.insert(key.to_string(), expr::interpolate(&value, &context)?);
                }
                step_env.extend(added);
            }
            log.push_str(&format!("\n=== {job} / {name}\n"));
            let (outcome, outputs) = if let Some(action) = step.get("uses").and_then(text_of) {
                let mut with = BTreeMap::new();
                if let Some(inputs) = step["with"].as_mapping() {
                    for (key, value) in inputs {
                        let key = key.as_str().ok_or("a with key is not a string")?;
                        let value =
                            text_of(value).ok_or_else(|| format!("with.{key} is not a scalar"))?;
                        with.insert(key.to_string(), expr::interpolate(&value, &context)?);
                    }
                }
                let call = UsesCall {
                    job,
                    action: &action,
                    with,
                    env: &step_env,
                    workspace: &workspace,
                    user: self.user,
                };
                match (self.stand_in)(&call) {
                    Ok(effect) => {
                        exported.extend(effect.env);
                        extra_path.extend(effect.path);
                        log.push_str("(stand-in) ok\n");
                        (Outcome::Success, effect.outputs)
                    }
                    Err(message) => {
                        log.push_str(&format!("(stand-in) error: {message}\n"));
                        (Outcome::Failure, BTreeMap::new())
                    }
                }
            } else if let Some(script) = step.get("run").and_then(text_of) {
                let script = expr::interpolate(&script, &context)?;
                self.run_script(
                    job,
                    index,
                    step,
                    &script,
                    &step_env,
                    &extra_path,
                    &env_file,
                    &path_file,
                    &mut log,
                )?
            } else {
                return Err(format!("job {job}: step `{name}` has neither run nor uses"));
            };
            // What the step exported and put on PATH, for the steps after it.
            let env_text = std::fs::read_to_string(&env_file).unwrap_or_default();
            for (key, value) in
                parse_assignments(&env_text).map_err(|e| format!("job {job}: $GITHUB_ENV: {e}"))?
            {
                exported.insert(key, value);
            }
            for line in std::fs::read_to_string(&path_file)
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.trim().is_empty())
            {
                let dir = PathBuf::from(line.trim());
                if !extra_path.contains(&dir) {
                    extra_path.push(dir);
                }
            }
            steps.push(StepRun {
                name,
                id,
                outcome,
                outputs,
            });
        }
        let result = if steps.iter().any(|s| s.outcome == Outcome::Failure) {
            Outcome::Failure
        } else {
            Outcome::Success
        };
        let mut outputs = BTreeMap::new();
        if let Some(declared) = spec["outputs"].as_mapping() {
            let mut final_env = env.clone();
            final_env.extend(exported);
            let context = JobContext {
                rehearsal: self,
                job,
                needs: &needs,
                runs,
                env: &final_env,
                steps: &steps,
                succeeded: result == Outcome::Success,
                reads: &reads,
            };
            for (key, value) in declared {
                let key = key.as_str().ok_or("an output name is not a string")?;
                let value =
                    text_of(value).ok_or_else(|| format!("outputs.{key} is not a scalar"))?;
                outputs.insert(key.to_string(), expr::interpolate(&value, &context)?);
            }
        }
        Ok(JobRun {
            result,
            outputs,
            steps,
            log,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn run_script(
        &self,
        job: &str,
        index: usize,
        step: &Value,
        script: &str,
        step_env: &BTreeMap<String, String>,
        extra_path: &[PathBuf],
        env_file: &Path,
        path_file: &Path,
        log: &mut String,
    ) -> Result<(Outcome, BTreeMap<String, String>), String> {
        let dir = self.temp.join(job);
        let script_file = dir.join(format!("step-{index}.sh"));
        let output_file = dir.join(format!("step-{index}.output"));
        let summary_file = dir.join(format!("step-{index}.summary"));
        self.write_user_file(&script_file, script);
        self.write_user_file(&output_file, "");
        self.write_user_file(&summary_file, "");
        // GitHub's shells for `run:` on Linux.
        let shell = match step.get("shell").and_then(text_of).as_deref() {
            None => vec!["-e"],
            Some("bash") => vec!["--noprofile", "--norc", "-eo", "pipefail"],
            Some(other) => return Err(format!("job {job}: shell `{other}` is not rehearsed")),
        };
        let mut env = self.base_env.clone();
        env.extend(step_env.clone());
        let mut path: Vec<String> = extra_path
            .iter()
            .rev()
            .map(|p| p.display().to_string())
            .collect();
        path.push(self.base_env.get("PATH").cloned().unwrap_or_default());
        env.insert("PATH".into(), path.join(":"));
        for (key, value) in [
            ("CI", "true".to_string()),
            ("GITHUB_ACTIONS", "true".into()),
            (
                "GITHUB_WORKSPACE",
                self.workspaces.join(job).display().to_string(),
            ),
            ("GITHUB_OUTPUT", output_file.display().to_string()),
            ("GITHUB_ENV", env_file.display().to_string()),
            ("GITHUB_PATH", path_file.display().to_string()),
            ("GITHUB_STEP_SUMMARY", summary_file.display().to_string()),
            ("GITHUB_JOB", job.to_string()),
            ("GITHUB_EVENT_NAME", "schedule".into()),
            ("RUNNER_TEMP", self.temp.display().to_string()),
            ("RUNNER_OS", "Linux".into()),
        ] {
            env.insert(key.into(), value);
        }
        let working = match step.get("working-directory").and_then(text_of) {
            Some(sub) => self.workspaces.join(job).join(sub),
            None => self.workspaces.join(job),
        };
        let mut command = self.user.command("bash");
        command
            .args(&shell)
            .arg(&script_file)
            .env_clear()
            .envs(&env)
            .current_dir(&working)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start bash as {}: {e}", self.user.name))?;
        let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            text
        });
        let err_reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            text
        });
        let deadline = Instant::now() + self.step_timeout;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        log.push_str(&reader.join().unwrap_or_default());
        log.push_str(&err_reader.join().unwrap_or_default());
        let outcome = match status {
            Some(status) if status.success() => Outcome::Success,
            Some(status) => {
                log.push_str(&format!("(exit {status})\n"));
                Outcome::Failure
            }
            None => {
                log.push_str(&format!("(killed after {:?})\n", self.step_timeout));
                Outcome::Failure
            }
        };
        let outputs = parse_assignments(&std::fs::read_to_string(&output_file).unwrap_or_default())
            .map_err(|e| format!("job {job}: $GITHUB_OUTPUT: {e}"))?
            .into_iter()
            .collect();
        Ok((outcome, outputs))
    }
}
