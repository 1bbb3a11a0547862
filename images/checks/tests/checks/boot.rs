//! First boot, for real: every role's provisioned root boots as a virtual machine, with its
//! data volume as an NVMe disk and its tags from an IMDSv2 stand-in, and serves; a new
//! instance from a fresh root takes over the volume; a failing unit is named with its
//! journal and exit code; Prometheus' samples survive a snapshot restored to a new instance.
//! Needs root, qemu and socat. images/README.md ("Booting the images") says what is real
//! and what stands in, and how to run one role.

use crate::boot_kit;
use crate::rehearsal::in_parallel;

use std::time::{Duration, Instant};

use boot_kit::boot::{Boot, BootFailure, BootOptions};
use boot_kit::checks::{self, Written};
use boot_kit::deployment::{random_hex, Deployment};
use boot_kit::image::{self, BootImage, Edit, Provisioning, Variant};
use boot_kit::{images_dir, registry, scratch};
use stack_agent::mount::VolumeId;

/// The roles to boot: every role of the registry, or the comma-separated ones in
/// `OBSTACK_BOOT_ROLES` (to run one role's boot, images/README.md).
fn roles_to_boot() -> Vec<String> {
    let all = registry().names();
    match std::env::var("OBSTACK_BOOT_ROLES") {
        Ok(list) if !list.trim().is_empty() => {
            let wanted: Vec<String> = list.split(',').map(|r| r.trim().to_string()).collect();
            for role in &wanted {
                assert!(
                    all.contains(&role.as_str()),
                    "OBSTACK_BOOT_ROLES names `{role}`, which is not a role ({})",
                    all.join(", ")
                );
            }
            wanted
        }
        _ => all.into_iter().map(str::to_string).collect(),
    }
}

/// A boot failure as the test's panic message.
fn ok<T>(result: Result<T, BootFailure>) -> T {
    result.unwrap_or_else(|failure| panic!("{failure}"))
}

/// The first instance boots, renders, serves and keeps its data on its volume.
fn first_boot(
    image: &BootImage,
    deployment: &Deployment,
) -> (Option<checks::DataListing>, Vec<Written>) {
    let mut boot = Boot::start(image, deployment, BootOptions::new("first"));
    ok(boot.settle());
    ok(boot.wait_healthy());
    ok(checks::rendered_from_tags(&mut boot));
    let written = ok(checks::serves(&mut boot, deployment));
    let listing = ok(checks::data_volume(&mut boot));
    ok(boot.power_off());
    boot.record_timing();
    (listing, written)
}

/// The system user a newer base image has before the provisioners run.
const NEWER_BASE_USER: &str = "obstack-newer-base";

#[test]
fn every_role_boots_serves_and_a_replacement_keeps_its_data() {
    let started = Instant::now();
    let deployment = Deployment::new("boottest", scratch());
    in_parallel(
        &roles_to_boot(),
        |role| role.clone(),
        |role| {
            let (image, _) = image::provision(role, &Provisioning::default(), &[]);
            let (before, written) = first_boot(&image, &deployment);
            // A stateless role (the app) has nothing a new instance takes over.
            let Some(before) = before else { return };
            let volume = deployment
                .volume(role)
                .expect("a stateful role has a volume");
            let uuid = xtask::vm::disk::filesystem_uuid(&volume.path).unwrap();
            assert_eq!(
                uuid.as_deref(),
                Some(before.uuid.as_str()),
                "{role}: the volume's filesystem UUID on the host differs from the guest's"
            );

            // A new instance from a fresh root, as `deploy` rolls out a new AMI: the volume
            // moves over, nothing is reformatted, the data is there and owned right. Its base
            // has one more system user, made before ours (as a newer base image may): service
            // users without fixed ids would get other uids, and lose their files.
            let (newer, _) = image::provision(
                role,
                &Provisioning {
                    extra_system_user: Some(NEWER_BASE_USER),
                },
                &[],
            );
            let mut second = Boot::start(&newer, &deployment, BootOptions::new("replacement"));
            ok(second.settle());
            ok(second.wait_healthy());
            ok(checks::rendered_from_tags(&mut second));
            let after = ok(checks::data_volume(&mut second)).expect("the volume is mounted");
            ok(checks::same_data(&mut second, &before, &after));
            ok(checks::still_there(&mut second, &written));
            ok(second.power_off());
            second.record_timing();
            assert_eq!(
                xtask::vm::disk::filesystem_uuid(&volume.path).unwrap(),
                uuid,
                "{role}: the replacement changed the volume's filesystem"
            );
        },
    );
    eprintln!(
        "boot: every role booted, served and was replaced in {:.0?} (wall time)",
        started.elapsed()
    );
}

/// The stateful role whose volume is the smallest (the cheapest VM to break on purpose).
fn smallest_stateful_role() -> &'static xtask::roles::Role {
    registry()
        .roles()
        .iter()
        .filter(|role| role.data.is_some())
        .min_by_key(|role| role.data.as_ref().map(|d| d.min_size_gib))
        .expect("a role with a data volume")
}

/// `unit`'s file as the image ships it.
fn shipped_unit(unit: &str) -> String {
    let path = images_dir()
        .join("common/rootfs/etc/systemd/system")
        .join(unit);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_broken_unit_fails_the_boot_with_its_journal_and_the_agents_exit_code() {
    let role = smallest_stateful_role();
    let spec = boot_kit::deployment::spec(&role.name);
    // The agent's units may no longer write the role's config directory: one
    // `ReadWritePaths=` entry gone from the list the render and watch units share, as a
    // careless edit would drop it. (From the render unit alone it heals: `watch`, started
    // beside it, renders the files and the next start of the render unit finds them
    // unchanged.)
    let config_dir = std::path::Path::new(&spec.files[0].path)
        .parent()
        .unwrap()
        .display()
        .to_string();
    let entry = format!(" -{config_dir}");
    let without_entry = |unit: &str| {
        let shipped = shipped_unit(unit);
        assert!(
            shipped.contains(&entry),
            "{unit} has no `{entry}` in ReadWritePaths= to remove"
        );
        shipped.replacen(&entry, "", 1)
    };
    // The mount step's own ExecStart with a short device wait and no late look: a volume
    // that is not there fails in seconds instead of the five minutes an attachment gets
    // (and the six hours more a late attachment gets).
    let exec_start = shipped_unit("stack-agent-mount.service")
        .lines()
        .find(|line| line.starts_with("ExecStart="))
        .expect("the mount unit's ExecStart")
        .to_string();
    let variants = [
        Variant {
            name: "read-only-config",
            edits: [
                ("stack-agent-render.service", "/etc/systemd/system/stack-agent-render.service"),
                ("stack-agent-watch.service", "/etc/systemd/system/stack-agent-watch.service"),
            ]
            .into_iter()
            .map(|(unit, path)| Edit {
                path,
                contents: Some(without_entry(unit)),
            })
            .collect(),
        },
        Variant {
            name: "short-device-wait",
            edits: vec![Edit {
                path: "/etc/systemd/system/stack-agent-mount.service.d/zz-boot-test.conf",
                contents: Some(format!(
                    "# The boot test's: give up on the volume after 20 s.\n[Service]\nExecStart=\n{exec_start} --device-timeout 20 --late-timeout 0\n"
                )),
            }],
        },
    ];
    let (_, images) = image::provision(&role.name, &Provisioning::default(), &variants);
    let wrong_serial = format!("vol0{}", random_hex(8));
    let cases: Vec<(&BootImage, Option<String>, Vec<String>)> = vec![
        (
            &images[0].1,
            None,
            vec![
                "stack-agent-render.service failed (exit-code, exit code 5)".into(),
                "status=5/".into(),
                "Read-only file system".into(),
                config_dir.clone(),
            ],
        ),
        (
            &images[1].1,
            Some(wrong_serial),
            vec![
                "stack-agent-mount.service failed (exit-code, exit code 7)".into(),
                "status=7/".into(),
                "did not appear within 20s".into(),
            ],
        ),
    ];
    in_parallel(
        &cases,
        |(image, serial, _)| {
            format!(
                "{} {}",
                image.role,
                if serial.is_some() {
                    "wrong serial"
                } else {
                    "read-only config"
                }
            )
        },
        |(image, serial, expected)| {
            // Each its own deployment: a volume is attached to one instance at a time.
            let deployment = Deployment::new("boottest", scratch());
            let mut options = BootOptions::new(if serial.is_some() {
                "wrong-serial"
            } else {
                "read-only-config"
            });
            options.serial = serial.clone();
            let mut boot = Boot::start(image, &deployment, options);
            let failure = match boot.settle() {
                Ok(_) => panic!("{}: the boot settled with every unit active", boot.name()),
                Err(failure) => failure.message,
            };
            boot.machine.kill();
            let missing: Vec<&String> = expected
                .iter()
                .filter(|e| !failure.contains(e.as_str()))
                .collect();
            assert!(
                missing.is_empty(),
                "the failure message lacks {missing:?}:\n{failure}"
            );
            eprintln!("boot: the expected failure, as the test prints it:\n{failure}");
        },
    );
}

#[test]
fn prometheus_samples_survive_a_snapshot_restored_to_a_new_instance() {
    let role = registry()
        .roles()
        .iter()
        .find(|role| role.services.iter().any(|s| s.name == "prometheus"))
        .expect("a role runs Prometheus");
    let (image, _) = image::provision(&role.name, &Provisioning::default(), &[]);
    let deployment = Deployment::new("boottest", scratch());
    let mut first = Boot::start(&image, &deployment, BootOptions::new("snapshotted"));
    ok(first.settle());
    ok(first.wait_healthy());
    let written = ok(checks::serves(&mut first, &deployment));
    let Some(Written::Samples { at }) = written.first().cloned() else {
        panic!("{}: Prometheus reported no samples", first.name());
    };
    // A snapshot holds what reached the volume: the guest writes its dirty pages back
    // within about 35 s (30 s expiry, 5 s writeback interval). Samples older than that
    // must be in it; the instance keeps running and writing while it is taken, as DLM's
    // daily snapshot catches a live volume.
    let settle = Duration::from_secs(40);
    let age = Duration::from_secs_f64((now() - at).max(0.0));
    std::thread::sleep(settle.saturating_sub(age));
    let volume = deployment.volume(&role.name).unwrap();
    let snapshot = scratch().join(format!("{}-snapshot.img", role.name));
    ok(first
        .machine
        .pause()
        .map_err(|e| first.failure(&format!("{e:#}"), &[])));
    xtask::vm::disk::snapshot(&volume.path, &snapshot).unwrap();
    first.machine.kill();
    drop(first);

    let restored = VolumeId::parse(&format!("vol-0{}", random_hex(8))).unwrap();
    let mut options = BootOptions::new("restored");
    options.volume = Some((snapshot.clone(), restored));
    let mut second = Boot::start(&image, &deployment, options);
    ok(second.settle());
    ok(second.wait_healthy());
    ok(checks::still_there(&mut second, &written));
    ok(second.power_off());
    second.record_timing();
    let _ = std::fs::remove_file(&snapshot);
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}
