//! The operator's commands as a library: `main.rs` parses the command line and calls the
//! command's `run`; tests and `testkit` use the same public API.
//!
//! One module per command (`bake`, `deploy`, `restore`, `images`, `prune`, `pin`, `up`,
//! `bench`, `open`), the role registry (`roles`), the choice of AMIs to launch (`select`),
//! wrappers for AWS (`ami`), Packer (`packer`), processes (`cmd`), Session Manager tunnels
//! (`tunnel`) and virtual machines booting the images (`vm`), and small shared helpers
//! (`table`, `atomic`, `report`, `moto`, `slack`).

pub mod ami;
pub mod atomic;
pub mod bake;
pub mod bench;
pub mod cargo_env;
pub mod cli;
pub mod cmd;
pub mod deploy;
pub mod hash;
pub mod images;
pub mod loopback_http;
pub mod loopdev;
pub mod moto;
pub mod open;
pub mod packer;
pub mod pin;
pub mod project;
pub mod prune;
pub mod release;
pub mod report;
pub mod restore;
pub mod roles;
pub mod select;
pub mod slack;
pub mod snapshots;
pub mod table;
pub mod tunnel;
pub mod up;
pub mod verify;
pub mod versions;
pub mod vm;
