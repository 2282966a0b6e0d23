//! Images as they arrive (encoded files or raw pixel tensors) and as Tesseract takes them
//! (8-bit gray, RGB or RGBA rows).
//!
//! Limits are checked twice on purpose: [`ImageInput::inspect`] reads only the file header, so a
//! decompression bomb is refused on the request path in microseconds, before it is queued; the
//! decoder then runs with allocation limits of its own as a second fence.

use std::io::Cursor;

use bytes::Bytes;
use image::{DynamicImage, ImageFormat, ImageReader};

/// Size limits applied to every image, whatever protocol it came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest encoded file accepted, in bytes.
    pub max_bytes: usize,
    /// Largest width × height accepted, encoded or raw.
    pub max_pixels: u64,
}

/// The formats tesserve decodes. Anything else is refused by name.
const FORMATS: [ImageFormat; 6] = [
    ImageFormat::Png,
    ImageFormat::Jpeg,
    ImageFormat::Tiff,
    ImageFormat::Bmp,
    ImageFormat::WebP,
    ImageFormat::Gif,
];

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    #[error("image is empty")]
    Empty,
    #[error("image is {size} bytes, over the limit of {limit} bytes")]
    TooManyBytes { size: usize, limit: usize },
    #[error("image is {width}x{height} = {pixels} pixels, over the limit of {limit} pixels")]
    TooManyPixels {
        width: u64,
        height: u64,
        pixels: u64,
        limit: u64,
    },
    #[error("image has a zero dimension ({width}x{height})")]
    ZeroSized { width: u64, height: u64 },
    #[error("image format not recognised (supported: PNG, JPEG, TIFF, BMP, WebP, GIF)")]
    UnknownFormat,
    #[error("image format {0} is not supported (supported: PNG, JPEG, TIFF, BMP, WebP, GIF)")]
    UnsupportedFormat(String),
    #[error("image could not be decoded as {format}: {reason}")]
    Corrupt { format: String, reason: String },
    #[error("raw pixels: {channels} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA)")]
    Channels { channels: u64 },
    #[error("raw pixels: {len} bytes do not fill {width}x{height}x{channels}")]
    RawLength {
        len: usize,
        width: u32,
        height: u32,
        channels: u8,
    },
}

/// One image of a request, before decoding.
#[derive(Clone, Debug)]
pub enum ImageInput {
    /// An encoded file (PNG, JPEG, ...), a zero-copy slice of the request body.
    Encoded(Bytes),
    /// Raw 8-bit pixels, row-major, channels interleaved.
    Raw(RawPixels),
}

/// Raw 8-bit pixels whose length is known to match their dimensions.
#[derive(Clone, Debug)]
pub struct RawPixels {
    data: Bytes,
    width: u32,
    height: u32,
    channels: u8,
}

impl RawPixels {
    /// The pixels, width, height and channels.
    pub fn parts(&self) -> (&[u8], u32, u32, u8) {
        (&self.data, self.width, self.height, self.channels)
    }

    pub fn new(data: Bytes, width: u64, height: u64, channels: u64) -> Result<Self, ImageError> {
        if !matches!(channels, 1 | 3 | 4) {
            return Err(ImageError::Channels { channels });
        }
        if width == 0 || height == 0 {
            return Err(ImageError::ZeroSized { width, height });
        }
        let too_big = || ImageError::TooManyPixels {
            width,
            height,
            pixels: width.saturating_mul(height),
            limit: u64::from(i32::MAX as u32),
        };
        // Tesseract takes dimensions and row strides as C ints.
        let width = u32::try_from(width).map_err(|_| too_big())?;
        let height = u32::try_from(height).map_err(|_| too_big())?;
        let row = u64::from(width) * channels;
        if row > i32::MAX as u64 || row * u64::from(height) > isize::MAX as u64 {
            return Err(too_big());
        }
        let raw = RawPixels {
            data,
            width,
            height,
            channels: channels as u8,
        };
        if raw.data.len() as u64 != row * u64::from(height) {
            return Err(ImageError::RawLength {
                len: raw.data.len(),
                width,
                height,
                channels: raw.channels,
            });
        }
        Ok(raw)
    }
}

impl ImageInput {
    /// Bytes as received: the encoded file, or the raw pixels.
    pub fn len(&self) -> usize {
        match self {
            ImageInput::Encoded(file) => file.len(),
            ImageInput::Raw(raw) => raw.data.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks what can be known without decoding: byte size, format and header dimensions.
    /// Cheap enough for the request path.
    pub fn inspect(&self, limits: &ImageLimits) -> Result<(), ImageError> {
        match self {
            ImageInput::Encoded(file) => {
                let (_, width, height) = header(file, limits)?;
                check_pixels(u64::from(width), u64::from(height), limits)
            }
            ImageInput::Raw(raw) => {
                check_pixels(u64::from(raw.width), u64::from(raw.height), limits)
            }
        }
    }

    /// Decodes into pixels Tesseract can take. Blocking and CPU-bound: run it off the async
    /// runtime. Raw inputs pass through without a copy.
    pub fn decode(self, limits: &ImageLimits) -> Result<Pixels, ImageError> {
        let file = match self {
            ImageInput::Raw(raw) => {
                check_pixels(u64::from(raw.width), u64::from(raw.height), limits)?;
                return Ok(Pixels {
                    data: raw.data,
                    width: raw.width,
                    height: raw.height,
                    channels: raw.channels,
                });
            }
            ImageInput::Encoded(file) => file,
        };
        let (format, width, height) = header(&file, limits)?;
        check_pixels(u64::from(width), u64::from(height), limits)?;

        let mut reader = ImageReader::with_format(Cursor::new(&file[..]), format);
        let mut decoder_limits = image::Limits::default();
        decoder_limits.max_image_width = Some(width);
        decoder_limits.max_image_height = Some(height);
        // The largest buffer a format may need: 16-bit RGBA, plus headroom for decoder state.
        decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8) + (64 << 20));
        reader.limits(decoder_limits);
        let image = reader.decode().map_err(|e| corrupt(format, e))?;
        Ok(Pixels::from_dynamic(image))
    }
}

/// Decoded 8-bit pixels, one to four channels, rows packed without padding.
#[derive(Debug)]
pub struct Pixels {
    data: Bytes,
    width: u32,
    height: u32,
    channels: u8,
}

impl Pixels {
    /// 8-bit gray rows, one byte a pixel: what documents render to.
    pub(super) fn gray(data: Vec<u8>, width: u32, height: u32) -> Pixels {
        Pixels::new(data, width, height, 1)
    }

    /// Rows of `channels`-byte pixels. The caller guarantees the length matches, so this is not
    /// public.
    pub(super) fn new(data: Vec<u8>, width: u32, height: u32, channels: u8) -> Pixels {
        debug_assert_eq!(
            data.len(),
            width as usize * height as usize * usize::from(channels)
        );
        Pixels {
            data: Bytes::from(data),
            width,
            height,
            channels,
        }
    }

    pub(super) fn from_dynamic(image: DynamicImage) -> Pixels {
        let (width, height) = (image.width(), image.height());
        let (data, channels) = match image {
            DynamicImage::ImageLuma8(buf) => (buf.into_raw(), 1),
            DynamicImage::ImageRgb8(buf) => (buf.into_raw(), 3),
            DynamicImage::ImageRgba8(buf) => (buf.into_raw(), 4),
            other if other.color().has_color() => (other.to_rgb8().into_raw(), 3),
            other => (other.to_luma8().into_raw(), 1),
        };
        Pixels {
            data: Bytes::from(data),
            width,
            height,
            channels,
        }
    }

    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// A band of whole rows, sharing this image's buffer.
    pub fn rows(&self, rows: std::ops::Range<u32>) -> Pixels {
        let stride = self.width as usize * usize::from(self.channels);
        Pixels {
            data: self
                .data
                .slice(rows.start as usize * stride..rows.end as usize * stride),
            width: self.width,
            height: rows.end - rows.start,
            channels: self.channels,
        }
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    pub fn channels(&self) -> u8 {
        self.channels
    }
}

fn header(file: &[u8], limits: &ImageLimits) -> Result<(ImageFormat, u32, u32), ImageError> {
    if file.is_empty() {
        return Err(ImageError::Empty);
    }
    if file.len() > limits.max_bytes {
        return Err(ImageError::TooManyBytes {
            size: file.len(),
            limit: limits.max_bytes,
        });
    }
    let format = image::guess_format(file).map_err(|_| ImageError::UnknownFormat)?;
    if !FORMATS.contains(&format) {
        return Err(ImageError::UnsupportedFormat(format_name(format)));
    }
    let (width, height) = ImageReader::with_format(Cursor::new(file), format)
        .into_dimensions()
        .map_err(|e| corrupt(format, e))?;
    Ok((format, width, height))
}

fn check_pixels(width: u64, height: u64, limits: &ImageLimits) -> Result<(), ImageError> {
    if width == 0 || height == 0 {
        return Err(ImageError::ZeroSized { width, height });
    }
    let pixels = width.saturating_mul(height);
    if pixels > limits.max_pixels {
        return Err(ImageError::TooManyPixels {
            width,
            height,
            pixels,
            limit: limits.max_pixels,
        });
    }
    Ok(())
}

fn corrupt(format: ImageFormat, error: image::ImageError) -> ImageError {
    ImageError::Corrupt {
        format: format_name(format),
        reason: error.to_string(),
    }
}

fn format_name(format: ImageFormat) -> String {
    format!("{format:?}").to_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ImageLimits = ImageLimits {
        max_bytes: 1 << 20,
        max_pixels: 1_000_000,
    };

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        image::GrayImage::from_pixel(width, height, image::Luma([255]))
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    /// A PNG whose header claims `width`x`height` but whose pixel data is a few bytes: what a
    /// decompression bomb looks like before anyone inflates it.
    fn png_bomb(width: u32, height: u32) -> Vec<u8> {
        let mut ihdr = Vec::new();
        ihdr.extend(width.to_be_bytes());
        ihdr.extend(height.to_be_bytes());
        ihdr.extend([8, 0, 0, 0, 0]); // 8-bit gray, deflate, no filter, no interlace
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        for (kind, data) in [
            (&b"IHDR"[..], &ihdr[..]),
            (b"IDAT", &[0x78, 0x9c, 0x63, 0, 0, 0, 1, 0, 1]),
            (b"IEND", &[]),
        ] {
            out.extend((data.len() as u32).to_be_bytes());
            let start = out.len();
            out.extend(kind);
            out.extend(data);
            let crc = crc32fast::hash(&out[start..]);
            out.extend(crc.to_be_bytes());
        }
        out
    }

    #[test]
    fn decodes_png_to_gray() {
        let pixels = ImageInput::Encoded(png(30, 20).into())
            .decode(&LIMITS)
            .unwrap();
        assert_eq!(
            (pixels.width(), pixels.height(), pixels.channels()),
            (30, 20, 1)
        );
        assert_eq!(pixels.data().len(), 600);
    }

    #[test]
    fn decompression_bomb_is_refused_from_the_header() {
        let bomb = ImageInput::Encoded(png_bomb(100_000, 100_000).into());
        let expected = ImageError::TooManyPixels {
            width: 100_000,
            height: 100_000,
            pixels: 10_000_000_000,
            limit: LIMITS.max_pixels,
        };
        assert_eq!(bomb.inspect(&LIMITS), Err(expected.clone()));
        assert_eq!(bomb.decode(&LIMITS).unwrap_err(), expected);
    }

    #[test]
    fn byte_limit_applies_before_parsing() {
        let limits = ImageLimits {
            max_bytes: 10,
            ..LIMITS
        };
        let err = ImageInput::Encoded(png(5, 5).into())
            .inspect(&limits)
            .unwrap_err();
        assert!(matches!(err, ImageError::TooManyBytes { limit: 10, .. }));
    }

    #[test]
    fn garbage_and_truncation_are_named() {
        let garbage = ImageInput::Encoded(Bytes::from_static(b"definitely not an image"));
        assert_eq!(garbage.inspect(&LIMITS), Err(ImageError::UnknownFormat));
        assert_eq!(
            ImageInput::Encoded(Bytes::new()).inspect(&LIMITS),
            Err(ImageError::Empty)
        );
        let mut truncated = png(50, 50);
        truncated.truncate(truncated.len() - 20);
        let err = ImageInput::Encoded(truncated.into())
            .decode(&LIMITS)
            .unwrap_err();
        assert!(
            matches!(&err, ImageError::Corrupt { format, .. } if format == "PNG"),
            "{err}"
        );
    }

    #[test]
    fn raw_pixels_must_fill_their_shape() {
        assert!(RawPixels::new(Bytes::from(vec![0; 12]), 2, 2, 3).is_ok());
        assert_eq!(
            RawPixels::new(Bytes::from(vec![0; 11]), 2, 2, 3).unwrap_err(),
            ImageError::RawLength {
                len: 11,
                width: 2,
                height: 2,
                channels: 3
            }
        );
        assert_eq!(
            RawPixels::new(Bytes::from(vec![0; 8]), 2, 2, 2).unwrap_err(),
            ImageError::Channels { channels: 2 }
        );
        assert!(RawPixels::new(Bytes::new(), 0, 5, 1).is_err());
        assert!(RawPixels::new(Bytes::new(), u64::MAX, u64::MAX, 1).is_err());
    }

    #[test]
    fn raw_pixels_pass_through_without_copy() {
        let data = Bytes::from(vec![7u8; 4 * 3]);
        let ptr = data.as_ptr();
        let raw = RawPixels::new(data, 4, 3, 1).unwrap();
        let pixels = ImageInput::Raw(raw).decode(&LIMITS).unwrap();
        assert_eq!(pixels.data().as_ptr(), ptr);
    }
}
