terraform {
  required_version = ">= 1.6"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      "obstack:project"    = "obstack"
      "obstack:deployment" = var.name
    }
  }

  # The peer-address tags and the password-parameter tag are written after launch by
  # `aws_ec2_tag` (instances.tf). Ignoring them here keeps `aws_instance` from removing
  # them on the next plan; `aws_ec2_tag` itself does not honour `ignore_tags`.
  ignore_tags {
    key_prefixes = ["obstack:peer:"]
    keys         = ["obstack:grafana-admin-password-param"]
  }
}
