//! Why an inference failed, with the input it concerns. Protocol adapters map
//! [`InferError::kind`] to their status codes in exactly one place each.

use crate::ocr::{ImageError, LangError, QueueFull};

/// The classes of failure a client can act on differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong; retrying it unchanged will fail again.
    InvalidArgument,
    /// No such model or version.
    NotFound,
    /// The server cannot take the request now (loading, queue full); retry later.
    Unavailable,
    /// The request's deadline passed.
    DeadlineExceeded,
    /// The caller went away.
    Cancelled,
    /// A fault of the server; details are logged, not returned.
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("unknown model '{requested}': this server serves '{served}'")]
    ModelNotFound { requested: String, served: String },
    #[error("model '{model}' has no version '{requested}' (available: {available})")]
    VersionNotFound {
        model: String,
        requested: String,
        available: String,
    },
    /// A malformed request; the message names the tensor, parameter or index.
    #[error("{0}")]
    InvalidInput(String),
    #[error("input 'image'[{index}]: {source}")]
    Image { index: usize, source: ImageError },
    #[error("{place} 'lang': {source}")]
    Lang { place: String, source: LangError },
    #[error("model '{0}' is not ready: its engines are still loading")]
    NotReady(String),
    #[error("server busy: {0}; retry later")]
    QueueFull(#[from] QueueFull),
    #[error("server busy: {limit} requests are in flight, the most it takes; retry later")]
    Overloaded { limit: usize },
    #[error("deadline exceeded")]
    DeadlineExceeded,
    #[error("request cancelled by the client")]
    Cancelled,
    /// Never shown to clients: [`InferError::client_message`] replaces it.
    #[error("internal error: {0}")]
    Internal(String),
}

impl InferError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            InferError::ModelNotFound { .. } | InferError::VersionNotFound { .. } => {
                ErrorKind::NotFound
            }
            InferError::InvalidInput(_) | InferError::Image { .. } | InferError::Lang { .. } => {
                ErrorKind::InvalidArgument
            }
            InferError::NotReady(_) | InferError::QueueFull(_) | InferError::Overloaded { .. } => {
                ErrorKind::Unavailable
            }
            InferError::DeadlineExceeded => ErrorKind::DeadlineExceeded,
            InferError::Cancelled => ErrorKind::Cancelled,
            InferError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// A short fixed word for metrics labels and logs, never the message itself.
    pub fn reason(&self) -> &'static str {
        match self {
            InferError::ModelNotFound { .. } | InferError::VersionNotFound { .. } => "not_found",
            InferError::Image {
                source: ImageError::TooManyBytes { .. } | ImageError::TooManyPixels { .. },
                ..
            } => "limits",
            InferError::Image { .. } => "invalid_image",
            InferError::InvalidInput(_) | InferError::Lang { .. } => "invalid_argument",
            InferError::NotReady(_) => "not_ready",
            InferError::QueueFull(_) => "queue_full",
            InferError::Overloaded { .. } => "shed",
            InferError::DeadlineExceeded => "deadline",
            InferError::Cancelled => "cancelled",
            InferError::Internal(_) => "internal",
        }
    }

    /// The message to send to the client: the full story for the client's own mistakes, a
    /// generic line for the server's (which is logged instead).
    pub fn client_message(&self) -> String {
        match self {
            InferError::Internal(detail) => {
                tracing::warn!(error = %detail, "internal error during inference");
                "internal error; see the server log".to_owned()
            }
            other => other.to_string(),
        }
    }
}
