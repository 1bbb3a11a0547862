//! Releases and channels against moto's SSM and EC2: `release create`, `releases`,
//! `promote`, `rollback` and prune's protection of what a channel may need back.

use crate::bake_support;

use std::collections::BTreeMap;
use std::process::Output;

use aws_sdk_ssm::config::{BehaviorVersion, Credentials, Region};
use bake_support::{describe, roles, Sandbox};
use serde_json::Value;

/// Registers one AMI per role tagged with input hash `digit` x 64; role → AMI.
fn bake_set(sandbox: &Sandbox, digit: char) -> BTreeMap<String, String> {
    roles()
        .into_iter()
        .map(|role| {
            let hash = digit.to_string().repeat(64);
            let name = format!("obstack-{role}-{}-2026120{digit}000000", &hash[..12]);
            (role.to_string(), sandbox.register(role, &hash, &name))
        })
        .collect()
}

fn ami_flags(set: &BTreeMap<String, String>) -> Vec<String> {
    set.iter()
        .flat_map(|(role, ami)| ["--ami".to_string(), format!("{role}={ami}")])
        .collect()
}

fn run(sandbox: &Sandbox, args: &[&str]) -> Output {
    sandbox.xtask(args).output().unwrap()
}

fn ok(sandbox: &Sandbox, args: &[&str]) -> String {
    let output = run(sandbox, args);
    assert!(
        output.status.success(),
        "xtask {args:?}: {}",
        describe(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn fails(sandbox: &Sandbox, args: &[&str]) -> String {
    let output = run(sandbox, args);
    assert!(
        !output.status.success(),
        "xtask {args:?} should fail: {}",
        describe(&output)
    );
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "one error line: {stderr}"
    );
    stderr
}

/// `release create` for `set`, pointing `channel` at it; returns the release id. Release ids
/// are unique to the second, so successive creates wait for the next one.
fn create(sandbox: &Sandbox, set: &BTreeMap<String, String>, channel: Option<&str>) -> String {
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut args = vec!["release".to_string(), "create".into(), "--json".into()];
    args.extend(ami_flags(set));
    if let Some(channel) = channel {
        args.extend(["--channel".to_string(), channel.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let record: Value = serde_json::from_str(&ok(sandbox, &args)).unwrap();
    for (role, ami) in set {
        assert_eq!(record["roles"][role]["ami"], ami.as_str(), "{record}");
    }
    record["id"].as_str().unwrap().to_string()
}

fn listing(sandbox: &Sandbox) -> Value {
    serde_json::from_str(&ok(sandbox, &["releases", "--json"])).unwrap()
}

fn channel(sandbox: &Sandbox, name: &str) -> Option<String> {
    listing(sandbox)["channels"][name]
        .as_str()
        .map(str::to_string)
}

fn ssm(sandbox: &Sandbox) -> aws_sdk_ssm::Client {
    let config = aws_sdk_ssm::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(sandbox.moto.endpoint())
        .credentials_provider(Credentials::new("test", "test", None, None, "moto"))
        .build();
    aws_sdk_ssm::Client::from_conf(config)
}

/// The values of a channel's parameter versions, oldest first.
fn history(sandbox: &Sandbox, channel: &str) -> Vec<String> {
    let client = ssm(sandbox);
    sandbox.runtime.block_on(async {
        let out = match client
            .get_parameter_history()
            .name(format!("/obstack/obstack/channels/{channel}"))
            .send()
            .await
        {
            Ok(out) => out,
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_parameter_not_found()) =>
            {
                return Vec::new();
            }
            Err(error) => panic!("GetParameterHistory: {error}"),
        };
        let mut versions: Vec<(i64, String)> = out
            .parameters()
            .iter()
            .map(|p| (p.version(), p.value().unwrap_or_default().to_string()))
            .collect();
        versions.sort();
        versions.into_iter().map(|(_, v)| v).collect()
    })
}

fn put_raw(sandbox: &Sandbox, name: &str, value: &str) {
    let client = ssm(sandbox);
    sandbox.runtime.block_on(async {
        client
            .put_parameter()
            .name(name)
            .value(value)
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .overwrite(true)
            .send()
            .await
            .unwrap();
    });
}

fn deregister(sandbox: &Sandbox, ami: &str) {
    sandbox.runtime.block_on(async {
        sandbox
            .client
            .deregister_image()
            .image_id(ami)
            .send()
            .await
            .unwrap();
    });
}

fn project_ami_ids(sandbox: &Sandbox) -> Vec<String> {
    sandbox
        .project_images()
        .iter()
        .filter_map(|i| i.image_id().map(str::to_string))
        .collect()
}

#[test]
fn releases_are_recorded_promoted_and_rolled_back_along_the_channel_history() {
    let sandbox = Sandbox::new();
    let first = bake_set(&sandbox, '1');
    let second = bake_set(&sandbox, '2');
    let r1 = create(&sandbox, &first, Some("candidate"));
    let r2 = create(&sandbox, &second, Some("candidate"));
    assert_ne!(r1, r2);

    let listed = listing(&sandbox);
    let ids: Vec<&str> = listed["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [r2.as_str(), r1.as_str()], "newest first");
    assert_eq!(listed["releases"][0]["channels"][0], "candidate");
    assert_eq!(
        listed["releases"][0]["roles"]["app"]["input_hash"],
        "2".repeat(64)
    );
    let table = ok(&sandbox, &["releases"]);
    assert!(
        table.contains(&r1) && table.contains("candidate"),
        "{table}"
    );

    ok(&sandbox, &["promote", &r1, "--to", "stable"]);
    ok(&sandbox, &["promote", "candidate", "--to", "stable"]);
    assert_eq!(channel(&sandbox, "stable").as_deref(), Some(r2.as_str()));
    let again = ok(&sandbox, &["promote", "candidate", "--to", "stable"]);
    assert!(again.contains("nothing changed"), "{again}");
    assert_eq!(history(&sandbox, "stable"), [r1.clone(), r2.clone()]);

    let rolled = ok(&sandbox, &["rollback", "--channel", "stable"]);
    assert!(rolled.contains(&format!("{r2} -> {r1}")), "{rolled}");
    assert_eq!(channel(&sandbox, "stable").as_deref(), Some(r1.as_str()));

    let error = fails(&sandbox, &["rollback", "--channel", "stable"]);
    assert!(error.contains("no earlier release"), "{error}");
    assert_eq!(
        history(&sandbox, "stable").len(),
        3,
        "a refused rollback moves nothing"
    );
    let error = fails(&sandbox, &["rollback", "--channel", "nightly"]);
    assert!(error.contains("does not exist"), "{error}");
}

#[test]
fn a_release_whose_amis_are_gone_or_whose_record_is_malformed_is_refused() {
    let sandbox = Sandbox::new();
    let first = bake_set(&sandbox, '1');
    let r1 = create(&sandbox, &first, None);

    // An AMI of another role, or one missing, is not recorded.
    let mut swapped = first.clone();
    let (app, grafana) = (first["app"].clone(), first["grafana"].clone());
    swapped.insert("app".into(), grafana);
    swapped.insert("grafana".into(), app);
    let mut args = vec!["release".to_string(), "create".into()];
    args.extend(ami_flags(&swapped));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let error = fails(&sandbox, &args);
    assert!(error.contains("image, not"), "{error}");

    deregister(&sandbox, &first["loki"]);
    let error = fails(&sandbox, &["promote", &r1, "--to", "stable"]);
    assert!(
        error.contains("no longer exist") && error.contains(&first["loki"]),
        "{error}"
    );
    assert!(
        history(&sandbox, "stable").is_empty(),
        "nothing was pointed"
    );

    put_raw(&sandbox, "/obstack/obstack/releases/bogus", "{not json");
    let listed = run(&sandbox, &["releases"]);
    assert!(listed.status.success(), "{}", describe(&listed));
    let warnings = String::from_utf8_lossy(&listed.stderr);
    assert!(
        warnings.contains("bogus") && warnings.contains("not valid JSON"),
        "{warnings}"
    );
    let error = fails(&sandbox, &["promote", "bogus", "--to", "stable"]);
    assert!(error.contains("not valid JSON"), "{error}");

    // A channel whose history names an unreadable release stops prune before it deletes.
    put_raw(&sandbox, "/obstack/obstack/channels/stable", "bogus");
    let before = project_ami_ids(&sandbox).len();
    let error = fails(&sandbox, &["prune", "--keep", "1"]);
    assert!(error.contains("prune stops"), "{error}");
    assert_eq!(project_ami_ids(&sandbox).len(), before);
}

#[test]
fn two_promotes_racing_leave_a_consistent_history() {
    let sandbox = Sandbox::new();
    let r1 = create(&sandbox, &bake_set(&sandbox, '1'), None);
    let r2 = create(&sandbox, &bake_set(&sandbox, '2'), None);
    let racers: Vec<_> = [&r1, &r2]
        .into_iter()
        .map(|id| {
            sandbox
                .xtask(&["promote", id, "--to", "race"])
                .spawn()
                .unwrap()
        })
        .collect();
    for racer in racers {
        let output = racer.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", describe(&output));
    }
    let moves = history(&sandbox, "race");
    let mut sorted = moves.clone();
    sorted.sort();
    assert_eq!(sorted, [r1.clone(), r2.clone()], "both moves recorded once");
    let current = channel(&sandbox, "race").unwrap();
    assert_eq!(
        Some(&current),
        moves.last(),
        "the channel is its newest move"
    );

    ok(&sandbox, &["rollback", "--channel", "race"]);
    assert_eq!(channel(&sandbox, "race").as_ref(), moves.first());
}

#[test]
fn prune_keeps_the_amis_of_releases_in_a_channels_recent_history() {
    let sandbox = Sandbox::new();
    let oldest = bake_set(&sandbox, '1');
    let middle = bake_set(&sandbox, '2');
    let newest = bake_set(&sandbox, '3');
    create(&sandbox, &oldest, Some("stable"));
    create(&sandbox, &middle, Some("stable"));

    // keep 1 leaves only the newest by count; the channel's last move protects the oldest.
    let dry = ok(
        &sandbox,
        &[
            "prune",
            "--keep",
            "1",
            "--keep-channel-history",
            "1",
            "--dry-run",
        ],
    );
    for ami in oldest.values().chain(middle.values()) {
        assert!(!dry.contains(ami.as_str()), "{ami} is protected:\n{dry}");
    }

    ok(
        &sandbox,
        &["prune", "--keep", "1", "--keep-channel-history", "0"],
    );
    let left = project_ami_ids(&sandbox);
    for ami in middle.values().chain(newest.values()) {
        assert!(left.contains(ami), "{ami} must survive");
    }
    for ami in oldest.values() {
        assert!(!left.contains(ami), "{ami} is outside the kept history");
    }
}

#[test]
fn a_release_of_the_images_a_channel_already_has_is_not_recorded_again() {
    let sandbox = Sandbox::new();
    let set = bake_set(&sandbox, '1');
    let first = create(&sandbox, &set, Some("candidate"));
    let again = create(&sandbox, &set, Some("candidate"));
    assert_eq!(first, again, "the channel's release is kept");
    assert_eq!(listing(&sandbox)["releases"].as_array().unwrap().len(), 1);
    assert_eq!(history(&sandbox, "candidate"), vec![first.clone()]);
    // Without a channel, a release is always recorded.
    let other = create(&sandbox, &set, None);
    assert_ne!(other, first);
}

/// `deploy --plan-only` through a stand-in terraform: returns the AMIs Terraform was asked
/// to plan the first apply with, and stderr.
fn plan_deploy(sandbox: &Sandbox, args: &[&str], running: &[(&str, &str)]) -> (Value, String) {
    let scratch = tempfile::tempdir().unwrap();
    let terraform = testkit::FakeTerraform::install(scratch.path(), running);
    let vars = scratch.path().join("mine.tfvars");
    std::fs::write(&vars, "allowed_web_cidrs = [\"198.51.100.7/32\"]\n").unwrap();
    let mut all = vec![
        "deploy",
        "--plan-only",
        "--var-file",
        vars.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let mut command = sandbox.xtask(&all);
    terraform.apply_env(&mut command);
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{}", describe(&output));
    assert!(
        !terraform.calls().contains(" apply"),
        "{}",
        terraform.calls()
    );
    let planned = terraform
        .planned_ami_ids()
        .unwrap_or_else(|| panic!("no plan: {}", terraform.calls()));
    (planned, stderr)
}

#[test]
fn deploy_takes_a_channels_release_or_a_pinned_release_id() {
    let sandbox = Sandbox::new();
    let first = bake_set(&sandbox, '1');
    let second = bake_set(&sandbox, '2');
    let r1 = create(&sandbox, &first, Some("stable"));
    let r2 = create(&sandbox, &second, Some("candidate"));
    // The stack runs the first release everywhere but Loki, which still runs the second.
    let mut running: Vec<(&str, &str)> = first
        .iter()
        .map(|(role, ami)| (role.as_str(), ami.as_str()))
        .collect();
    for entry in &mut running {
        if entry.0 == "loki" {
            entry.1 = second["loki"].as_str();
        }
    }

    // `--channel stable`: the roll-out's first apply moves Loki (first in the order) back to
    // the release's AMI and leaves every other role where it is.
    let (planned, stderr) = plan_deploy(&sandbox, &["--channel", "stable"], &running);
    assert_eq!(planned, serde_json::json!(first), "{stderr}");
    assert!(
        stderr.contains(&format!("channel stable ({r1})")),
        "{stderr}"
    );

    // `--release ID`: exactly that release, whatever the channels say.
    let (planned, stderr) = plan_deploy(&sandbox, &["--release", &r2], &running);
    let mut expected = first.clone();
    expected.insert("loki".into(), second["loki"].clone());
    // Loki already runs r2's AMI, so the first apply is Prometheus'.
    expected.insert("prometheus".into(), second["prometheus"].clone());
    assert_eq!(planned, serde_json::json!(expected), "{stderr}");
    assert!(stderr.contains(&format!("release {r2}")), "{stderr}");

    // A release whose AMIs are gone is refused before Terraform is asked anything.
    deregister(&sandbox, &second["grafana"]);
    let scratch = tempfile::tempdir().unwrap();
    let terraform = testkit::FakeTerraform::install(scratch.path(), &running);
    let mut command = sandbox.xtask(&["deploy", "--plan-only", "--release", &r2]);
    terraform.apply_env(&mut command);
    let output = command.output().unwrap();
    assert!(!output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no longer exist"), "{stderr}");
    assert!(terraform.calls().is_empty(), "{}", terraform.calls());
    let error = fails(&sandbox, &["deploy", "--plan-only", "--release", "nope"]);
    assert!(error.contains("no release nope"), "{error}");
}

#[test]
fn a_release_rolled_back_is_rejected_and_promote_refuses_it_unless_forced() {
    let sandbox = Sandbox::new();
    let r1 = create(&sandbox, &bake_set(&sandbox, '1'), Some("candidate"));
    ok(&sandbox, &["promote", "candidate", "--to", "stable"]);
    let r2 = create(&sandbox, &bake_set(&sandbox, '2'), Some("candidate"));
    ok(&sandbox, &["promote", "candidate", "--to", "stable"]);

    // The operator finds r2 bad in production and rolls stable back.
    let rolled = ok(&sandbox, &["rollback", "--channel", "stable"]);
    assert!(rolled.contains(&format!("{r2} is rejected")), "{rolled}");
    assert_eq!(channel(&sandbox, "stable").as_deref(), Some(r1.as_str()));

    // The next nightly promotion of the candidate, still r2, must not undo the rollback.
    let error = fails(&sandbox, &["promote", "candidate", "--to", "stable"]);
    assert!(
        error.contains(&format!("release {r2} is rejected"))
            && error.contains("rolled back from channel stable")
            && error.contains("--force"),
        "{error}"
    );
    assert_eq!(channel(&sandbox, "stable").as_deref(), Some(r1.as_str()));
    let error = fails(&sandbox, &["promote", &r2, "--to", "stable"]);
    assert!(error.contains("is rejected"), "{error}");

    // The listing says so, for a pipeline and for a person.
    let listed = listing(&sandbox);
    assert!(
        listed["rejected"][&r2]
            .as_str()
            .is_some_and(|why| why.contains("rolled back from channel stable")),
        "{listed}"
    );
    let entry = listed["releases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == r2.as_str())
        .unwrap();
    assert!(entry["rejected"].is_string(), "{entry}");
    assert!(listed["rejected"].get(&r1).is_none(), "{listed}");
    let table = ok(&sandbox, &["releases"]);
    assert!(table.contains("REJECTED"), "{table}");

    // A person who knows better can still force it.
    let forced = run(&sandbox, &["promote", &r2, "--to", "stable", "--force"]);
    assert!(forced.status.success(), "{}", describe(&forced));
    assert!(
        String::from_utf8_lossy(&forced.stderr).contains("warning: promoting rejected release"),
        "{}",
        describe(&forced)
    );
    assert_eq!(channel(&sandbox, "stable").as_deref(), Some(r2.as_str()));
}
