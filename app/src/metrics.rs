//! The app's Prometheus metrics, in a registry the app owns and passes around.
//!
//! The per-request path is hot (the benchmark budget is about a microsecond per request),
//! so the labelled children are looked up once per label combination and cached in
//! fixed tables indexed by the bounded labels, instead of hashing label values per request.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::labels::{Endpoint, MethodLabel};

/// Buckets from 100 µs to 10 s: the app answers in well under a millisecond, a slow
/// dependency or a simulated delay takes seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Status codes the app itself produces get a cached counter; others take the slow path.
const CACHED_STATUSES: [u16; 5] = [200, 400, 404, 405, 500];

const PAIRS: usize = MethodLabel::COUNT * Endpoint::COUNT;

#[derive(Debug, thiserror::Error)]
#[error("registering the app's metrics failed: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

/// Every metric the app exports.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    durations: HistogramVec,
    in_flight: IntGauge,
    errors: IntCounterVec,
    log_records_dropped: IntCounter,
    duration_cache: Box<[OnceLock<Histogram>]>,
    request_cache: Box<[OnceLock<IntCounter>]>,
    error_cache: Box<[OnceLock<IntCounter>]>,
}

impl Metrics {
    /// Creates the metrics and registers them, with the process collector, in a new registry.
    pub fn new(version: &str) -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "app_requests_total",
                "HTTP requests answered, by method, endpoint and status.",
            ),
            &["method", "endpoint", "status"],
        )?;
        let durations = HistogramVec::new(
            HistogramOpts::new(
                "app_request_duration_seconds",
                "Time from receiving a request to producing its response, in seconds.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["method", "endpoint"],
        )?;
        let in_flight = IntGauge::new(
            "app_requests_in_flight",
            "Requests being handled right now.",
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "app_errors_total",
                "Responses with a 5xx status, by endpoint.",
            ),
            &["endpoint"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "app_build_info",
                "Always 1; the labels describe the running build.",
            ),
            &["version", "profile"],
        )?;
        let profile = if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        };
        build_info.with_label_values(&[version, profile]).set(1);
        let log_records_dropped = IntCounter::new(
            "app_log_records_dropped_total",
            "Log records that could not be written to the log file (e.g. disk full).",
        )?;

        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(durations.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(log_records_dropped.clone()))?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;

        Ok(Metrics {
            registry,
            requests,
            durations,
            in_flight,
            errors,
            log_records_dropped,
            duration_cache: (0..PAIRS).map(|_| OnceLock::new()).collect(),
            request_cache: (0..PAIRS * CACHED_STATUSES.len())
                .map(|_| OnceLock::new())
                .collect(),
            error_cache: (0..Endpoint::COUNT).map(|_| OnceLock::new()).collect(),
        })
    }

    /// The gauge of requests in flight (see `instrument::InFlight`).
    pub fn in_flight(&self) -> &IntGauge {
        &self.in_flight
    }

    /// The counter the logger bumps for every record it could not write.
    pub fn log_records_dropped(&self) -> IntCounter {
        self.log_records_dropped.clone()
    }

    /// Records one answered request.
    pub fn observe(&self, method: MethodLabel, endpoint: Endpoint, status: u16, seconds: f64) {
        let pair = method.index() * Endpoint::COUNT + endpoint.index();
        self.duration_cache[pair]
            .get_or_init(|| {
                self.durations
                    .with_label_values(&[method.label(), endpoint.label()])
            })
            .observe(seconds);

        match CACHED_STATUSES.iter().position(|&cached| cached == status) {
            Some(slot) => self.request_cache[pair * CACHED_STATUSES.len() + slot]
                .get_or_init(|| self.request_counter(method, endpoint, status))
                .inc(),
            None => self.request_counter(method, endpoint, status).inc(),
        }

        if (500..600).contains(&status) {
            self.error_cache[endpoint.index()]
                .get_or_init(|| self.errors.with_label_values(&[endpoint.label()]))
                .inc();
        }
    }

    fn request_counter(&self, method: MethodLabel, endpoint: Endpoint, status: u16) -> IntCounter {
        // Any u16 the server can send is a valid HTTP status, and there are at most a few
        // hundred of them, so the label stays bounded even on this slow path.
        self.requests
            .with_label_values(&[method.label(), endpoint.label(), &status.to_string()])
    }

    /// Everything in the Prometheus text exposition format.
    pub fn render(&self) -> Result<String, MetricsError> {
        let mut buffer = Vec::with_capacity(8 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        // The text encoder only ever writes UTF-8.
        String::from_utf8(buffer).map_err(|e| MetricsError(prometheus::Error::Msg(e.to_string())))
    }

    /// The registry, for callers that want to add their own collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_right_series() {
        let metrics = Metrics::new("1.2.3").unwrap();
        metrics.observe(MethodLabel::Get, Endpoint::ApiData, 200, 0.0002);
        metrics.observe(MethodLabel::Get, Endpoint::ApiData, 200, 0.0002);
        metrics.observe(MethodLabel::Post, Endpoint::ApiError, 503, 0.001);
        let text = metrics.render().unwrap();
        assert!(
            text.contains(r#"app_requests_total{endpoint="api_data",method="GET",status="200"} 2"#)
        );
        assert!(text
            .contains(r#"app_requests_total{endpoint="api_error",method="POST",status="503"} 1"#));
        assert!(text.contains(r#"app_errors_total{endpoint="api_error"} 1"#));
        assert!(text.contains(
            r#"app_request_duration_seconds_bucket{endpoint="api_data",method="GET",le="0.00025"} 2"#
        ));
        assert!(text.contains(r#"app_build_info{profile="#));
        assert!(text.contains(r#"version="1.2.3"} 1"#));
    }

    #[test]
    fn nothing_is_exported_for_unseen_label_pairs() {
        let metrics = Metrics::new("0").unwrap();
        assert!(!metrics.render().unwrap().contains("app_requests_total{"));
    }
}
