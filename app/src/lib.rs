//! The demo service: a small JSON API with Prometheus metrics and JSON logs.
//!
//! The binary (`main.rs`) wires these together; tests build the same pieces with their own
//! metrics registry and logger and serve them on a loopback port.

pub mod clock;
pub mod config;
pub mod context;
pub mod handlers;
pub mod instrument;
pub mod json_line;
pub mod labels;
pub mod logging;
pub mod metrics;
pub mod routes;
pub mod shutdown;

use std::future::Future;

pub use context::{AppContext, Shared, VERSION};

/// Serves the app on `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish and closes idle keep-alive connections before returning.
/// Callers bound the wait with [`shutdown::drain`].
pub async fn serve<S>(listener: tokio::net::TcpListener, ctx: Shared, shutdown: S)
where
    S: Future<Output = ()> + Send + 'static,
{
    warp::serve(routes::app(ctx))
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
}
