//! Debian roots made by `debootstrap`, built once per machine and kept outside the checkout.
//!
//! A root is described by a [`Recipe`] (suite, mirror, packages, a finishing step). Its cache
//! entry is keyed by the SHA-256 of everything that makes it: the recipe's fields and this
//! file's own source (the code that builds it), so changing either builds a new root and a
//! second run on the same machine reuses the first one's. Each entry records a digest of its
//! whole tree (paths, types, modes, owners, contents); the digest is checked before every use,
//! and a damaged entry (a file changed, added or removed) is deleted and built again.
//!
//! The cache lives in `/var/cache/obstack/debian-roots` (root only, as debootstrap is), or in
//! `OBSTACK_ROOT_CACHE`. Test processes may ask for the same root at once: a lock file per
//! entry makes one of them build it while the others wait. A root is only ever read (copied
//! or used as an overlay's lower directory), never written to after it is built.

use std::fs::{self, File};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

/// The default cache directory (outside any checkout, kept across runs).
pub const DEFAULT_CACHE: &str = "/var/cache/obstack/debian-roots";

/// What a root is made of. Every field is part of its cache key.
pub struct Recipe {
    /// A short name for the cache entry, e.g. `rehearsal-base`.
    pub name: &'static str,
    pub suite: &'static str,
    pub mirror: &'static str,
    /// `debootstrap --variant=minbase --include=...`.
    pub include: &'static [&'static str],
    /// Installed with apt inside the root after debootstrap (packages whose virtual
    /// dependencies debootstrap cannot resolve).
    pub apt_install: &'static [&'static str],
    /// Extra apt sources (`deb ...` lines) added before `apt_install`, e.g. backports.
    pub apt_sources: &'static [&'static str],
    /// Run on the finished root before it is sealed; its source is not in the key, so a
    /// recipe that changes it must change `revision`.
    pub finish: fn(&Path),
    /// Bumped by hand when `finish` changes what it does.
    pub revision: u32,
}

impl Recipe {
    /// The cache key: SHA-256 (hex) over every field and the builder's source.
    pub fn key(&self) -> String {
        let mut hash = Sha256::new();
        let mut field = |label: &str, value: &[u8]| {
            for part in [label.as_bytes(), value] {
                hash.update((part.len() as u64).to_be_bytes());
                hash.update(part);
            }
        };
        field("format", b"obstack-debian-root/v1");
        field("name", self.name.as_bytes());
        field("suite", self.suite.as_bytes());
        field("mirror", self.mirror.as_bytes());
        field("include", self.include.join(",").as_bytes());
        field("apt-install", self.apt_install.join(",").as_bytes());
        field("apt-sources", self.apt_sources.join("\n").as_bytes());
        field("revision", self.revision.to_string().as_bytes());
        field("builder", include_str!("debian_root.rs").as_bytes());
        hex::encode(hash.finalize())
    }
}

/// The cache directory: `OBSTACK_ROOT_CACHE`, else [`DEFAULT_CACHE`].
pub fn cache_dir() -> PathBuf {
    std::env::var_os("OBSTACK_ROOT_CACHE")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE))
}

/// The root for `recipe`: from the cache when its entry is complete and intact, else built
/// (once, under a lock) and cached. Panics with the failing command's output: this runs only
/// inside tests.
pub fn cached(recipe: &Recipe) -> PathBuf {
    assert!(
        is_root(),
        "building a Debian root needs root (debootstrap, chroot), as CI runs the tests"
    );
    let cache = cache_dir();
    fs::create_dir_all(&cache)
        .unwrap_or_else(|e| panic!("cannot create the root cache {}: {e}", cache.display()));
    let key = recipe.key();
    let entry = cache.join(format!("{}-{}", recipe.name, &key[..16]));
    let lock_path = cache.join(format!("{}-{}.lock", recipe.name, &key[..16]));
    let lock_file = File::create(&lock_path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", lock_path.display()));
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("cannot lock {}: {e}", lock_path.display()));

    let root = entry.join("root");
    let recorded = entry.join("tree.sha256");
    if let Ok(recorded) = fs::read_to_string(&recorded) {
        let started = Instant::now();
        let now = tree_digest(&root);
        if now == recorded.trim() {
            eprintln!(
                "debian root: {} from the cache ({}, verified in {:.1?})",
                recipe.name,
                entry.display(),
                started.elapsed()
            );
            return root;
        }
        eprintln!(
            "debian root: the cached {} at {} does not match its recorded digest (damaged); building it again",
            recipe.name,
            entry.display()
        );
    }
    remove_entry(&entry);
    remove_stale_entries(&cache, recipe.name, &entry);
    build(recipe, &entry);
    root
}

/// Builds the root into `entry/root` and records its digest last, so an interrupted build
/// leaves no entry that looks complete.
fn build(recipe: &Recipe, entry: &Path) {
    let started = Instant::now();
    let root = entry.join("root");
    fs::create_dir_all(&root).unwrap_or_else(|e| panic!("cannot create {}: {e}", root.display()));
    let debootstrap = testkit::require_tool("debootstrap");
    testkit::require_tool("chroot");
    let mut command = Command::new(debootstrap);
    command.arg("--variant=minbase");
    if !recipe.include.is_empty() {
        command.arg(format!("--include={}", recipe.include.join(",")));
    }
    let output = command
        .args([recipe.suite, &root.display().to_string(), recipe.mirror])
        .output()
        .unwrap_or_else(|e| panic!("cannot run debootstrap: {e}"));
    assert!(
        output.status.success(),
        "debootstrap {} failed (is {} reachable?):\n{}",
        recipe.suite,
        recipe.mirror,
        describe(&output)
    );
    // Package scripts must not start daemons inside a chroot (on the host's network).
    let policy = root.join("usr/sbin/policy-rc.d");
    fs::write(
        &policy,
        "#!/bin/sh\n# A throwaway test root: never start services in this chroot.\nexit 101\n",
    )
    .unwrap_or_else(|e| panic!("cannot write {}: {e}", policy.display()));
    fs::set_permissions(&policy, fs::Permissions::from_mode(0o755)).unwrap();
    if !recipe.apt_sources.is_empty() {
        let sources = root.join("etc/apt/sources.list.d/obstack-test.list");
        fs::write(&sources, format!("{}\n", recipe.apt_sources.join("\n"))).unwrap();
    }
    if !recipe.apt_install.is_empty() {
        let script = format!(
            "set -e\napt-get update -q\nDEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends {}\napt-get clean\nrm -rf /var/lib/apt/lists/*\n",
            recipe.apt_install.join(" ")
        );
        let output = in_chroot(&root, &script);
        assert!(
            output.status.success(),
            "installing {} in the {} root:\n{}",
            recipe.apt_install.join(" "),
            recipe.name,
            describe(&output)
        );
    }
    (recipe.finish)(&root);
    let digest = tree_digest(&root);
    fs::write(entry.join("tree.sha256"), format!("{digest}\n")).unwrap();
    eprintln!(
        "debian root: built {} ({}) in {:.0?}",
        recipe.name,
        entry.display(),
        started.elapsed()
    );
}

/// Runs `script` with bash as root inside `root`, with /proc mounted in a private mount
/// namespace (gone when the command ends).
pub fn in_chroot(root: &Path, script: &str) -> Output {
    const SETUP: &str = "set -e\nmount -t proc proc \"$1/proc\"\nexec chroot \"$1\" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 /bin/bash -c \"$2\"\n";
    Command::new("unshare")
        .args([
            "--mount",
            "--pid",
            "--fork",
            "--propagation",
            "private",
            "--",
        ])
        .args(["sh", "-c", SETUP, "debian-root"])
        .arg(root)
        .arg(script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run unshare/chroot: {e}"))
}

/// Deletes an entry, refusing to follow anything mounted below it.
fn remove_entry(entry: &Path) {
    if !entry.exists() {
        return;
    }
    let mounted = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|point| Path::new(point).starts_with(entry));
    assert!(
        !mounted,
        "{} has something mounted below it; unmount it before the cache can rebuild it",
        entry.display()
    );
    if let Err(e) = fs::remove_dir_all(entry) {
        if e.kind() != ErrorKind::NotFound {
            panic!("cannot delete {}: {e}", entry.display());
        }
    }
}

/// Entries of the same recipe name under another key are outdated: delete them so the cache
/// holds one root per recipe. An entry another process still uses is skipped (its lock).
fn remove_stale_entries(cache: &Path, name: &str, current: &Path) {
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    let prefix = format!("{name}-");
    for entry in entries.flatten() {
        let path = entry.path();
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(key) = file_name.strip_prefix(&prefix) else {
            continue;
        };
        if path == current || !path.is_dir() || key.len() != 16 || key.contains('-') {
            continue;
        }
        let lock_path = cache.join(format!("{file_name}.lock"));
        let Ok(lock_file) = File::create(&lock_path) else {
            continue;
        };
        if let Ok(lock) = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
            eprintln!("debian root: deleting the outdated {}", path.display());
            remove_entry(&path);
            drop(lock);
            let _ = fs::remove_file(&lock_path);
        }
    }
}

/// A digest of the whole tree: each entry's path, type, mode, owner and content (or link
/// target, or device number), in path order. It does not follow symbolic links.
pub fn tree_digest(root: &Path) -> String {
    let mut hash = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    for entry in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = match entry {
            Ok(entry) => entry,
            // A tree that cannot be walked cannot be trusted: a digest nobody recorded.
            Err(e) => return format!("unreadable: {e}"),
        };
        let relative = entry.path().strip_prefix(root).unwrap_or(entry.path());
        let Ok(meta) = entry.path().symlink_metadata() else {
            return format!("unreadable: {}", entry.path().display());
        };
        let kind = meta.file_type();
        hash.update(relative.as_os_str().as_encoded_bytes());
        hash.update([0]);
        hash.update(meta.mode().to_be_bytes());
        hash.update(meta.uid().to_be_bytes());
        hash.update(meta.gid().to_be_bytes());
        if kind.is_symlink() {
            let target = fs::read_link(entry.path()).unwrap_or_default();
            hash.update(target.as_os_str().as_encoded_bytes());
        } else if kind.is_file() {
            hash.update(meta.len().to_be_bytes());
            let Ok(mut file) = File::open(entry.path()) else {
                return format!("unreadable: {}", entry.path().display());
            };
            loop {
                match file.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(n) => hash.update(&buffer[..n]),
                    Err(e) => return format!("unreadable: {}: {e}", entry.path().display()),
                }
            }
        } else if !kind.is_dir() {
            hash.update(meta.rdev().to_be_bytes());
        }
        hash.update([0xff]);
    }
    hex::encode(hash.finalize())
}

pub fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

#[test]
fn a_changed_or_removed_file_changes_the_tree_digest() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/hostname"), "obstack\n").unwrap();
    std::os::unix::fs::symlink("hostname", root.join("etc/name")).unwrap();
    let first = tree_digest(root);
    assert_eq!(first, tree_digest(root), "the digest is not repeatable");

    fs::write(root.join("etc/hostname"), "obstacl\n").unwrap();
    let changed = tree_digest(root);
    assert_ne!(first, changed, "a changed byte went unnoticed");

    fs::write(root.join("etc/hostname"), "obstack\n").unwrap();
    assert_eq!(first, tree_digest(root));
    fs::set_permissions(root.join("etc/hostname"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_ne!(first, tree_digest(root), "a changed mode went unnoticed");
    fs::set_permissions(root.join("etc/hostname"), fs::Permissions::from_mode(0o644)).unwrap();

    fs::remove_file(root.join("etc/name")).unwrap();
    assert_ne!(first, tree_digest(root), "a removed link went unnoticed");
    std::os::unix::fs::symlink("other", root.join("etc/name")).unwrap();
    assert_ne!(
        first,
        tree_digest(root),
        "a changed link target went unnoticed"
    );
}

#[test]
fn the_key_changes_with_every_ingredient() {
    fn nothing(_: &Path) {}
    let base = Recipe {
        name: "test",
        suite: "bookworm",
        mirror: "http://deb.debian.org/debian",
        include: &["systemd"],
        apt_install: &["cloud-init"],
        apt_sources: &[],
        finish: nothing,
        revision: 1,
    };
    let key = base.key();
    assert_eq!(key, base.key());
    let variants = [
        Recipe {
            suite: "trixie",
            ..base
        },
        Recipe {
            include: &["systemd", "udev"],
            ..base
        },
        Recipe {
            apt_install: &[],
            ..base
        },
        Recipe {
            apt_sources: &["deb http://deb.debian.org/debian bookworm-backports main"],
            ..base
        },
        Recipe {
            revision: 2,
            ..base
        },
        Recipe {
            name: "other",
            ..base
        },
    ];
    for variant in variants {
        assert_ne!(variant.key(), key);
    }
}
