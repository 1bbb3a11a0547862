//! The provisioning rehearsal: every role's real provisioning scripts, run by the golden
//! source's provisioners in the template's order, in a throwaway Debian root (debootstrap,
//! chroot) with stand-in upstream downloads on a loopback HTTPS site; then the provisioned
//! root is checked for what a booted instance needs. Needs root, as CI runs it.
//! images/README.md ("Provisioning rehearsal") says where it differs from Ubuntu noble.

use crate::rehearsal_kit;

use std::time::Instant;

use rehearsal_kit::root::{describe, Root};
use rehearsal_kit::{builder, checks, provision, registry, roles, steps, Downloads};

/// Runs `rehearse` for each of `cases` on its own thread (the work is mostly waiting on
/// apt, dpkg and the disk) and fails with every case's failure, not only the first.
pub fn in_parallel<T: Sync>(
    cases: &[T],
    label: impl Fn(&T) -> String + Sync,
    rehearse: impl Fn(&T) + Sync,
) {
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = cases
            .iter()
            .map(|case| (label(case), scope.spawn(|| rehearse(case))))
            .collect();
        handles
            .into_iter()
            .filter_map(|(label, handle)| {
                handle.join().err().map(|panic| {
                    let message = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    format!("--- {label}\n{message}")
                })
            })
            .collect()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_role_provisions_in_a_debian_root_and_has_what_a_booted_instance_needs() {
    let started = Instant::now();
    rehearsal_kit::root::base();
    let downloads = Downloads::get();
    let artifacts = rehearsal_kit::artifacts_dir();
    let manifest = downloads.manifest(None);
    eprintln!(
        "rehearsal: base root, binaries and downloads ready after {:.0?}",
        started.elapsed()
    );

    in_parallel(
        &roles(),
        |role| role.to_string(),
        |role| {
            let role_started = Instant::now();
            let spec = registry().role(role).unwrap();
            let root = Root::copy_of_base();
            let journal = builder::prepare(&root, &downloads.certificate.pem);
            let run = provision(&root, &steps(role, &manifest));
            if let Some((script, output)) = &run.failed {
                panic!(
                    "{role}: {script} failed:\n{}\n\nthe scripts before it:\n{}",
                    describe(output),
                    run.transcript()
                );
            }
            let mut problems = Vec::new();
            problems.extend(checks::users_and_groups(&root, spec));
            problems.extend(checks::fixed_ids(&root, spec));
            problems.extend(checks::static_files(
                &root,
                spec,
                &rehearsal_kit::images_dir(),
            ));
            problems.extend(checks::units(&root));
            problems.extend(checks::shipped_binaries(&root, spec, artifacts));
            problems.extend(checks::agent_spec(&root, spec));
            problems.extend(checks::cleaned_up(&root, &journal));
            assert!(
                problems.is_empty(),
                "{role}: the provisioned root is not what a booted instance needs:\n  {}\n\nscripts run:\n{}",
                problems.join("\n  "),
                run.transcript()
            );
            eprintln!(
                "rehearsal: {role} provisioned ({} scripts) and checked in {:.0?}",
                run.ran.len(),
                role_started.elapsed()
            );
        },
    );
    eprintln!(
        "rehearsal: every role in {:.0?} (wall time)",
        started.elapsed()
    );
}

#[test]
fn a_download_whose_checksum_does_not_match_stops_the_bake_and_installs_nothing() {
    let started = Instant::now();
    let downloads = Downloads::get();
    // Each component, rehearsed with the first role that ships it.
    let cases: Vec<(String, String)> = downloads
        .real
        .components
        .keys()
        .map(|component| {
            let role = roles()
                .into_iter()
                .find(|role| {
                    downloads
                        .real
                        .for_role(role)
                        .any(|(name, _)| name == component)
                })
                .unwrap_or_else(|| panic!("no role ships {component}"));
            (component.clone(), role.to_string())
        })
        .collect();
    in_parallel(
        &cases,
        |(component, role)| format!("{component} ({role})"),
        |(component, role)| {
            let archive = &downloads.archives[component];
            let manifest = downloads.manifest(Some(component.as_str()));
            let url = &manifest.components[component].url;
            let root = Root::copy_of_base();
            builder::prepare(&root, &downloads.certificate.pem);
            let run = provision(&root, &steps(role, &manifest));
            let Some((script, output)) = &run.failed else {
                panic!(
                    "{component}: the bake went on past a download whose checksum does not match:\n{}",
                    run.transcript()
                );
            };
            let stderr = String::from_utf8_lossy(&output.stderr);
            // The error names the download and what it really hashed to, so an operator
            // can tell a stale pin from a tampered release.
            assert!(
                stderr.contains(&format!("SHA-256 mismatch for {url}"))
                    && stderr.contains(&format!("got {}", archive.sha256())),
                "{component}: {script} failed without naming the mismatch:\n{}",
                describe(output)
            );
            let file_name = archive.path.rsplit('/').next().unwrap_or_default();
            let problems =
                checks::nothing_installed(&root, component, &archive.executables, file_name);
            assert!(problems.is_empty(), "{component}: {}", problems.join("\n"));
            eprintln!("rehearsal: {component}'s tampered download stopped {script} ({role})");
        },
    );
    eprintln!(
        "rehearsal: every tampered download refused in {:.0?}",
        started.elapsed()
    );
}
