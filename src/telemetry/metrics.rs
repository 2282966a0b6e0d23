//! The metrics tesserve exports, and their Prometheus exposition at `GET /metrics`.
//!
//! Names follow Prometheus conventions: a `tesserve_` namespace, base units as suffixes,
//! `_total` on counters. Queue depth, busy engines and the like are read from the pool when
//! Prometheus scrapes ([`crate::model::Model::export_metrics`]), so the request path pays
//! nothing for them; pushed/popped counters beside the depth gauge show the spikes a scrape
//! interval hides. This module names and describes; it depends on nothing else here.

use std::sync::OnceLock;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUESTS: &str = "tesserve_requests_total";
pub const REQUEST_DURATION: &str = "tesserve_request_duration_seconds";
pub const IN_FLIGHT: &str = "tesserve_requests_in_flight";
pub const REJECTED: &str = "tesserve_rejected_requests_total";
pub const IMAGES: &str = "tesserve_images_total";
pub const DOCUMENT_PAGES: &str = "tesserve_document_pages_total";
pub const IMAGE_BYTES: &str = "tesserve_image_size_bytes";
pub const IMAGE_PIXELS: &str = "tesserve_image_pixels";
pub const QUEUE_WAIT: &str = "tesserve_queue_wait_seconds";
pub const DECODE: &str = "tesserve_decode_duration_seconds";
pub const RECOGNITION: &str = "tesserve_recognition_duration_seconds";
pub const QUEUE_DEPTH: &str = "tesserve_queue_depth";
pub const QUEUE_CAPACITY: &str = "tesserve_queue_capacity";
pub const QUEUE_PUSHED: &str = "tesserve_queue_pushed_total";
pub const QUEUE_POPPED: &str = "tesserve_queue_popped_total";
pub const IMAGES_DROPPED: &str = "tesserve_images_dropped_total";
pub const PAGES_SPLIT: &str = "tesserve_pages_split_total";
pub const WORKERS: &str = "tesserve_workers";
pub const ENGINES_BUSY: &str = "tesserve_engines_busy";
pub const ENGINES_LOADED: &str = "tesserve_engines_loaded";
pub const READY: &str = "tesserve_ready";
pub const CACHE_LOOKUPS: &str = "tesserve_cache_lookups_total";
pub const CACHE_BYTES: &str = "tesserve_cache_bytes";
pub const TLS_CERT_EXPIRY: &str = "tesserve_tls_certificate_expiry_timestamp_seconds";
pub const TLS_RELOADS: &str = "tesserve_tls_reloads_total";
pub const TLS_HANDSHAKE_FAILURES: &str = "tesserve_tls_handshake_failures_total";
/// KServe's Python model server exports this; existing dashboards chart it.
pub const KSERVE_PREDICT: &str = "request_predict_seconds";

/// From a millisecond to a minute: small snippets to huge scans.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const BYTE_BUCKETS: &[f64] = &[1e3, 1e4, 1e5, 3e5, 1e6, 3e6, 1e7, 3e7, 1e8];
const PIXEL_BUCKETS: &[f64] = &[1e4, 1e5, 5e5, 1e6, 2e6, 5e6, 1e7, 2e7, 5e7];

/// The process-wide Prometheus recorder.
pub struct Exporter {
    handle: PrometheusHandle,
    process: metrics_process::Collector,
}

static EXPORTER: OnceLock<Option<Exporter>> = OnceLock::new();

/// Installs the recorder on first use (tests start many servers in one process). `None` if
/// another recorder was installed first.
pub fn exporter() -> Option<&'static Exporter> {
    EXPORTER.get_or_init(install).as_ref()
}

fn install() -> Option<Exporter> {
    let builder = PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(IMAGE_BYTES.into()), BYTE_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(IMAGE_PIXELS.into()), PIXEL_BUCKETS));
    let handle = match builder.and_then(PrometheusBuilder::install_recorder) {
        Ok(handle) => handle,
        Err(error) => {
            tracing::warn!(%error, "metrics disabled: cannot install the Prometheus recorder");
            return None;
        }
    };
    describe();
    let process = metrics_process::Collector::default();
    process.describe();
    Some(Exporter { handle, process })
}

impl Exporter {
    /// The text exposition. Gauges read from elsewhere (the model's) are set by their owners
    /// before this is called.
    pub fn render(&self) -> String {
        self.process.collect();
        self.handle.run_upkeep();
        self.handle.render()
    }
}

fn describe() {
    describe_counter!(
        REQUESTS,
        "Requests by protocol, endpoint, model and outcome."
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "End-to-end request latency."
    );
    describe_gauge!(IN_FLIGHT, "Requests being served now.");
    describe_counter!(REJECTED, "Inference requests refused or failed, by reason.");
    describe_counter!(IMAGES, "Images recognised.");
    describe_counter!(
        DOCUMENT_PAGES,
        "Pages of PDF and TIFF documents selected for recognition."
    );
    describe_histogram!(IMAGE_BYTES, Unit::Bytes, "Size of each image as received.");
    describe_histogram!(
        IMAGE_PIXELS,
        "Pixels (width x height) of each recognised image."
    );
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "Time an image waited for an engine."
    );
    describe_histogram!(DECODE, Unit::Seconds, "Time spent decoding an image file.");
    describe_histogram!(
        RECOGNITION,
        Unit::Seconds,
        "Time spent inside Tesseract per image."
    );
    describe_gauge!(QUEUE_DEPTH, "Images waiting for an engine.");
    describe_gauge!(
        QUEUE_CAPACITY,
        "Images that may wait before requests are refused."
    );
    describe_counter!(QUEUE_PUSHED, "Images ever queued.");
    describe_counter!(
        QUEUE_POPPED,
        "Images ever taken from the queue by an engine."
    );
    describe_counter!(
        IMAGES_DROPPED,
        "Images dropped before or during recognition, by reason."
    );
    describe_counter!(
        PAGES_SPLIT,
        "Pages recognised in strips on several engines at once (--split-pages auto)."
    );
    describe_gauge!(WORKERS, "Engine worker threads.");
    describe_gauge!(ENGINES_BUSY, "Workers running Tesseract now.");
    describe_gauge!(ENGINES_LOADED, "Tesseract engines loaded, by language.");
    describe_gauge!(
        READY,
        "1 when every worker has loaded the default language."
    );
    describe_counter!(
        CACHE_LOOKUPS,
        "Result cache lookups, by outcome (hit or miss)."
    );
    describe_gauge!(CACHE_BYTES, Unit::Bytes, "Size of the cached results.");
    describe_gauge!(
        TLS_CERT_EXPIRY,
        Unit::Seconds,
        "When the served TLS certificate expires (Unix time)."
    );
    describe_counter!(TLS_RELOADS, "TLS certificate reloads, by outcome.");
    describe_counter!(
        TLS_HANDSHAKE_FAILURES,
        "TLS handshakes refused, by reason (unknown_issuer, expired, timeout, protocol, ...)."
    );
    describe_histogram!(
        KSERVE_PREDICT,
        Unit::Seconds,
        "Inference latency (KServe's name)."
    );
}
