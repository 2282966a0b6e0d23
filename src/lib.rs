//! tesserve: Tesseract OCR served over the KServe Open Inference Protocol.
//!
//! The layers, outside in: [`server`] (listeners, health, reflection, shutdown) → [`oip`]
//! (protocol adapters) → [`model`] (the one inference path) → [`ocr`] (images, engines, the
//! pool). Each layer knows only the one below it.

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
