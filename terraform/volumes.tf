# Every stateful role keeps its data on an EBS volume of its own, not on the root volume:
# Prometheus' TSDB, Loki's chunks and index, Grafana's database and secret_key. A new AMI
# replaces the instance (its `ami` forces a new one) but never the volume, which moves to
# the successor:
#
#   1. the attachment is destroyed first (it depends on the instance): AWS stops the old
#      instance (stop_instance_before_detaching), so its services shut down cleanly and the
#      filesystem is unmounted before the volume is detached;
#   2. the old instance is terminated (its root volume goes with it: nothing lives there);
#   3. the new instance launches with the volume's id in its tags (`obstack:data-volume`);
#      its boot agent waits, bounded, for that volume to appear and mounts it before any
#      service starts;
#   4. the new attachment attaches the volume.
#
# create_before_destroy is deliberately not used on the instances: an EBS volume attaches to
# one instance at a time, so the successor could not get it while the old one still runs.
# The app role keeps no state and gets no volume.

locals {
  # Each stateful role's data volume size in GiB: the defaults, then the operator's sizes.
  data_volume_size_gb = merge(
    { prometheus = 20, loki = 20, grafana = 5 },
    var.data_volume_size_gb,
  )
  data_roles = toset(keys(local.data_volume_size_gb))

  # The tag the snapshot policy selects volumes by: one value per deployment, so two stacks
  # in one account never share a policy's targets (DLM refuses overlapping target tags).
  snapshot_tag_key   = "obstack:snapshots"
  snapshot_tag_value = "${var.name}-daily"
}

resource "aws_ebs_volume" "data" {
  for_each = local.data_roles

  # A volume attaches only to instances in its own zone: the subnet's (AWS picks the zone
  # when var.availability_zone is null, and the subnet reports it).
  availability_zone = aws_subnet.public.availability_zone
  type              = "gp3"
  size              = local.data_volume_size_gb[each.key]
  encrypted         = true
  # The data key, which `cargo xtask destroy` keeps: the snapshots stay readable.
  kms_key_id = aws_kms_key.data.arn
  # `cargo xtask restore` sets a role's snapshot here and replaces the volume (and the
  # instance) with one made from it. The provider keeps the attribute when the variable no
  # longer names the role (it is computed), so a later deploy leaves the restored volume be.
  snapshot_id = lookup(var.data_volume_snapshot_ids, each.key, null)
  # `cargo xtask destroy` (or a replacement of the volume) leaves a last snapshot behind.
  final_snapshot = true

  # With the provider's default tags (obstack:deployment = var.name): role and stack.
  tags = {
    Name                     = "${var.name}-${each.key}-data"
    "obstack:role"           = each.key
    (local.snapshot_tag_key) = local.snapshot_tag_value
  }

  lifecycle {
    # A volume made before the data key existed stays on the stack's key rather than being
    # replaced by an empty one; `cargo xtask restore --role ROLE --latest` moves it onto the
    # data key (a new volume is made with this configuration's key), and `cargo xtask
    # destroy` refuses to leave a snapshot under the stack's key behind (README, "Destroy").
    ignore_changes = [kms_key_id]
  }
}

resource "aws_volume_attachment" "data" {
  for_each = local.data_roles

  # On Nitro instances the volume shows up as /dev/nvme<N>n1 whatever this says; the boot
  # agent finds it by the volume id in its NVMe serial, not by this name.
  device_name = "/dev/sdf"
  volume_id   = aws_ebs_volume.data[each.key].id
  instance_id = aws_instance.role[each.key].id
  # Detach only from a stopped instance: the services have flushed and the filesystem is
  # unmounted, instead of pulling the disk from under a running Prometheus.
  stop_instance_before_detaching = true
}

# Daily snapshots of every data volume of this deployment, the newest
# var.snapshot_retention_count kept. Restoring one is in terraform/README.md.
resource "aws_dlm_lifecycle_policy" "data" {
  # DLM takes only letters, digits, spaces, hyphens and underscores here (no colon):
  # terraform/constraints.toml, checked by xtask/tests/xtask/terraform_aws_values.rs.
  description        = "obstack ${var.name} daily snapshots of the data volumes"
  execution_role_arn = aws_iam_role.snapshots.arn
  state              = "ENABLED"

  policy_details {
    policy_type    = "EBS_SNAPSHOT_MANAGEMENT"
    resource_types = ["VOLUME"]

    schedule {
      name = "daily"

      create_rule {
        interval      = 24
        interval_unit = "HOURS"
        times         = ["03:00"]
      }

      retain_rule {
        count = var.snapshot_retention_count
      }

      # The volume's own tags (role, stack) go onto its snapshots, so a snapshot says what
      # it holds; the policy's tag is what the snapshot role may delete by.
      copy_tags = true
      tags_to_add = {
        (local.snapshot_tag_key) = local.snapshot_tag_value
      }
    }

    target_tags = {
      (local.snapshot_tag_key) = local.snapshot_tag_value
    }
  }
}

# The role DLM runs the policy as: AWSDataLifecycleManagerServiceRole's snapshot actions
# only (no fast snapshot restore, sharing, archiving, cross-region copy or EventBridge),
# scoped to this deployment's volumes and snapshots where EC2 allows it.
resource "aws_iam_role" "snapshots" {
  name = "${var.name}-snapshots"
  # Only DLM policies of this account and region may use the role (AWS's advice against the
  # confused deputy, as for the flow-log role). The policy's id is not known before it
  # exists (it needs this role first), hence the wildcard.
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "dlm.amazonaws.com" }
      Action    = "sts:AssumeRole"
      Condition = {
        StringEquals = {
          "aws:SourceAccount" = data.aws_caller_identity.current.account_id
        }
        ArnLike = {
          "aws:SourceArn" = "arn:${data.aws_partition.current.partition}:dlm:${var.region}:${data.aws_caller_identity.current.account_id}:policy/*"
        }
      }
    }]
  })
}

resource "aws_iam_role_policy" "snapshots" {
  name = "daily-data-snapshots"
  role = aws_iam_role.snapshots.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        # Describe* supports no resource-level permissions: "*" is the only resource.
        Sid      = "FindVolumesAndSnapshots"
        Effect   = "Allow"
        Action   = ["ec2:DescribeVolumes", "ec2:DescribeSnapshots", "ec2:DescribeInstances"]
        Resource = "*"
      },
      {
        # CreateSnapshot is authorised on the source volume and on the new snapshot.
        Sid    = "SnapshotTheDataVolumes"
        Effect = "Allow"
        Action = ["ec2:CreateSnapshot"]
        Resource = concat(
          [for volume in aws_ebs_volume.data : volume.arn],
          ["arn:${data.aws_partition.current.partition}:ec2:${var.region}::snapshot/*"],
        )
      },
      {
        # Tags only as part of creating a snapshot: never on an existing one, which could
        # otherwise be given this policy's tag (another stack's) and then be deleted below.
        Sid      = "TagTheSnapshots"
        Effect   = "Allow"
        Action   = ["ec2:CreateTags"]
        Resource = "arn:${data.aws_partition.current.partition}:ec2:${var.region}::snapshot/*"
        Condition = {
          StringEquals = { "ec2:CreateAction" = "CreateSnapshot" }
        }
      },
      {
        # Only the snapshots this policy made (they carry its tag) may be deleted.
        Sid      = "ExpireOwnSnapshots"
        Effect   = "Allow"
        Action   = ["ec2:DeleteSnapshot"]
        Resource = "arn:${data.aws_partition.current.partition}:ec2:${var.region}::snapshot/*"
        Condition = {
          StringEquals = {
            "aws:ResourceTag/${local.snapshot_tag_key}" = local.snapshot_tag_value
          }
        }
      },
      {
        # The volumes are encrypted with the stack's key: snapshotting them uses it, through
        # EC2 in this region only. The key policy's account statement delegates to IAM.
        Sid      = "UseTheStackKeyThroughEc2"
        Effect   = "Allow"
        Action   = ["kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKeyWithoutPlaintext", "kms:ReEncrypt*"]
        Resource = aws_kms_key.stack.arn
        Condition = {
          StringEquals = {
            "kms:ViaService" = "ec2.${var.region}.${data.aws_partition.current.dns_suffix}"
          }
        }
      },
      {
        Sid      = "GrantsOnlyForEbs"
        Effect   = "Allow"
        Action   = ["kms:CreateGrant"]
        Resource = aws_kms_key.stack.arn
        Condition = {
          Bool = { "kms:GrantIsForAWSResource" = "true" }
          StringEquals = {
            "kms:ViaService" = "ec2.${var.region}.${data.aws_partition.current.dns_suffix}"
          }
        }
      },
    ]
  })
}

# The data volumes are encrypted with the data key (secrets.tf): snapshotting them uses it,
# through EC2 in this region only, and grants only for AWS resources. A policy of its own
# beside the one above, so the data key's permissions read in one place.
resource "aws_iam_role_policy" "snapshots_data_key" {
  name = "use-data-key-for-snapshots"
  role = aws_iam_role.snapshots.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "UseTheDataKeyThroughEc2"
        Effect   = "Allow"
        Action   = ["kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKeyWithoutPlaintext", "kms:ReEncrypt*"]
        Resource = aws_kms_key.data.arn
        Condition = {
          StringEquals = {
            "kms:ViaService" = "ec2.${var.region}.${data.aws_partition.current.dns_suffix}"
          }
        }
      },
      {
        Sid      = "DataKeyGrantsOnlyForEbs"
        Effect   = "Allow"
        Action   = ["kms:CreateGrant"]
        Resource = aws_kms_key.data.arn
        Condition = {
          Bool = { "kms:GrantIsForAWSResource" = "true" }
          StringEquals = {
            "kms:ViaService" = "ec2.${var.region}.${data.aws_partition.current.dns_suffix}"
          }
        }
      },
    ]
  })
}
