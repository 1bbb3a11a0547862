//! `cargo xtask prune` and `cargo xtask images` against moto: the newest N per role and any
//! AMI an instance uses survive; pruned AMIs' snapshots are gone.

use crate::bake_support;

use aws_sdk_ec2::types::{BlockDeviceMapping, EbsBlockDevice};
use bake_support::{describe, roles, tag_as_baked, Sandbox};

/// Registers an AMI of `role` backed by a fresh snapshot; returns (ami, snapshot).
fn register_with_snapshot(sandbox: &Sandbox, role: &str, n: u32) -> (String, String) {
    sandbox.runtime.block_on(async {
        let client = &sandbox.client;
        let volume = client
            .create_volume()
            .availability_zone("us-east-1a")
            .size(8)
            .send()
            .await
            .unwrap();
        let snapshot = client
            .create_snapshot()
            .volume_id(volume.volume_id().unwrap())
            .send()
            .await
            .unwrap();
        let snapshot_id = snapshot.snapshot_id().unwrap().to_string();
        let ami = client
            .register_image()
            .name(format!("obstack-{role}-000000000000-2026010100000{n}"))
            .root_device_name("/dev/sda1")
            .block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name("/dev/sda1")
                    .ebs(
                        EbsBlockDevice::builder()
                            .snapshot_id(&snapshot_id)
                            .volume_size(8)
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .unwrap()
            .image_id()
            .unwrap()
            .to_string();
        tag_as_baked(client, &ami, role, &format!("{n:064}")).await;
        // moto backs a registered image with a snapshot of its own: use the one it reports.
        let described = client
            .describe_images()
            .image_ids(&ami)
            .send()
            .await
            .unwrap();
        let snapshot_id = described.images()[0].block_device_mappings()[0]
            .ebs()
            .and_then(|e| e.snapshot_id())
            .unwrap_or(&snapshot_id)
            .to_string();
        (ami, snapshot_id)
    })
}

fn snapshot_exists(sandbox: &Sandbox, id: &str) -> bool {
    sandbox.runtime.block_on(async {
        let out = sandbox
            .client
            .describe_snapshots()
            .owner_ids("self")
            .send()
            .await
            .unwrap();
        out.snapshots().iter().any(|s| s.snapshot_id() == Some(id))
    })
}

#[test]
fn prune_keeps_the_newest_per_role_and_any_in_use_and_deletes_snapshots() {
    let sandbox = Sandbox::new();
    let app: Vec<(String, String)> = (1..=4)
        .map(|n| register_with_snapshot(&sandbox, "app", n))
        .collect();
    let loki: Vec<(String, String)> = (1..=2)
        .map(|n| register_with_snapshot(&sandbox, "loki", n))
        .collect();
    // The oldest app AMI runs an instance, which is then stopped: still in use.
    sandbox.runtime.block_on(async {
        let run = sandbox
            .client
            .run_instances()
            .image_id(&app[0].0)
            .min_count(1)
            .max_count(1)
            .send()
            .await
            .unwrap();
        let id = run.instances()[0].instance_id().unwrap().to_string();
        sandbox
            .client
            .stop_instances()
            .instance_ids(id)
            .send()
            .await
            .unwrap();
    });

    let listed = sandbox.xtask(&["images", "--json"]).output().unwrap();
    assert!(listed.status.success(), "{}", describe(&listed));
    let rows: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 6);
    let in_use: Vec<&str> = rows
        .iter()
        .filter(|r| r["in_use"] == true)
        .map(|r| r["ami_id"].as_str().unwrap())
        .collect();
    assert_eq!(in_use, [app[0].0.as_str()]);
    let first = roles()
        .into_iter()
        .find(|role| ["app", "loki"].contains(role))
        .unwrap();
    assert_eq!(
        rows[0]["role"], first,
        "grouped in the registry's role order"
    );

    let dry = sandbox
        .xtask(&["prune", "--keep", "2", "--dry-run"])
        .output()
        .unwrap();
    assert!(dry.status.success(), "{}", describe(&dry));
    assert!(String::from_utf8_lossy(&dry.stdout).contains(&app[1].0));
    assert_eq!(
        sandbox.project_images().len(),
        6,
        "a dry run deletes nothing"
    );

    let pruned = sandbox.xtask(&["prune", "--keep", "2"]).output().unwrap();
    assert!(pruned.status.success(), "{}", describe(&pruned));
    let left: Vec<String> = sandbox
        .project_images()
        .iter()
        .map(|i| i.image_id().unwrap().to_string())
        .collect();
    for (ami, snapshot) in [&app[0], &app[2], &app[3], &loki[0], &loki[1]] {
        assert!(left.contains(ami), "{ami} must survive: {left:?}");
        assert!(
            snapshot_exists(&sandbox, snapshot),
            "{snapshot} must survive"
        );
    }
    assert!(!left.contains(&app[1].0), "{} must be pruned", app[1].0);
    assert!(
        !snapshot_exists(&sandbox, &app[1].1),
        "the pruned AMI's snapshot must be gone"
    );

    let zero = sandbox.xtask(&["prune", "--keep", "0"]).output().unwrap();
    assert!(
        !zero.status.success()
            && String::from_utf8_lossy(&zero.stderr).contains("--keep must be at least 1")
    );
}
