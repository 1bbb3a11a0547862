# Every instance gets a role that holds only what the SSM agent needs for Session Manager
# (which replaces SSH). The AWS-managed AmazonSSMManagedInstanceCore is deliberately not
# attached: it also grants ssm:GetParameter and ssm:GetParameters on "*", which would let
# any instance read every String parameter of the account and region and every SecureString
# under the default aws/ssm key.
resource "aws_iam_role" "instance" {
  for_each = local.roles

  name = "${var.name}-${each.key}"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ec2.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

# The SSM agent's own calls, as AWS documents them for a minimal instance profile ("Create a
# custom IAM role for Session Manager", and "Reference: ec2messages, ssmmessages, and other
# API operations"): the heartbeat that registers the instance (scoped to this account's and
# region's EC2 instances, its only resource type), the Session Manager channels and the
# message delivery service the agent polls (no resource types: "*" is the only resource).
# No ssm:GetParameter* here.
resource "aws_iam_role_policy" "session_manager" {
  for_each = local.roles

  name = "ssm-session-manager"
  role = aws_iam_role.instance[each.key].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "AgentHeartbeat"
        Effect   = "Allow"
        Action   = ["ssm:UpdateInstanceInformation"]
        Resource = "arn:${data.aws_partition.current.partition}:ec2:${var.region}:${data.aws_caller_identity.current.account_id}:instance/*"
      },
      {
        Sid    = "SessionManagerChannels"
        Effect = "Allow"
        Action = [
          "ssmmessages:CreateControlChannel",
          "ssmmessages:CreateDataChannel",
          "ssmmessages:OpenControlChannel",
          "ssmmessages:OpenDataChannel",
        ]
        Resource = "*"
      },
      {
        Sid    = "MessageDeliveryService"
        Effect = "Allow"
        Action = [
          "ec2messages:AcknowledgeMessage",
          "ec2messages:DeleteMessage",
          "ec2messages:FailMessage",
          "ec2messages:GetEndpoint",
          "ec2messages:GetMessages",
          "ec2messages:SendReply",
        ]
        Resource = "*"
      },
    ]
  })
}

resource "aws_iam_instance_profile" "instance" {
  for_each = local.roles

  name = "${var.name}-${each.key}"
  role = aws_iam_role.instance[each.key].name
}

# Grafana, and only Grafana, may read exactly one parameter, its admin password: this is the
# only ssm:GetParameter any role holds. It may decrypt with the stack's key only through SSM
# in this region, and only in that parameter's encryption context.
resource "aws_iam_role_policy" "grafana_reads_admin_password" {
  name = "read-grafana-admin-password"
  role = aws_iam_role.instance["grafana"].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Effect   = "Allow"
        Action   = ["ssm:GetParameter"]
        Resource = aws_ssm_parameter.grafana_admin_password.arn
      },
      {
        Effect   = "Allow"
        Action   = ["kms:Decrypt"]
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

# With the app fleet, Prometheus, and only Prometheus, finds the app instances itself
# (ec2_sd_configs). ec2:DescribeInstances supports no resource-level permissions (Service
# Authorization Reference, "Actions defined by Amazon EC2": DescribeInstances lists no
# resource type), so "*" is the only resource; it is limited to the stack's region, where
# Prometheus asks (its region comes from the instance metadata). Prometheus' EC2 discovery
# also calls ec2:DescribeAvailabilityZones (same: no resource type) to map zone ids: its docs
# call it optional, but Prometheus 2.x failed the whole refresh without it, so it is granted.
resource "aws_iam_role_policy" "prometheus_discovers_app" {
  count = var.app_fleet ? 1 : 0

  name = "discover-app-fleet"
  role = aws_iam_role.instance["prometheus"].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "Ec2ServiceDiscovery"
        Effect   = "Allow"
        Action   = ["ec2:DescribeAvailabilityZones", "ec2:DescribeInstances"]
        Resource = "*"
        Condition = {
          StringEquals = { "aws:RequestedRegion" = var.region }
        }
      },
    ]
  })
}
