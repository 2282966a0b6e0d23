//! tesserve: Tesseract OCR served over the KServe Open Inference Protocol.
//!
//! The layers, outside in: [`config`] (flags → validated configuration) → [`server`]
//! (listeners, the one serving stack, health, reflection, shutdown) → [`oip`] (protocol
//! adapters) → [`model`] (the one inference path) → [`ocr`] (images, engines, the pool). Each
//! layer knows only the ones below it. Beside them: [`failure`] classifies every error once for
//! every protocol, [`auth`] and [`identity`] say who is calling, [`listener`] and [`tls`]
//! accept connections, and [`telemetry`] (logs, metrics, traces) depends on nothing above it.

pub mod auth;
pub mod commands;
pub mod config;
pub mod failure;
pub mod identity;
pub mod listener;
pub mod model;
pub mod ocr;
pub mod oip;
pub mod server;
pub mod telemetry;
pub mod tls;
