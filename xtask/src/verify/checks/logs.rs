//! The whole log path: the app writes the test request's line to its log file, Promtail
//! ships it, Loki stores it, and `query_range` finds it within the deadline.

use std::time::{Duration, Instant, UNIX_EPOCH};

use serde_json::Value;

use super::app::TestRequest;
use crate::verify::expect::APP_JOB;
use crate::verify::poll::{self, NotYet};
use crate::verify::report::Row;
use crate::verify::target::Reach;

pub const CHECK: &str = "request logged in loki";
/// How far before the request the search starts: clocks of this machine and the stack's
/// may disagree a little.
const CLOCK_SLACK: Duration = Duration::from_secs(300);

/// The LogQL query finding the line of the request with id `request_id`.
pub fn query(request_id: &str) -> String {
    format!("{{job=\"{APP_JOB}\"}} |= \"{request_id}\"")
}

/// The row, and how long after the request its line was found.
pub fn request_logged(
    loki: &Reach,
    request: Option<&TestRequest>,
    deadline: Duration,
) -> (Row, Option<Duration>) {
    let loki = match loki {
        Ok(loki) => loki,
        Err(why) => return (Row::not_checked(CHECK, "loki", why.clone()), None),
    };
    let Some(request) = request else {
        let why = "no test request was answered by the app, so there is no line to look for";
        return (Row::not_checked(CHECK, "loki", why), None);
    };
    let start = request
        .sent_at
        .checked_sub(CLOCK_SLACK)
        .unwrap_or(request.sent_at)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
        .to_string();
    let logql = query(&request.request_id);
    let started = Instant::now();
    let found = poll::until(started + deadline, poll::INTERVAL, || {
        let data = loki
            .data(
                "/loki/api/v1/query_range",
                &[
                    ("query", logql.as_str()),
                    ("start", start.as_str()),
                    ("limit", "10"),
                    ("direction", "backward"),
                ],
            )
            // Loki not answering may be a restart: retried until the deadline too.
            .map_err(NotYet::Pending)?;
        match find_line(&data, &request.request_id) {
            Some(line) => Ok(line),
            None => Err(NotYet::Pending(format!(
                "no line with request id {} after {}; query: {logql}",
                request.request_id,
                humantime::format_duration(round(deadline))
            ))),
        }
    });
    match found {
        Ok(_) => {
            let after = request.sent.elapsed();
            let detail = format!(
                "line of request {} found {:.1}s after the request",
                request.request_id,
                after.as_secs_f64()
            );
            (Row::ok(CHECK, "loki", detail), Some(after))
        }
        Err(reason) => (Row::failed(CHECK, "loki", reason), None),
    }
}

/// The first line of a `streams` answer that contains `needle`.
pub fn find_line(data: &Value, needle: &str) -> Option<String> {
    data["result"]
        .as_array()?
        .iter()
        .flat_map(|stream| stream["values"].as_array().into_iter().flatten())
        .filter_map(|value| value[1].as_str())
        .find(|line| line.contains(needle))
        .map(str::to_string)
}

fn round(duration: Duration) -> Duration {
    Duration::from_secs(duration.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_selects_the_apps_stream_and_filters_by_the_id() {
        assert_eq!(query("abc"), r#"{job="demo-app"} |= "abc""#);
    }

    #[test]
    fn a_line_is_found_only_when_it_carries_the_id() {
        let data = serde_json::json!({
            "resultType": "streams",
            "result": [{
                "stream": {"job": "demo-app", "level": "info"},
                "values": [["1700000000000000000", r#"{"msg":"request","request_id":"abc"}"#]]
            }]
        });
        assert!(find_line(&data, "abc").is_some());
        assert!(find_line(&data, "abd").is_none());
        assert!(find_line(&serde_json::json!({"result": []}), "abc").is_none());
    }
}
