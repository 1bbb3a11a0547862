//! Stand-ins for the upstream release archives: for every component of the checked-in
//! `images/versions.toml`, an archive with the layout its install script expects (found from
//! the real download's file name), holding shell scripts that report the pinned version. The
//! rehearsal serves them from its own HTTPS site and pins *their* checksums in a versions
//! file of its own; a real bake never sees either.

use std::collections::BTreeMap;
use std::io::Write;

use sha2::{Digest, Sha256};
use xtask::versions::{Component, Manifest};

/// The architecture the golden images are baked for.
pub const ARCH: &str = "amd64";

/// One component's stand-in archive.
pub struct Archive {
    /// Path on the site, e.g. `/node_exporter/node_exporter-1.12.1.linux-amd64.tar.gz`.
    pub path: String,
    pub bytes: Vec<u8>,
    /// The executables inside, by file name (what an install must put somewhere, and a
    /// refused download must not).
    pub executables: Vec<String>,
}

impl Archive {
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(&self.bytes))
    }
}

/// Every component's stand-in, by component name.
pub fn archives(real: &Manifest) -> BTreeMap<String, Archive> {
    real.components
        .iter()
        .map(|(name, component)| (name.clone(), archive(name, component)))
        .collect()
}

/// The real manifest with each download pointing at `site` and pinned to the stand-in's
/// checksum; `tampered` names a component whose pin is deliberately wrong (a download whose
/// checksum does not match, as a compromised or corrupted release would be).
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
        component.url = format!("{site}{}", archive.path);
        component.sha256 = BTreeMap::from([(ARCH.to_string(), sum)]);
    }
    manifest
}

/// What goes into a component's archive, from the real download's file name:
/// - `NAME-linux-amd64.zip` (Loki, Promtail): that one executable at the top;
/// - `NAME-VERSION.linux-amd64.tar.gz` (the Prometheus family): a directory of that name
///   holding NAME and the release's companion tools;
/// - Grafana's tarball: `grafana-vVERSION/` with `bin/grafana` and `bin/grafana-server`.
///
/// Anything else fails the rehearsal naming the component, so a new component gets a
/// stand-in written here rather than a silent skip.
fn archive(name: &str, component: &Component) -> Archive {
    let version = &component.version;
    let file = component.download_file_name(ARCH);
    let path = format!("/{name}/{file}");
    if let Some(stem) = file.strip_suffix(".zip") {
        let entries = vec![(stem.to_string(), stand_in(stem, name, version))];
        return Archive {
            path,
            bytes: zip(&entries),
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
        let mut programs = vec![name.to_string()];
        programs.extend(companions(name).iter().map(|p| p.to_string()));
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
    let mut entries: Vec<(String, String)> = programs
        .iter()
        .map(|program| {
            let exe = program.rsplit('/').next().unwrap_or(program);
            (format!("{dir}/{program}"), stand_in(exe, name, version))
        })
        .collect();
    entries.push((
        format!("{dir}/LICENSE"),
        "Stand-in archive for the provisioning rehearsal.\n".to_string(),
    ));
    Archive {
        path,
        bytes: tar_gz(&dir, &entries),
        executables: programs
            .iter()
            .map(|p| p.rsplit('/').next().unwrap_or(p).to_string())
            .collect(),
    }
}

/// Tools a Prometheus-style release ships beside its main binary.
fn companions(name: &str) -> &'static [&'static str] {
    match name {
        "prometheus" => &["promtool"],
        "alertmanager" => &["amtool"],
        _ => &[],
    }
}

/// A program that reports `version` like the real one (`NAME, version X.Y.Z`), and for any
/// other call (a config check) succeeds only if every absolute path it is given exists: the
/// self-checks must hand it the files they rendered.
fn stand_in(exe: &str, component: &str, version: &str) -> String {
    format!(
        r#"#!/bin/sh
# Stand-in for {exe} of {component} {version}, made by the provisioning rehearsal
# (images/checks/tests/checks/rehearsal.rs).
for arg in "$@"; do
  case $arg in
    --version | -version | version) echo "{exe}, version {version} (rehearsal stand-in)"; exit 0 ;;
  esac
done
for arg in "$@"; do
  path=${{arg#*=}}
  case $path in
    /*) [ -e "$path" ] || {{ echo "{exe} (stand-in): $path does not exist" >&2; exit 1; }} ;;
  esac
done
"#
    )
}

fn tar_gz(top: &str, entries: &[(String, String)]) -> Vec<u8> {
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
    for (path, text) in entries {
        let mode = if text.starts_with("#!") { 0o755 } else { 0o644 };
        let mut h = header(tar::EntryType::Regular, mode, text.len() as u64);
        tar.append_data(&mut h, path, text.as_bytes()).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

fn zip(entries: &[(String, String)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (path, text) in entries {
        let options = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
        zip.start_file(path.as_str(), options).unwrap();
        zip.write_all(text.as_bytes()).unwrap();
    }
    zip.finish().unwrap().into_inner()
}
