//! demo-app's integration tests, as one test binary (each file a module): the HTTP API
//! through warp's test client, and the real binary as a process.

mod http;
mod process;
