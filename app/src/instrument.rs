//! Every request, however it is answered, is measured and logged once, here: one place for
//! the request counter, duration histogram, in-flight gauge, error counter, the
//! `x-request-id` header and the request's log line.

use std::fmt::{self, Write as _};
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use arrayvec::ArrayString;
use prometheus::IntGauge;
use slog::info;
use warp::http::header::{HeaderName, HeaderValue};
use warp::http::Method;
use warp::path::FullPath;
use warp::reply::Response;

use crate::context::AppContext;
use crate::labels::{Endpoint, MethodLabel};

/// The response header carrying the request's id, also logged as `request_id`.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The same, parsed once rather than on every response.
const REQUEST_ID_HEADER_NAME: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);

/// One request between its arrival and its response: begun before the route runs, finished
/// with the route's response.
pub struct RequestScope {
    method: Method,
    path: FullPath,
    peer: Option<SocketAddr>,
    started: Instant,
    _in_flight: InFlight,
}

impl RequestScope {
    pub fn begin(
        ctx: &AppContext,
        method: Method,
        path: FullPath,
        peer: Option<SocketAddr>,
    ) -> Self {
        let in_flight = InFlight::enter(ctx.metrics.in_flight().clone());
        RequestScope {
            method,
            path,
            peer,
            started: Instant::now(),
            _in_flight: in_flight,
        }
    }

    pub fn method(&self) -> &Method {
        &self.method
    }

    /// Counts, times and logs the request, and stamps its id on the response.
    pub fn finish(self, ctx: &AppContext, endpoint: Endpoint, mut response: Response) -> Response {
        let elapsed = self.started.elapsed();
        let status = response.status();
        let method = MethodLabel::from_method(&self.method);
        ctx.metrics
            .observe(method, endpoint, status.as_u16(), elapsed.as_secs_f64());

        let request_id = ctx.next_request_id();
        let request_id = request_id.as_str();
        info!(ctx.logger, "request";
            "request_id" => request_id,
            "peer" => peer_text(self.peer).as_str(),
            "duration_ms" => millis(elapsed),
            "status" => status.as_u16(),
            "route" => endpoint.label(),
            "path" => self.path.as_str(),
            "method" => self.method.as_str(),
        );

        if let Ok(value) = HeaderValue::from_str(request_id) {
            response.headers_mut().insert(REQUEST_ID_HEADER_NAME, value);
        }
        response
    }
}

/// `elapsed` in milliseconds, as the log shows it. One division of the exact nanosecond count
/// rounds once, so the line reads `0.014692`; `as_secs_f64() * 1000.0` rounds twice and
/// reads `0.014691999999999998`. The count is a `u64` (584 years) rather than the `u128`
/// `as_nanos` gives, whose conversion to `f64` is a library call.
fn millis(elapsed: Duration) -> f64 {
    let nanos = elapsed
        .as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(elapsed.subsec_nanos()));
    nanos as f64 / 1e6
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

/// Room for the longest `SocketAddrV6` text: `[`, 39 characters of address, `%`, a 10-digit
/// scope id, `]:` and a 5-digit port (58 in all).
const PEER_CAPACITY: usize = 64;

/// The client's address as `ip:port`, or `-` when the transport has none, on the stack
/// rather than in a `String` per request. IPv4 is written by hand: `SocketAddr`'s `Display`
/// goes through the formatting machinery (it supports width and padding) and was a visible
/// share of the benchmark's profile.
fn peer_text(peer: Option<SocketAddr>) -> ArrayString<PEER_CAPACITY> {
    let mut text = ArrayString::new();
    let written = match peer {
        None => text.write_str("-"),
        Some(SocketAddr::V4(addr)) => write_v4(&mut text, addr),
        // Rare behind a load balancer; the standard formatting is fine here.
        Some(addr) => write!(text, "{addr}"),
    };
    if written.is_err() {
        text.clear();
        let _ = text.write_str("-");
    }
    text
}

fn write_v4(text: &mut impl fmt::Write, addr: SocketAddrV4) -> fmt::Result {
    let mut digits = itoa::Buffer::new();
    for (i, octet) in addr.ip().octets().into_iter().enumerate() {
        if i > 0 {
            text.write_char('.')?;
        }
        text.write_str(digits.format(octet))?;
    }
    text.write_char(':')?;
    text.write_str(digits.format(addr.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_the_nanoseconds_they_were() {
        for (nanos, text) in [
            (14_692, "0.014692"),
            (79_000, "0.079"),
            (1_000_000, "1.0"),
            (2_500_000_001, "2500.000001"),
        ] {
            let shown = serde_json::to_string(&millis(Duration::from_nanos(nanos))).unwrap();
            assert_eq!(shown, text);
        }
    }

    #[test]
    fn peers_read_as_the_standard_formatting_writes_them() {
        for addr in [
            "127.0.0.1:5000",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.20.3.4:8080",
            "[::1]:443",
            "[fe80::1%4294967295]:65535",
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535",
        ] {
            let parsed: SocketAddr = addr.parse().unwrap();
            assert_eq!(peer_text(Some(parsed)).as_str(), parsed.to_string());
        }
        assert_eq!(peer_text(None).as_str(), "-");
    }
}
