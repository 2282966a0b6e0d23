//! Any bytes as a PDF or TIFF: opened under small limits, the first page rendered at a low
//! resolution. Errors are fine; panics, hangs and allocations past the limits are not.
#![no_main]

use std::sync::atomic::AtomicBool;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tesserve::ocr::{Document, DocumentLimits, Dpi};

const LIMITS: DocumentLimits = DocumentLimits {
    max_bytes: 1 << 20,
    max_pages: 8,
    max_page_pixels: 1_000_000,
};

fuzz_target!(|data: &[u8]| {
    let Ok(document) = Document::open(Bytes::copy_from_slice(data), &LIMITS) else {
        return;
    };
    let Ok(dpi) = Dpi::new(36) else {
        return;
    };
    let first = document.page_indexes();
    let first = &first[..first.len().min(1)];
    if document.check(first, dpi).is_ok() {
        let cancel = AtomicBool::new(false);
        for page in document.render_each(first, dpi, &cancel) {
            let _ = page;
        }
    }
});
