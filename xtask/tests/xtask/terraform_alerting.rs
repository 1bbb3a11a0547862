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

#[test]
fn the_webhook_parameter_is_read_only_by_prometheus_and_only_when_named() {
    let files = parsed_files();
    let policy = resource(
        &files,
        "aws_iam_role_policy",
        "prometheus_reads_alert_webhook",
    );
    assert_eq!(text(attr(policy.body(), "role")), PROMETHEUS_ROLE_ID);
    assert!(
        text(attr(policy.body(), "count")).contains("var.alert_webhook_url_parameter == null"),
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
        ["local.alert_webhook_parameter_arn"]
    );
    assert_eq!(string_list(&reads[0]["Action"]), ["ssm:GetParameter"]);

    // The ARN it grants is the named parameter's, with or without a leading slash.
    let console = Console::new(&files);
    let arn_of = |name: &str| {
        console.eval(
            &[("alert_webhook_url_parameter", name)],
            "\"parameter/${trimprefix(var.alert_webhook_url_parameter, \"/\")}\"",
        )
    };
    assert_eq!(
        arn_of("/obstack/alerts/webhook-url"),
        "parameter/obstack/alerts/webhook-url"
    );
    assert_eq!(arn_of("webhook-url"), "parameter/webhook-url");
    let local = terraform_support::top_blocks(&files, "locals")
        .iter()
        .flat_map(|b| b.body().attributes())
        .find(|a| a.key() == "alert_webhook_parameter_arn")
        .map(|a| a.expr().to_string())
        .expect("local.alert_webhook_parameter_arn");
    assert!(
        local.contains(":ssm:${var.region}:")
            && local.contains("parameter/${trimprefix(var.alert_webhook_url_parameter, \"/\")}"),
        "{local}"
    );
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
    let webhook = resource(&files, "aws_ec2_tag", "alert_webhook_url_param");
    assert_eq!(
        text(attr(webhook.body(), "key")),
        "\"obstack:alert-webhook-url-param\""
    );
    assert!(
        depends_on(webhook.body())
            .iter()
            .any(|w| w == "aws_iam_role_policy.prometheus_reads_alert_webhook"),
        "{} does not wait for the read permission",
        address(webhook)
    );
    for tag in [sns, webhook] {
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
        console.eval(&[], "[var.alert_email, var.alert_webhook_url_parameter]"),
        serde_json::json!([null, null])
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
    for good in ["/obstack/alerts/webhook-url", "webhook_url"] {
        assert!(
            console.accepts("alert_webhook_url_parameter", good),
            "{good} refused"
        );
    }
    // A URL where the parameter's name belongs would put the secret in a tag.
    for bad in [
        "https://hooks.slack.com/services/T0/B0/X",
        "a b",
        "/obstack//x",
        "",
    ] {
        assert!(
            !console.accepts("alert_webhook_url_parameter", bad),
            "{bad:?} accepted"
        );
    }
}
