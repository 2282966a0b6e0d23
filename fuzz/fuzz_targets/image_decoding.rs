//! Any bytes, as an encoded image or as raw pixels, through the limit checks and the decoder:
//! errors are fine, panics and allocations past the limits are not.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tesserve::ocr::{ImageInput, ImageLimits, RawPixels};

const LIMITS: ImageLimits = ImageLimits {
    max_bytes: 1 << 20,
    max_pixels: 4_000_000,
};

fuzz_target!(|data: &[u8]| {
    let encoded = ImageInput::Encoded(Bytes::copy_from_slice(data));
    if encoded.inspect(&LIMITS).is_ok() {
        let _ = encoded.decode(&LIMITS);
    }
    // The first bytes as a raw tensor's dimensions, the rest as its pixels.
    if data.len() >= 6 {
        let dim = |i: usize| u64::from(u16::from_le_bytes([data[i], data[i + 1]]));
        let raw = RawPixels::new(
            Bytes::copy_from_slice(&data[6..]),
            dim(0),
            dim(2),
            dim(4) % 5,
        );
        if let Ok(raw) = raw {
            let _ = ImageInput::Raw(raw).decode(&LIMITS);
        }
    }
});
