//! A role's bootable image: the rehearsal provisions a root (the cached Debian base, the
//! golden source's provisioners, the stand-in downloads), the test adds its network config
//! and probe ([`xtask::vm::guest`]), and `mkfs.ext4 -d` makes the root image, with the
//! kernel and initramfs copied out of the root's `/boot`. Each boot then runs on its own
//! copy of the image: a fresh root that never booted, as a new instance's root volume.

use std::path::{Path, PathBuf};
use std::time::Instant;

use xtask::vm;

use super::{agent_units, scratch};
use crate::rehearsal_kit::root::{describe, Root};
use crate::rehearsal_kit::{self, builder, steps, Downloads};

/// A change to one file of the provisioned root, for an image variant: `None` deletes it.
pub struct Edit {
    pub path: &'static str,
    pub contents: Option<String>,
}

/// What is made besides the image as provisioned.
pub struct Variant {
    pub name: &'static str,
    pub edits: Vec<Edit>,
}

/// A provisioned root's image and what booting it needs.
pub struct BootImage {
    pub role: String,
    /// Holds the image, kernel and initramfs; deleted with it.
    dir: PathBuf,
    /// The image as provisioned; [`BootImage::fresh_disk`] copies it.
    image: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// How a root is provisioned.
#[derive(Default)]
pub struct Provisioning {
    /// A system user created before the provisioners run, as a newer base image may
    /// have one: every service user made after it gets another uid than before, unless the
    /// ids are fixed.
    pub extra_system_user: Option<&'static str>,
}

/// Provisions `role`'s root and makes its image, and one image per variant (keyed by the
/// variant's name).
pub fn provision(
    role: &str,
    how: &Provisioning,
    variants: &[Variant],
) -> (BootImage, Vec<(&'static str, BootImage)>) {
    let started = Instant::now();
    let downloads = Downloads::get();
    let manifest = downloads.manifest(None);
    let root = Root::copy_of_base();
    let ready = started.elapsed();
    builder::prepare(&root, &downloads.certificate.pem);
    if let Some(user) = how.extra_system_user {
        let output = root.chroot().run_root(
            &format!(
                "useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin {user}"
            ),
            &[],
        );
        assert!(
            output.status.success(),
            "useradd {user}: {}",
            describe(&output)
        );
    }
    let run = rehearsal_kit::provision(&root, &steps(role, &manifest));
    if let Some((script, output)) = &run.failed {
        panic!(
            "{role}: {script} failed:\n{}\n\nthe scripts before it:\n{}",
            describe(output),
            run.transcript()
        );
    }
    let agent_units = agent_units();
    let agent_units: Vec<&str> = agent_units.iter().map(String::as_str).collect();
    vm::guest::install(
        root.path(),
        &format!("http://{}", vm::AWS_API_ADDR),
        &agent_units,
    )
    .unwrap_or_else(|e| panic!("{role}: {e:#}"));
    debian_program_files(&root);
    let provisioned = started.elapsed();
    let image = make_image(&root, role, "provisioned");
    let images = variants
        .iter()
        .map(|variant| {
            let originals: Vec<(&str, Option<Vec<u8>>)> = variant
                .edits
                .iter()
                .map(|edit| (edit.path, std::fs::read(root.join(edit.path)).ok()))
                .collect();
            for edit in &variant.edits {
                write_or_delete(
                    &root.join(edit.path),
                    edit.contents.as_deref().map(str::as_bytes),
                );
            }
            let made = make_image(&root, role, variant.name);
            for (path, original) in originals {
                write_or_delete(&root.join(path), original.as_deref());
            }
            (variant.name, made)
        })
        .collect();
    eprintln!(
        "boot: {role} provisioned in {:.0?} (downloads and an overlay root after {:.0?}), image(s) made in {:.0?}",
        provisioned,
        ready,
        started.elapsed() - provisioned
    );
    (image, images)
}

/// What Debian's builds of the upstream programs (the stand-in downloads) read beside their
/// binary, where upstream's builds embed it: Alertmanager's default notification templates
/// (`/usr/share/prometheus/alertmanager/*.tmpl`, without which it refuses its config).
/// Copied from this machine's package into a root that has the program.
fn debian_program_files(root: &Root) {
    const TEMPLATES: &str = "/usr/share/prometheus/alertmanager";
    if !root.join("/usr/local/bin/alertmanager").exists() {
        return;
    }
    let into = root.join(TEMPLATES);
    std::fs::create_dir_all(&into).unwrap();
    let templates = std::fs::read_dir(TEMPLATES).unwrap_or_else(|e| {
        panic!("{TEMPLATES}: {e} (Debian's prometheus-alertmanager package provides it)")
    });
    for entry in templates.flatten() {
        if entry.path().extension().is_some_and(|e| e == "tmpl") {
            std::fs::copy(entry.path(), into.join(entry.file_name())).unwrap();
        }
    }
}

fn write_or_delete(path: &Path, contents: Option<&[u8]>) {
    match contents {
        Some(bytes) => {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        None => {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn make_image(root: &Root, role: &str, name: &str) -> BootImage {
    // Numbered: a test may provision a role twice (a newer base, say).
    static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let number = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = scratch().join(format!("{role}-{name}-image-{number}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join("root.img");
    vm::disk::root_image(root.path(), &image)
        .unwrap_or_else(|e| panic!("{role}: the root image: {e:#}"));
    let (kernel, initrd) =
        vm::disk::kernel_of(root.path()).unwrap_or_else(|e| panic!("{role}: {e:#}"));
    let copy = |from: &Path, name: &str| {
        let to = dir.join(name);
        std::fs::copy(from, &to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
        to
    };
    let kernel = copy(&kernel, "vmlinuz");
    let initrd = copy(&initrd, "initrd.img");
    BootImage {
        role: role.to_string(),
        dir,
        image,
        kernel,
        initrd,
    }
}

impl Drop for BootImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl BootImage {
    /// A copy of the image at `path` (sparse): one instance's never-booted root volume.
    pub fn fresh_disk(&self, path: &Path) -> PathBuf {
        vm::disk::snapshot(&self.image, path)
            .unwrap_or_else(|e| panic!("{}: copying the root image: {e:#}", self.role));
        path.to_path_buf()
    }
}
