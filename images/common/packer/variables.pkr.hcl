# The bake's contract (images/README.md, "Packer templates"): `cargo xtask bake` writes one
# var file per role with these variables; nothing in it is secret.

variable "role" {
  type        = string
  description = "The image to build: a role, i.e. a directory images/<role>/ holding a role.toml (the role registry)."

  # Any role of the registry, and nothing else: a role name is lowercase letters, digits and
  # dashes (the registry's rule), so it cannot leave images/; a name without a directory
  # fails validate on its missing install script.
  validation {
    condition     = var.role != "" && regex_replace(var.role, "^[a-z][a-z0-9-]*$", "") == ""
    error_message = "The role must be a role name (lowercase letters, digits and -, starting with a letter): a directory images/<role>/ holding a role.toml."
  }
}

variable "artifacts" {
  type        = list(string)
  description = "Our own binaries the image ships, by file name in artifacts_dir: stack-agent, plus demo-app for the app role."

  validation {
    condition     = contains(var.artifacts, "stack-agent")
    error_message = "The artifacts must include stack-agent: every image runs the boot agent."
  }
}

variable "region" {
  type        = string
  description = "AWS region to bake in."
}

variable "input_hash" {
  type        = string
  description = "The role's content hash (hex SHA-256), tagged obstack:input-hash and part of the AMI name."

  validation {
    condition     = length(var.input_hash) == 64 && regex_replace(var.input_hash, "[0-9a-f]", "") == ""
    error_message = "The input_hash must be 64 lowercase hex digits (a SHA-256); cargo xtask bake computes it."
  }
}

variable "git_revision" {
  type        = string
  description = "The checkout's revision, tagged obstack:git-revision."
}

variable "artifacts_dir" {
  type        = string
  description = "Directory holding the release binaries listed in artifacts (e.g. target/release)."
}

variable "component_versions" {
  type        = map(string)
  description = "Component name to version, from images/versions.toml: tagged obstack:version:<name> and checked by the self-check."
  default     = {}
}

variable "component_urls" {
  type        = map(string)
  description = "Component name to amd64 download URL, from images/versions.toml."
  default     = {}
}

variable "component_sha256" {
  type        = map(string)
  description = "Component name to amd64 SHA-256; every download is verified against it and the bake fails on a mismatch."
  default     = {}
}

variable "service_ids" {
  type        = map(number)
  description = "Each service user the image creates to its fixed id, both uid and its group's gid (the role registry's [users]): the provisioners refuse a user without one."
  default     = {}
}

variable "base_ami_name" {
  type        = string
  description = "source_ami_filter name pattern of the base image."
  default     = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"
}

variable "base_ami_owners" {
  type        = list(string)
  description = "Owners of the base image; Canonical by default."
  default     = ["099720109477"]
}

variable "instance_type" {
  type        = string
  description = "Instance type of the temporary builder."
  default     = "t3.small"
}

variable "ami_name_prefix" {
  type        = string
  description = "First part of every AMI name: <prefix>-<role>-<hash12>-<timestamp>."
  default     = "obstack"
}

variable "ec2_endpoint" {
  type        = string
  description = "Custom EC2 endpoint for the smoke source (e.g. moto); empty otherwise."
  default     = ""
}

variable "builder_cidrs" {
  type        = list(string)
  description = "CIDRs the temporary security group admits on SSH. Packer reaches the builder through SSM Session Manager, so no inbound rule is needed: the default admits nothing from the network. Pass the bake host's /32 only if you switch to direct SSH."
  default     = ["127.0.0.1/32"]

  validation {
    condition     = length(var.builder_cidrs) > 0 && contains(var.builder_cidrs, "0.0.0.0/0") == false
    error_message = "The builder_cidrs must name specific addresses (an empty list would make Packer open 0.0.0.0/0)."
  }
}

variable "volume_size" {
  type        = number
  description = "Root volume size in GiB (encrypted gp3)."
  default     = 16
}

variable "manifest_path" {
  type        = string
  description = "Where Packer's manifest post-processor writes the built AMI id; empty means target/packer/<role>-manifest.json in the checkout."
  default     = ""
}
