//! What every request handler shares: metrics, the logger, and a few settings.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrayvec::ArrayString;
use slog::Logger;

use crate::metrics::Metrics;

/// The app's version, as reported by `/health`, `/` and `app_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Shared, read-mostly state handed to the routes (the warp `with_db` pattern).
pub struct AppContext {
    pub metrics: Metrics,
    pub logger: Logger,
    pub started: Instant,
    /// The longest `/api/data?delay_ms=` honoured; zero turns the parameter off.
    pub max_simulated_delay: Duration,
    request_ids: RequestIds,
}

pub type Shared = Arc<AppContext>;

impl AppContext {
    pub fn new(metrics: Metrics, logger: Logger, max_simulated_delay: Duration) -> Shared {
        Arc::new(AppContext {
            metrics,
            logger,
            started: Instant::now(),
            max_simulated_delay,
            request_ids: RequestIds::new(),
        })
    }

    /// A new id, unique within this process and very likely across restarts.
    pub fn next_request_id(&self) -> RequestId {
        self.request_ids.next()
    }
}

/// Request ids: a per-process random-ish prefix and a counter, as 20 hex digits.
/// A counter is cheaper than a random number per request and still unique.
struct RequestIds {
    /// The prefix in hex, written once rather than per request.
    prefix_hex: [u8; PREFIX_LEN],
    next: AtomicU64,
}

/// The prefix's 8 hex digits, then the counter's low 12 (it wraps after 2^48 requests).
const PREFIX_LEN: usize = 8;

impl RequestIds {
    fn new() -> RequestIds {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
            .unwrap_or(0);
        let prefix = nanos ^ std::process::id().rotate_left(16);
        let mut prefix_hex = [0; PREFIX_LEN];
        write_hex(&mut prefix_hex, u64::from(prefix));
        RequestIds {
            prefix_hex,
            next: AtomicU64::new(1),
        }
    }

    fn next(&self) -> RequestId {
        // By hand into a stack buffer rather than `format!` into a `String`: this runs for
        // every request, and both the formatting machinery and the allocation showed up in
        // the benchmark's profile.
        let mut digits = [0u8; REQUEST_ID_LEN];
        let (prefix, counter) = digits.split_at_mut(PREFIX_LEN);
        prefix.copy_from_slice(&self.prefix_hex);
        write_hex(counter, self.next.fetch_add(1, Ordering::Relaxed));
        // Only ASCII hex digits were written, so this cannot fail.
        RequestId::from_byte_string(&digits).unwrap_or_default()
    }
}

/// The low `digits.len()` hex digits of `value`, most significant first.
fn write_hex(digits: &mut [u8], mut value: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for digit in digits.iter_mut().rev() {
        *digit = HEX[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// Request ids are 20 lowercase hex digits.
const REQUEST_ID_LEN: usize = 20;

/// A request id, on the stack.
pub type RequestId = ArrayString<REQUEST_ID_LEN>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_unique_hex() {
        let ids = RequestIds::new();
        let (a, b) = (ids.next(), ids.next());
        let (a, b) = (a.as_str(), b.as_str());
        assert_ne!(a, b);
        assert_eq!(a.len(), 20);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a[..8], b[..8]);
        let (first, second) = (
            u64::from_str_radix(&a[8..], 16).unwrap(),
            u64::from_str_radix(&b[8..], 16).unwrap(),
        );
        assert_eq!((first, second), (1, 2));
    }

    #[test]
    fn hex_digits_read_as_the_standard_formatting_writes_them() {
        for value in [0, 1, 0xf, 0x10, 0xdead_beef, 0x0123_4567_89ab, u64::MAX] {
            for width in [1, 8, 12, 16] {
                let mut digits = vec![0; width];
                write_hex(&mut digits, value);
                let full = format!("{value:016x}");
                assert_eq!(String::from_utf8(digits).unwrap(), full[16 - width..]);
            }
        }
    }
}
