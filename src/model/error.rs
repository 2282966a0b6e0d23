//! Why an inference failed, with the input it concerns. [`crate::failure`] classifies it for
//! the protocols, once.

use crate::ocr::{DocumentError, ImageError, LangError, QueueFull};

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
    #[error("input 'image'[{index}]: {source}")]
    Document { index: usize, source: DocumentError },
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
    /// Never shown to clients: the classification logs it and sends a generic line.
    #[error("internal error: {0}")]
    Internal(String),
}
