//! The instance roles' policies, enforced: each role's identity policies are taken from
//! `terraform/` and evaluated offline by `terraform console` (the references to resources
//! Terraform would create replaced by the ARNs they would have), then held by a moto user
//! of that role (testkit::Moto::start_enforcing). With those keys the real programs make
//! the real calls: the boot agent reads Grafana's admin password and Alertmanager's webhook
//! URL from SSM (`stack-agent render`), and Prometheus finds the app fleet through EC2
//! (`promtool check service-discovery` on the config the agent renders). What a role needs
//! works; taking the statement away, or using another role's keys, fails naming the call.

use crate::terraform_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use terraform_support::{
    address, attr, instance_count_expr, parsed_files, resources, statements, Console,
};

const ACCOUNT: &str = "123456789012";
const REGION: &str = "us-east-1";
const NAME: &str = "obstack";
const WEBHOOK_PARAMETER: &str = "/obstack/alerts/webhook-url";
const SLACK_PARAMETER: &str = "/obstack/alerts/slack-url";
const DEPLOYMENT: &str = "obstack";

/// The variables the policies are evaluated with: the fleet, a webhook parameter, Loki on
/// its volume (as the defaults, plus the optional parameter).
fn vars() -> Vec<(&'static str, String)> {
    // `-var` takes a string as it is, anything else in HCL.
    vec![
        ("name", NAME.into()),
        ("region", REGION.into()),
        ("allowed_web_cidrs", "[\"198.51.100.7/32\"]".into()),
        ("alert_webhook_url_parameter", WEBHOOK_PARAMETER.into()),
        ("alert_slack_webhook_url_parameter", SLACK_PARAMETER.into()),
        ("app_fleet", "true".into()),
    ]
}

fn grafana_password_parameter() -> String {
    format!("/obstack/{NAME}/grafana/admin-password")
}

/// What Terraform's resources and data sources would be, for the policies' references.
fn references() -> Vec<(&'static str, String)> {
    let arn =
        |service: &str, rest: &str| format!("\"arn:aws:{service}:{REGION}:{ACCOUNT}:{rest}\"");
    vec![
        ("data.aws_partition.current.partition", "\"aws\"".into()),
        (
            "data.aws_partition.current.dns_suffix",
            "\"amazonaws.com\"".into(),
        ),
        (
            "data.aws_caller_identity.current.account_id",
            format!("\"{ACCOUNT}\""),
        ),
        (
            "aws_ssm_parameter.grafana_admin_password.arn",
            arn("ssm", &format!("parameter{}", grafana_password_parameter())),
        ),
        ("aws_kms_key.stack.arn", arn("kms", "key/stack")),
        ("aws_kms_key.alerts.arn", arn("kms", "key/alerts")),
        (
            "aws_sns_topic.alerts.arn",
            arn("sns", &format!("{NAME}-alerts")),
        ),
        (
            "aws_s3_bucket.loki[0].arn",
            format!("\"arn:aws:s3:::obstack-{NAME}-loki-{ACCOUNT}\""),
        ),
    ]
}

fn substitute(text: &str, files: &BTreeMap<String, hcl::Body>) -> String {
    let mut text = text.to_string();
    // Locals that read data sources and other locals: their expressions, substituted in
    // turn (the ARNs' list reads the parameters' map).
    for name in ["alert_url_parameter_arns", "alert_url_parameters"] {
        let local = terraform_support::local_expr(files, name);
        text = text.replace(&format!("local.{name}"), &format!("({local})"));
    }
    for (reference, value) in references() {
        text = text.replace(reference, &value);
    }
    text
}

/// Every identity policy Terraform attaches to `role`'s instance role, evaluated: the
/// statements of all of them, as one policy document.
fn instance_policy(role: &str) -> Value {
    let files = parsed_files();
    let console = Console::new(&files);
    let vars = vars();
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut all = Vec::new();
    for policy in resources(&files, "aws_iam_role_policy") {
        let body = policy.body();
        let target = attr(body, "role")
            .map(|e| e.to_string())
            .unwrap_or_default();
        let for_every_role = target.contains("aws_iam_role.instance[each.key]");
        if !for_every_role && !target.contains(&format!("aws_iam_role.instance[\"{role}\"]")) {
            continue;
        }
        let count = console.eval(&vars, &instance_count_expr(policy));
        let count = count
            .as_u64()
            .unwrap_or_else(|| count.as_str().unwrap().parse().unwrap());
        if count == 0 {
            continue;
        }
        let expr = attr(body, "policy")
            .unwrap_or_else(|| panic!("{} has no policy", address(policy)))
            .to_string();
        let expr = substitute(&expr, &files).replace("each.key", &format!("\"{role}\""));
        let document = match console.eval_expr(&vars, &expr) {
            Value::String(json) => serde_json::from_str(&json).unwrap(),
            other => other,
        };
        all.extend(statements(&document).into_iter().cloned());
    }
    assert!(!all.is_empty(), "no policy for the {role} instance role");
    serde_json::json!({"Version": "2012-10-17", "Statement": all})
}

/// `policy` without the statements that allow `action`.
fn without(policy: &Value, action: &str) -> Value {
    let mut policy = policy.clone();
    policy["Statement"].as_array_mut().unwrap().retain(|s| {
        !terraform_support::string_list(&s["Action"])
            .iter()
            .any(|a| a == action)
    });
    policy
}

/// `stack-agent render` of `role` from `tags`, signed with `user`'s keys.
fn render(
    moto: &testkit::Moto,
    user: &str,
    role: &str,
    tags: &[(&str, &str)],
    root: &Path,
) -> Output {
    let tags_file = root.with_extension("tags.json");
    let tags: BTreeMap<&str, &str> = tags.iter().copied().collect();
    std::fs::write(&tags_file, serde_json::to_string(&tags).unwrap()).unwrap();
    let mut command = Command::new(testkit::workspace_bin("stack-agent", "stack-agent"));
    moto.apply_user_env(&mut command, user);
    command
        .args([
            "render",
            "--role",
            role,
            "--instance-id",
            "i-0123456789abcdef0",
        ])
        .arg("--tags-from")
        .arg(format!("file:{}", tags_file.display()))
        .arg("--root")
        .arg(root)
        .arg("--spec-dir")
        .arg(testkit::workspace_root().join("images"))
        .args(["--wait-timeout", "5"])
        .env_remove("STACK_AGENT_SPEC_DIR");
    command.output().unwrap()
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn refused(output: &Output, action: &str) -> bool {
    !output.status.success()
        && String::from_utf8_lossy(&output.stderr)
            .contains(&format!("not authorized to perform: {action}"))
}

/// Blocking SSM and EC2 calls as moto's admin, for the test's own set-up.
struct Admin {
    runtime: tokio::runtime::Runtime,
    ssm: aws_sdk_ssm::Client,
    ec2: aws_sdk_ec2::Client,
}

impl Admin {
    fn new(moto: &testkit::Moto) -> Admin {
        let env: BTreeMap<&str, String> = moto.env().into_iter().collect();
        let credentials = aws_sdk_ssm::config::Credentials::new(
            &env["AWS_ACCESS_KEY_ID"],
            &env["AWS_SECRET_ACCESS_KEY"],
            None,
            None,
            "moto",
        );
        let ssm = aws_sdk_ssm::Config::builder()
            .behavior_version(aws_sdk_ssm::config::BehaviorVersion::latest())
            .region(aws_sdk_ssm::config::Region::new(REGION))
            .endpoint_url(moto.endpoint())
            .credentials_provider(credentials.clone())
            .build();
        let ec2 = aws_sdk_ec2::Config::builder()
            .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
            .region(aws_sdk_ec2::config::Region::new(REGION))
            .endpoint_url(moto.endpoint())
            .credentials_provider(credentials)
            .build();
        Admin {
            runtime: tokio::runtime::Runtime::new().unwrap(),
            ssm: aws_sdk_ssm::Client::from_conf(ssm),
            ec2: aws_sdk_ec2::Client::from_conf(ec2),
        }
    }

    fn secure_string(&self, name: &str, value: &str) {
        self.runtime
            .block_on(
                self.ssm
                    .put_parameter()
                    .name(name)
                    .value(value)
                    .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
                    .send(),
            )
            .unwrap();
    }

    /// A running app instance of the fleet (the launch template's tags); its private address.
    fn launch_app(&self) -> String {
        use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
        let tags = [
            ("obstack:role", "app"),
            ("obstack:deployment", DEPLOYMENT),
            ("obstack:project", "obstack"),
        ];
        let spec = TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .set_tags(Some(
                tags.iter()
                    .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
                    .collect(),
            ))
            .build();
        let reservation = self
            .runtime
            .block_on(
                self.ec2
                    .run_instances()
                    .image_id("ami-12345678")
                    .min_count(1)
                    .max_count(1)
                    .tag_specifications(spec)
                    .send(),
            )
            .unwrap();
        reservation.instances()[0]
            .private_ip_address()
            .unwrap()
            .to_string()
    }
}

fn text(policy: &Value) -> String {
    policy.to_string()
}

#[test]
fn grafana_reads_its_admin_password_with_its_role_and_no_other_role_can() {
    let grafana = instance_policy("grafana");
    let prometheus = instance_policy("prometheus");
    let moto = testkit::Moto::start_enforcing(&[
        ("grafana", &text(&grafana)),
        (
            "grafana-without-read",
            &text(&without(&grafana, "ssm:GetParameter")),
        ),
        ("prometheus", &text(&prometheus)),
    ]);
    let admin = Admin::new(&moto);
    admin.secure_string(&grafana_password_parameter(), "correct-horse-battery");
    let parameter = grafana_password_parameter();
    let tags = [
        ("obstack:role", "grafana"),
        ("obstack:peer:prometheus", "10.0.1.12"),
        ("obstack:peer:loki", "10.0.1.11"),
        ("obstack:grafana-admin-password-param", parameter.as_str()),
    ];
    let scratch = tempfile::tempdir().unwrap();

    let root = scratch.path().join("grafana");
    let output = render(&moto, "grafana", "grafana", &tags, &root);
    assert!(output.status.success(), "{}", describe(&output));
    let password =
        std::fs::read_to_string(root.join("etc/grafana/secrets/admin_password")).unwrap();
    assert_eq!(password.trim(), "correct-horse-battery");

    for user in ["grafana-without-read", "prometheus"] {
        let output = render(&moto, user, "grafana", &tags, &scratch.path().join(user));
        assert!(
            refused(&output, "ssm:GetParameter"),
            "{user} must not read Grafana's password: {}",
            describe(&output)
        );
    }
}

/// Prometheus' tags with the app fleet and both webhooks' parameters, as Terraform writes them.
fn prometheus_tags() -> Vec<(&'static str, &'static str)> {
    vec![
        ("obstack:role", "prometheus"),
        ("obstack:peer:loki", "10.0.1.11"),
        ("obstack:peer:grafana", "10.0.1.13"),
        ("obstack:app-fleet-desired", "1"),
        ("obstack:deployment", DEPLOYMENT),
        ("obstack:alert-webhook-url-param", WEBHOOK_PARAMETER),
        ("obstack:alert-slack-url-param", SLACK_PARAMETER),
    ]
}

#[test]
fn prometheus_reads_the_webhooks_and_discovers_the_app_fleet_with_its_role() {
    let prometheus = instance_policy("prometheus");
    let moto = testkit::Moto::start_enforcing(&[
        ("prometheus", &text(&prometheus)),
        (
            "prometheus-without-discovery",
            &text(&without(&prometheus, "ec2:DescribeInstances")),
        ),
        ("grafana", &text(&instance_policy("grafana"))),
    ]);
    let admin = Admin::new(&moto);
    admin.secure_string(WEBHOOK_PARAMETER, "https://alerts.example.com/obstack");
    admin.secure_string(SLACK_PARAMETER, "https://hooks.slack.com/services/T0/B0/x");
    let app_ip = admin.launch_app();
    let scratch = tempfile::tempdir().unwrap();

    // The agent reads both webhook URLs with Prometheus' role; Grafana's may not.
    let root = scratch.path().join("prometheus");
    let output = render(&moto, "prometheus", "prometheus", &prometheus_tags(), &root);
    assert!(output.status.success(), "{}", describe(&output));
    let output = render(
        &moto,
        "grafana",
        "prometheus",
        &prometheus_tags(),
        &scratch.path().join("g"),
    );
    assert!(
        refused(&output, "ssm:GetParameter"),
        "{}",
        describe(&output)
    );

    // Prometheus' EC2 discovery, pointed at moto, finds the fleet with its role's keys only.
    let config = root.join("etc/prometheus/prometheus.yml");
    let mut yaml: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    let mut jobs_with_discovery = Vec::new();
    for job in yaml["scrape_configs"].as_sequence_mut().unwrap() {
        let name = job["job_name"].as_str().unwrap().to_string();
        let Some(discoveries) = job
            .get_mut("ec2_sd_configs")
            .and_then(|d| d.as_sequence_mut())
        else {
            continue;
        };
        for discovery in discoveries {
            let discovery = discovery.as_mapping_mut().unwrap();
            discovery.insert("endpoint".into(), moto.endpoint().into());
            discovery.insert("region".into(), REGION.into());
        }
        jobs_with_discovery.push(name);
    }
    assert!(
        !jobs_with_discovery.is_empty(),
        "the fleet's config discovers nothing"
    );
    std::fs::write(&config, serde_yaml_ng::to_string(&yaml).unwrap()).unwrap();
    let job = &jobs_with_discovery[0];
    let discover = |user: &str| {
        let mut command = Command::new(testkit::require_tool("promtool"));
        moto.apply_user_env(&mut command, user);
        command
            .args(["check", "service-discovery", "--timeout=10s"])
            .arg(&config)
            .arg(job);
        command.output().unwrap()
    };
    let found = discover("prometheus");
    let stdout = String::from_utf8_lossy(&found.stdout);
    assert!(found.status.success(), "{}", describe(&found));
    assert!(
        stdout.contains(&app_ip),
        "the app at {app_ip} is found: {}",
        describe(&found)
    );

    let blind = discover("prometheus-without-discovery");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&blind.stdout),
        String::from_utf8_lossy(&blind.stderr)
    );
    assert!(!all.contains(&app_ip), "{}", describe(&blind));
    assert!(
        all.contains("not authorized to perform: ec2:DescribeInstances"),
        "{}",
        describe(&blind)
    );
}
