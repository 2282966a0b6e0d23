//! Test images rendered from known text, so every recognised result can be checked against
//! what was drawn: black DejaVu Sans on white, 8-bit gray.

use std::io::Cursor;

use ab_glyph::{Font, FontVec, PxScale, ScaleFont};
use image::{GrayImage, ImageFormat, Luma};

/// Debian's fonts-dejavu-core; `make deps` installs it.
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cannot read the font {FONT} (install fonts-dejavu-core): {0}")]
    Font(String),
    #[error("cannot encode the image: {0}")]
    Encode(#[from] image::ImageError),
}

/// Draws text with one font.
pub struct Renderer {
    font: FontVec,
}

impl Renderer {
    pub fn new() -> Result<Renderer, RenderError> {
        let data = std::fs::read(FONT).map_err(|e| RenderError::Font(e.to_string()))?;
        let font = FontVec::try_from_vec(data).map_err(|e| RenderError::Font(e.to_string()))?;
        Ok(Renderer { font })
    }

    /// `lines` at `px` pixels per em, on an image just large enough to hold them.
    pub fn fit(&self, lines: &[&str], px: f32) -> GrayImage {
        let margin = (px * 0.75) as u32;
        let width = lines
            .iter()
            .map(|line| self.width(line, px))
            .max()
            .unwrap_or(0)
            + 2 * margin;
        let height = self.line_height(px) * lines.len() as u32 + 2 * margin;
        self.page(lines, px, width, height)
    }

    /// `lines` at `px` pixels per em from the top left of a `width` × `height` page; what
    /// does not fit is cut off.
    pub fn page(&self, lines: &[&str], px: f32, width: u32, height: u32) -> GrayImage {
        let scale = PxScale::from(px);
        let scaled = self.font.as_scaled(scale);
        let margin = (px * 0.75) as u32;
        let line_height = self.line_height(px);
        let mut image = GrayImage::from_pixel(width, height, Luma([255]));
        for (row, line) in lines.iter().enumerate() {
            let mut x = margin as f32;
            let baseline = (margin + row as u32 * line_height) as f32 + scaled.ascent();
            for c in line.chars() {
                let glyph = self
                    .font
                    .glyph_id(c)
                    .with_scale_and_position(scale, ab_glyph::point(x, baseline));
                x += scaled.h_advance(glyph.id);
                let Some(outline) = self.font.outline_glyph(glyph) else {
                    continue;
                };
                let bounds = outline.px_bounds();
                outline.draw(|gx, gy, coverage| {
                    let (px, py) = (
                        bounds.min.x as i64 + gx as i64,
                        bounds.min.y as i64 + gy as i64,
                    );
                    if px >= 0 && py >= 0 && (px as u32) < width && (py as u32) < height {
                        let shade = (255.0 * (1.0 - coverage.clamp(0.0, 1.0))) as u8;
                        let pixel = image.get_pixel_mut(px as u32, py as u32);
                        pixel.0[0] = pixel.0[0].min(shade);
                    }
                });
            }
        }
        image
    }

    fn width(&self, line: &str, px: f32) -> u32 {
        let scaled = self.font.as_scaled(PxScale::from(px));
        line.chars()
            .map(|c| scaled.h_advance(self.font.glyph_id(c)))
            .sum::<f32>()
            .ceil() as u32
    }

    fn line_height(&self, px: f32) -> u32 {
        let scaled = self.font.as_scaled(PxScale::from(px));
        (scaled.height() + scaled.line_gap()).ceil() as u32 + (px / 4.0) as u32
    }
}

/// Encodes a gray image as `format` (JPEG and WebP as RGB, GIF as RGBA: their encoders take
/// nothing else).
pub fn encode(image: GrayImage, format: ImageFormat) -> Result<Vec<u8>, RenderError> {
    let image = image::DynamicImage::ImageLuma8(image);
    let image = match format {
        ImageFormat::Jpeg | ImageFormat::WebP => image::DynamicImage::ImageRgb8(image.to_rgb8()),
        ImageFormat::Gif => image::DynamicImage::ImageRgba8(image.to_rgba8()),
        _ => image,
    };
    let mut out = Vec::new();
    image.write_to(&mut Cursor::new(&mut out), format)?;
    Ok(out)
}
