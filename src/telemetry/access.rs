//! One tower layer on both listeners that makes, per request: the trace span (continuing the
//! caller's W3C `traceparent`), one access-log line, one count in `tesserve_requests_total`
//! and one latency sample. The log line and the metrics come from the same event, so they
//! cannot disagree.

use std::{
    cell::RefCell,
    collections::HashSet,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use axum::extract::MatchedPath;
use http::{HeaderMap, Request, Response};
use metrics::{counter, gauge, histogram};
use opentelemetry::propagation::Extractor;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::metrics::{IN_FLIGHT, REQUESTS, REQUEST_DURATION};
use crate::identity::{Tenant, ANONYMOUS};

tokio::task_local! {
    /// What the layers below saw of the current request, for its access-log line.
    static NOTE: RefCell<Note>;
}

#[derive(Clone, Debug, Default)]
struct Note {
    model: String,
    images: usize,
    bytes: usize,
    /// The reason of the failure the request was answered with, from the one classification.
    outcome: Option<&'static str>,
}

/// Called by the model for the access log: which model the request reached, how many images
/// it carried and their bytes. A no-op outside a request (the `ocr` subcommand).
pub fn note_inference(model: &str, images: usize, bytes: usize) {
    let _ = NOTE.try_with(|note| {
        let mut note = note.borrow_mut();
        note.model = model.to_owned();
        note.images = images;
        note.bytes = bytes;
    });
}

/// Called by [`crate::failure`] when it answers: the access log and the request metrics then
/// say what the client was told, not a guess from the status code.
pub fn note_outcome(outcome: &'static str) {
    let _ = NOTE.try_with(|note| note.borrow_mut().outcome = Some(outcome));
}

/// When a request reached the server, in its extensions: deadlines count from here.
#[derive(Clone, Copy, Debug)]
pub struct Arrived(pub Instant);

#[derive(Clone, Debug)]
pub struct AccessLayer {
    grpc_methods: Arc<HashSet<String>>,
}

impl AccessLayer {
    /// `grpc_methods` (`/package.Service/Method`, as the server serves them) get a name of
    /// their own in metrics; any other gRPC path counts as `unknown`, so clients cannot mint
    /// label values.
    pub fn new(grpc_methods: impl IntoIterator<Item = String>) -> AccessLayer {
        AccessLayer {
            grpc_methods: Arc::new(grpc_methods.into_iter().collect()),
        }
    }
}

impl<S> Layer<S> for AccessLayer {
    type Service = Access<S>;

    fn layer(&self, inner: S) -> Access<S> {
        Access {
            inner,
            grpc_methods: self.grpc_methods.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Access<S> {
    inner: S,
    grpc_methods: Arc<HashSet<String>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> Service<Request<B>> for Access<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<RB>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let mut record = Record::start(&request, &self.grpc_methods);
        request.extensions_mut().insert(Arrived(record.started));
        let span = tracing::info_span!(
            "request",
            otel.name = %record.endpoint,
            otel.kind = "server",
            protocol = record.protocol,
            endpoint = %record.endpoint,
            request_id = %record.request_id,
            tenant_id = tracing::field::Empty,
        );
        record.span = span.clone();
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&Headers(request.headers()))
        });
        // Fails only when no OpenTelemetry layer is installed: nothing to continue then.
        let _ = span.set_parent(parent);

        // The service that was polled ready serves this call; a fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let future = inner.call(request).instrument(span);
        Box::pin(NOTE.scope(RefCell::default(), async move {
            let mut record = record;
            let result = future.await;
            if let Ok(response) = &result {
                record.finish(response);
            }
            result
        }))
    }
}

/// One request being served. Emitted when finished, or as `cancelled` if the caller went
/// away first (the future is dropped).
struct Record {
    started: Instant,
    protocol: &'static str,
    endpoint: String,
    request_id: String,
    tenant_id: String,
    /// The tenant as a metrics label: only authenticated tenants are a bounded set.
    tenant_label: String,
    content_length: Option<u64>,
    span: tracing::Span,
    done: bool,
}

impl Record {
    fn start<B>(request: &Request<B>, grpc_methods: &HashSet<String>) -> Record {
        let headers = request.headers();
        let grpc = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        let path = request.uri().path();
        let endpoint = if grpc {
            let known = grpc_methods.contains(path);
            if known { path } else { "unknown" }.to_owned()
        } else {
            request
                .extensions()
                .get::<MatchedPath>()
                .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned())
        };
        gauge!(IN_FLIGHT).increment(1);
        Record {
            started: Instant::now(),
            protocol: if grpc { "grpc" } else { "rest" },
            endpoint,
            request_id: header(headers, "x-request-id"),
            tenant_id: header(headers, "x-tenant-id"),
            tenant_label: ANONYMOUS.to_owned(),
            content_length: headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok()),
            span: tracing::Span::none(),
            done: false,
        }
    }

    fn finish<RB>(&mut self, response: &Response<RB>) {
        if let Some(tenant) = response.extensions().get::<Tenant>() {
            self.tenant_id.clone_from(&tenant.name);
            if tenant.authenticated {
                self.tenant_label.clone_from(&tenant.name);
            }
        }
        let (guessed, status) = match self.protocol {
            "grpc" => grpc_outcome(response.headers()),
            _ => http_outcome(response.status().as_u16()),
        };
        let noted = NOTE.try_with(|n| n.borrow().outcome).ok().flatten();
        // A success status with a noted failure is a stream whose error follows in trailers.
        let outcome = match (guessed, noted) {
            ("ok", _) | (_, None) => guessed,
            (_, Some(noted)) => noted,
        };
        self.emit(outcome, status);
    }

    fn emit(&mut self, outcome: &'static str, status: i64) {
        self.done = true;
        gauge!(IN_FLIGHT).decrement(1);
        let note = NOTE.try_with(|n| n.take()).unwrap_or_default();
        let latency = self.started.elapsed();
        let payload_size = match note.bytes {
            0 => self.content_length.unwrap_or(0),
            bytes => bytes as u64,
        };
        tracing::info!(
            target: "tesserve::access",
            request_id = %self.request_id,
            tenant_id = %self.tenant_id,
            protocol = self.protocol,
            endpoint = %self.endpoint,
            model = %note.model,
            outcome,
            status,
            latency_ms = latency.as_secs_f64() * 1000.0,
            payload_size,
            images = note.images,
            "request"
        );
        self.span.record("tenant_id", self.tenant_id.as_str());
        let labels = [
            ("protocol", self.protocol.to_owned()),
            ("endpoint", self.endpoint.clone()),
            ("model", note.model),
            ("outcome", outcome.to_owned()),
            ("tenant", self.tenant_label.clone()),
        ];
        counter!(REQUESTS, &labels).increment(1);
        let labels = [
            ("protocol", self.protocol.to_owned()),
            ("endpoint", self.endpoint.clone()),
        ];
        histogram!(REQUEST_DURATION, &labels).record(latency.as_secs_f64());
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if !self.done {
            let status = if self.protocol == "grpc" { 1 } else { 499 };
            self.emit("cancelled", status);
        }
    }
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Unary gRPC errors travel as trailers-only responses, so `grpc-status` is in the headers;
/// a response without it is a success whose status follows in the trailers.
fn grpc_outcome(headers: &HeaderMap) -> (&'static str, i64) {
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok()?.parse::<i32>().ok())
        .unwrap_or(0);
    let outcome = match tonic::Code::from(code) {
        tonic::Code::Ok => "ok",
        tonic::Code::Cancelled => "cancelled",
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange => "invalid_argument",
        tonic::Code::DeadlineExceeded => "deadline_exceeded",
        tonic::Code::NotFound => "not_found",
        tonic::Code::ResourceExhausted => "rate_limited",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::Unimplemented => "unimplemented",
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::PermissionDenied => "permission_denied",
        _ => "internal",
    };
    (outcome, i64::from(code))
}

fn http_outcome(status: u16) -> (&'static str, i64) {
    let outcome = match status {
        200..=399 => "ok",
        401 => "unauthenticated",
        403 => "permission_denied",
        404 => "not_found",
        413 => "too_large",
        429 => "rate_limited",
        499 => "cancelled",
        501 => "unimplemented",
        503 => "unavailable",
        504 => "deadline_exceeded",
        400..=499 => "invalid_argument",
        _ => "internal",
    };
    (outcome, i64::from(status))
}

/// W3C trace context from gRPC metadata or HTTP headers (the same thing on the wire).
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}
