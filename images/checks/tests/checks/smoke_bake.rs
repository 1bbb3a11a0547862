//! The smoke bake: Packer builds every role's smoke source into moto (a real EC2 API on
//! loopback), and moto then holds one AMI per role, named and tagged as images/README.md
//! promises, on the AMI and on its snapshots.

use crate::packer_env;

use std::collections::BTreeMap;

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::types::{Filter, Image, Tag};
use packer_env::{
    components_for, describe, images_dir, packer, roles, run, sample_hash, template_dir,
    write_var_file, GIT_REVISION,
};
use serde_json::json;

/// moto's built-in Canonical image (moto ships Ubuntu 14.04 and 16.04 under 099720109477);
/// the filter pattern is the template's, only the release differs.
const MOTO_UBUNTU: &str = xtask::moto::BASE_AMI_NAME;

fn ec2_client(endpoint: &str) -> aws_sdk_ec2::Client {
    let config = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("test", "test", None, None, "moto"))
        .build();
    aws_sdk_ec2::Client::from_conf(config)
}

fn tags(tags: &[Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_string(),
                t.value().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn expected_tags(role: &str) -> BTreeMap<String, String> {
    let mut expected = BTreeMap::from([
        ("obstack:project".to_string(), "obstack".to_string()),
        ("obstack:role".to_string(), role.to_string()),
        ("obstack:input-hash".to_string(), sample_hash(role)),
        ("obstack:git-revision".to_string(), GIT_REVISION.to_string()),
    ]);
    for (name, component) in components_for(role) {
        expected.insert(format!("obstack:version:{name}"), component.version);
    }
    expected
}

async fn images(client: &aws_sdk_ec2::Client) -> Vec<Image> {
    client
        .describe_images()
        .owners("self")
        .filters(
            Filter::builder()
                .name("tag:obstack:project")
                .values("obstack")
                .build(),
        )
        .send()
        .await
        .unwrap()
        .images()
        .to_vec()
}

#[test]
fn every_role_smoke_bakes_into_moto_with_its_name_and_tags() {
    let moto = testkit::Moto::start();
    let sandbox = tempfile::tempdir().unwrap();
    for role in roles() {
        let var_file = write_var_file(
            sandbox.path(),
            role,
            &sample_hash(role),
            json!({ "ec2_endpoint": moto.endpoint(), "base_ami_name": MOTO_UBUNTU }),
        );
        let mut command = packer(sandbox.path());
        moto.apply_env(&mut command);
        let output = run(command
            .current_dir(images_dir())
            .args(["build", "-only=amazon-ebs.smoke", "-color=false"])
            .arg(format!("-var-file={}", var_file.display()))
            .arg(template_dir()));
        assert!(
            output.status.success(),
            "packer build {role}: {}",
            describe(&output)
        );

        // The manifest post-processor names the AMI, for `cargo xtask bake` to read.
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(sandbox.path().join(format!("{role}-manifest.json"))).unwrap(),
        )
        .unwrap();
        let artifact = manifest["builds"][0]["artifact_id"].as_str().unwrap();
        assert!(artifact.starts_with("us-east-1:ami-"), "{role}: {manifest}");
        assert_eq!(manifest["builds"][0]["custom_data"]["role"], role);
    }

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = ec2_client(&moto.endpoint());
    let images = runtime.block_on(images(&client));
    assert_eq!(images.len(), roles().len(), "one AMI per role: {images:#?}");

    for role in roles() {
        let expected = expected_tags(role);
        let image = images
            .iter()
            .find(|i| tags(i.tags()).get("obstack:role").map(String::as_str) == Some(role))
            .unwrap_or_else(|| panic!("no AMI tagged obstack:role={role}"));
        let name = image.name().unwrap();
        let prefix = format!("obstack-{role}-{}-", &sample_hash(role)[..12]);
        let stamp = name
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("AMI name {name}"));
        assert!(
            stamp.len() == 14 && stamp.bytes().all(|b| b.is_ascii_digit()),
            "{name}"
        );

        let image_tags = tags(image.tags());
        assert_eq!(image_tags.get("Name").map(String::as_str), Some(name));
        for (key, value) in &expected {
            assert_eq!(image_tags.get(key), Some(value), "{role}: AMI tag {key}");
        }
        let versions = image_tags
            .keys()
            .filter(|k| k.starts_with("obstack:version:"))
            .count();
        assert!(
            versions >= 2,
            "{role}: node_exporter and the role's own component: {image_tags:?}"
        );

        let snapshot = image.block_device_mappings()[0]
            .ebs()
            .and_then(|e| e.snapshot_id())
            .unwrap_or_else(|| panic!("{role}: AMI without an EBS snapshot"))
            .to_string();
        let snapshot_tags = runtime.block_on(async {
            let out = client
                .describe_snapshots()
                .snapshot_ids(&snapshot)
                .send()
                .await
                .unwrap();
            tags(out.snapshots()[0].tags())
        });
        for (key, value) in &expected {
            assert_eq!(
                snapshot_tags.get(key),
                Some(value),
                "{role}: snapshot tag {key}"
            );
        }
    }

    // Nothing of the builds is left running: the builder instances are terminated.
    let running = runtime.block_on(async {
        let out = client.describe_instances().send().await.unwrap();
        out.reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter(|i| i.state().and_then(|s| s.name()).map(|n| n.as_str()) != Some("terminated"))
            .count()
    });
    assert_eq!(running, 0, "a builder instance was left behind");
}
