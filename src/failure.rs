//! The one classification of everything that can go wrong with a request. Each cause becomes a
//! [`Failure`]: a [`Reason`] from a fixed vocabulary, which decides the gRPC code, the HTTP
//! status and the metrics label together, a message for the client, and a retry hint. Every
//! protocol answers from it, and the access log and `tesserve_rejected_total` read the same
//! reason, so one cause cannot get two answers.

use std::time::Duration;

use http::{header, HeaderValue, StatusCode};
use metrics::counter;
use tonic::Code;

use crate::{
    model::InferError,
    ocr::{DocumentError, ImageError},
    telemetry::{self, metrics::REJECTED},
};

/// Why a request failed, as clients, dashboards and alerts see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The request is malformed; it will fail again unchanged.
    InvalidArgument,
    /// An image could not be decoded or is not an image.
    InvalidImage,
    /// A body, file or image is over a configured limit.
    TooLarge,
    /// The body is of a media type this endpoint does not read.
    UnsupportedMediaType,
    /// No such model, version or endpoint.
    NotFound,
    /// The endpoint exists, but not for this HTTP method.
    MethodNotAllowed,
    /// No credentials, or wrong ones.
    Unauthenticated,
    /// The tenant's rate limit is spent; retry after the hint.
    RateLimited,
    /// The engines' queue cannot take the request now.
    QueueFull,
    /// More requests are in flight than the server takes at once.
    Shed,
    /// The engines are still loading.
    NotReady,
    /// The request's deadline passed.
    Deadline,
    /// The client went away.
    Cancelled,
    /// A server this one fetched from (an image URL) failed.
    Upstream,
    /// The operation exists but this server does not do it.
    Unimplemented,
    /// A fault of the server: the detail is logged, never sent.
    Internal,
}

impl Reason {
    /// The label in metrics and the access log's `outcome`.
    pub fn label(self) -> &'static str {
        match self {
            Reason::InvalidArgument => "invalid_argument",
            Reason::InvalidImage => "invalid_image",
            Reason::TooLarge => "too_large",
            Reason::UnsupportedMediaType => "unsupported_media_type",
            Reason::NotFound => "not_found",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::Unauthenticated => "unauthenticated",
            Reason::RateLimited => "rate_limited",
            Reason::QueueFull => "queue_full",
            Reason::Shed => "shed",
            Reason::NotReady => "not_ready",
            Reason::Deadline => "deadline_exceeded",
            Reason::Cancelled => "cancelled",
            Reason::Upstream => "upstream",
            Reason::Unimplemented => "unimplemented",
            Reason::Internal => "internal",
        }
    }

    /// Over gRPC. Limits are INVALID_ARGUMENT, not RESOURCE_EXHAUSTED: that code means "retry
    /// later" to clients, which only a rate limit deserves.
    pub fn code(self) -> Code {
        match self {
            Reason::InvalidArgument
            | Reason::InvalidImage
            | Reason::TooLarge
            | Reason::UnsupportedMediaType => Code::InvalidArgument,
            Reason::NotFound => Code::NotFound,
            Reason::Unauthenticated => Code::Unauthenticated,
            Reason::RateLimited => Code::ResourceExhausted,
            Reason::QueueFull | Reason::Shed | Reason::NotReady | Reason::Upstream => {
                Code::Unavailable
            }
            Reason::Deadline => Code::DeadlineExceeded,
            Reason::Cancelled => Code::Cancelled,
            Reason::MethodNotAllowed | Reason::Unimplemented => Code::Unimplemented,
            Reason::Internal => Code::Internal,
        }
    }

    /// Over REST.
    pub fn status(self) -> StatusCode {
        match self {
            Reason::InvalidArgument | Reason::InvalidImage => StatusCode::BAD_REQUEST,
            Reason::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reason::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Reason::NotFound => StatusCode::NOT_FOUND,
            Reason::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Reason::Unauthenticated => StatusCode::UNAUTHORIZED,
            Reason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Reason::QueueFull | Reason::Shed | Reason::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            Reason::Deadline => StatusCode::GATEWAY_TIMEOUT,
            // Nobody reads it; nginx's "client closed request".
            Reason::Cancelled => CLIENT_CLOSED_REQUEST,
            Reason::Upstream => StatusCode::BAD_GATEWAY,
            Reason::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Reason::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The retry hint of a reason that passes by itself.
    fn retry_after(self) -> Option<Duration> {
        matches!(self, Reason::QueueFull | Reason::Shed | Reason::NotReady)
            .then_some(Duration::from_secs(1))
    }
}

/// 499, which `StatusCode` has no constant for.
const CLIENT_CLOSED_REQUEST: StatusCode = match StatusCode::from_u16(499) {
    Ok(status) => status,
    Err(_) => StatusCode::REQUEST_TIMEOUT,
};

/// A classified failure, ready to be answered in any protocol.
#[derive(Debug)]
pub struct Failure {
    reason: Reason,
    message: String,
    retry_after: Option<Duration>,
}

impl Failure {
    /// A failure the client can read about: `message` says what was wrong and where.
    pub fn new(reason: Reason, message: impl Into<String>) -> Failure {
        debug_assert!(reason != Reason::Internal, "use Failure::internal");
        Failure {
            reason,
            message: message.into(),
            retry_after: reason.retry_after(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Failure {
        Failure::new(Reason::InvalidArgument, message)
    }

    /// A fault of the server. The detail is logged here, once, and the client gets a generic
    /// line: internals never leak.
    pub fn internal(detail: impl std::fmt::Display) -> Failure {
        tracing::warn!(error = %detail, "internal error");
        Failure {
            reason: Reason::Internal,
            message: "internal error; see the server log".to_owned(),
            retry_after: None,
        }
    }

    /// Overrides the retry hint (a rate limit knows when its bucket refills).
    pub fn retry_after(mut self, after: Duration) -> Failure {
        self.retry_after = Some(after);
        self
    }

    pub fn reason(&self) -> Reason {
        self.reason
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// Counts the failure and tells the access log its reason: every answer passes here.
    fn record(&self) {
        counter!(REJECTED, "reason" => self.reason.label()).increment(1);
        telemetry::note_outcome(self.reason.label());
    }

    /// The `Retry-After` / `retry-after` value: whole seconds, rounded up, at least 1.
    fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after
            .map(|after| (after.as_secs() + u64::from(after.subsec_nanos() > 0)).max(1))
    }

    /// The gRPC answer.
    pub fn into_status(self) -> tonic::Status {
        self.record();
        let mut status = tonic::Status::new(self.reason.code(), self.message.clone());
        if let Some(seconds) = self.retry_after_secs() {
            status.metadata_mut().insert("retry-after", seconds.into());
        }
        status
    }

    /// The REST answer: the status, `{"error": message}` as JSON, and `Retry-After`.
    pub fn into_http(self) -> http::Response<axum::body::Body> {
        self.record();
        let body = serde_json::json!({ "error": self.message }).to_string();
        let mut response = http::Response::new(axum::body::Body::from(body));
        *response.status_mut() = self.reason.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(seconds) = self.retry_after_secs() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }

    /// The answer in the protocol the request spoke.
    pub fn respond(self, grpc: bool) -> http::Response<axum::body::Body> {
        match grpc {
            true => self.into_status().into_http(),
            false => self.into_http(),
        }
    }
}

impl axum::response::IntoResponse for Failure {
    fn into_response(self) -> axum::response::Response {
        self.into_http()
    }
}

impl From<Failure> for tonic::Status {
    fn from(failure: Failure) -> tonic::Status {
        failure.into_status()
    }
}

impl From<InferError> for Failure {
    fn from(error: InferError) -> Failure {
        let reason = match &error {
            InferError::ModelNotFound { .. } | InferError::VersionNotFound { .. } => {
                Reason::NotFound
            }
            InferError::Image {
                source: ImageError::TooManyBytes { .. } | ImageError::TooManyPixels { .. },
                ..
            } => Reason::TooLarge,
            InferError::Image { .. } => Reason::InvalidImage,
            InferError::Document { source, .. } => match source {
                DocumentError::TooManyBytes { .. }
                | DocumentError::TooManyPages { .. }
                | DocumentError::PageTooLarge { .. }
                | DocumentError::PageSideTooLong { .. }
                | DocumentError::EmbeddedImageTooLarge { .. } => Reason::TooLarge,
                DocumentError::Cancelled => Reason::Cancelled,
                _ => Reason::InvalidImage,
            },
            InferError::InvalidInput(_) | InferError::Lang { .. } => Reason::InvalidArgument,
            InferError::NotReady(_) => Reason::NotReady,
            InferError::QueueFull(_) => Reason::QueueFull,
            InferError::Overloaded { .. } => Reason::Shed,
            InferError::DeadlineExceeded => Reason::Deadline,
            InferError::Cancelled => Reason::Cancelled,
            InferError::Internal(detail) => return Failure::internal(detail),
        };
        Failure::new(reason, error.to_string())
    }
}

/// Whether a request speaks gRPC, by its content type.
pub fn is_grpc<B>(request: &http::Request<B>) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Reason; 16] = [
        Reason::InvalidArgument,
        Reason::InvalidImage,
        Reason::TooLarge,
        Reason::UnsupportedMediaType,
        Reason::NotFound,
        Reason::MethodNotAllowed,
        Reason::Unauthenticated,
        Reason::RateLimited,
        Reason::QueueFull,
        Reason::Shed,
        Reason::NotReady,
        Reason::Deadline,
        Reason::Cancelled,
        Reason::Upstream,
        Reason::Unimplemented,
        Reason::Internal,
    ];

    #[test]
    fn every_reason_has_its_own_label_and_consistent_classes() {
        let labels: std::collections::HashSet<_> = ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), ALL.len());
        for reason in ALL {
            let status = reason.status().as_u16();
            let code = reason.code();
            // Client mistakes are 4xx and never a code that invites a retry.
            if (400..500).contains(&status) && reason != Reason::RateLimited {
                assert!(
                    !matches!(code, Code::Unavailable | Code::ResourceExhausted),
                    "{reason:?}"
                );
            }
            assert_eq!(
                reason.retry_after().is_some(),
                code == Code::Unavailable && reason != Reason::Upstream,
                "{reason:?}"
            );
        }
    }

    #[test]
    fn an_image_over_the_limit_is_too_large_in_both_protocols() {
        let error = || InferError::Image {
            index: 2,
            source: ImageError::TooManyBytes { size: 10, limit: 5 },
        };
        let rest = Failure::from(error()).into_http();
        assert_eq!(rest.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let grpc = Failure::from(error()).into_status();
        assert_eq!(grpc.code(), Code::InvalidArgument);
        assert!(grpc.message().contains("'image'[2]"), "{}", grpc.message());
    }

    #[test]
    fn internal_details_stay_in_the_log() {
        let failure = Failure::from(InferError::Internal("secret detail".into()));
        assert_eq!(failure.reason(), Reason::Internal);
        assert!(!failure.message().contains("secret"));
        let status = failure.into_status();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
    }

    #[test]
    fn unavailable_answers_say_when_to_retry() {
        let status = Failure::new(Reason::QueueFull, "full").into_status();
        assert_eq!(status.metadata().get("retry-after").unwrap(), "1");
        let response = Failure::new(Reason::RateLimited, "slow down")
            .retry_after(Duration::from_millis(1500))
            .into_http();
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    }
}
