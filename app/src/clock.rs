//! The current time as RFC 3339 text, in a stack string: the log line and `/api/data` both
//! stamp every request with it, and a `String` each time would be an allocation per
//! request.
//!
//! Requests come thousands a second, but the date and the time of day change once a
//! second: each thread keeps the text of the last whole second it formatted (by the `time`
//! crate) and per call adds only the fraction. Formatting the whole time per call cost
//! about 440 instructions, this about 230, reading the clock included.

use std::cell::Cell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrayvec::ArrayString;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` is 30 bytes; room to spare.
pub type Rfc3339Text = ArrayString<40>;

/// `YYYY-MM-DDTHH:MM:SS`, the part shared by every time in the same second.
type SecondText = ArrayString<19>;

thread_local! {
    /// The last whole second (seconds since the epoch) this thread formatted, and its text.
    static LAST_SECOND: Cell<Option<(u64, SecondText)>> = const { Cell::new(None) };
}

/// The current UTC time in RFC 3339; empty if it cannot be formatted (an empty time is
/// better than no log line, and Promtail then stamps the line itself).
pub fn now_rfc3339() -> Rfc3339Text {
    let text = match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since_epoch) => rfc3339(since_epoch),
        // A clock set before 1970 is too broken to be worth the fast path.
        Err(_) => OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .ok()
            .and_then(|text| ArrayString::from(&text).ok()),
    };
    text.unwrap_or_default()
}

/// `since_epoch` as `time` writes RFC 3339: the fraction without trailing zeros, and no
/// fraction at all on a whole second. `None` after the year 9999, which RFC 3339 cannot
/// show.
fn rfc3339(since_epoch: Duration) -> Option<Rfc3339Text> {
    let mut text = Rfc3339Text::new();
    text.try_push_str(&second_text(since_epoch.as_secs())?)
        .ok()?;
    let nanos = since_epoch.subsec_nanos();
    if nanos != 0 {
        // Nine digits with leading zeros: itoa writes 1_000_000_000 + nanos, the 1 is
        // skipped.
        let mut digits = itoa::Buffer::new();
        let padded = digits.format(1_000_000_000 + nanos).get(1..)?;
        text.try_push('.').ok()?;
        text.try_push_str(padded.trim_end_matches('0')).ok()?;
    }
    text.try_push('Z').ok()?;
    Some(text)
}

/// The text of a whole second, from this thread's cache when it is the same second as last
/// time.
fn second_text(seconds: u64) -> Option<SecondText> {
    LAST_SECOND.with(|last| match last.get() {
        Some((cached, text)) if cached == seconds => Some(text),
        _ => {
            let text = format_second(seconds)?;
            last.set(Some((seconds, text)));
            Some(text)
        }
    })
}

fn format_second(seconds: u64) -> Option<SecondText> {
    let time = OffsetDateTime::from_unix_timestamp(i64::try_from(seconds).ok()?).ok()?;
    // A whole second formats as `YYYY-MM-DDTHH:MM:SSZ`: no fraction.
    let whole = time.format(&Rfc3339).ok()?;
    ArrayString::from(whole.strip_suffix('Z')?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_is_now_in_rfc3339() {
        let before = SystemTime::now();
        let text = now_rfc3339().to_string();
        let after = SystemTime::now();
        let parsed = humantime::parse_rfc3339(&text).unwrap();
        // The text is truncated to what it shows; `before` may carry more digits.
        assert!(
            before - Duration::from_micros(1) <= parsed && parsed <= after,
            "{text}"
        );
        assert!(text.ends_with('Z'), "{text}");
    }

    #[test]
    fn times_read_exactly_as_the_time_crate_writes_them() {
        let seconds = [
            0,
            1,
            59,
            951_782_399, // 2000-02-28T23:59:59, the eve of a leap day
            951_782_400, // 2000-02-29
            1_795_000_000,
            1_795_000_001,   // the next second, so the cache must move on
            1_795_000_000,   // and back
            253_402_300_799, // 9999-12-31T23:59:59, the last RFC 3339 second
        ];
        let fractions = [
            0,
            1,
            5,
            10,
            120_000_000,
            100_000_000,
            123_456_789,
            999_999_999,
            500_000_001,
        ];
        for seconds in seconds {
            for nanos in fractions {
                let expected = OffsetDateTime::from_unix_timestamp_nanos(
                    i128::from(seconds) * 1_000_000_000 + i128::from(nanos),
                )
                .unwrap()
                .format(&Rfc3339)
                .unwrap();
                let since_epoch = Duration::new(seconds, nanos);
                let shown = rfc3339(since_epoch).unwrap();
                assert_eq!(shown.as_str(), expected, "{seconds}.{nanos:09}");
            }
        }
    }

    #[test]
    fn a_time_rfc3339_cannot_show_is_empty() {
        let year_10000 = Duration::from_secs(253_402_300_800);
        assert_eq!(rfc3339(year_10000), None);
    }
}
