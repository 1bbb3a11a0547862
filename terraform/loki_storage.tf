# Loki's chunks and index on S3 (var.loki_storage = "s3"): a bucket of the stack, encrypted
# with the data key (secrets.tf), closed to the public and to plain HTTP, whose objects expire after
# Loki's retention plus a margin. Loki's instance role reads and writes its objects (no keys
# anywhere); the boot agent learns the bucket, its region and the first day of the S3 schema
# period from three tags on Loki's instance. The filesystem period stays in Loki's schema, so
# the logs written before that day stay readable from the data volume.

locals {
  loki_s3 = var.loki_storage == "s3"

  # Loki's retention (images/loki/templates/loki.yaml.j2, limits_config.retention_period,
  # 168h); xtask/tests/xtask/terraform_loki_s3.rs checks the two agree.
  loki_retention_hours = 168

  # The compactor deletes what is past retention (after retention_delete_delay); the bucket's
  # expiry only removes what it left behind, e.g. while Loki was down, so it waits a week
  # longer and never races the compactor over objects Loki still reads.
  loki_s3_expiry_days = ceil(local.loki_retention_hours / 24) + 7

  # Globally unique per account (like the IAM role names, which are per account too) and a
  # valid S3 name for every var.name: lower-case letters, digits and hyphens, at most
  # 8 + 31 + 6 + 12 = 57 characters, starting with "obstack-" (so never with xn--, sthree- or
  # amzn-s3-demo-) and ending with the account id's digits (so never with -s3alias or --ol-s3).
  loki_bucket_name = "obstack-${var.name}-loki-${data.aws_caller_identity.current.account_id}"
}

resource "aws_s3_bucket" "loki" {
  count = local.loki_s3 ? 1 : 0

  #checkov:skip=CKV_AWS_21:No versioning on purpose: Loki's compactor rewrites and deletes index and chunk objects, and retention must really delete them; older versions would keep every deleted log line past the retention period.
  #checkov:skip=CKV_AWS_18:Server access logs need a second bucket per stack; every request is made by Loki's own role and is visible in CloudTrail.
  #checkov:skip=CKV_AWS_144:Cross-region replication doubles cost for telemetry that is kept one week; losing a region loses the stack that reads it anyway.
  #checkov:skip=CKV2_AWS_62:Nothing consumes events of Loki's objects; notifications would be noise.
  bucket = local.loki_bucket_name
  # Only `cargo xtask destroy --delete-data` destroys the bucket, and with it every log in
  # it; a plain `cargo xtask destroy` keeps the bucket and its settings (below) with the
  # data key, and the next deploy of the same name uses them again.
  force_destroy = true

  lifecycle {
    precondition {
      condition     = var.loki_s3_from != null
      error_message = "loki_storage = \"s3\" needs loki_s3_from, the first day (YYYY-MM-DD, UTC) Loki writes to S3: a later day than today when the stack already holds logs (Loki starts a period at 00:00 UTC)."
    }
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "loki" {
  count = local.loki_s3 ? 1 : 0

  bucket = aws_s3_bucket.loki[0].id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.data.arn
    }
    # One data key per bucket instead of one KMS call per object.
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_public_access_block" "loki" {
  count = local.loki_s3 ? 1 : 0

  bucket                  = aws_s3_bucket.loki[0].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

# No ACLs at all: the account owns every object, access is by policy only.
resource "aws_s3_bucket_ownership_controls" "loki" {
  count = local.loki_s3 ? 1 : 0

  bucket = aws_s3_bucket.loki[0].id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_policy" "loki" {
  count = local.loki_s3 ? 1 : 0

  bucket = aws_s3_bucket.loki[0].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "TlsOnly"
        Effect    = "Deny"
        Principal = { AWS = "*" }
        Action    = "s3:*"
        Resource  = [aws_s3_bucket.loki[0].arn, "${aws_s3_bucket.loki[0].arn}/*"]
        Condition = {
          Bool = { "aws:SecureTransport" = "false" }
        }
      },
    ]
  })

  # A policy put while the public access block is being created can be refused.
  depends_on = [aws_s3_bucket_public_access_block.loki]
}

resource "aws_s3_bucket_lifecycle_configuration" "loki" {
  count = local.loki_s3 ? 1 : 0

  bucket = aws_s3_bucket.loki[0].id

  rule {
    id     = "expire-after-retention"
    status = "Enabled"

    filter {}

    expiration {
      days = local.loki_s3_expiry_days
    }

    # Parts of an upload Loki never finished (it crashed, the instance was replaced).
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
}

# Loki, and only Loki, lists the bucket and reads, writes and deletes its objects, and uses
# the data key only through S3 in this region and only for this bucket (with a bucket key
# the encryption context is the bucket's ARN).
resource "aws_iam_role_policy" "loki_uses_bucket" {
  count = local.loki_s3 ? 1 : 0

  name = "use-loki-bucket"
  role = aws_iam_role.instance["loki"].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "ListTheBucket"
        Effect   = "Allow"
        Action   = ["s3:ListBucket"]
        Resource = aws_s3_bucket.loki[0].arn
      },
      {
        Sid      = "ReadWriteDeleteItsObjects"
        Effect   = "Allow"
        Action   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
        Resource = "${aws_s3_bucket.loki[0].arn}/*"
      },
      {
        Sid      = "UseTheDataKeyThroughS3"
        Effect   = "Allow"
        Action   = ["kms:GenerateDataKey", "kms:Decrypt"]
        Resource = aws_kms_key.data.arn
        Condition = {
          StringEquals = {
            "kms:ViaService"                   = "s3.${var.region}.${data.aws_partition.current.dns_suffix}"
            "kms:EncryptionContext:aws:s3:arn" = aws_s3_bucket.loki[0].arn
          }
        }
      },
    ]
  })
}

# The agent switches Loki to S3 when these appear (all three or none): they wait for the
# permissions and the bucket's encryption and TLS policy, or Loki's first writes fail.
resource "aws_ec2_tag" "loki_s3" {
  for_each = local.loki_s3 ? {
    "obstack:loki-s3-bucket" = aws_s3_bucket.loki[0].bucket
    "obstack:loki-s3-region" = aws_s3_bucket.loki[0].region
    "obstack:loki-s3-from"   = var.loki_s3_from
  } : {}

  resource_id = aws_instance.role["loki"].id
  key         = each.key
  value       = each.value

  depends_on = [
    aws_iam_role_policy.loki_uses_bucket,
    aws_s3_bucket_server_side_encryption_configuration.loki,
    aws_s3_bucket_policy.loki,
  ]
}
