//! Loki's chunks on S3 (issue 19, `terraform/loki_storage.tf`): with `loki_storage = "s3"`
//! a bucket encrypted with the data key, closed to the public, to ACLs and to plain HTTP,
//! whose objects expire after Loki's retention (read from Loki's own config) plus a margin;
//! a name S3 accepts for every deployment name; Loki's role, and no other, holding exactly
//! the bucket's list and object actions (no `s3:*`) and the key only through S3; the three
//! tags that switch Loki over, written after those permissions; and the variables refusing
//! what Loki or S3 would. Read with hcl-rs and an offline `terraform console`.

use crate::terraform_support;

use std::collections::BTreeMap;

use hcl::{Block, Body, Expression};
use serde_json::{json, Value};
use terraform_support::{
    address, allow_statements, attr, block, depends_on, iam_action_matches, instance_count_expr,
    local_expr, parsed_files, policy_document, replace_reference, resource, resources, statements,
    string_list, top_blocks, Console, Outcome,
};

const DEPLOYMENT: [(&str, &str); 3] = [
    ("region", "eu-west-1"),
    (
        "ami_ids",
        r#"{app="ami-0123456789abcdef0",prometheus="ami-0123456789abcdef1",loki="ami-0123456789abcdef2",grafana="ami-0123456789abcdef3"}"#,
    ),
    ("allowed_web_cidrs", r#"["198.51.100.0/24"]"#),
];

/// Loki on S3 from a day after the filesystem period.
const ON_S3: [(&str, &str); 2] = [("loki_storage", "s3"), ("loki_s3_from", "2026-01-15")];

const BUCKET_ARN: &str = "aws_s3_bucket.loki[0].arn";

/// `aws_s3_bucket.loki` as it is after apply, for the console.
const FAKE_BUCKET: &str = r#"[{bucket="obstack-obstack-loki-123456789012",region="eu-west-1"}]"#;

fn with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    DEPLOYMENT
        .iter()
        .copied()
        .chain(extra.iter().copied())
        .collect()
}

fn text(expr: Option<&Expression>) -> String {
    expr.map(ToString::to_string).unwrap_or_default()
}

fn count(console: &Console, vars: &[(&str, &str)], resource: &Block) -> u64 {
    // The tags' for_each names the bucket's attributes; its size does not depend on them.
    let expr = replace_reference(
        &instance_count_expr(resource),
        "aws_s3_bucket.loki",
        FAKE_BUCKET,
    );
    console.eval_expr(vars, &expr).as_u64().unwrap()
}

/// The resources of loki_storage.tf.
fn loki_storage(files: &BTreeMap<String, Body>) -> Vec<&Block> {
    files
        .get("loki_storage.tf")
        .expect("terraform/loki_storage.tf")
        .blocks()
        .filter(|b| b.identifier() == "resource")
        .collect()
}

/// The one resource of `kind` on the Loki bucket.
fn on_bucket<'a>(files: &'a BTreeMap<String, Body>, kind: &str) -> &'a Body {
    let found: Vec<&Block> = resources(files, kind)
        .into_iter()
        .filter(|r| text(attr(r.body(), "bucket")) == "aws_s3_bucket.loki[0].id")
        .collect();
    assert_eq!(found.len(), 1, "one {kind} on the Loki bucket");
    found[0].body()
}

/// A setting of Loki's config template (`key: value` on its own line, after `section:`).
fn loki_setting(section: &str, key: &str) -> String {
    let path = testkit::workspace_root().join("images/loki/templates/loki.yaml.j2");
    let template = std::fs::read_to_string(&path).unwrap();
    let start = template
        .find(&format!("\n{section}:"))
        .unwrap_or_else(|| panic!("{}: no {section}:", path.display()));
    template[start..]
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().trim_matches('"').to_string())
        .unwrap_or_else(|| panic!("{}: no {key} under {section}", path.display()))
}

/// Loki's retention period in hours (`168h`, or days written `7d`).
fn loki_retention_hours() -> u64 {
    let value = loki_setting("limits_config", "retention_period");
    if let Some(hours) = value.strip_suffix('h') {
        hours.parse().unwrap()
    } else if let Some(days) = value.strip_suffix('d') {
        days.parse::<u64>().unwrap() * 24
    } else {
        panic!("retention_period {value}: expected hours or days")
    }
}

#[test]
fn the_bucket_exists_only_with_s3_and_is_encrypted_with_the_stack_key_and_closed() {
    let files = parsed_files();
    let console = Console::new(&files);
    assert_eq!(
        console.eval(&with(&[]), "[var.loki_storage, var.loki_s3_from]"),
        json!(["filesystem", null]),
        "the filesystem stays the default"
    );
    for r in loki_storage(&files) {
        assert_eq!(count(&console, &with(&[]), r), 0, "{}", address(r));
        assert!(count(&console, &with(&ON_S3), r) >= 1, "{}", address(r));
    }

    let sse = on_bucket(&files, "aws_s3_bucket_server_side_encryption_configuration");
    let rule = block(sse, "rule").expect("rule");
    let default = block(rule, "apply_server_side_encryption_by_default").expect("default");
    assert_eq!(
        attr(default, "sse_algorithm"),
        Some(&Expression::from("aws:kms"))
    );
    assert_eq!(
        text(attr(default, "kms_master_key_id")),
        "aws_kms_key.data.arn",
        "the data key (rotating, kept by destroy), not S3's own"
    );
    assert_eq!(
        attr(rule, "bucket_key_enabled"),
        Some(&Expression::from(true))
    );

    let block_public = on_bucket(&files, "aws_s3_bucket_public_access_block");
    for key in [
        "block_public_acls",
        "block_public_policy",
        "ignore_public_acls",
        "restrict_public_buckets",
    ] {
        assert_eq!(
            attr(block_public, key),
            Some(&Expression::from(true)),
            "{key}"
        );
    }
    let ownership = on_bucket(&files, "aws_s3_bucket_ownership_controls");
    assert_eq!(
        attr(block(ownership, "rule").unwrap(), "object_ownership"),
        Some(&Expression::from("BucketOwnerEnforced")),
        "no ACLs"
    );
    assert!(
        resources(&files, "aws_s3_bucket_acl").is_empty(),
        "ACLs are disabled: no aws_s3_bucket_acl"
    );
}

#[test]
fn the_bucket_policy_denies_every_request_without_tls() {
    let files = parsed_files();
    let policy = on_bucket(&files, "aws_s3_bucket_policy");
    let document = policy_document(policy, "policy").unwrap();
    let all = statements(&document);
    let tls_only: Vec<&Value> = all
        .iter()
        .copied()
        .filter(|s| {
            s["Effect"] == "Deny" && s["Condition"]["Bool"]["aws:SecureTransport"] == "false"
        })
        .collect();
    assert_eq!(tls_only.len(), 1, "{document:#}");
    let deny = tls_only[0];
    assert!(
        deny["Principal"] == "*" || deny["Principal"]["AWS"] == "*",
        "denied to everyone: {deny:#}"
    );
    assert_eq!(string_list(&deny["Action"]), ["s3:*"], "every action");
    let mut targets = string_list(&deny["Resource"]);
    targets.sort();
    assert_eq!(
        targets,
        [format!("${{{BUCKET_ARN}}}/*"), BUCKET_ARN.to_string()],
        "the bucket and its objects"
    );
    for statement in &all {
        assert_ne!(
            statement["Effect"], "Allow",
            "the bucket policy grants nothing: {statement:#}"
        );
    }
}

#[test]
fn objects_expire_after_lokis_retention_plus_a_margin() {
    let files = parsed_files();
    let console = Console::new(&files);
    let retention_hours = loki_retention_hours();
    assert_eq!(
        console.eval(&with(&[]), "local.loki_retention_hours"),
        json!(retention_hours),
        "terraform's copy of Loki's retention (images/loki/templates/loki.yaml.j2) differs"
    );

    let lifecycle = on_bucket(&files, "aws_s3_bucket_lifecycle_configuration");
    let rules: Vec<&Body> = lifecycle
        .blocks()
        .filter(|b| b.identifier() == "rule")
        .map(|b| b.body())
        .collect();
    assert_eq!(rules.len(), 1, "one lifecycle rule");
    let rule = rules[0];
    assert_eq!(attr(rule, "status"), Some(&Expression::from("Enabled")));
    let filter = block(rule, "filter").expect("a filter (the whole bucket)");
    assert!(
        filter.attributes().next().is_none() && filter.blocks().next().is_none(),
        "the rule covers the whole bucket: chunks, index and Loki's other objects"
    );
    let expiration = block(rule, "expiration").expect("expiration");
    let days_expr = text(attr(expiration, "days"));
    let days_expr = if let Some(local) = days_expr.strip_prefix("local.") {
        local_expr(&files, local)
    } else {
        days_expr
    };
    let days = console
        .eval_expr(&with(&ON_S3), &days_expr)
        .as_u64()
        .expect("whole days");
    let retention_days = retention_hours.div_ceil(24);
    assert!(
        days > retention_days,
        "objects expire after {days} days, not after Loki's {retention_days}-day retention plus a margin"
    );
    let multipart = block(rule, "abort_incomplete_multipart_upload")
        .expect("abort_incomplete_multipart_upload");
    assert!(attr(multipart, "days_after_initiation").is_some());
}

/// Why S3 refuses `name` as a general purpose bucket name (S3 User Guide, "General purpose
/// bucket naming rules").
fn s3_bucket_name_problem(name: &str) -> Option<&'static str> {
    let bytes = name.as_bytes();
    if !(3..=63).contains(&bytes.len()) {
        return Some("3 to 63 characters");
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'.')
    {
        return Some("lower-case letters, digits, hyphens and dots only");
    }
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(&bytes[0]) || !alnum(&bytes[bytes.len() - 1]) {
        return Some("must begin and end with a letter or digit");
    }
    if name.contains("..") {
        return Some("no two adjacent dots");
    }
    if name.split('.').count() == 4 && name.split('.').all(|p| p.parse::<u8>().is_ok()) {
        return Some("not an IP address");
    }
    for prefix in ["xn--", "sthree-", "amzn-s3-demo-"] {
        if name.starts_with(prefix) {
            return Some("a reserved prefix");
        }
    }
    for suffix in ["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"] {
        if name.ends_with(suffix) {
            return Some("a reserved suffix");
        }
    }
    None
}

#[test]
fn the_bucket_name_is_valid_for_every_valid_deployment_name() {
    assert!(s3_bucket_name_problem("xn--abc").is_some());
    assert!(s3_bucket_name_problem("abc-").is_some());
    assert!(s3_bucket_name_problem("Abc").is_some());
    assert!(s3_bucket_name_problem("abc-s3alias").is_some());
    assert!(s3_bucket_name_problem("192.168.5.4").is_some());
    assert!(s3_bucket_name_problem("obstack-loki-123456789012").is_none());

    let files = parsed_files();
    let console = Console::new(&files);
    let bucket = resource(&files, "aws_s3_bucket", "loki");
    let name = text(attr(bucket.body(), "bucket"));
    let name = name
        .strip_prefix("local.")
        .map(|l| local_expr(&files, l))
        .unwrap_or(name);
    assert!(
        name.contains("var.name") && name.contains("account_id"),
        "named after the deployment and the account: {name}"
    );
    let name = replace_reference(
        &name,
        "data.aws_caller_identity.current",
        r#"{account_id="123456789012"}"#,
    );
    let longest = format!("a{}", "9".repeat(30));
    let samples = [
        "obstack",
        "ab",
        "xn--x",
        "sthree-x",
        "amzn-s3-demo-x",
        "a-",
        "a--",
        "x-s3alias",
        "ol--ol-s3",
        longest.as_str(),
    ];
    let mut checked = 0;
    let mut problems = Vec::new();
    for sample in samples {
        if !console.accepts("name", sample) {
            continue;
        }
        checked += 1;
        let value = console.eval_expr(&with(&[("name", sample)]), &name);
        let bucket = value.as_str().unwrap().to_string();
        if let Some(problem) = s3_bucket_name_problem(&bucket) {
            problems.push(format!("name = {sample:?} makes {bucket:?}: {problem}"));
        }
    }
    assert!(checked >= 8, "the name validation refused most samples");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn only_loki_lists_the_bucket_and_touches_its_objects_and_nobody_holds_s3_wildcards() {
    let files = parsed_files();
    let console = Console::new(&files);
    let mut grants: Vec<(String, String, String)> = Vec::new();
    for (at, role, statement) in allow_statements(&files) {
        for action in string_list(&statement["Action"]) {
            if !action.to_ascii_lowercase().starts_with("s3:") && action != "*" {
                continue;
            }
            assert!(
                !action.contains('*'),
                "{at}: a wildcard S3 action {action}: grant the object actions by name"
            );
            for target in string_list(&statement["Resource"]) {
                grants.push((format!("{at} ({role})"), action.clone(), target));
            }
        }
    }
    grants.sort();
    let loki = "aws_iam_role_policy.loki_uses_bucket (aws_iam_role.instance[\"loki\"].id)";
    let objects = format!("${{{BUCKET_ARN}}}/*");
    let expected: Vec<(String, String, String)> = [
        ("s3:DeleteObject", objects.as_str()),
        ("s3:GetObject", objects.as_str()),
        ("s3:ListBucket", BUCKET_ARN),
        ("s3:PutObject", objects.as_str()),
    ]
    .iter()
    .map(|(a, r)| (loki.to_string(), a.to_string(), r.to_string()))
    .collect();
    assert_eq!(
        grants, expected,
        "S3 permissions: Loki's role only, listing the bucket and reading, writing and deleting its objects"
    );
    let policy = resource(&files, "aws_iam_role_policy", "loki_uses_bucket");
    assert_eq!(
        count(&console, &with(&[]), policy),
        0,
        "not with the filesystem"
    );
    assert_eq!(count(&console, &with(&ON_S3), policy), 1);

    // The data key, through S3 in this region and for this bucket only.
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
    let mut actions = string_list(&kms[0]["Action"]);
    actions.sort();
    assert_eq!(actions, ["kms:Decrypt", "kms:GenerateDataKey"]);
    assert_eq!(string_list(&kms[0]["Resource"]), ["aws_kms_key.data.arn"]);
    let equals = &kms[0]["Condition"]["StringEquals"];
    assert!(
        equals["kms:ViaService"]
            .as_str()
            .is_some_and(|v| v.starts_with("s3.${var.region}.")),
        "{document:#}"
    );
    assert_eq!(
        equals["kms:EncryptionContext:aws:s3:arn"],
        json!(BUCKET_ARN)
    );

    // Nobody else may use the key through S3 (a grant to another role would reach the logs).
    for (at, role, statement) in allow_statements(&files) {
        let via = statement["Condition"]["StringEquals"]["kms:ViaService"]
            .as_str()
            .unwrap_or_default();
        if via.starts_with("s3.") {
            assert_eq!(role, "aws_iam_role.instance[\"loki\"].id", "{at}");
        }
        if string_list(&statement["Action"])
            .iter()
            .any(|a| iam_action_matches(a, "kms:Decrypt"))
            && string_list(&statement["Resource"]).iter().any(|r| r == "*")
        {
            panic!("{at}: kms:Decrypt on every key");
        }
    }
}

#[test]
fn lokis_s3_tags_carry_bucket_region_and_day_and_wait_for_the_permissions() {
    let files = parsed_files();
    let console = Console::new(&files);
    let tags = resource(&files, "aws_ec2_tag", "loki_s3");
    let body = tags.body();
    assert_eq!(
        text(attr(body, "resource_id")),
        "aws_instance.role[\"loki\"].id"
    );
    let for_each = replace_reference(
        &text(attr(body, "for_each")),
        "aws_s3_bucket.loki",
        FAKE_BUCKET,
    );
    assert_eq!(
        console.eval_expr(&with(&ON_S3), &for_each),
        json!({
            "obstack:loki-s3-bucket": "obstack-obstack-loki-123456789012",
            "obstack:loki-s3-region": "eu-west-1",
            "obstack:loki-s3-from": "2026-01-15",
        }),
        "all three tags of the contract"
    );
    assert_eq!(
        console.eval_expr(&with(&[]), &for_each),
        json!({}),
        "none with the filesystem"
    );
    let waits = depends_on(body);
    for needed in [
        "aws_iam_role_policy.loki_uses_bucket",
        "aws_s3_bucket_server_side_encryption_configuration.loki",
        "aws_s3_bucket_policy.loki",
    ] {
        assert!(
            waits.iter().any(|w| w == needed),
            "{} lacks depends_on {needed}: Loki's first writes would be denied",
            address(tags)
        );
    }

    // Written after launch: the instance must not remove them on the next plan.
    let provider = top_blocks(&files, "provider")
        .into_iter()
        .find(|p| p.labels()[0].as_str() == "aws")
        .expect("provider aws");
    let ignore = block(provider.body(), "ignore_tags").expect("ignore_tags");
    let ignored = console.eval_expr(&with(&[]), &text(attr(ignore, "keys")));
    for key in [
        "obstack:loki-s3-bucket",
        "obstack:loki-s3-region",
        "obstack:loki-s3-from",
    ] {
        assert!(
            string_list(&ignored).iter().any(|k| k == key),
            "versions.tf ignore_tags lacks {key}"
        );
    }
}

#[test]
fn loki_s3_from_is_a_day_after_the_filesystem_period_and_required_with_s3() {
    let files = parsed_files();
    let console = Console::new(&files);
    let filesystem_from = loki_setting("schema_config", "- from");
    assert_eq!(filesystem_from.len(), 10, "{filesystem_from}");
    for good in ["2026-01-15", "2028-02-29", "2024-04-02"] {
        assert!(console.accepts("loki_s3_from", good), "{good} refused");
    }
    for bad in [
        filesystem_from.as_str(), // the filesystem period's own first day
        "2024-03-31",
        "2026-02-30",
        "2026-13-01",
        "2027-02-29",
        "2026-1-15",
        "15.01.2026",
        "2026-01-15T00:00:00Z",
        "",
    ] {
        assert!(
            matches!(console.validate(&[("loki_s3_from", bad)]), Outcome::Refused(r) if r.contains("loki_s3_from")),
            "loki_s3_from = {bad:?} accepted, but Loki's schema periods need a later real day"
        );
    }
    for (value, accepted) in [
        ("filesystem", true),
        ("s3", true),
        ("S3", false),
        ("gcs", false),
    ] {
        assert_eq!(
            console.accepts("loki_storage", value),
            accepted,
            "loki_storage = {value}"
        );
    }

    // With s3 and no day, plan stops at the bucket's precondition.
    let bucket = resource(&files, "aws_s3_bucket", "loki");
    let conditions: Vec<String> = bucket
        .body()
        .blocks()
        .filter(|b| b.identifier() == "lifecycle")
        .flat_map(|l| l.body().blocks())
        .filter(|b| b.identifier() == "precondition")
        .map(|p| text(attr(p.body(), "condition")))
        .collect();
    assert!(!conditions.is_empty(), "no precondition on the bucket");
    let all = format!(
        "alltrue([{}])",
        conditions
            .iter()
            .map(|c| format!("try(({c}) == true, false)"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert_eq!(console.eval(&with(&ON_S3), &all), json!(true));
    assert_eq!(
        console.eval(&with(&[("loki_storage", "s3")]), &all),
        json!(false),
        "loki_storage = s3 without loki_s3_from must stop the plan"
    );
}
