//! Waiting for something the stack does on its own schedule (a scrape, a rule evaluation,
//! Promtail shipping a line), bounded by a deadline and retried with backon.

use std::time::{Duration, Instant};

use backon::{BlockingRetryable, ConstantBuilder};

/// Pause between two attempts: well under Prometheus' 15 s scrape interval.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Why an attempt did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotYet {
    /// Not yet: worth another attempt before the deadline (the reason is reported if the
    /// deadline passes).
    Pending(String),
    /// A definite failure: retrying would not change it.
    Failed(String),
}

/// Runs `attempt` until it succeeds, fails definitely, or the next attempt would start after
/// `deadline`; the error is the last reason.
pub fn until<T>(
    deadline: Instant,
    interval: Duration,
    attempt: impl FnMut() -> Result<T, NotYet>,
) -> Result<T, String> {
    attempt
        .retry(
            ConstantBuilder::default()
                .with_delay(interval)
                .without_max_times(),
        )
        .when(|error| matches!(error, NotYet::Pending(_)) && Instant::now() + interval < deadline)
        .call()
        .map_err(|error| match error {
            NotYet::Pending(reason) | NotYet::Failed(reason) => reason,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_is_retried_until_it_succeeds_and_a_failure_is_not() {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut calls = 0;
        let result = until(deadline, Duration::from_millis(1), || {
            calls += 1;
            if calls < 3 {
                Err(NotYet::Pending("not yet".into()))
            } else {
                Ok(calls)
            }
        });
        assert_eq!(result, Ok(3));

        let mut calls = 0;
        let result: Result<(), String> = until(deadline, Duration::from_millis(1), || {
            calls += 1;
            Err(NotYet::Failed("broken".into()))
        });
        assert_eq!(result, Err("broken".into()));
        assert_eq!(calls, 1);
    }

    #[test]
    fn pending_stops_at_the_deadline_with_the_last_reason() {
        let deadline = Instant::now() + Duration::from_millis(30);
        let mut calls = 0;
        let result: Result<(), String> = until(deadline, Duration::from_millis(5), || {
            calls += 1;
            Err(NotYet::Pending(format!("attempt {calls}")))
        });
        assert_eq!(result, Err(format!("attempt {calls}")));
        assert!(calls >= 2, "{calls}");
    }
}
