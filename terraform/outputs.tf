output "urls" {
  description = "Where each service answers (public addresses; reachable from allowed_web_cidrs when exposed)."
  value = {
    app        = "http://${aws_instance.role["app"].public_ip}:5000"
    prometheus = "http://${aws_instance.role["prometheus"].public_ip}:9090"
    loki       = "http://${aws_instance.role["loki"].public_ip}:3100"
    grafana    = "http://${aws_instance.role["grafana"].public_ip}:3000"
  }
}

output "exposed" {
  description = "Which services accept connections from allowed_web_cidrs (Grafana always)."
  value       = { for role in local.roles : role => contains(keys(local.web_ports), role) }
}

output "instance_ids" {
  description = "EC2 instance id of each role, e.g. for `aws ssm start-session --target`."
  value       = { for role, instance in aws_instance.role : role => instance.id }
}

output "private_ips" {
  description = "Private address of each role, as written into the peers' tags."
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
  description = "The AMI each role's instance runs: `cargo xtask deploy` rolls out from these, one role at a time."
  value       = { for role, instance in aws_instance.role : role => instance.ami }
}

output "data_volume_ids" {
  description = "The EBS data volume of each stateful role (its snapshots restore it: terraform/README.md)."
  value       = { for role, volume in aws_ebs_volume.data : role => volume.id }
}

output "alert_topic_arn" {
  description = "ARN of the SNS topic critical alerts are published to: subscribe a phone, a pager or another address to it."
  value       = aws_sns_topic.alerts.arn
}
