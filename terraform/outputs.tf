locals {
  # The app's URL: its load balancer's with the fleet (HTTPS with the app's certificate).
  app_url = (var.app_fleet
    ? "${local.app_https ? "https" : "http"}://${aws_lb.app[0].dns_name}"
  : "http://${aws_instance.role["app"].public_ip}:5000")
}

output "urls" {
  description = "Where each role's UI answers on its public address (reachable from allowed_web_cidrs only where `exposed` says so; otherwise through `cargo xtask open <service>`). The app's is its load balancer's with the fleet; Grafana's is https://<grafana_host_name> with grafana_certificate_arn."
  value = {
    # local.app_url, spelled out: the instance branch carries the app's port (registry check).
    app = (var.app_fleet
      ? "${local.app_https ? "https" : "http"}://${aws_lb.app[0].dns_name}"
    : "http://${aws_instance.role["app"].public_ip}:5000")
    prometheus = "http://${aws_instance.role["prometheus"].public_ip}:9090"
    loki       = "http://${aws_instance.role["loki"].public_ip}:3100"
    grafana    = local.grafana_https ? "https://${var.grafana_host_name}" : "http://${aws_instance.role["grafana"].public_ip}:3000"
  }
}

output "exposed" {
  description = "Which roles' UIs accept connections from allowed_web_cidrs: none by default; an expose_* variable opens its service, a certificate the load balancer (the app, or Grafana's name)."
  value = merge(
    { for role in local.roles : role => contains(keys(local.web_ports), role) },
    {
      app     = contains(keys(local.web_ports), "app") || local.app_public
      grafana = local.grafana_https
    },
  )
}

output "public_services" {
  description = "The UIs people reach from allowed_web_cidrs, by service, with their URL: none by default. Every other UI is reached with `cargo xtask open <service>` (a Session Manager tunnel)."
  value = merge(
    local.app_public || contains(keys(local.web_ports), "app") ? { app = local.app_url } : {},
    var.expose_prometheus ? { prometheus = "http://${aws_instance.role["prometheus"].public_ip}:9090" } : {},
    var.expose_alertmanager ? { alertmanager = "http://${aws_instance.role["prometheus"].public_ip}:9093" } : {},
    var.expose_loki ? { loki = "http://${aws_instance.role["loki"].public_ip}:3100" } : {},
    local.grafana_https ? { grafana = "https://${var.grafana_host_name}" } : {},
  )
}

output "instance_ids" {
  description = "EC2 instance id of each role that runs as one instance, e.g. for `aws ssm start-session --target` (the app fleet's are in its Auto Scaling group)."
  value       = { for role, instance in aws_instance.role : role => instance.id }
}

output "private_ips" {
  description = "Private address of each role that runs as one instance, as written into the peers' tags."
  value       = { for role, instance in aws_instance.role : role => instance.private_ip }
}

output "grafana_admin_password_parameter" {
  description = "Name of the SSM SecureString holding Grafana's admin password."
  value       = aws_ssm_parameter.grafana_admin_password.name
}

output "grafana_admin_password_command" {
  description = "The command that prints Grafana's admin password (user: admin)."
  value       = "aws ssm get-parameter --region ${var.region} --with-decryption --name ${aws_ssm_parameter.grafana_admin_password.name} --query Parameter.Value --output text"
}

output "ami_ids" {
  description = "The AMI each role runs (the app fleet's: its launch template's): `cargo xtask deploy` rolls out from these, one role at a time."
  value = merge(
    { for role, instance in aws_instance.role : role => instance.ami },
    var.app_fleet ? { app = aws_launch_template.app[0].image_id } : {},
  )
}

output "app_autoscaling_group" {
  description = "Name of the app fleet's Auto Scaling group (null without the fleet), e.g. for `aws autoscaling describe-instance-refreshes --auto-scaling-group-name`."
  value       = var.app_fleet ? aws_autoscaling_group.app[0].name : null
}

output "loki_bucket" {
  description = "The S3 bucket holding Loki's chunks and index from loki_s3_from on (null with loki_storage = \"filesystem\")."
  value       = local.loki_s3 ? aws_s3_bucket.loki[0].bucket : null
}

output "data_volume_ids" {
  description = "The EBS data volume of each stateful role (its snapshots restore it: `cargo xtask restore`, README \"Restore a role's data\")."
  value       = { for role, volume in aws_ebs_volume.data : role => volume.id }
}

output "deployment" {
  description = "The deployment's name (variable name), tagged obstack:deployment on everything it makes, its volumes' snapshots included: `cargo xtask restore`, `status` and `destroy` find them by it."
  value       = var.name
}

output "data_key_arn" {
  description = "ARN of the KMS key that encrypts the data volumes, their snapshots and Loki's bucket; `cargo xtask destroy` keeps it unless --delete-data."
  value       = aws_kms_key.data.arn
}

output "alert_topic_arn" {
  description = "ARN of the SNS topic critical alerts are published to: subscribe a phone, a pager or another address to it."
  value       = aws_sns_topic.alerts.arn
}

output "load_balancer_dns_name" {
  description = "The app fleet's load balancer's DNS name (null without the fleet): point grafana_host_name at it (CNAME or alias)."
  value       = var.app_fleet ? aws_lb.app[0].dns_name : null
}

# What a person (or a CI job) needs for `cargo xtask open` and for the tunnels of deploy,
# verify and status, besides their other permissions: find the stack's instances, start a
# port-forwarding session (and nothing else: the document check refuses a shell) on this
# stack's instances only, end and resume their own sessions, read Grafana's password. The
# actions and resources are those of AWS's Session Manager end-user policies ("Sample IAM
# policies for Session Manager"; "Start a session with a document by specifying the session
# documents in IAM policies").
output "operator_access_policy" {
  description = "IAM policy (JSON) for the people and jobs that reach this stack through Session Manager (`cargo xtask open`, the health gate's tunnels): attach it to their user or role."
  value = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "FindTheStacksInstances"
        Effect   = "Allow"
        Action   = ["ec2:DescribeInstanceStatus", "ec2:DescribeInstances"]
        Resource = "*"
      },
      {
        Sid      = "TunnelToThisStacksInstances"
        Effect   = "Allow"
        Action   = "ssm:StartSession"
        Resource = "arn:${data.aws_partition.current.partition}:ec2:${var.region}:${data.aws_caller_identity.current.account_id}:instance/*"
        Condition = {
          StringEquals = { "ssm:resourceTag/obstack:deployment" = var.name }
          BoolIfExists = { "ssm:SessionDocumentAccessCheck" = "true" }
        }
      },
      {
        Sid      = "PortForwardingOnly"
        Effect   = "Allow"
        Action   = "ssm:StartSession"
        Resource = "arn:${data.aws_partition.current.partition}:ssm:${var.region}::document/AWS-StartPortForwardingSession"
      },
      {
        Sid      = "OwnSessionsOnly"
        Effect   = "Allow"
        Action   = ["ssm:ResumeSession", "ssm:TerminateSession", "ssmmessages:OpenDataChannel"]
        Resource = "arn:${data.aws_partition.current.partition}:ssm:${var.region}:${data.aws_caller_identity.current.account_id}:session/$${aws:userid}-*"
      },
      {
        Sid      = "GrafanaAdminPassword"
        Effect   = "Allow"
        Action   = "ssm:GetParameter"
        Resource = aws_ssm_parameter.grafana_admin_password.arn
      },
      {
        Sid      = "GrafanaAdminPasswordKey"
        Effect   = "Allow"
        Action   = "kms:Decrypt"
        Resource = aws_kms_key.stack.arn
        Condition = {
          StringEquals = {
            "kms:ViaService"                      = "ssm.${var.region}.${data.aws_partition.current.dns_suffix}"
            "kms:EncryptionContext:PARAMETER_ARN" = aws_ssm_parameter.grafana_admin_password.arn
          }
        }
      },
    ]
  })
}
