//! Fetches a pinned upstream release once into a cache directory. The archive is hashed
//! while it downloads and compared with the pinned SHA-256 *before* anything is unpacked:
//! a mismatch is refused and leaves nothing behind. Installs are atomic (unpacked into a
//! temporary directory, then renamed), so an interrupted download is simply redone.

use std::fs::File;
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use sha2::{Digest, Sha256};

/// A release to install: where to get it and what it must hash to.
#[derive(Debug, Clone)]
pub struct Release {
    /// Names the install directory, e.g. `prometheus-3.13.0-amd64`.
    pub id: String,
    pub url: String,
    /// Lowercase hex SHA-256 of the file at `url`.
    pub sha256: String,
}

/// Written into an install directory once its archive verified; its presence means "installed".
const VERIFIED_MARKER: &str = ".obstack-sha256";

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(
        "{url} does not match its pinned SHA-256 (expected {expected}, got {actual}); \
         refusing it and installing nothing: re-pin with `cargo xtask pin` only if upstream \
         really republished the file"
    )]
    ChecksumMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("cannot download {url}: {source}")]
    Fetch {
        url: String,
        #[source]
        source: anyhow::Error,
    },
    #[error(transparent)]
    Install(#[from] anyhow::Error),
}

/// The directory `release` is (or would be) installed in.
pub fn install_dir(cache_dir: &Path, release: &Release) -> PathBuf {
    cache_dir.join(&release.id)
}

/// Returns the install directory of `release`, downloading and unpacking it first unless
/// a verified copy is already in `cache_dir`.
pub fn install(cache_dir: &Path, release: &Release) -> Result<PathBuf, DownloadError> {
    let target = install_dir(cache_dir, release);
    if is_installed(&target, &release.sha256) {
        return Ok(target);
    }
    std::fs::create_dir_all(cache_dir)
        .with_context(|| format!("cannot create the download cache {}", cache_dir.display()))?;

    // Download next to the cache so the final rename never crosses filesystems.
    let mut archive = tempfile::Builder::new()
        .prefix(".download-")
        .tempfile_in(cache_dir)
        .with_context(|| format!("cannot create a file in {}", cache_dir.display()))?;
    let actual = fetch(&release.url, archive.as_file_mut())?;
    if actual != release.sha256 {
        // `archive` is deleted when dropped: nothing unverified stays on disk.
        return Err(DownloadError::ChecksumMismatch {
            url: release.url.clone(),
            expected: release.sha256.clone(),
            actual,
        });
    }

    let unpacked = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(cache_dir)
        .with_context(|| format!("cannot create a directory in {}", cache_dir.display()))?;
    unpack(archive.path(), &release.url, unpacked.path())?;
    std::fs::write(unpacked.path().join(VERIFIED_MARKER), &release.sha256)
        .context("cannot mark the unpacked release as verified")?;
    if target.exists() {
        // A partial install from an older, interrupted run (no marker): replace it.
        std::fs::remove_dir_all(&target)
            .with_context(|| format!("cannot replace {}", target.display()))?;
    }
    std::fs::rename(unpacked.keep(), &target)
        .with_context(|| format!("cannot move the release into {}", target.display()))?;
    Ok(target)
}

fn is_installed(dir: &Path, sha256: &str) -> bool {
    std::fs::read_to_string(dir.join(VERIFIED_MARKER)).is_ok_and(|marker| marker.trim() == sha256)
}

/// Streams `url` into `out`, returning the hex SHA-256 of what was received.
fn fetch(url: &str, out: &mut File) -> Result<String, DownloadError> {
    let fetch_error = |source: anyhow::Error| DownloadError::Fetch {
        url: url.to_string(),
        source,
    };
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        // Grafana's release is a few hundred MB; allow a slow link, but not forever.
        .timeout(Duration::from_secs(30 * 60))
        .build()
        .map_err(|e| fetch_error(e.into()))?;
    let response = client
        .get(url)
        .send()
        .and_then(reqwest::blocking::Response::error_for_status)
        .map_err(|e| fetch_error(e.into()))?;

    let progress = indicatif::ProgressBar::new(response.content_length().unwrap_or(0));
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "  {msg} {bar:30} {bytes}/{total_bytes} ({bytes_per_sec})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    progress.set_message(url.rsplit('/').next().unwrap_or(url).to_string());
    let mut reader = progress.wrap_read(response);
    let mut hashing = HashingWriter {
        inner: out,
        hasher: Sha256::new(),
    };
    io::copy(&mut reader, &mut hashing).map_err(|e| fetch_error(e.into()))?;
    hashing.flush().map_err(|e| fetch_error(e.into()))?;
    progress.finish_and_clear();
    Ok(hex::encode(hashing.hasher.finalize()))
}

/// Hashes everything written through it.
struct HashingWriter<'a> {
    inner: &'a mut File,
    hasher: Sha256,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Unpacks by the URL's suffix: `.tar.gz`/`.tgz`, `.zip`, or else a bare executable.
fn unpack(archive: &Path, url: &str, into: &Path) -> anyhow::Result<()> {
    let file = BufReader::new(
        File::open(archive).with_context(|| format!("cannot open {}", archive.display()))?,
    );
    let name = url.rsplit('/').next().unwrap_or(url);
    if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        // `unpack` refuses entries that would land outside `into`.
        tar::Archive::new(flate2::read::GzDecoder::new(file))
            .unpack(into)
            .with_context(|| format!("cannot unpack {name}"))
    } else if name.ends_with(".zip") {
        zip::ZipArchive::new(file)
            .and_then(|mut zip| zip.extract(into))
            .with_context(|| format!("cannot unpack {name}"))
    } else {
        let path = into.join(name);
        let mut out =
            File::create(&path).with_context(|| format!("cannot write {}", path.display()))?;
        let mut file = file;
        io::copy(&mut file, &mut out)
            .with_context(|| format!("cannot write {}", path.display()))?;
        make_executable(&path)
    }
}

/// Finds the executable called one of `names` in an install directory.
pub fn find_executable<S: AsRef<str>>(dir: &Path, names: &[S]) -> anyhow::Result<PathBuf> {
    for name in names.iter().map(AsRef::as_ref) {
        let found = walkdir::WalkDir::new(dir)
            .into_iter()
            .filter_map(Result::ok)
            .find(|entry| entry.file_type().is_file() && entry.file_name() == name);
        if let Some(entry) = found {
            let path = entry.into_path();
            // Zip archives do not always carry the executable bit.
            make_executable(&path)?;
            return Ok(path);
        }
    }
    let names: Vec<&str> = names.iter().map(AsRef::as_ref).collect();
    anyhow::bail!(
        "{} holds no executable named {}",
        dir.display(),
        names.join(" or ")
    )
}

fn make_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut permissions = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .permissions();
    permissions.set_mode(permissions.mode() | 0o755);
    std::fs::set_permissions(path, permissions)
        .with_context(|| format!("cannot make {} executable", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use testkit::http::{Response, TestServer};

    /// Serves `body` to every request on a loopback port.
    fn serve(body: Vec<u8>) -> TestServer {
        TestServer::start(move |_| Response::ok(body.clone()))
    }

    /// A release tarball holding `thing-1.0.linux-amd64/thing`, like upstream's.
    fn tarball() -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let script = b"#!/bin/sh\necho thing\n";
        let mut header = tar::Header::new_gnu();
        header.set_size(script.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        builder
            .append_data(&mut header, "thing-1.0.linux-amd64/thing", &script[..])
            .unwrap();
        builder.into_inner().unwrap().finish().unwrap()
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    fn entries(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|dir| {
                dir.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn a_mismatching_download_is_refused_and_nothing_is_installed() {
        let body = tarball();
        let server = serve(body.clone());
        let base = server.url();
        let cache = tempfile::tempdir().unwrap();
        let release = Release {
            id: "thing-1.0-amd64".into(),
            url: format!("{base}/thing-1.0.linux-amd64.tar.gz"),
            // The checksum of something else.
            sha256: sha256_hex(b"not the archive"),
        };
        let error = install(cache.path(), &release).unwrap_err();
        assert!(
            matches!(error, DownloadError::ChecksumMismatch { .. }),
            "{error}"
        );
        let message = error.to_string();
        assert!(message.contains(&sha256_hex(&body)), "{message}");
        assert!(!install_dir(cache.path(), &release).exists());
        assert_eq!(
            entries(cache.path()),
            Vec::<String>::new(),
            "left files behind"
        );
    }

    #[test]
    fn a_matching_download_is_installed_once_and_reused() {
        let body = tarball();
        let server = serve(body.clone());
        let base = server.url();
        let cache = tempfile::tempdir().unwrap();
        let release = Release {
            id: "thing-1.0-amd64".into(),
            url: format!("{base}/thing-1.0.linux-amd64.tar.gz"),
            sha256: sha256_hex(&body),
        };
        let dir = install(cache.path(), &release).unwrap();
        assert_eq!(dir, install_dir(cache.path(), &release));
        let binary = find_executable(&dir, &["thing"]).unwrap();
        let output = std::process::Command::new(&binary).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "thing");
        assert_eq!(entries(cache.path()), vec!["thing-1.0-amd64".to_string()]);

        // Cached: a second install must not fetch (the URL now points nowhere).
        let offline = Release {
            url: "http://127.0.0.1:9/gone.tar.gz".into(),
            ..release
        };
        assert_eq!(install(cache.path(), &offline).unwrap(), dir);
    }

    #[test]
    fn zip_releases_are_unpacked_and_made_executable() {
        let mut zip = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        zip.start_file("loki-linux-amd64", zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(b"#!/bin/sh\necho loki\n").unwrap();
        let body = zip.finish().unwrap().into_inner();
        let server = serve(body.clone());
        let base = server.url();
        let cache = tempfile::tempdir().unwrap();
        let release = Release {
            id: "loki-3.0-amd64".into(),
            url: format!("{base}/loki-linux-amd64.zip"),
            sha256: sha256_hex(&body),
        };
        let dir = install(cache.path(), &release).unwrap();
        let binary = find_executable(&dir, &["loki", "loki-linux-amd64"]).unwrap();
        assert!(binary.ends_with("loki-linux-amd64"));
        let output = std::process::Command::new(&binary).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "loki");
    }

    #[test]
    fn an_unreachable_url_is_a_fetch_error() {
        let cache = tempfile::tempdir().unwrap();
        let release = Release {
            id: "x".into(),
            // Port 9 (discard) on loopback: nothing listens in a test environment.
            url: "http://127.0.0.1:9/x.tar.gz".into(),
            sha256: sha256_hex(b""),
        };
        let error = install(cache.path(), &release).unwrap_err();
        assert!(matches!(error, DownloadError::Fetch { .. }), "{error}");
        assert!(!install_dir(cache.path(), &release).exists());
    }
}
