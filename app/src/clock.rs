//! The current time as text, formatted on the caller's stack: the log line and `/api/data`
//! both stamp every request with it, and a `String` each time would be an allocation per
//! request.

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` is 30 bytes; room to spare.
pub const RFC3339_CAPACITY: usize = 40;

/// The current UTC time in RFC 3339, formatted into `buffer`; empty if it cannot be
/// formatted (an empty time is better than no log line, and Promtail then stamps the line
/// itself).
pub fn now_rfc3339(buffer: &mut [u8; RFC3339_CAPACITY]) -> &str {
    let mut unused = &mut buffer[..];
    let formatted = time::OffsetDateTime::now_utc()
        .format_into(&mut unused, &time::format_description::well_known::Rfc3339);
    // What was written is how far the writer moved: the count `format_into` returns leaves
    // out the fraction's digits (time 0.3.55), which would cut them off.
    let len = match formatted {
        Ok(_) => RFC3339_CAPACITY - unused.len(),
        Err(_) => 0,
    };
    buffer
        .get(..len)
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn the_time_is_now_in_rfc3339() {
        let before = SystemTime::now();
        let text = now_rfc3339(&mut [0; RFC3339_CAPACITY]).to_owned();
        let after = SystemTime::now();
        let parsed = humantime::parse_rfc3339(&text).unwrap();
        // The text is truncated to what it shows; `before` may carry more digits.
        assert!(
            before - Duration::from_micros(1) <= parsed && parsed <= after,
            "{text}"
        );
        assert!(text.ends_with('Z'), "{text}");
    }
}
