data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

# One customer-managed key for the stack's secrets and logs: the Grafana admin password
# and, when enabled, the flow-log group.
resource "aws_kms_key" "stack" {
  description             = "obstack ${var.name}: Grafana admin password and flow logs"
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
      {
        Sid       = "FlowLogGroupUsesKey"
        Effect    = "Allow"
        Principal = { Service = "logs.${var.region}.amazonaws.com" }
        Action    = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
        Resource  = "*"
        Condition = {
          ArnLike = {
            "kms:EncryptionContext:aws:logs:arn" = "arn:${data.aws_partition.current.partition}:logs:${var.region}:${data.aws_caller_identity.current.account_id}:log-group:/obstack/${var.name}/*"
          }
        }
      },
    ]
  })
}

resource "aws_kms_alias" "stack" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.stack.key_id
}

# The data key: encrypts what outlives the stack, the data volumes (so their final and daily
# snapshots, which keep the volume's key) and Loki's bucket. It is not the stack's key, which
# goes with the stack: `cargo xtask destroy` keeps this key and its alias (and the bucket) in
# place unless asked to delete the data (`--delete-data`), since a snapshot or a log whose key
# is deleted can never be read again. The next deploy of the same name uses them again. Its
# policy names nothing of the stack (only the account, which delegates to IAM), so the
# targeted destroy of everything else never reaches it (terraform/README.md, "Destroy").
resource "aws_kms_key" "data" {
  description         = "obstack ${var.name}: data volumes, their snapshots and Loki's bucket (kept by cargo xtask destroy)"
  enable_key_rotation = true
  # The longest window KMS allows: even a plain `terraform destroy` leaves 30 days to
  # cancel the deletion (aws kms cancel-key-deletion) before any snapshot becomes unreadable.
  deletion_window_in_days = 30

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

resource "aws_kms_alias" "data" {
  name          = "alias/${var.name}-data"
  target_key_id = aws_kms_key.data.key_id
}

# Generated here, stored only in SSM (and Terraform's state: keep the state private).
# Grafana's boot agent reads it through the instance role; the tag carries only the name.
resource "random_password" "grafana_admin" {
  length  = 32
  special = false
}

resource "aws_ssm_parameter" "grafana_admin_password" {
  name        = "/obstack/${var.name}/grafana/admin-password"
  description = "Grafana admin password of the obstack deployment ${var.name}"
  type        = "SecureString"
  key_id      = aws_kms_key.stack.arn
  value       = random_password.grafana_admin.result
}
