# The one Packer template every image is built from. What differs between roles is data:
# `var.role` picks images/<role>/ (its files, install and self-check scripts), the var file
# lists the role's upstream components and shipped binaries. Built by `cargo xtask bake`;
# see images/README.md for the variables and tags.

locals {
  role = var.role

  # The role's files: role.toml, templates/, rootfs/, provisioners/.
  role_dir = "${path.root}/../../${var.role}"

  # Shipped upstream components (the role's entries in images/versions.toml); each comes with
  # VERSION/URL/SHA256 environment variables for the provisioning scripts.
  components = sort(keys(var.component_versions))

  timestamp = formatdate("YYYYMMDDhhmmss", timestamp())
  ami_name  = "${var.ami_name_prefix}-${local.role}-${substr(var.input_hash, 0, 12)}-${local.timestamp}"
  manifest  = var.manifest_path != "" ? var.manifest_path : "${path.root}/../../../target/packer/${local.role}-manifest.json"

  ami_tags = merge(
    {
      Name                   = local.ami_name
      "obstack:project"      = "obstack"
      "obstack:role"         = local.role
      "obstack:input-hash"   = var.input_hash
      "obstack:git-revision" = var.git_revision
    },
    { for name, version in var.component_versions : "obstack:version:${name}" => version },
  )

  # Tags on the temporary builder instance and its volumes, so a leaked one is attributable.
  builder_tags = {
    Name              = "${var.ami_name_prefix}-bake-${local.role}"
    "obstack:project" = "obstack"
    "obstack:role"    = local.role
    "obstack:builder" = "packer"
  }

  # Settings for the provisioning scripts (they take settings only from the environment).
  provision_env = concat(
    [
      "OBSTACK_ROLE=${local.role}",
      "OBSTACK_STAGING=/tmp/obstack",
      "DEBIAN_FRONTEND=noninteractive",
      # `name:id name:id ...`: the fixed id of each service user (lib.sh ensure_system_user).
      "OBSTACK_SERVICE_IDS=${join(" ", [for name in sort(keys(var.service_ids)) : "${name}:${var.service_ids[name]}"])}",
    ],
    [for name in local.components : "${upper(name)}_VERSION=${lookup(var.component_versions, name, "")}"],
    [for name in local.components : "${upper(name)}_URL=${lookup(var.component_urls, name, "")}"],
    [for name in local.components : "${upper(name)}_SHA256=${lookup(var.component_sha256, name, "")}"],
  )
}

source "amazon-ebs" "golden" {
  region        = var.region
  instance_type = var.instance_type
  ami_name      = local.ami_name

  ami_description = "obstack ${local.role} image, inputs ${var.input_hash}"

  source_ami_filter {
    filters = {
      name                = var.base_ami_name
      architecture        = "x86_64"
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = var.base_ami_owners
    most_recent = true
  }

  launch_block_device_mappings {
    device_name           = "/dev/sda1"
    volume_size           = var.volume_size
    volume_type           = "gp3"
    iops                  = 3000
    throughput            = 125
    encrypted             = true
    delete_on_termination = true
  }
  # No encrypt_boot: the launch volume above is already encrypted (with the account's EBS
  # key), so the AMI's snapshot is too; encrypt_boot would copy an intermediate AMI
  # (ec2:CopyImage) for nothing. Every permission this source needs is in
  # images/bake-policy.json, checked against these settings by images/checks/tests/checks/bake_policy.rs.
  ena_support = true

  # No SSH from the network: Packer reaches the builder through SSM Session Manager with a
  # temporary instance profile, and the temporary security group admits only builder_cidrs.
  communicator                          = "ssh"
  ssh_username                          = "ubuntu"
  ssh_interface                         = "session_manager"
  ssh_clear_authorized_keys             = true
  temporary_security_group_source_cidrs = var.builder_cidrs
  temporary_iam_instance_profile_policy_document {
    Version = "2012-10-17"
    Statement {
      Effect = "Allow"
      Action = [
        "ssm:UpdateInstanceInformation",
        "ssmmessages:CreateControlChannel",
        "ssmmessages:CreateDataChannel",
        "ssmmessages:OpenControlChannel",
        "ssmmessages:OpenDataChannel",
        "ec2messages:AcknowledgeMessage",
        "ec2messages:DeleteMessage",
        "ec2messages:FailMessage",
        "ec2messages:GetEndpoint",
        "ec2messages:GetMessages",
        "ec2messages:SendReply",
      ]
      Resource = ["*"]
    }
  }

  tags            = local.ami_tags
  snapshot_tags   = local.ami_tags
  run_tags        = local.builder_tags
  run_volume_tags = local.builder_tags
}

# The same image against a local EC2 endpoint (moto): registers an AMI with the real names and
# tags, without an instance to talk to, so every provisioner is skipped.
source "amazon-ebs" "smoke" {
  region        = var.region
  instance_type = var.instance_type
  ami_name      = local.ami_name

  ami_description = "obstack ${local.role} image, inputs ${var.input_hash}"

  source_ami_filter {
    filters = {
      name                = var.base_ami_name
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = var.base_ami_owners
    most_recent = true
  }

  communicator                          = "none"
  temporary_security_group_source_cidrs = var.builder_cidrs

  custom_endpoint_ec2        = var.ec2_endpoint
  skip_credential_validation = true
  skip_metadata_api_check    = true
  skip_region_validation     = true

  tags            = local.ami_tags
  snapshot_tags   = local.ami_tags
  run_tags        = local.builder_tags
  run_volume_tags = local.builder_tags
}

build {
  sources = ["source.amazon-ebs.golden", "source.amazon-ebs.smoke"]

  provisioner "shell" {
    except = ["amazon-ebs.smoke"]
    inline = [
      # cloud-init 23.4+ exits 2 when the boot finished with recoverable errors ("degraded"):
      # the instance is usable, so 2 counts as done; any other failure stops the bake.
      "cloud-init status --wait >/dev/null || { rc=$?; [ $rc -eq 2 ] || { echo \"cloud-init failed (exit $rc); see /var/log/cloud-init.log on the builder\" >&2; exit $rc; }; }",
      "install -d -m 0700 /tmp/obstack /tmp/obstack/common /tmp/obstack/role /tmp/obstack/artifacts",
    ]
  }

  # Trailing slashes: upload the directories' contents, whatever path.root is relative to.
  provisioner "file" {
    except      = ["amazon-ebs.smoke"]
    source      = "${path.root}/../"
    destination = "/tmp/obstack/common"
  }

  provisioner "file" {
    except      = ["amazon-ebs.smoke"]
    source      = "${local.role_dir}/"
    destination = "/tmp/obstack/role"
  }

  provisioner "file" {
    except      = ["amazon-ebs.smoke"]
    sources     = [for name in var.artifacts : "${var.artifacts_dir}/${name}"]
    destination = "/tmp/obstack/artifacts/"
  }

  provisioner "shell" {
    except           = ["amazon-ebs.smoke"]
    execute_command  = "sudo env {{ .Vars }} bash '{{ .Path }}'"
    environment_vars = local.provision_env
    scripts = [
      "${path.root}/../provisioners/base.sh",
      "${path.root}/../provisioners/rootfs.sh",
      "${path.root}/../provisioners/node-exporter.sh",
      "${local.role_dir}/provisioners/install.sh",
      "${path.root}/../provisioners/agent.sh",
      "${local.role_dir}/provisioners/self-check.sh",
      "${path.root}/../provisioners/cleanup.sh",
    ]
  }

  post-processor "manifest" {
    output     = local.manifest
    strip_path = true
    custom_data = {
      role       = local.role
      input_hash = var.input_hash
    }
  }
}
