//! `terraform/alerting.tf`: the alert topic is encrypted with its own rotating key, only the
//! Prometheus role may publish to it (its identity policy, the topic policy, and nobody
//! else's policy), the tags that tell the instance to use it wait for the permissions, and
//! the variables refuse what AWS would. Read with hcl-rs and `terraform console` (offline).

use crate::terraform_support;

use serde_json::{json, Value};
use terraform_support::{
    address, attr, depends_on, iam_action_matches, parsed_files, policy_document, resource,
    resources, statements, string_list, variable, Console,
};

const PROMETHEUS_ROLE_ID: &str = "aws_iam_role.instance[\"prometheus\"].id";
const PROMETHEUS_ROLE_ARN: &str = "aws_iam_role.instance[\"prometheus\"].arn";
const TOPIC_ARN: &str = "aws_sns_topic.alerts.arn";

fn text(expr: Option<&hcl::Expression>) -> String {
    expr.map(|e| e.to_string()).unwrap_or_default()
}

fn allows(statement: &Value) -> bool {
    statement["Effect"] == "Allow"
}

fn grants(statement: &Value, action: &str) -> bool {
    string_list(&statement["Action"])
        .iter()
        .any(|a| iam_action_matches(a, action))
}

#[test]
fn the_alert_topic_is_encrypted_with_its_own_rotating_key() {
    let files = parsed_files();
    let topic = resource(&files, "aws_sns_topic", "alerts");
    assert_eq!(
        text(attr(topic.body(), "kms_master_key_id")),
        "aws_kms_key.alerts.arn",
        "the topic must be encrypted with the alert key"
    );
    let key = resource(&files, "aws_kms_key", "alerts");
    assert_eq!(text(attr(key.body(), "enable_key_rotation")), "true");
    // The key policy lets only the account administer it (IAM policies then grant its use):
    // no wildcard principal.
    let policy = policy_document(key.body(), "policy").unwrap();
    for statement in statements(&policy) {
        assert_ne!(statement["Principal"], "*", "{statement:#}");
        assert_ne!(statement["Principal"]["AWS"], "*", "{statement:#}");
    }
}

#[test]
fn only_the_prometheus_role_publishes_and_only_to_the_alert_topic() {
    let files = parsed_files();
    let mut publishers = Vec::new();
    for kind in ["aws_iam_role_policy", "aws_iam_policy"] {
        for policy in resources(&files, kind) {
            let document = policy_document(policy.body(), "policy").unwrap();
            for statement in statements(&document) {
                if allows(statement) && grants(statement, "sns:Publish") {
                    publishers.push(format!(
                        "{} ({}) on {:?}",
                        address(policy),
                        text(attr(policy.body(), "role")),
                        string_list(&statement["Resource"])
                    ));
                }
            }
        }
    }
    assert_eq!(
        publishers,
        [format!(
            "aws_iam_role_policy.prometheus_publishes_alerts ({PROMETHEUS_ROLE_ID}) on [\"{TOPIC_ARN}\"]"
        )],
        "only the Prometheus role may publish, and only to the alert topic"
    );

    // Its key, only through SNS in this region, and nothing but what publishing needs.
    let policy = resource(&files, "aws_iam_role_policy", "prometheus_publishes_alerts");
    let document = policy_document(policy.body(), "policy").unwrap();
    let kms: Vec<&Value> = statements(&document)
        .into_iter()
        .filter(|s| {
            string_list(&s["Action"])
                .iter()
                .any(|a| a.starts_with("kms:"))
        })
        .collect();
    assert_eq!(kms.len(), 1, "{document:#}");
    assert_eq!(string_list(&kms[0]["Resource"]), ["aws_kms_key.alerts.arn"]);
    let mut actions = string_list(&kms[0]["Action"]);
    actions.sort();
    assert_eq!(actions, ["kms:Decrypt", "kms:GenerateDataKey"]);
    let via = kms[0]["Condition"]["StringEquals"]["kms:ViaService"]
        .as_str()
        .unwrap_or_default();
    assert!(via.starts_with("sns.${var.region}."), "{document:#}");
}

#[test]
fn the_topic_policy_lets_only_the_prometheus_role_publish_over_tls() {
    let files = parsed_files();
    let policy = resource(&files, "aws_sns_topic_policy", "alerts");
    assert_eq!(text(attr(policy.body(), "arn")), TOPIC_ARN);
    let document = policy_document(policy.body(), "policy").unwrap();
    let all = statements(&document);
    let allowed_publishers: Vec<String> = all
        .iter()
        .filter(|s| allows(s) && grants(s, "sns:Publish"))
        .map(|s| s["Principal"]["AWS"].as_str().unwrap_or("?").to_string())
        .collect();
    assert_eq!(allowed_publishers, [PROMETHEUS_ROLE_ARN], "{document:#}");
    // Everyone else is denied, whatever their identity policies say.
    let denies_others = all.iter().any(|s| {
        s["Effect"] == "Deny"
            && grants(s, "sns:Publish")
            && s["Condition"]["ArnNotEquals"]["aws:PrincipalArn"] == PROMETHEUS_ROLE_ARN
    });
    assert!(
        denies_others,
        "no Deny of sns:Publish to other principals: {document:#}"
    );
    let tls_only = all
        .iter()
        .any(|s| s["Effect"] == "Deny" && s["Condition"]["Bool"]["aws:SecureTransport"] == "false");
    assert!(tls_only, "no Deny without TLS: {document:#}");
    for statement in &all {
        assert!(
            !(allows(statement) && statement["Principal"]["AWS"] == "*"),
            "an Allow to everyone: {statement:#}"
        );
    }
}

/// The actions a topic policy may name (Amazon SNS Developer Guide, "Amazon SNS API
/// permissions: Actions and resources reference", Valid Amazon SNS policy actions).
const SNS_TOPIC_POLICY_ACTIONS: [&str; 11] = [
    "sns:AddPermission",
    "sns:DeleteTopic",
    "sns:GetDataProtectionPolicy",
    "sns:GetTopicAttributes",
    "sns:ListSubscriptionsByTopic",
    "sns:ListTagsForResource",
    "sns:Publish",
    "sns:PutDataProtectionPolicy",
    "sns:RemovePermission",
    "sns:SetTopicAttributes",
    "sns:Subscribe",
];

#[test]
fn the_topic_policy_names_only_actions_sns_takes_and_denies_publishing_without_tls_as_documented() {
    let files = parsed_files();
    let policy = resource(&files, "aws_sns_topic_policy", "alerts");
    let document = policy_document(policy.body(), "policy").unwrap();
    let mut problems = Vec::new();
    for statement in statements(&document) {
        for action in string_list(&statement["Action"]) {
            if !SNS_TOPIC_POLICY_ACTIONS
                .iter()
                .any(|a| a.eq_ignore_ascii_case(&action))
            {
                problems.push(format!(
                    "{}: {action} is not an action SNS takes in a topic policy (one of {SNS_TOPIC_POLICY_ACTIONS:?})",
                    statement["Sid"]
                ));
            }
        }
        // A topic policy covers its own topic only.
        assert_eq!(
            string_list(&statement["Resource"]),
            [TOPIC_ARN],
            "{statement:#}"
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // SNS's own statement ("Enforce encryption of data in transit"): anyone's SNS:Publish
    // without TLS is denied.
    let documented = json!({
        "Effect": "Deny",
        "Principal": "*",
        "Action": "SNS:Publish",
        "Resource": TOPIC_ARN,
        "Condition": { "Bool": { "aws:SecureTransport": "false" } },
    });
    let tls = statements(&document)
        .into_iter()
        .find(|s| !s["Condition"]["Bool"]["aws:SecureTransport"].is_null())
        .expect("no statement on aws:SecureTransport");
    let mut without_sid = tls.clone();
    without_sid.as_object_mut().unwrap().remove("Sid");
    assert_eq!(
        without_sid, documented,
        "the TLS statement is not SNS's documented one"
    );
}

/// Sample parameter names for the two webhooks.
const SLACK_PARAM: &str = "/obstack/alerts/slack-url";
const WEBHOOK_PARAM: &str = "webhook-url";

#[test]
fn the_webhook_parameters_are_read_only_by_prometheus_and_only_those_named() {
    let files = parsed_files();
    let policy = resource(&files, "aws_iam_role_policy", "prometheus_reads_alert_urls");
    assert_eq!(text(attr(policy.body(), "role")), PROMETHEUS_ROLE_ID);
    assert_eq!(
        text(attr(policy.body(), "count")),
        "length(local.alert_url_parameters) == 0 ? 0 : 1",
        "the read permission exists only with a parameter"
    );
    let document = policy_document(policy.body(), "policy").unwrap();
    let reads: Vec<&Value> = statements(&document)
        .into_iter()
        .filter(|s| allows(s) && grants(s, "ssm:GetParameter"))
        .collect();
    assert_eq!(reads.len(), 1, "{document:#}");
    assert_eq!(
        string_list(&reads[0]["Resource"]),
        ["local.alert_url_parameter_arns"]
    );
    assert_eq!(string_list(&reads[0]["Action"]), ["ssm:GetParameter"]);
    let decrypt = statements(&document)
        .into_iter()
        .find(|s| allows(s) && grants(s, "kms:Decrypt"))
        .unwrap_or_else(|| panic!("no kms:Decrypt: {document:#}"));
    let equals = &decrypt["Condition"]["StringEquals"];
    assert_eq!(
        equals["kms:EncryptionContext:PARAMETER_ARN"], "local.alert_url_parameter_arns",
        "only in those parameters' encryption context: {document:#}"
    );
    assert!(
        equals["kms:ViaService"]
            .as_str()
            .unwrap_or_default()
            .starts_with("ssm.${var.region}."),
        "only through SSM: {document:#}"
    );
    assert_eq!(string_list(&decrypt["Resource"]), ["aws_kms_key.stack.arn"]);

    // Exactly the named parameters, each once, by the tag that names it; the ARNs with or
    // without a leading slash (the partition and account, which need the provider, stand
    // in as text).
    let console = Console::new(&files);
    let parameters = terraform_support::local_expr(&files, "alert_url_parameters");
    let arns = terraform_support::local_expr(&files, "alert_url_parameter_arns")
        .replace("${data.aws_partition.current.partition}", "aws")
        .replace(
            "${data.aws_caller_identity.current.account_id}",
            "123456789012",
        )
        .replace("local.alert_url_parameters", &format!("({parameters})"));
    let region = ("region", "eu-west-1");
    let both = [
        region,
        ("alert_slack_webhook_url_parameter", SLACK_PARAM),
        ("alert_webhook_url_parameter", WEBHOOK_PARAM),
    ];
    assert_eq!(
        console.eval_expr(&both, &parameters),
        serde_json::json!({
            "obstack:alert-slack-url-param": SLACK_PARAM,
            "obstack:alert-webhook-url-param": WEBHOOK_PARAM,
        })
    );
    assert_eq!(
        console.eval_expr(&both, &arns),
        serde_json::json!([
            "arn:aws:ssm:eu-west-1:123456789012:parameter/obstack/alerts/slack-url",
            "arn:aws:ssm:eu-west-1:123456789012:parameter/webhook-url",
        ])
    );
    let slack_only = [region, ("alert_slack_webhook_url_parameter", SLACK_PARAM)];
    assert_eq!(
        console.eval_expr(&slack_only, &arns),
        serde_json::json!([
            "arn:aws:ssm:eu-west-1:123456789012:parameter/obstack/alerts/slack-url"
        ])
    );
    assert_eq!(
        console.eval_expr(&[region], &parameters),
        serde_json::json!({})
    );
}

#[test]
fn the_webhook_tags_carry_the_keys_the_agent_reads_and_wait_for_the_permission() {
    let files = parsed_files();
    let tag = resource(&files, "aws_ec2_tag", "alert_url_param");
    assert_eq!(
        text(attr(tag.body(), "for_each")),
        "local.alert_url_parameters"
    );
    assert_eq!(text(attr(tag.body(), "key")), "each.key");
    assert_eq!(text(attr(tag.body(), "value")), "each.value");
    assert!(
        depends_on(tag.body())
            .iter()
            .any(|w| w == "aws_iam_role_policy.prometheus_reads_alert_urls"),
        "{} does not wait for the read permission",
        address(tag)
    );
    // The keys are the agent's, and the Prometheus role reads each (images/prometheus).
    let console = Console::new(&files);
    let keys = console.eval_expr(
        &[
            ("alert_slack_webhook_url_parameter", SLACK_PARAM),
            ("alert_webhook_url_parameter", WEBHOOK_PARAM),
        ],
        &format!(
            "keys({})",
            terraform_support::local_expr(&files, "alert_url_parameters")
        ),
    );
    assert_eq!(
        string_list(&keys),
        [
            stack_agent::tags::ALERT_SLACK_URL_PARAM,
            stack_agent::tags::ALERT_WEBHOOK_URL_PARAM
        ]
    );
    let spec = stack_agent::RoleSpec::load(&xtask::project::images_dir(), "prometheus").unwrap();
    for key in string_list(&keys) {
        assert!(
            spec.secrets.iter().any(|s| s.name_tag == key && s.optional),
            "the prometheus role reads no optional secret named by {key}"
        );
    }
}

#[test]
fn the_alert_tags_wait_for_the_permissions_they_announce() {
    let files = parsed_files();
    let sns = resource(&files, "aws_ec2_tag", "alert_sns_topic_arn");
    assert_eq!(
        text(attr(sns.body(), "key")),
        "\"obstack:alert-sns-topic-arn\""
    );
    assert_eq!(text(attr(sns.body(), "value")), TOPIC_ARN);
    let waits = depends_on(sns.body());
    for needed in [
        "aws_iam_role_policy.prometheus_publishes_alerts",
        "aws_sns_topic_policy.alerts",
    ] {
        assert!(
            waits.iter().any(|w| w == needed),
            "{} lacks depends_on {needed}",
            address(sns)
        );
    }
    let webhook = resource(&files, "aws_ec2_tag", "alert_url_param");
    let grafana = resource(&files, "aws_ec2_tag", "grafana_url");
    for tag in [sns, webhook, grafana] {
        assert_eq!(
            text(attr(tag.body(), "resource_id")),
            "aws_instance.role[\"prometheus\"].id",
            "{}",
            address(tag)
        );
    }
}

#[test]
fn alertmanager_is_reached_from_grafana_and_by_operators_only_when_exposed() {
    let files = parsed_files();
    let security =
        std::fs::read_to_string(terraform_support::terraform_dir().join("security.tf")).unwrap();
    assert!(
        security.contains("from = \"grafana\", to = \"prometheus\", port = 9093"),
        "no flow Grafana -> Alertmanager (9093)"
    );
    let web = resource(
        &files,
        "aws_vpc_security_group_ingress_rule",
        "alertmanager_web",
    );
    assert_eq!(
        text(attr(web.body(), "for_each")),
        "var.expose_alertmanager ? toset(var.allowed_web_cidrs) : toset([])"
    );
    assert_eq!(text(attr(web.body(), "from_port")), "9093");
    assert_eq!(
        text(attr(
            variable(&files, "expose_alertmanager").body(),
            "default"
        )),
        "false"
    );
}

#[test]
fn the_alert_variables_refuse_what_aws_would() {
    // `-var` takes a string variable's value as is (no HCL quotes).
    let console = Console::new(&parsed_files());
    // Both are off by default, and the defaults pass the validations.
    assert_eq!(
        console.eval(
            &[],
            "[var.alert_email, var.alert_slack_webhook_url_parameter, \
             var.alert_webhook_url_parameter, var.alert_grafana_url]"
        ),
        serde_json::json!([null, null, null, null])
    );
    for good in ["oncall@example.com", "a.b+alerts@mail.example.org"] {
        assert!(
            console.accepts("alert_email", good),
            "alert_email {good} refused"
        );
    }
    for bad in [
        "oncall",
        "oncall@example",
        "a b@example.com",
        "a@b@example.com",
    ] {
        assert!(
            !console.accepts("alert_email", bad),
            "alert_email {bad} accepted"
        );
    }
    for variable in [
        "alert_slack_webhook_url_parameter",
        "alert_webhook_url_parameter",
    ] {
        for good in ["/obstack/alerts/webhook-url", "webhook_url"] {
            assert!(console.accepts(variable, good), "{variable} {good} refused");
        }
        // A URL where the parameter's name belongs would put the secret in a tag.
        for bad in [
            "https://hooks.slack.com/services/T0/B0/X",
            "https://events.example.com/v1/x",
            "a b",
            "/obstack//x",
            "",
        ] {
            assert!(
                !console.accepts(variable, bad),
                "{variable} {bad:?} accepted"
            );
        }
    }
}

/// Sample values for `alert_grafana_url`, good and bad, edge cases included.
const GRAFANA_URLS: &[&str] = &[
    "https://grafana.example.com",
    "https://grafana.example.com/",
    "http://10.0.1.13:3000",
    "http://203.0.113.7:3000/grafana/",
    "https://ops.example.com/tools/grafana",
    "https://a.b-c.example",
    "http://grafana:65535",
    "grafana.example.com",
    "ftp://grafana.example.com",
    "https://",
    "https://grafana.example.com:0",
    "https://grafana.example.com:65536",
    "https://grafana.example.com:99999",
    "https://10.0.0.256",
    "https://10.0.0",
    "https://123",
    "https://a..b",
    "https://-a.example.com",
    "https://a-.example.com",
    "https://grafana_example.com",
    "https://grafana.example.com/d?x=1",
    "https://grafana.example.com/a|b",
    "https://grafana.example.com#x",
    "https://admin:pw@grafana.example.com",
    "https://gra fana.example.com",
    "https://[fd00::1]:3000",
];

#[test]
fn the_grafana_url_is_refused_by_terraform_whenever_the_agent_would_refuse_its_tag() {
    let console = Console::new(&parsed_files());
    let spec = stack_agent::RoleSpec::load(&xtask::project::images_dir(), "prometheus").unwrap();
    let agent_accepts = |url: &str| {
        let tags = stack_agent::tags::Tags::from([
            ("obstack:peer:app".to_string(), "10.0.1.10".to_string()),
            (stack_agent::tags::GRAFANA_URL.to_string(), url.to_string()),
        ]);
        match stack_agent::render_spec(&spec, &tags, "/r", "i-0123456789abcdef0") {
            Ok(_) => true,
            Err(stack_agent::AgentError::BadTag { key, .. }) => {
                assert_eq!(key, stack_agent::tags::GRAFANA_URL);
                false
            }
            Err(other) => panic!("{url}: {other}"),
        }
    };
    let mut accepted = Vec::new();
    for url in GRAFANA_URLS {
        let terraform = console.accepts("alert_grafana_url", url);
        let agent = agent_accepts(url);
        assert!(
            !terraform || agent,
            "Terraform accepts alert_grafana_url {url:?}, the agent refuses the tag: the \
             stack would deploy and Prometheus' agent would fail"
        );
        if terraform {
            accepted.push(*url);
        }
    }
    assert_eq!(
        accepted,
        [
            "https://grafana.example.com",
            "https://grafana.example.com/",
            "http://10.0.1.13:3000",
            "http://203.0.113.7:3000/grafana/",
            "https://ops.example.com/tools/grafana",
            "https://a.b-c.example",
            "http://grafana:65535",
        ],
        "the validation refuses a good address"
    );
}
