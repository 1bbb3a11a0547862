//! Wraps the routes so every request, answered or rejected, is measured and logged once:
//! one place for the request counter, duration histogram, in-flight gauge, error counter,
//! the `x-request-id` header and the request's log line.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use prometheus::IntGauge;
use slog::info;
use warp::http::header::{HeaderValue, ALLOW};
use warp::http::{Method, StatusCode};
use warp::path::FullPath;
use warp::reply::Response;
use warp::Filter;

use crate::context::Shared;
use crate::labels::{Endpoint, MethodLabel};

/// The response header carrying the request's id, also logged as `request_id`.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Adds measurement and logging around `inner`, which must answer every request.
pub fn instrumented<F>(
    ctx: Shared,
    inner: F,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static
where
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    warp::method()
        .and(warp::path::full())
        .and(warp::addr::remote())
        .map(move |method, path, peer| RequestScope::begin(ctx.clone(), method, path, peer))
        .and(inner)
        .map(|scope: RequestScope, response: Response| scope.finish(response))
}

/// One request between its arrival and its response.
struct RequestScope {
    ctx: Shared,
    method: Method,
    path: FullPath,
    peer: Option<SocketAddr>,
    started: Instant,
    _in_flight: InFlight,
}

impl RequestScope {
    fn begin(ctx: Shared, method: Method, path: FullPath, peer: Option<SocketAddr>) -> Self {
        let in_flight = InFlight::enter(ctx.metrics.in_flight().clone());
        RequestScope {
            ctx,
            method,
            path,
            peer,
            started: Instant::now(),
            _in_flight: in_flight,
        }
    }

    fn finish(self, mut response: Response) -> Response {
        let elapsed = self.started.elapsed();
        let status = response.status();
        let endpoint = Endpoint::from_path(self.path.as_str());
        let method = MethodLabel::from_method(&self.method);
        self.ctx
            .metrics
            .observe(method, endpoint, status.as_u16(), elapsed.as_secs_f64());

        let request_id = self.ctx.next_request_id();
        info!(self.ctx.logger, "request";
            "request_id" => &request_id,
            "peer" => %Peer(self.peer),
            "duration_ms" => elapsed.as_secs_f64() * 1000.0,
            "status" => status.as_u16(),
            "route" => endpoint.label(),
            "path" => self.path.as_str(),
            "method" => self.method.as_str(),
        );

        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::try_from(request_id) {
            headers.insert(REQUEST_ID_HEADER, value);
        }
        if status == StatusCode::METHOD_NOT_ALLOWED && endpoint != Endpoint::Unmatched {
            // Every route answers GET only.
            headers.insert(ALLOW, HeaderValue::from_static("GET"));
        }
        response
    }
}

/// Counts a request as in flight until dropped, including when the client goes away and
/// the request's future is dropped half-way.
struct InFlight(IntGauge);

impl InFlight {
    fn enter(gauge: IntGauge) -> InFlight {
        gauge.inc();
        InFlight(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The client's address, or `-` when the transport has none.
struct Peer(Option<SocketAddr>);

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("-"),
        }
    }
}
