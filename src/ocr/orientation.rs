//! Pages the wrong way up: what orientation detection decided, and turning pixels by quarter
//! turns to fix it.

use serde::Serialize;

use super::image::Pixels;

/// The orientation decision for one page (`rotate=auto`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Orientation {
    /// Degrees clockwise the page must be turned to be upright: 0, 90, 180 or 270.
    pub angle: u16,
    /// Tesseract's orientation confidence (a margin over the next best guess; 0 when the page
    /// had too little text to decide).
    pub confidence: f32,
    /// Whether the page was turned: the angle is not 0 and the confidence reached the
    /// threshold.
    pub applied: bool,
}

impl Orientation {
    /// From what `TessBaseAPIDetectOrientationScript` reports: the direction the text's top
    /// points to, counter-clockwise from up. Turning the page clockwise by the opposite angle
    /// makes it upright.
    pub fn from_detected(detected: Option<(u16, f32)>, threshold: f32) -> Orientation {
        let (degrees, confidence) = detected.unwrap_or((0, 0.0));
        let angle = (360 - degrees % 360) % 360;
        Orientation {
            angle,
            confidence,
            applied: angle != 0 && confidence >= threshold,
        }
    }
}

/// `pixels` turned clockwise by `angle` (a multiple of 90; anything else is no turn).
pub fn rotate(pixels: &Pixels, angle: u16) -> Option<Pixels> {
    let (w, h) = (pixels.width() as usize, pixels.height() as usize);
    let channels = usize::from(pixels.channels());
    let source = pixels.data();
    // Where the pixel at (x, y) of the source goes, in the turned image's row-major order.
    let (width, height, place): (usize, usize, &dyn Fn(usize, usize) -> usize) = match angle {
        90 => (h, w, &|x, y| x * h + (h - 1 - y)),
        180 => (w, h, &|x, y| (h - 1 - y) * w + (w - 1 - x)),
        270 => (h, w, &|x, y| (w - 1 - x) * h + y),
        _ => return None,
    };
    let mut turned = vec![0u8; source.len()];
    for y in 0..h {
        for x in 0..w {
            let from = (y * w + x) * channels;
            let to = place(x, y) * channels;
            turned[to..to + channels].copy_from_slice(&source[from..from + channels]);
        }
    }
    Some(Pixels::new(
        turned,
        width as u32,
        height as u32,
        pixels.channels(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3x2 image whose pixel values are their positions: 1 2 3 / 4 5 6.
    fn small() -> Pixels {
        Pixels::new(vec![1, 2, 3, 4, 5, 6], 3, 2, 1)
    }

    #[test]
    fn quarter_turns_move_every_pixel() {
        let turned = rotate(&small(), 90).unwrap();
        assert_eq!((turned.width(), turned.height()), (2, 3));
        assert_eq!(turned.data(), [4, 1, 5, 2, 6, 3]);
        assert_eq!(rotate(&small(), 180).unwrap().data(), [6, 5, 4, 3, 2, 1]);
        let back = rotate(&small(), 270).unwrap();
        assert_eq!(back.data(), [3, 6, 2, 5, 1, 4]);
        let round = rotate(&rotate(&small(), 90).unwrap(), 270).unwrap();
        assert_eq!(round.data(), small().data());
        assert!(rotate(&small(), 45).is_none());
    }

    #[test]
    fn only_confident_turns_are_applied() {
        let upside_down = Orientation::from_detected(Some((180, 9.0)), 2.0);
        assert_eq!((upside_down.angle, upside_down.applied), (180, true));
        let unsure = Orientation::from_detected(Some((90, 0.5)), 2.0);
        assert_eq!((unsure.angle, unsure.applied), (270, false));
        let upright = Orientation::from_detected(Some((0, 20.0)), 2.0);
        assert!(!upright.applied);
        assert!(!Orientation::from_detected(None, 2.0).applied);
    }
}
