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
    prefix: [u8; 4],
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> RequestIds {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
            .unwrap_or(0);
        RequestIds {
            prefix: (nanos ^ std::process::id().rotate_left(16)).to_be_bytes(),
            next: AtomicU64::new(1),
        }
    }

    fn next(&self) -> RequestId {
        // The prefix's 4 bytes, then the counter's low 6 (it wraps after 2^48 requests).
        let counter = self.next.fetch_add(1, Ordering::Relaxed).to_be_bytes();
        let mut id = [0u8; REQUEST_ID_LEN / 2];
        let (prefix, count) = id.split_at_mut(self.prefix.len());
        prefix.copy_from_slice(&self.prefix);
        count.copy_from_slice(&counter[counter.len() - count.len()..]);
        // Into a stack buffer rather than `format!` into a `String`: this runs for every
        // request, and both the formatting machinery and the allocation showed up in the
        // benchmark's profile. The lengths are fixed and only ASCII hex digits are written,
        // so neither step can fail.
        let mut digits = [0u8; REQUEST_ID_LEN];
        hex::encode_to_slice(id, &mut digits)
            .ok()
            .and_then(|()| RequestId::from_byte_string(&digits).ok())
            .unwrap_or_default()
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
        assert_eq!(a[..8], format!("{:08x}", u32::from_be_bytes(ids.prefix)));
        let (first, second) = (
            u64::from_str_radix(&a[8..], 16).unwrap(),
            u64::from_str_radix(&b[8..], 16).unwrap(),
        );
        assert_eq!((first, second), (1, 2));
    }

    #[test]
    fn the_counter_reads_as_its_low_twelve_hex_digits() {
        let ids = RequestIds::new();
        ids.next.store(0x0123_4567_89ab, Ordering::Relaxed);
        assert_eq!(&ids.next()[8..], "0123456789ab");
        ids.next.store(0xffff_0000_0000_00cd, Ordering::Relaxed);
        assert_eq!(&ids.next()[8..], "0000000000cd");
    }
}
