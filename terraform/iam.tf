# Every instance gets a role with the SSM core policy: Session Manager replaces SSH.
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

resource "aws_iam_role_policy_attachment" "ssm_core" {
  for_each = local.roles

  role       = aws_iam_role.instance[each.key].name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "instance" {
  for_each = local.roles

  name = "${var.name}-${each.key}"
  role = aws_iam_role.instance[each.key].name
}

# Grafana may read exactly one parameter, its admin password, and decrypt it only in
# that parameter's encryption context.
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
            "kms:EncryptionContext:PARAMETER_ARN" = aws_ssm_parameter.grafana_admin_password.arn
          }
        }
      },
    ]
  })
}
