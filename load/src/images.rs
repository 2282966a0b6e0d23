//! The image set every load test and benchmark uses, generated the same way every run: text
//! snippets of 1 to 20 lines, A4 pages at 300 dpi, and the hostile inputs (corrupt files and
//! a decompression bomb's header).

use bytes::Bytes;
use image::ImageFormat;

use super::render::{encode, RenderError, Renderer};

/// An image and the text drawn on it.
#[derive(Clone, Debug)]
pub struct Sample {
    pub name: String,
    pub image: Bytes,
    pub text: String,
}

/// Plain words Tesseract reads reliably, so a mismatch means a mix-up, not a misreading.
const WORDS: &[&str] = &[
    "invoice",
    "total",
    "amount",
    "due",
    "paid",
    "order",
    "number",
    "date",
    "customer",
    "account",
    "balance",
    "payment",
    "received",
    "shipping",
    "address",
    "street",
    "city",
    "report",
    "quarter",
    "revenue",
    "growth",
    "market",
    "service",
    "delivery",
    "contract",
    "signed",
    "office",
    "manager",
    "review",
    "summary",
    "status",
    "approved",
    "pending",
    "credit",
    "debit",
    "tax",
    "rate",
    "price",
    "unit",
    "quantity",
    "item",
    "description",
    "reference",
    "period",
    "annual",
    "monthly",
    "weekly",
    "budget",
    "project",
    "team",
];

/// A deterministic generator (xorshift64*): the same set on every machine and run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }
}

fn line(rng: &mut Rng, words: usize) -> String {
    (0..words)
        .map(|i| match i % 4 {
            3 => (rng.below(9000) + 1000).to_string(),
            _ => WORDS[rng.below(WORDS.len() as u64) as usize].to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn sample(name: String, lines: Vec<String>, image: Vec<u8>) -> Sample {
    Sample {
        name,
        image: Bytes::from(image),
        text: lines.join("\n"),
    }
}

/// `count` snippets of 1 to 20 lines (sizes cycle), 32 px text, each starting with its own
/// number so no two are alike.
pub fn snippets(renderer: &Renderer, count: usize) -> Result<Vec<Sample>, RenderError> {
    let mut rng = Rng::new(7);
    (0..count)
        .map(|index| {
            let rows = [1, 3, 8, 20][index % 4];
            let lines: Vec<String> = (0..rows)
                .map(|row| match row {
                    0 => format!("Sample {index} {}", line(&mut rng, 4)),
                    _ => line(&mut rng, 7),
                })
                .collect();
            let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
            let png = encode(renderer.fit(&refs, 32.0), ImageFormat::Png)?;
            Ok(sample(format!("snippet-{index}-{rows}-lines"), lines, png))
        })
        .collect()
}

/// A full A4 page at 300 dpi (2480 × 3508 pixels) of 12-point text, as a scanner makes it.
pub fn a4_page(renderer: &Renderer, seed: u64) -> Result<Sample, RenderError> {
    let mut rng = Rng::new(seed);
    let lines: Vec<String> = (0..40).map(|_| line(&mut rng, 9)).collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    // 12 pt at 300 dpi is 50 px; margins of about an inch.
    let page = renderer.page(&refs, 50.0, 2480 - 500, 3508 - 500);
    let mut framed = image::GrayImage::from_pixel(2480, 3508, image::Luma([255]));
    image::imageops::overlay(&mut framed, &page, 250, 250);
    let png = encode(framed, ImageFormat::Png)?;
    Ok(sample(format!("a4-page-{seed}"), lines, png))
}

/// A valid image cut short and scribbled on: it must be refused as invalid, not crash.
pub fn corrupt(valid: &[u8]) -> Bytes {
    let mut bytes = valid[..valid.len() / 2].to_vec();
    for (i, byte) in bytes.iter_mut().enumerate().skip(40).step_by(97) {
        *byte ^= (i as u8) | 1;
    }
    Bytes::from(bytes)
}

/// The header of a 100000 × 100000 PNG: a decompression bomb the server must refuse from its
/// header alone.
pub fn pixel_bomb() -> Bytes {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]); // 8-bit gray, deflate, no filter, no interlace
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(13u32.to_be_bytes());
    png.extend(&ihdr);
    png.extend(crc32(&ihdr).to_be_bytes());
    // An IDAT chunk that never delivers what the header promises.
    let idat = b"IDAT\x78\x9c\x03\x00\x00\x00\x00\x01";
    png.extend(((idat.len() - 4) as u32).to_be_bytes());
    png.extend(idat);
    png.extend(crc32(idat).to_be_bytes());
    Bytes::from(png)
}

/// PNG's CRC-32 (IEEE, reflected), bit by bit: a handful of bytes, once.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Levenshtein distance between two texts with whitespace runs made single spaces.
pub fn distance(a: &str, b: &str) -> usize {
    let normal = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let (a, b): (Vec<char>, Vec<char>) = (normal(a).chars().collect(), normal(b).chars().collect());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// Whether recognised text is the text drawn: within 2 % character error (and 2 edits).
pub fn matches(recognised: &str, drawn: &str) -> bool {
    distance(recognised, drawn) <= (drawn.len() / 50).max(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_png_specification() {
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
    }

    #[test]
    fn distances() {
        assert_eq!(distance("a  b\nc", "a b c"), 0);
        assert_eq!(distance("kitten", "sitting"), 3);
        assert!(matches("Sample 1 invoice", "Sample 1 invoice"));
        assert!(!matches("Sample 2 invoice", "Sample 17 total"));
    }
}
