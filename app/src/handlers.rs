//! What each route answers: plain functions from validated input to a JSON response.
//! Bad input becomes a 400 naming the parameter; nothing here panics.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use warp::http::header::{HeaderValue, CONTENT_TYPE};
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use crate::clock::now_rfc3339;
use crate::context::{AppContext, VERSION};
use crate::labels::Endpoint;

/// Query parameters as sent; unknown ones are ignored.
pub type Query = HashMap<String, String>;

/// `/api/random` without bounds draws from this range.
pub const DEFAULT_RANDOM_RANGE: (i64, i64) = (1, 100);

/// A bad query parameter, named, with what was wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("query parameter `{name}` {problem}")]
pub struct BadParam {
    pub name: &'static str,
    pub problem: String,
}

impl BadParam {
    fn new(name: &'static str, problem: impl Into<String>) -> BadParam {
        BadParam {
            name,
            problem: problem.into(),
        }
    }
}

/// `GET /`: what this service offers.
pub fn index() -> Response {
    let endpoints: Vec<_> = Endpoint::ROUTES
        .iter()
        .map(|route| {
            json!({
                "path": route.path(),
                "method": "GET",
                "description": route.description(),
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({ "service": "demo-app", "version": VERSION, "endpoints": endpoints }),
    )
}

/// `GET /health`.
pub fn health(ctx: &AppContext) -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "status": "ok",
            "version": VERSION,
            "uptime_seconds": ctx.started.elapsed().as_secs_f64(),
        }),
    )
}

/// `GET /metrics`: the Prometheus text format.
pub fn metrics(ctx: &AppContext) -> Response {
    match ctx.metrics.render() {
        Ok(text) => {
            let mut response = text.into_response();
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        Err(error) => error_response(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    }
}

#[derive(Serialize)]
struct SampleRecord<'a> {
    id: u32,
    name: &'static str,
    value: f64,
    tags: [&'static str; 2],
    timestamp: &'a str,
}

/// The body of `/api/data`; also served by the uninstrumented benchmark baseline.
pub fn sample_record() -> Response {
    let time = now_rfc3339();
    let record = SampleRecord {
        id: 42,
        name: "sample",
        value: 3.25,
        tags: ["demo", "observability"],
        timestamp: &time,
    };
    json_response(StatusCode::OK, &record)
}

/// What a route answers: a response now, or one made after a wait.
pub enum Answer {
    Now(Response),
    /// Only `/api/data` with a simulated delay waits, so only it pays for a timer and a
    /// future of its own; every other request is answered without one.
    After {
        delay: Duration,
        respond: fn() -> Response,
    },
}

/// `GET /api/data`, with optional simulated latency (`delay_ms`, when enabled).
pub fn api_data(query: &Query, ctx: &AppContext) -> Answer {
    match simulated_delay(query, ctx.max_simulated_delay) {
        Ok(Some(delay)) => Answer::After {
            delay,
            respond: sample_record,
        },
        Ok(None) => Answer::Now(sample_record()),
        Err(bad) => Answer::Now(bad_request(&bad)),
    }
}

/// Reads `delay_ms`; ignored entirely when simulated latency is off (`max` is zero).
pub fn simulated_delay(query: &Query, max: Duration) -> Result<Option<Duration>, BadParam> {
    if max.is_zero() {
        return Ok(None);
    }
    let Some(text) = query.get("delay_ms") else {
        return Ok(None);
    };
    let millis: u64 = text.parse().map_err(|_| {
        BadParam::new(
            "delay_ms",
            format!("must be a whole number of milliseconds, got `{text}`"),
        )
    })?;
    let delay = Duration::from_millis(millis);
    if delay > max {
        return Err(BadParam::new(
            "delay_ms",
            format!(
                "must be at most {} (the server's --max-simulated-delay)",
                max.as_millis()
            ),
        ));
    }
    Ok(Some(delay))
}

/// `GET /api/random[?min=..&max=..]`.
pub fn api_random(query: &Query) -> Response {
    match random_bounds(query) {
        Ok((min, max)) => {
            let value = rand::random_range(min..=max);
            json_response(
                StatusCode::OK,
                &json!({ "value": value, "min": min, "max": max }),
            )
        }
        Err(bad) => bad_request(&bad),
    }
}

/// Validates `min` and `max` (integers, `min <= max`), defaulting each independently.
pub fn random_bounds(query: &Query) -> Result<(i64, i64), BadParam> {
    let min = int_param(query, "min")?;
    let max = int_param(query, "max")?;
    let (default_min, default_max) = DEFAULT_RANDOM_RANGE;
    match (min, max) {
        (Some(min), Some(max)) if min > max => Err(BadParam::new(
            "min",
            format!("({min}) must not be greater than `max` ({max})"),
        )),
        (Some(min), None) if min > default_max => Err(BadParam::new(
            "min",
            format!("({min}) must not be greater than the default `max` ({default_max}); pass `max` too"),
        )),
        (None, Some(max)) if max < default_min => Err(BadParam::new(
            "max",
            format!("({max}) must not be less than the default `min` ({default_min}); pass `min` too"),
        )),
        (min, max) => Ok((min.unwrap_or(default_min), max.unwrap_or(default_max))),
    }
}

fn int_param(query: &Query, name: &'static str) -> Result<Option<i64>, BadParam> {
    query
        .get(name)
        .map(|text| {
            text.trim()
                .parse::<i64>()
                .map_err(|_| BadParam::new(name, format!("must be an integer, got `{text}`")))
        })
        .transpose()
}

/// `GET /api/error[?rate=..]`: fails with probability `rate` (default 1, always).
pub fn api_error(query: &Query) -> Response {
    match error_rate(query) {
        Ok(rate) if rand::random::<f64>() < rate => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "simulated failure (this endpoint fails on purpose)",
        ),
        Ok(rate) => json_response(StatusCode::OK, &json!({ "status": "ok", "rate": rate })),
        Err(bad) => bad_request(&bad),
    }
}

/// Validates `rate`: a number in [0, 1].
pub fn error_rate(query: &Query) -> Result<f64, BadParam> {
    let Some(text) = query.get("rate") else {
        return Ok(1.0);
    };
    match text.trim().parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(BadParam::new(
            "rate",
            format!("must be a number between 0 and 1, got `{text}`"),
        )),
    }
}

/// The JSON body of every error: `{"error": "...", "status": N}`.
pub fn error_response(status: StatusCode, message: &str) -> Response {
    json_response(
        status,
        &json!({ "error": message, "status": status.as_u16() }),
    )
}

fn bad_request(bad: &BadParam) -> Response {
    error_response(StatusCode::BAD_REQUEST, &bad.to_string())
}

fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> Query {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn random_bounds_default_and_validate() {
        assert_eq!(random_bounds(&query(&[])), Ok(DEFAULT_RANDOM_RANGE));
        assert_eq!(
            random_bounds(&query(&[("min", "-5"), ("max", "5")])),
            Ok((-5, 5))
        );
        assert_eq!(
            random_bounds(&query(&[("min", "7"), ("max", "7")])),
            Ok((7, 7))
        );
        assert_eq!(
            random_bounds(&query(&[("min", "x")])).unwrap_err().name,
            "min"
        );
        assert_eq!(
            random_bounds(&query(&[("max", "1.5")])).unwrap_err().name,
            "max"
        );
        let reversed = random_bounds(&query(&[("min", "9"), ("max", "3")])).unwrap_err();
        assert_eq!(reversed.name, "min");
        assert!(reversed.to_string().contains("`max` (3)"), "{reversed}");
        assert_eq!(
            random_bounds(&query(&[("min", "500")])).unwrap_err().name,
            "min"
        );
        assert_eq!(
            random_bounds(&query(&[("max", "0")])).unwrap_err().name,
            "max"
        );
    }

    #[test]
    fn error_rate_is_a_probability() {
        assert_eq!(error_rate(&query(&[])), Ok(1.0));
        assert_eq!(error_rate(&query(&[("rate", "0.25")])), Ok(0.25));
        for bad in ["-0.1", "1.01", "NaN", "inf", "half", ""] {
            assert_eq!(
                error_rate(&query(&[("rate", bad)])).unwrap_err().name,
                "rate",
                "{bad}"
            );
        }
    }

    #[test]
    fn delay_is_ignored_when_off_and_capped_when_on() {
        let q = query(&[("delay_ms", "100")]);
        assert_eq!(simulated_delay(&q, Duration::ZERO), Ok(None));
        assert_eq!(
            simulated_delay(&q, Duration::from_secs(1)),
            Ok(Some(Duration::from_millis(100)))
        );
        assert_eq!(
            simulated_delay(&q, Duration::from_millis(50))
                .unwrap_err()
                .name,
            "delay_ms"
        );
        let bad = query(&[("delay_ms", "soon")]);
        assert_eq!(
            simulated_delay(&bad, Duration::from_secs(1))
                .unwrap_err()
                .name,
            "delay_ms"
        );
    }
}
