//! Checks over `images/`, as one test binary (each file a module), so the AWS SDKs and the
//! agent are linked once: rendered configs through promtool, amtool, packer and systemd,
//! dashboards, policies, the provisioning rehearsal, and the images booted as VMs. Modules without tests of their own
//! (`alerting`, `boot_kit`, `packer_env`, `rehearsal_kit`, `series`, `stack`) are shared
//! helpers.

mod alerting;
mod alertmanager;
mod bake_policy;
mod bake_readiness;
mod boot;
mod boot_kit;
mod dashboards;
mod debian_root;
mod discovery;
mod loki_s3;
mod packer;
mod packer_env;
mod rehearsal;
mod rehearsal_kit;
mod render;
mod rules;
mod series;
mod shellcheck;
mod smoke_bake;
mod stack;
mod units;
