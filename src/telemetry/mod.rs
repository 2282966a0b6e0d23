//! Logs, metrics and traces.
//!
//! - Logs: `tracing`, as text or JSON (`--log-format`), filtered by `RUST_LOG` (default
//!   `info`). Each request produces one line with target `tesserve::access`.
//! - Metrics: Prometheus text at `GET /metrics` ([`metrics`]).
//! - Traces: OpenTelemetry over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set; the
//!   standard `OTEL_*` variables apply, and the service name defaults to `tesserve`.

mod access;
pub mod metrics;

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider, Resource};
use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer};

pub use self::access::{note_inference, note_outcome, AccessLayer, Arrived};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Text when stderr is a terminal, JSON otherwise.
    Auto,
    /// Plain lines, for people.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The service name traces carry unless `OTEL_SERVICE_NAME` says otherwise.
pub const SERVICE_NAME: &str = "tesserve";

/// Keeps the trace pipeline alive; dropping it flushes the spans still buffered.
#[must_use = "dropping the guard stops trace export"]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports buffered spans now.
    pub fn flush(&self) {
        if let Some(tracer) = &self.tracer {
            let _ = tracer.force_flush();
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(tracer) = self.tracer.take() {
            let _ = tracer.shutdown();
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up trace export to {endpoint}: {reason}")]
pub struct TelemetryError {
    endpoint: String,
    reason: String,
}

/// Installs logging, and trace export to `otlp_endpoint` (by default the standard
/// `OTEL_EXPORTER_OTLP_ENDPOINT`) when there is one. Must run inside a Tokio runtime when
/// exporting. A second call (tests start many servers) changes nothing.
pub fn init(format: LogFormat, otlp_endpoint: Option<String>) -> Result<Telemetry, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let endpoint = otlp_endpoint.or_else(|| std::env::var(crate::config::OTLP_ENDPOINT_VAR).ok());
    let tracer = endpoint
        .filter(|e| !e.is_empty())
        .map(tracer_provider)
        .transpose()?;

    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(crate::config::DEFAULT_LOG_FILTER));
    let format = match format {
        LogFormat::Auto if std::io::stderr().is_terminal() => LogFormat::Text,
        LogFormat::Auto => LogFormat::Json,
        chosen => chosen,
    };
    let logs = match format {
        LogFormat::Text | LogFormat::Auto => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let traces = tracer
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer(SERVICE_NAME)));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .try_init();
    Ok(Telemetry { tracer })
}

fn tracer_provider(endpoint: String) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .build()
        .map_err(|e| TelemetryError {
            endpoint,
            reason: e.to_string(),
        })?;
    let resource = match std::env::var_os("OTEL_SERVICE_NAME") {
        Some(_) => Resource::builder().build(),
        None => Resource::builder().with_service_name(SERVICE_NAME).build(),
    };
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}
