//! Stand-ins for the upstream release archives: for every component of the checked-in
//! `images/versions.toml`, an archive with the layout its install script expects (found from
//! the real download's file name), holding programs that really run, so the provisioned
//! roots also boot and serve (`boot_kit`):
//! - node_exporter, Prometheus (with promtool) and Alertmanager (with amtool) are Debian's
//!   own builds of them, taken from this machine (the `prometheus-node-exporter`,
//!   `prometheus` and `prometheus-alertmanager` packages), at Debian's versions;
//! - Loki, Promtail and Grafana cannot be installed here: their archives hold the
//!   `upstream-standin` program (images/checks/src/bin/upstream-standin), which acts as the
//!   program it is installed as and reports the pinned version.
//!
//! The rehearsal serves them from its own HTTPS site and pins *their* versions and checksums
//! in a versions file of its own; a real bake never sees either.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Command;

use sha2::{Digest, Sha256};
use xtask::versions::{Component, Manifest};

/// The architecture the golden images are baked for.
pub const ARCH: &str = "amd64";

/// One component's stand-in archive.
pub struct Archive {
    /// Path on the site, e.g. `/node_exporter/node_exporter-1.5.0.linux-amd64.tar.gz`.
    pub path: String,
    pub bytes: Vec<u8>,
    /// The version its programs report: Debian's for Debian's programs, else the pin.
    pub version: String,
    /// The executables inside, by file name (what an install must put somewhere, and a
    /// refused download must not).
    pub executables: Vec<String>,
}

impl Archive {
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(&self.bytes))
    }
}

/// Where a component's programs come from.
enum Programs {
    /// Debian's builds on this machine: (the name in the release archive, the program on
    /// PATH). The first is the component's main program, whose version the archive has.
    Debian(&'static [(&'static str, &'static str)]),
    /// `upstream-standin`, under the program's names.
    StandIn,
}

/// Each component's programs. A component not listed here fails the rehearsal naming it,
/// so a new one gets a stand-in rather than a silent skip.
fn programs(name: &str) -> Programs {
    match name {
        "node_exporter" => Programs::Debian(&[("node_exporter", "prometheus-node-exporter")]),
        "prometheus" => Programs::Debian(&[("prometheus", "prometheus"), ("promtool", "promtool")]),
        "alertmanager" => Programs::Debian(&[
            ("alertmanager", "prometheus-alertmanager"),
            ("amtool", "amtool"),
        ]),
        "loki" | "promtail" | "grafana" => Programs::StandIn,
        other => panic!(
            "{other}: no stand-in for this component; teach rehearsal_kit/standins.rs where its programs come from"
        ),
    }
}

/// Every component's stand-in, by component name. `standin` is the upstream-standin
/// program's bytes.
pub fn archives(real: &Manifest, standin: &[u8]) -> BTreeMap<String, Archive> {
    real.components
        .iter()
        .map(|(name, component)| (name.clone(), archive(name, component, standin)))
        .collect()
}

/// The real manifest with each download pointing at `site`, pinned to the stand-in's
/// version and checksum; `tampered` names a component whose pin is deliberately wrong (a
/// download whose checksum does not match, as a compromised or corrupted release would be).
pub fn manifest(
    real: &Manifest,
    archives: &BTreeMap<String, Archive>,
    site: &str,
    tampered: Option<&str>,
) -> Manifest {
    let mut manifest = real.clone();
    for (name, component) in &mut manifest.components {
        let archive = &archives[name];
        let mut sum = archive.sha256();
        if tampered == Some(name.as_str()) {
            sum = hex::encode(Sha256::digest(
                [archive.bytes.as_slice(), b"tampered"].concat(),
            ));
        }
        component.version = archive.version.clone();
        component.url = format!("{site}{}", archive.path);
        component.sha256 = BTreeMap::from([(ARCH.to_string(), sum)]);
    }
    manifest
}

/// What goes into a component's archive, from the real download's file name (at the
/// version its programs report):
/// - `NAME-linux-amd64.zip` (Loki, Promtail): that one executable at the top;
/// - `NAME-VERSION.linux-amd64.tar.gz` (the Prometheus family): a directory of that name
///   holding NAME and the release's companion tools;
/// - Grafana's tarball: `grafana-vVERSION/` with `bin/grafana` and `bin/grafana-server`.
///
/// Anything else fails the rehearsal naming the component, so a new component gets a
/// stand-in written here rather than a silent skip.
fn archive(name: &str, real: &Component, standin: &[u8]) -> Archive {
    let source = programs(name);
    let (version, debian) = match &source {
        Programs::Debian(list) => (debian_version(list[0].1), *list),
        Programs::StandIn => (real.version.clone(), &[][..]),
    };
    let bytes_of = |program: &str| -> Vec<u8> {
        match debian.iter().find(|(inside, _)| *inside == program) {
            Some((_, on_path)) => {
                let path = testkit::require_tool(on_path);
                std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            }
            None => standin.to_vec(),
        }
    };
    let mut component = real.clone();
    component.version = version.clone();
    let file = component.download_file_name(ARCH);
    let path = format!("/{name}/{file}");
    if let Some(stem) = file.strip_suffix(".zip") {
        let entries = vec![(
            stem.to_string(),
            bytes_of(stem.split("-linux-").next().unwrap_or(stem)),
        )];
        return Archive {
            path,
            bytes: zip(&entries),
            version,
            executables: vec![stem.to_string()],
        };
    }
    let Some(stem) = file.strip_suffix(".tar.gz") else {
        panic!(
            "{name}: no stand-in for a {file} download; teach rehearsal_kit/standins.rs its layout"
        );
    };
    let (dir, programs): (String, Vec<String>) = if stem == format!("{name}-{version}.linux-{ARCH}")
    {
        let programs = match &source {
            Programs::Debian(list) => list.iter().map(|(inside, _)| inside.to_string()).collect(),
            Programs::StandIn => vec![name.to_string()],
        };
        (stem.to_string(), programs)
    } else if name == "grafana" {
        (
            format!("grafana-v{version}"),
            vec!["bin/grafana".to_string(), "bin/grafana-server".to_string()],
        )
    } else {
        panic!(
            "{name}: no stand-in for a {file} download; teach rehearsal_kit/standins.rs its layout"
        );
    };
    let mut entries: Vec<(String, Vec<u8>)> = programs
        .iter()
        .map(|program| {
            let exe = program.rsplit('/').next().unwrap_or(program);
            (format!("{dir}/{program}"), bytes_of(exe))
        })
        .collect();
    entries.push((
        format!("{dir}/LICENSE"),
        b"Stand-in archive for the provisioning rehearsal.\n".to_vec(),
    ));
    Archive {
        path,
        bytes: tar_gz(&dir, &entries),
        version,
        executables: programs
            .iter()
            .map(|p| p.rsplit('/').next().unwrap_or(p).to_string())
            .collect(),
    }
}

/// The version a Debian program reports (`prometheus, version 2.42.0+ds (...)` -> `2.42.0`).
fn debian_version(program: &str) -> String {
    let path = testkit::require_tool(program);
    let output = Command::new(&path)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    text.split("version ")
        .nth(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect::<String>()
        })
        .filter(|version| version.split('.').count() == 3)
        .unwrap_or_else(|| panic!("{program} --version reports no version: {text}"))
}

/// Whether `path` looks like a program (an ELF executable or a script).
fn is_program(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x7fELF") || bytes.starts_with(b"#!")
}

fn tar_gz(top: &str, entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(encoder);
    // Upstream archives are built by an unprivileged uid: the scripts must not keep it.
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(1001);
        header.set_gid(1001);
        header.set_size(size);
        header.set_mtime(1_700_000_000);
        header
    };
    let mut dirs = vec![top.to_string()];
    for (path, _) in entries {
        if let Some((parent, _)) = path.rsplit_once('/') {
            if !dirs.iter().any(|d| d == parent) {
                dirs.push(parent.to_string());
            }
        }
    }
    for dir in dirs {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        tar.append_data(&mut h, format!("{dir}/"), std::io::empty())
            .unwrap();
    }
    for (path, bytes) in entries {
        let mode = if is_program(bytes) { 0o755 } else { 0o644 };
        let mut h = header(tar::EntryType::Regular, mode, bytes.len() as u64);
        tar.append_data(&mut h, path, bytes.as_slice()).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

fn zip(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (path, bytes) in entries {
        let options = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
        zip.start_file(path.as_str(), options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap().into_inner()
}
