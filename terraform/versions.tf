terraform {
  required_version = ">= 1.10"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 5.32 added instance_refresh.preferences.max_healthy_percentage (fleet.tf).
      version = "~> 5.32"
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

  # The peer-address tags, the password-parameter tag, the alert tags (alerting.tf) and
  # Loki's S3 tags (loki_storage.tf) are written after launch by `aws_ec2_tag`. Ignoring
  # them here keeps `aws_instance` from removing them on the next plan; `aws_ec2_tag` itself
  # does not honour `ignore_tags`.
  ignore_tags {
    key_prefixes = ["obstack:peer:"]
    keys = [
      "obstack:grafana-admin-password-param",
      "obstack:alert-sns-topic-arn",
      "obstack:alert-webhook-url-param",
      "obstack:alert-slack-url-param",
      "obstack:grafana-url",
      "obstack:loki-s3-bucket",
      "obstack:loki-s3-region",
      "obstack:loki-s3-from",
    ]
  }
}
