# Where alerts reach a person. Alertmanager runs on the Prometheus instance and pages through
# this SNS topic (its ARN is a tag; Alertmanager signs each Publish with the instance role).
# Two optional webhooks, a Slack incoming webhook and a generic JSON one, each have their URL
# in an SSM SecureString the operator creates, named by a tag, so no URL is in a tag, a log,
# an image or Terraform's state.

locals {
  # The webhook URLs' parameters the operator named, by the tag that names each.
  alert_url_parameters = {
    for tag, name in {
      "obstack:alert-slack-url-param"   = var.alert_slack_webhook_url_parameter
      "obstack:alert-webhook-url-param" = var.alert_webhook_url_parameter
    } : tag => name if name != null
  }
  alert_url_parameter_arns = [
    for name in values(local.alert_url_parameters) :
    "arn:${data.aws_partition.current.partition}:ssm:${var.region}:${data.aws_caller_identity.current.account_id}:parameter/${trimprefix(name, "/")}"
  ]
}

# The topic's own key: only the account administers it, and only the Prometheus role may
# use it, through SNS (its identity policy below), to publish encrypted messages.
resource "aws_kms_key" "alerts" {
  description             = "obstack ${var.name}: alert topic"
  enable_key_rotation     = true
  deletion_window_in_days = 7

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "AccountAdministersKey"
        Effect    = "Allow"
        Principal = { AWS = "arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root" }
        Action    = "kms:*"
        Resource  = "*"
      },
    ]
  })
}

resource "aws_kms_alias" "alerts" {
  name          = "alias/${var.name}-alerts"
  target_key_id = aws_kms_key.alerts.key_id
}

resource "aws_sns_topic" "alerts" {
  name              = "${var.name}-alerts"
  display_name      = "obstack ${var.name} alerts"
  kms_master_key_id = aws_kms_key.alerts.arn
}

# Publish only from the Prometheus role and only over TLS; the account keeps managing the
# topic (subscriptions, attributes) but cannot publish as anyone else.
resource "aws_sns_topic_policy" "alerts" {
  arn = aws_sns_topic.alerts.arn
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "PrometheusPublishes"
        Effect    = "Allow"
        Principal = { AWS = aws_iam_role.instance["prometheus"].arn }
        Action    = "sns:Publish"
        Resource  = aws_sns_topic.alerts.arn
      },
      {
        Sid       = "AccountManagesTopic"
        Effect    = "Allow"
        Principal = { AWS = "arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root" }
        Action = [
          "sns:GetTopicAttributes",
          "sns:SetTopicAttributes",
          "sns:ListSubscriptionsByTopic",
          "sns:Subscribe",
          "sns:DeleteTopic",
        ]
        Resource = aws_sns_topic.alerts.arn
      },
      {
        Sid       = "NobodyElsePublishes"
        Effect    = "Deny"
        Principal = { AWS = "*" }
        Action    = "sns:Publish"
        Resource  = aws_sns_topic.alerts.arn
        Condition = {
          ArnNotEquals = { "aws:PrincipalArn" = aws_iam_role.instance["prometheus"].arn }
        }
      },
      {
        # The statement as SNS documents it (Amazon SNS security best practices, "Enforce
        # encryption of data in transit"): SNS:Publish, the request this topic takes from
        # its publisher, refused without TLS.
        Sid       = "AllowPublishThroughSSLOnly"
        Effect    = "Deny"
        Principal = "*"
        Action    = "SNS:Publish"
        Resource  = aws_sns_topic.alerts.arn
        Condition = {
          Bool = { "aws:SecureTransport" = "false" }
        }
      },
    ]
  })
}

# AWS mails a confirmation link first; SNS deletes a subscription nobody confirms (after 48
# hours), and every later apply creates it again (and sends another mail): confirm it, or
# set alert_email = null (terraform/README.md).
resource "aws_sns_topic_subscription" "alert_email" {
  count = var.alert_email == null ? 0 : 1

  topic_arn = aws_sns_topic.alerts.arn
  protocol  = "email"
  endpoint  = var.alert_email
}

# The Prometheus role, and only it, publishes to the topic; it may use the topic's key only
# through SNS in this region.
resource "aws_iam_role_policy" "prometheus_publishes_alerts" {
  name = "publish-alerts"
  role = aws_iam_role.instance["prometheus"].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Effect   = "Allow"
        Action   = ["sns:Publish"]
        Resource = aws_sns_topic.alerts.arn
      },
      {
        Effect   = "Allow"
        Action   = ["kms:GenerateDataKey", "kms:Decrypt"]
        Resource = aws_kms_key.alerts.arn
        Condition = {
          StringEquals = {
            "kms:ViaService" = "sns.${var.region}.${data.aws_partition.current.dns_suffix}"
          }
        }
      },
    ]
  })
}

# The webhook URLs' parameters, when there are any: Prometheus reads exactly those, and
# decrypts them with the stack's key only through SSM, in those parameters' encryption
# context (a parameter under aws/ssm needs no key grant).
resource "aws_iam_role_policy" "prometheus_reads_alert_urls" {
  count = length(local.alert_url_parameters) == 0 ? 0 : 1

  name = "read-alert-webhook-urls"
  role = aws_iam_role.instance["prometheus"].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Effect   = "Allow"
        Action   = ["ssm:GetParameter"]
        Resource = local.alert_url_parameter_arns
      },
      {
        Effect   = "Allow"
        Action   = ["kms:Decrypt"]
        Resource = aws_kms_key.stack.arn
        Condition = {
          StringEquals = {
            "kms:ViaService"                      = "ssm.${var.region}.${data.aws_partition.current.dns_suffix}"
            "kms:EncryptionContext:PARAMETER_ARN" = local.alert_url_parameter_arns
          }
        }
      },
    ]
  })
}

moved {
  from = aws_iam_role_policy.prometheus_reads_alert_webhook
  to   = aws_iam_role_policy.prometheus_reads_alert_urls
}

# The agent renders Alertmanager's SNS receiver as soon as this tag appears: it waits for
# the permission to publish.
resource "aws_ec2_tag" "alert_sns_topic_arn" {
  resource_id = aws_instance.role["prometheus"].id
  key         = "obstack:alert-sns-topic-arn"
  value       = aws_sns_topic.alerts.arn

  depends_on = [aws_iam_role_policy.prometheus_publishes_alerts, aws_sns_topic_policy.alerts]
}

# Each webhook's tag names its parameter; the agent reads the parameter as soon as the tag
# appears, so the tag waits for the permission.
resource "aws_ec2_tag" "alert_url_param" {
  for_each = local.alert_url_parameters

  resource_id = aws_instance.role["prometheus"].id
  key         = each.key
  value       = each.value

  depends_on = [aws_iam_role_policy.prometheus_reads_alert_urls]
}

moved {
  from = aws_ec2_tag.alert_webhook_url_param[0]
  to   = aws_ec2_tag.alert_url_param["obstack:alert-webhook-url-param"]
}

# What alert notifications link to: where people open Grafana. Its HTTPS name when it has
# one; otherwise Grafana has no address on the internet, and the link is where
# `cargo xtask open grafana` serves it (127.0.0.1:3000 while that port is free).
resource "aws_ec2_tag" "grafana_url" {
  resource_id = aws_instance.role["prometheus"].id
  key         = "obstack:grafana-url"
  value       = coalesce(var.alert_grafana_url, local.grafana_https ? "https://${var.grafana_host_name}" : "http://127.0.0.1:3000")
}

# Operators reach Alertmanager's UI only when asked for (Grafana's flow is in security.tf).
resource "aws_vpc_security_group_ingress_rule" "alertmanager_web" {
  for_each = var.expose_alertmanager ? toset(var.allowed_web_cidrs) : toset([])

  security_group_id = aws_security_group.prometheus.id
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 9093
  to_port           = 9093
  description       = "Operators reach Alertmanager from an allowed_web_cidrs entry"
}
