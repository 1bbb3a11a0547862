//! The provisioning rehearsal (images/README.md, "Provisioning rehearsal"): a role's real
//! provisioning, run by the golden source's own provisioners, in a throwaway Debian root.
//!
//! - [`root`]: the debootstrap root, cached, overlaid per rehearsal, run with chroot;
//! - [`template`]: the provisioners, read from the Packer template with the bake's var file;
//! - [`standins`] and [`https`]: the upstream downloads, stand-in archives on a loopback
//!   HTTPS site, pinned by a versions file of the rehearsal's own;
//! - [`builder`]: what the root gets so it looks like a booted builder instance;
//! - [`checks`]: what a booted instance needs, checked in the provisioned root.

pub mod builder;
pub mod checks;
pub mod https;
pub mod root;
pub mod standins;
pub mod template;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use root::{describe, Root};
use template::Step;
use xtask::bake::base::{self, BaseAmi};
use xtask::bake::vars::{Common, VarFile};
use xtask::versions::Manifest;

pub use image_checks::{images_dir, registry, roles};

/// The user Packer's SSH communicator logs in as on Ubuntu's cloud images.
pub const SSH_USER: &str = "ubuntu";

/// The stand-in download site and what it serves, shared by every rehearsal of a run.
pub struct Downloads {
    pub real: Manifest,
    pub archives: BTreeMap<String, standins::Archive>,
    pub certificate: https::Certificate,
    pub site: https::Site,
    dir: PathBuf,
}

impl Downloads {
    pub fn get() -> &'static Downloads {
        static DOWNLOADS: OnceLock<Downloads> = OnceLock::new();
        DOWNLOADS.get_or_init(|| {
            let real = Manifest::load(&images_dir().join("versions.toml"))
                .unwrap_or_else(|e| panic!("{e:#}"));
            let standin = std::fs::read(standin_program())
                .unwrap_or_else(|e| panic!("{}: {e}", standin_program().display()));
            let archives = standins::archives(&real, &standin);
            // This process's own (never left in /tmp).
            let dir = fresh_dir("downloads");
            let certificate = https::Certificate::for_loopback(&dir);
            let files = archives
                .values()
                .map(|a| (a.path.clone(), a.bytes.clone()))
                .collect();
            let site = https::Site::start(&certificate, files);
            Downloads {
                real,
                archives,
                certificate,
                site,
                dir,
            }
        })
    }

    /// The rehearsal's versions file, written and read back as `cargo xtask bake` reads
    /// images/versions.toml; `tampered` gets a checksum its download does not match.
    pub fn manifest(&self, tampered: Option<&str>) -> Manifest {
        let manifest = standins::manifest(&self.real, &self.archives, self.site.url(), tampered);
        let path = self
            .dir
            .join(format!("versions-{}.toml", tampered.unwrap_or("pinned")));
        std::fs::write(&path, toml::to_string(&manifest).unwrap()).unwrap();
        Manifest::load(&path).unwrap_or_else(|e| panic!("{e:#}"))
    }
}

/// The directory holding the workspace binaries the images ship: the debug builds, with
/// their debug info stripped (as the release profile strips them) to keep each rehearsal
/// root small. Built once.
pub fn artifacts_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = fresh_dir("artifacts");
        let strip = testkit::require_tool("strip");
        for binary in registry().workspace_binaries() {
            // Each shipped binary is its package's binary of the same name. The suite's own
            // build (`--workspace --all-targets`) made it already: no second build of the
            // dependencies with another feature set.
            let built = testkit::workspace_bin(&binary, &binary);
            let status = std::process::Command::new(&strip)
                .arg("--strip-debug")
                .arg("-o")
                .arg(dir.join(&binary))
                .arg(&built)
                .status()
                .unwrap();
            assert!(status.success(), "strip {}", built.display());
        }
        dir
    })
}

/// The `upstream-standin` program (the stand-in archives' Loki, Promtail and Grafana),
/// built by the suite with this test binary, without its debug info. Made once.
pub fn standin_program() -> &'static Path {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    PROGRAM.get_or_init(|| {
        let stripped = fresh_dir("standin").join("upstream-standin");
        let status = std::process::Command::new(testkit::require_tool("strip"))
            .arg("--strip-debug")
            .arg("-o")
            .arg(&stripped)
            .arg(env!("CARGO_BIN_EXE_upstream-standin"))
            .status()
            .unwrap();
        assert!(status.success(), "strip upstream-standin");
        stripped
    })
}

/// An empty `name` directory of this process in the rehearsal's scratch space. Test
/// processes that rehearse at the same time (the rehearsal's and the boot tests) each get
/// their own; those of processes that ended are deleted.
fn fresh_dir(name: &str) -> PathBuf {
    let scratch = root::scratch();
    let prefix = format!("{name}.");
    for entry in std::fs::read_dir(&scratch).into_iter().flatten().flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let ended = file_name
            .strip_prefix(&prefix)
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
        if ended {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let dir = scratch.join(format!("{prefix}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The var file `cargo xtask bake` would write for `role` from `manifest`, as JSON.
pub fn var_file(role: &str, manifest: &Manifest) -> serde_json::Value {
    let base = BaseAmi {
        id: "ami-0123456789abcdef0".to_string(),
        name: base::DEFAULT_NAME.to_string(),
        owner: base::DEFAULT_OWNER.to_string(),
    };
    let common = Common {
        region: "us-east-1",
        git_revision: "0123456789abcdef0123456789abcdef01234567",
        artifacts_dir: artifacts_dir(),
        base: &base,
        ec2_endpoint: "",
        require_verified: true,
    };
    let role = registry().role(role).unwrap_or_else(|e| panic!("{e}"));
    let var_file = VarFile::new(
        role,
        &"a".repeat(64),
        manifest,
        &common,
        Path::new("/dev/null"),
    )
    .unwrap_or_else(|e| panic!("the var file of {}: {e:#}", role.name));
    serde_json::to_value(&var_file).unwrap()
}

/// The golden source's provisioning steps for `role` with `manifest`'s downloads.
pub fn steps(role: &str, manifest: &Manifest) -> Vec<Step> {
    template::golden_steps(
        &images_dir().join("common/packer"),
        &var_file(role, manifest),
    )
}

/// How a provisioning run went: the scripts that ran, each with its output, and the one
/// that failed, if any (Packer stops the build there).
pub struct Run {
    pub ran: Vec<(String, Output)>,
    pub failed: Option<(String, Output)>,
}

impl Run {
    /// Everything the scripts printed, for failure messages.
    pub fn transcript(&self) -> String {
        let mut text = String::new();
        for (name, output) in self.ran.iter().chain(self.failed.iter()) {
            text.push_str(&format!("=== {name}\n{}\n", describe(output)));
        }
        text
    }
}

/// Runs `steps` in `root` the way Packer's SSH communicator and shell provisioner do: uploads
/// as the SSH user, each script copied to /tmp/script_N.sh, made executable, run through
/// its execute_command by the SSH user's shell, then removed.
pub fn provision(root: &Root, steps: &[Step]) -> Run {
    let mut run = Run {
        ran: Vec::new(),
        failed: None,
    };
    let (uid, gid) = builder::ids(root, SSH_USER);
    let mut counter = 0;
    for step in steps {
        match step {
            Step::Upload {
                sources,
                destination,
            } => {
                for source in sources {
                    upload(root, source, destination, uid, gid);
                }
            }
            Step::Shell {
                scripts,
                environment_vars,
                execute_command,
            } => {
                let vars = flatten_env(environment_vars);
                for script in scripts {
                    counter += 1;
                    let remote = format!("/tmp/script_{}.sh", 1000 + counter);
                    let host = root.join(&remote);
                    std::fs::write(&host, &script.text).unwrap();
                    std::os::unix::fs::chown(&host, Some(uid), Some(gid)).unwrap();
                    root::chmod(&host, 0o755);
                    let command = execute_command
                        .replace("{{ .Vars }}", "{{.Vars}}")
                        .replace("{{ .Path }}", "{{.Path}}")
                        .replace("{{.Vars}}", &vars)
                        .replace("{{.Path}}", &remote);
                    let output = root.chroot().run_as(SSH_USER, &command);
                    let _ = root.chroot().run_as(SSH_USER, &format!("rm -f {remote}"));
                    let name = display_name(&script.name);
                    if !output.status.success() {
                        run.failed = Some((name, output));
                        return run;
                    }
                    run.ran.push((name, output));
                }
            }
        }
    }
    run
}

fn display_name(name: &str) -> String {
    let images = images_dir().canonicalize().unwrap_or_else(|_| images_dir());
    Path::new(name)
        .strip_prefix(&images)
        .map(|p| format!("images/{}", p.display()))
        .unwrap_or_else(|_| name.to_string())
}

/// Packer's `{{ .Vars }}`: PACKER_BUILD_NAME and PACKER_BUILDER_TYPE plus the provisioner's
/// environment_vars, sorted, each as `NAME='value' ` with single quotes escaped.
fn flatten_env(environment_vars: &[String]) -> String {
    let mut vars = BTreeMap::from([
        ("PACKER_BUILD_NAME".to_string(), "golden".to_string()),
        ("PACKER_BUILDER_TYPE".to_string(), "amazon-ebs".to_string()),
    ]);
    for pair in environment_vars {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        vars.insert(name.to_string(), value.to_string());
    }
    vars.iter()
        .map(|(name, value)| format!("{name}='{}' ", value.replace('\'', r#"'"'"'"#)))
        .collect()
}

/// A `file` provisioner upload: a source ending in `/` puts the directory's contents into
/// `destination`; a file goes into `destination` when that ends in `/`, else becomes it. The
/// SSH user owns what it uploads; modes are kept (SCP sends them).
fn upload(root: &Root, source: &str, destination: &str, uid: u32, gid: u32) {
    let src = Path::new(source);
    let (from, to) = if src.is_dir() && source.ends_with('/') {
        (src.join("."), root.join(destination))
    } else if src.is_dir() || destination.ends_with('/') {
        let name = src.file_name().unwrap();
        (src.to_path_buf(), root.join(destination).join(name))
    } else {
        (src.to_path_buf(), root.join(destination))
    };
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    let status = std::process::Command::new("cp")
        .args(["-R", "--preserve=mode,timestamps", "-T"])
        .arg(&from)
        .arg(&to)
        .status()
        .unwrap();
    assert!(status.success(), "cp {} {}", from.display(), to.display());
    for entry in walkdir::WalkDir::new(&to) {
        let entry = entry.unwrap();
        std::os::unix::fs::lchown(entry.path(), Some(uid), Some(gid)).unwrap();
    }
}
