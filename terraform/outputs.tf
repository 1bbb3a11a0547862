output "urls" {
  description = "Where each service answers (public addresses; reachable from allowed_web_cidrs when exposed). With the app fleet, the app's is its load balancer's."
  value = {
    app = (var.app_fleet
      ? "${local.app_https ? "https" : "http"}://${aws_lb.app[0].dns_name}"
    : "http://${aws_instance.role["app"].public_ip}:5000")
    prometheus = "http://${aws_instance.role["prometheus"].public_ip}:9090"
    loki       = "http://${aws_instance.role["loki"].public_ip}:3100"
    grafana    = "http://${aws_instance.role["grafana"].public_ip}:3000"
  }
}

output "exposed" {
  description = "Which services accept connections from allowed_web_cidrs (Grafana always; the app always with the fleet, through its load balancer)."
  value       = { for role in local.roles : role => contains(keys(local.web_ports), role) || (role == "app" && var.app_fleet) }
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
