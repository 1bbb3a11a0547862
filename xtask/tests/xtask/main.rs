//! xtask's integration tests, as one test binary (each file a module), so the AWS SDKs are
//! linked once: every command against moto, stand-in programs and real local services, the
//! Terraform configuration through `terraform console`, and the repository's hygiene.
//! The `*_support` modules are shared helpers.

mod bake;
mod bake_support;
mod data_lifecycle;
mod deploy;
mod deploy_policy;
mod fifth_role;
mod health;
mod instance_policies;
mod no_build;
mod open;
mod prune;
mod registry_support;
mod release;
mod roles;
mod rollout;
mod terraform;
mod terraform_access;
mod terraform_alerting;
mod terraform_aws_values;
mod terraform_constraints;
mod terraform_data;
mod terraform_fleet;
mod terraform_loki_s3;
mod terraform_ordering;
mod terraform_support;
mod terraform_volumes;
mod test_report;
mod tidy;
mod tunnels;
mod up;
mod verify;
mod workflow_rehearsal;
mod workflow_support;
mod workflows;
