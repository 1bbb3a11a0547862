//! stack-agent's integration tests, as one test binary (each file a module), so the AWS SDKs
//! are linked once: rendering from files, IMDS and moto, the real roles, the data volume's
//! mount on loop devices, the app fleet. `common` holds their shared helpers.

mod common;
mod fleet;
mod imds;
mod moto;
mod mount;
mod real_roles;
mod render_file;
