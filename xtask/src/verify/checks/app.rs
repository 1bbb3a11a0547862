//! The app answers, and one request of ours goes through it: its id is what the log line
//! and the request counter are then looked for by.

use std::time::{Instant, SystemTime};

use rand::Rng;

use crate::verify::report::Row;
use crate::verify::target::Reach;

pub const CHECK: &str = "app answers";
/// Cheap, side-effect free, and counted and logged like every request.
const PATH: &str = "/health";

/// The request `verify` made, to be found again in the log and the metrics.
#[derive(Debug, Clone)]
pub struct TestRequest {
    /// What the log line carries as `request_id`: the id the app answered with in its
    /// `x-request-id` header. The app assigns every request its own id (app/src/context.rs)
    /// and does not adopt the client's, so the nonce we send is only a fallback.
    pub request_id: String,
    pub sent: Instant,
    pub sent_at: SystemTime,
}

/// A fresh random nonce, sent as the request's `x-request-id`.
pub fn nonce() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    format!("verify-{}", hex::encode(bytes))
}

/// `GET /health` with a fresh nonce; the row, and the request when the app answered 2xx.
pub fn answers(app: &Reach) -> (Row, Option<TestRequest>) {
    let app = match app {
        Ok(app) => app,
        Err(why) => return (Row::not_checked(CHECK, "app", why.clone()), None),
    };
    let nonce = nonce();
    let sent = Instant::now();
    let sent_at = SystemTime::now();
    let answer = match app.get(PATH, &[], &[("x-request-id", &nonce)]) {
        Ok(answer) => answer,
        Err(reason) => return (Row::failed(CHECK, "app", reason), None),
    };
    if !answer.is_success() {
        let detail = format!("GET {PATH} answered {}", answer.excerpt());
        return (Row::failed(CHECK, "app", detail), None);
    }
    let request_id = answer.request_id.clone().unwrap_or(nonce);
    let row = Row::ok(
        CHECK,
        "app",
        format!(
            "GET {PATH} answered {}; request id {request_id}",
            answer.status
        ),
    );
    let request = TestRequest {
        request_id,
        sent,
        sent_at,
    };
    (row, Some(request))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_are_fresh() {
        let (a, b) = (nonce(), nonce());
        assert_ne!(a, b);
        assert_eq!(a.len(), "verify-".len() + 32);
    }
}
