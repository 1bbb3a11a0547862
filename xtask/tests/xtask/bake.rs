//! `cargo xtask bake` against moto with Packer 1.6.6 (smoke source): preflight errors,
//! skip logic, the end-to-end parallel bake, and Ctrl-C cleanup.

use crate::bake_support;

use std::time::{Duration, Instant};

use bake_support::{describe, flip_last_byte, roles, states, tags, Sandbox, StallingEc2};

#[test]
fn preflight_errors_are_one_line_and_nothing_is_created() {
    let sandbox = Sandbox::new();
    let unknown = sandbox
        .xtask(&["bake", "--smoke", "--only", "nginx"])
        .output()
        .unwrap();
    let no_packer = sandbox
        .xtask(&["bake", "--smoke"])
        .env("PATH", sandbox.dir.path())
        .output()
        .unwrap();
    let no_credentials = sandbox
        .xtask(&["bake", "--smoke"])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .unwrap();
    let unknown_role = format!(
        "unknown role `nginx`: expected one of {}",
        roles().join(", ")
    );
    for (output, expected) in [
        (&unknown, unknown_role.as_str()),
        (&no_packer, "`packer` is not on PATH"),
        (&no_credentials, "no AWS credentials"),
    ] {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{}", describe(output));
        let error_lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(error_lines.len(), 1, "{}", describe(output));
        assert!(error_lines[0].contains(expected), "{}", describe(output));
    }
    assert!(sandbox.project_images().is_empty());
    assert_eq!(sandbox.all_instances(), 0);
}

#[test]
fn existing_hashes_are_skipped_and_one_changed_role_is_the_only_one_baked() {
    let sandbox = Sandbox::new();
    let (output, plan) = sandbox.bake_json(&["--smoke", "--dry-run"]);
    assert!(output.status.success(), "{}", describe(&output));
    let planned = states(&plan);
    assert_eq!(planned.len(), roles().len());
    for (role, (state, hash, _)) in &planned {
        assert_eq!(state, "would-build", "{role}");
        sandbox.register(
            role,
            hash,
            &format!("obstack-{role}-{}-20260101000000", &hash[..12]),
        );
    }
    assert!(sandbox.project_images().len() == roles().len());

    // Every hash exists: nothing is built, no instance is launched.
    let (output, summary) = sandbox.bake_json(&["--smoke"]);
    assert!(output.status.success(), "{}", describe(&output));
    for (role, (state, hash, ami)) in states(&summary) {
        assert_eq!(state, "up-to-date", "{role}");
        assert_eq!(hash, planned[&role].1);
        assert!(ami.is_some());
    }
    assert_eq!(
        sandbox.all_instances(),
        0,
        "a no-op bake launched an instance"
    );
    assert_eq!(sandbox.project_images().len(), roles().len());

    // One byte of one role's file: exactly that role is baked. (A template: xtask reads
    // role.toml itself, so a byte flipped there would be a parse error, not a change.)
    let loki_template = sandbox.images().join("loki/templates/loki.yaml.j2");
    flip_last_byte(&loki_template);
    let (output, summary) = sandbox.bake_json(&["--smoke"]);
    assert!(output.status.success(), "{}", describe(&output));
    let after = states(&summary);
    for role in roles() {
        let expected = if role == "loki" {
            "built"
        } else {
            "up-to-date"
        };
        assert_eq!(after[role].0, expected, "{role}: {summary:#}");
        assert_eq!(
            after[role].1 == planned[role].1,
            role != "loki",
            "{role}'s hash"
        );
    }
    let images = sandbox.project_images();
    assert_eq!(images.len(), roles().len() + 1);
    let new_loki = images
        .iter()
        .find(|i| i.image_id() == after["loki"].2.as_deref())
        .expect("the new loki AMI");
    let new_tags = tags(new_loki);
    assert_eq!(new_tags["obstack:input-hash"], after["loki"].1);
    assert_eq!(new_tags["obstack:role"], "loki");
    assert!(
        new_tags["obstack:input-digests"].contains("files:role="),
        "{new_tags:?}"
    );

    // The plan now explains a further change by input, against that newest AMI.
    flip_last_byte(&loki_template);
    std::fs::write(
        sandbox.dir.path().join("artifacts/stack-agent"),
        b"a newer agent",
    )
    .unwrap();
    let (_, plan) = sandbox.bake_json(&["--smoke", "--dry-run", "--only", "loki"]);
    let reasons = plan["roles"][0]["reasons"].to_string();
    assert!(
        reasons.contains("the role's directory changed since ami-"),
        "{reasons}"
    );
    assert!(
        reasons.contains("the stack-agent binary changed"),
        "{reasons}"
    );
    assert!(!reasons.contains("images/common/"), "{reasons}");
}

#[test]
fn a_smoke_bake_builds_every_role_into_moto_in_parallel_with_the_contract_tags() {
    let sandbox = Sandbox::new();
    let (output, summary) = sandbox.bake_json(&["--smoke"]);
    assert!(output.status.success(), "{}", describe(&output));
    let result = states(&summary);
    let images = sandbox.project_images();
    assert_eq!(images.len(), roles().len(), "{images:#?}");
    let revision = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(testkit::workspace_root())
        .output()
        .unwrap();
    let revision = String::from_utf8_lossy(&revision.stdout).trim().to_string();
    for role in roles() {
        let (state, hash, ami) = &result[role];
        assert_eq!(state, "built", "{role}");
        let image = images
            .iter()
            .find(|i| i.image_id() == ami.as_deref())
            .unwrap_or_else(|| panic!("{role}: {ami:?} not in moto"));
        let tags = tags(image);
        assert_eq!(tags["obstack:project"], "obstack");
        assert_eq!(tags["obstack:role"], role);
        assert_eq!(&tags["obstack:input-hash"], hash);
        assert!(
            tags["obstack:git-revision"].starts_with(&revision),
            "{tags:?}"
        );
        assert!(
            tags.keys().any(|k| k.starts_with("obstack:version:")),
            "{tags:?}"
        );
        assert!(
            tags["obstack:input-digests"].contains("base-ami=ami-"),
            "{tags:?}"
        );
        assert!(image
            .name()
            .unwrap()
            .starts_with(&format!("obstack-{role}-{}-", &hash[..12])));
        let log = sandbox
            .dir
            .path()
            .join("target/bake")
            .join(role)
            .join("packer.log");
        assert!(
            std::fs::read_to_string(&log)
                .unwrap()
                .contains("AMIs were created"),
            "{}",
            log.display()
        );
    }
    // In parallel: every build started before any finished.
    let spans: Vec<(f64, f64)> = summary["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let start = r["started_at_unix"].as_f64().unwrap();
            (start, start + r["duration_secs"].as_f64().unwrap())
        })
        .collect();
    let last_start = spans.iter().map(|s| s.0).fold(f64::MIN, f64::max);
    let first_end = spans.iter().map(|s| s.1).fold(f64::MAX, f64::min);
    assert!(
        last_start < first_end,
        "the builds ran one after another: {spans:?}"
    );
    assert_eq!(
        sandbox.live_instances(),
        0,
        "a builder instance was left running"
    );
}

#[test]
fn ctrl_c_during_a_bake_reaches_every_packer_which_cleans_up_before_the_bake_exits() {
    let sandbox = Sandbox::new();
    // Builders never finish booting here, so without the interrupt no bake could end.
    let ec2 = StallingEc2::start(&sandbox.moto.endpoint());
    let mut child = sandbox
        .xtask(&["bake", "--smoke", "--json"])
        .env("AWS_ENDPOINT_URL", ec2.endpoint())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until every role's Packer has launched its builder, then interrupt as a terminal
    // would.
    let deadline = Instant::now() + Duration::from_secs(180);
    while sandbox.all_instances() < roles().len() {
        assert!(
            Instant::now() < deadline,
            "not every role launched a builder"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the bake ended before every builder was launched"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(sandbox.live_instances(), roles().len());
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(240);
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the bake did not stop after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("interrupt"), "{}", describe(&output));
    let summary: serde_json::Value =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|_| panic!("{}", describe(&output)));
    let result = states(&summary);
    assert_eq!(result.len(), roles().len(), "the summary names every role");
    for (role, (state, ..)) in &result {
        assert_eq!(state, "interrupted", "{role}: {}", describe(&output));
    }
    assert!(
        sandbox.project_images().is_empty(),
        "an interrupted bake registered an AMI"
    );

    // Every Packer cleaned up after itself before the bake returned.
    sandbox.runtime.block_on(async {
        let pairs = sandbox.client.describe_key_pairs().send().await.unwrap();
        let leftover: Vec<_> = pairs
            .key_pairs()
            .iter()
            .filter_map(|k| k.key_name())
            .filter(|n| n.starts_with("packer"))
            .collect();
        assert!(
            leftover.is_empty(),
            "temporary key pairs left: {leftover:?}"
        );
        let groups = sandbox
            .client
            .describe_security_groups()
            .send()
            .await
            .unwrap();
        let leftover: Vec<_> = groups
            .security_groups()
            .iter()
            .filter_map(|g| g.group_name())
            .filter(|n| *n != "default")
            .collect();
        assert!(
            leftover.is_empty(),
            "temporary security groups left: {leftover:?}"
        );
    });
    assert_eq!(
        sandbox.live_instances(),
        0,
        "a builder instance was left running"
    );
}
