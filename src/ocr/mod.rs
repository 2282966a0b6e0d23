//! The OCR domain: image and document decoding under limits, Tesseract engines and the pool
//! that runs them.
//!
//! Nothing here knows about gRPC, HTTP or protobuf; the protocol adapters in [`crate::oip`]
//! translate their wire formats into these types.

pub mod document;
mod engine;
pub mod image;
mod options;
mod orientation;
pub mod output;
mod pool;
mod split;

pub use self::document::{
    parse_pages, sniff, Document, DocumentError, DocumentLimits, Dpi, Kind, PageIndex, PageInfo,
    PageSize, PagesError, RenderedPage,
};
pub use self::engine::{EngineError, OcrResult, PageReport, PageTimings, Timings, Word};
pub use self::image::{ImageError, ImageInput, ImageLimits, RawPixels};
pub use self::options::{
    Lang, LangError, Languages, OcrOptions, OutputKind, OutputSet, Psm, Rotate,
};
pub use self::orientation::Orientation;
pub use self::pool::{
    Dropped, EnginePool, Input, PoolConfig, PoolError, QueueFull, Task, TaskError,
};
