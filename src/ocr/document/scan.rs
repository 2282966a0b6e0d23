//! A page that is nothing but one scanned image, taken at the image's own resolution.
//!
//! Copiers and scanners write a PDF page as one image drawn over the whole page. Rendering such
//! a page resamples the scan (and spends the renderer's time to do it); decoding the image
//! itself hands Tesseract the pixels the scanner made, at the resolution it made them. This is
//! only done when nothing could be lost: the page draws exactly one opaque raster image,
//! upright, covering the page, and nothing else (no text, paths, clips, masks or blending), and
//! the image's resolution is no higher than the one asked for. Anything else is rendered.

use hayro::{
    hayro_interpret::{
        font::GlyphRun, interpret_page, util::TransformExt, BlendMode, ClipPath, Context, Device,
        DrawMode, DrawProps, Image, ImageData, ImageDrawProps, InterpreterCache,
        InterpreterSettings, SoftMask,
    },
    hayro_syntax::page::Page,
    kurbo::{Affine, BezPath, Rect},
};

use super::{luma, Dpi, POINTS_PER_INCH};
use crate::ocr::image::Pixels;

/// How far, in points, the image's edges may sit from the page's (rounding in the writer).
const EDGE_TOLERANCE: f64 = 0.5;

/// How far apart the horizontal and vertical resolutions may be, relatively.
const ASPECT_TOLERANCE: f64 = 0.01;

/// The page's one scan and its resolution, when the page is exactly that and its resolution is
/// at most `at_most`; `None` when the page must be rendered.
pub(super) fn native(page: &Page<'_>, at_most: Dpi) -> Option<(Pixels, Dpi)> {
    let (width, height) = page.render_dimensions();
    let area = Rect::new(0.0, 0.0, f64::from(width), f64::from(height));
    let cache = InterpreterCache::new();
    let mut context = Context::new(
        page.initial_transform(true).to_kurbo(),
        area,
        &cache,
        page.xref(),
        InterpreterSettings::default(),
    );
    let mut device = OneScan {
        area,
        at_most,
        scan: None,
        other: false,
    };
    interpret_page(page, &mut context, &mut device);
    match device.other {
        true => None,
        false => device.scan,
    }
}

/// A device that keeps the page's one full-page image, and notes anything else drawn.
struct OneScan {
    /// The page in points, y down, as the initial transform maps it.
    area: Rect,
    at_most: Dpi,
    scan: Option<(Pixels, Dpi)>,
    other: bool,
}

impl OneScan {
    /// The resolution an image of `width`x`height` pixels has when drawn with `transform`, if
    /// that draws it upright over exactly the whole page.
    fn covering(&self, transform: Affine, width: u32, height: u32) -> Option<u32> {
        let [a, b, c, d, e, f] = transform.as_coeffs();
        let drawn = Rect::new(e, f, e + a * f64::from(width), f + d * f64::from(height));
        let upright = b == 0.0 && c == 0.0 && a > 0.0 && d > 0.0;
        let fits = [
            (drawn.x0, self.area.x0),
            (drawn.y0, self.area.y0),
            (drawn.x1, self.area.x1),
            (drawn.y1, self.area.y1),
        ]
        .iter()
        .all(|(edge, page)| (edge - page).abs() <= EDGE_TOLERANCE);
        let (x_dpi, y_dpi) = (POINTS_PER_INCH / a, POINTS_PER_INCH / d);
        let square = (x_dpi - y_dpi).abs() <= ASPECT_TOLERANCE * x_dpi;
        let dpi = x_dpi.round();
        (upright && fits && square && dpi >= 1.0 && dpi <= f64::from(self.at_most.get()))
            .then_some(dpi as u32)
    }
}

impl<'a> Device<'a> for OneScan {
    fn draw_image(&mut self, image: Image<'a, '_>, props: ImageDrawProps<'a>) {
        let Image::Raster(raster) = image else {
            self.other = true;
            return;
        };
        let dpi = self
            .covering(props.transform, raster.width(), raster.height())
            .and_then(|dpi| Dpi::new(dpi).ok());
        let (Some(dpi), None, None) = (dpi, &props.soft_mask, &self.scan) else {
            self.other = true;
            return;
        };
        if !matches!(props.blend_mode, BlendMode::Normal) {
            self.other = true;
            return;
        }
        let (width, height) = (raster.width(), raster.height());
        raster.with_rgba(
            |data, alpha| {
                // A mask or a decoder's correction of the declared size: leave it to rendering.
                if alpha.is_some()
                    || data.scale_factors() != (1.0, 1.0)
                    || (data.width(), data.height()) != (width, height)
                {
                    return;
                }
                let gray = match data {
                    ImageData::Luma(luma) => luma.data,
                    ImageData::Rgb(rgb) => rgb
                        .data
                        .chunks_exact(3)
                        .map(|p| luma(p[0], p[1], p[2]))
                        .collect(),
                };
                self.scan = Some((Pixels::gray(gray, width, height), dpi));
            },
            None,
        );
        if self.scan.is_none() {
            self.other = true;
        }
    }

    fn draw_path(&mut self, _: &BezPath, _: DrawProps<'a>, _: &DrawMode) {
        self.other = true;
    }

    fn push_clip_path(&mut self, _: &ClipPath) {
        self.other = true;
    }

    /// The interpreter wraps drawing in groups of its own; only one that changes nothing is
    /// harmless.
    fn push_transparency_group(
        &mut self,
        opacity: f32,
        mask: Option<SoftMask<'a>>,
        mode: BlendMode,
    ) {
        if opacity != 1.0 || mask.is_some() || !matches!(mode, BlendMode::Normal) {
            self.other = true;
        }
    }

    fn draw_glyph_run(&mut self, _: &GlyphRun<'_, 'a>, _: DrawProps<'a>, _: &DrawMode) {
        self.other = true;
    }

    fn pop_clip(&mut self) {}

    fn pop_transparency_group(&mut self) {}
}
