//! Documents made at test time with known text (scanned-style PDFs come from
//! `tesserve_load::pdf`, shared with the benchmark): a vector-text page,
//! hand-written PDFs for the bombs, multi-page TIFFs.

use std::io::Cursor;

use image::GrayImage;
use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str};
use tiff::encoder::{colortype::Gray8, Compression, Rational, TiffEncoder};

pub const PAGE_TEXT: [[&str; 2]; 3] = [
    ["The first page of a scan", "has two lines of text"],
    ["A second page follows it", "with other words on it"],
    ["The third and last page", "ends the document here"],
];

/// A born-digital page: text drawn in a standard (non-embedded) font, Letter size.
pub fn vector_pdf(lines: &[&str]) -> Vec<u8> {
    let mut pdf = Pdf::new();
    let (catalog, tree, page_id, font_id, content_id) = (
        Ref::new(1),
        Ref::new(2),
        Ref::new(3),
        Ref::new(4),
        Ref::new(5),
    );
    pdf.catalog(catalog).pages(tree);
    pdf.pages(tree).kids([page_id]).count(1);
    let mut page = pdf.page(page_id);
    page.parent(tree)
        .media_box(Rect::new(0.0, 0.0, 612.0, 792.0))
        .contents(content_id);
    page.resources().fonts().pair(Name(b"F1"), font_id);
    page.finish();
    pdf.type1_font(font_id).base_font(Name(b"Helvetica"));
    let mut content = Content::new();
    for (i, line) in lines.iter().enumerate() {
        content
            .begin_text()
            .set_font(Name(b"F1"), 24.0)
            .next_line(72.0, 700.0 - 40.0 * i as f32)
            .show(Str(line.as_bytes()))
            .end_text();
    }
    pdf.stream(content_id, &content.finish());
    pdf.finish()
}

/// Writes `objects` (numbered from 1) as a PDF with a correct cross-reference table.
pub fn hand_pdf(objects: &[String]) -> Vec<u8> {
    let mut out = b"%PDF-1.7\n".to_vec();
    let mut offsets = Vec::new();
    for (i, body) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend(format!("{} 0 obj\n{body}\nendobj\n", i + 1).bytes());
    }
    let xref = out.len();
    out.extend(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).bytes());
    for offset in offsets {
        out.extend(format!("{offset:010} 00000 n \n").bytes());
    }
    out.extend(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .bytes(),
    );
    out
}

pub fn pages_text(n: usize) -> Vec<GrayImage> {
    PAGE_TEXT[..n]
        .iter()
        .map(|lines| super::render_gray(lines))
        .collect()
}

/// A TIFF of `pages`, LZW-compressed 8-bit gray at 300 dpi. (The tiff crate can decode CCITT
/// G4 but has no G4 encoder.)
pub fn tiff_file(pages: &[GrayImage]) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    let mut encoder = TiffEncoder::new(&mut out)
        .unwrap()
        .with_compression(Compression::Lzw);
    for page in pages {
        let mut image = encoder
            .new_image::<Gray8>(page.width(), page.height())
            .unwrap();
        image.resolution(tiff::tags::ResolutionUnit::Inch, Rational { n: 300, d: 1 });
        image.write_data(page.as_raw()).unwrap();
    }
    out.into_inner()
}

/// `pages` thresholded to one bit and compressed as CCITT Group 4, as fax machines and archive
/// scanners write them, by libtiff's own tools (libtiff-tools, which `make deps` installs): a
/// multi-page G4 TIFF and, from it, a PDF whose pages are the G4 images passed through as
/// `/CCITTFaxDecode` streams. `None` when the tools are missing.
pub fn g4_tiff_and_pdf(pages: &[GrayImage]) -> Option<(Vec<u8>, Vec<u8>)> {
    use std::process::Command;
    if Command::new("tiff2pdf").arg("-h").output().is_err() {
        eprintln!("SKIPPED: libtiff-tools is not installed (make deps installs it)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = |command: &mut Command| {
        let output = command.output().unwrap();
        assert!(output.status.success(), "{command:?}: {output:?}");
    };
    let mut singles = Vec::new();
    for (i, page) in pages.iter().enumerate() {
        let pbm = dir.path().join(format!("{i}.pbm"));
        std::fs::write(&pbm, pbm_file(page)).unwrap();
        let tiff = dir.path().join(format!("{i}.tif"));
        run(Command::new("ppm2tiff")
            .args(["-c", "g4", "-R", "300"])
            .arg(&pbm)
            .arg(&tiff));
        singles.push(tiff);
    }
    let (tiff, pdf) = (dir.path().join("all.tif"), dir.path().join("all.pdf"));
    run(Command::new("tiffcp").args(&singles).arg(&tiff));
    run(Command::new("tiff2pdf").arg("-o").arg(&pdf).arg(&tiff));
    Some((std::fs::read(tiff).unwrap(), std::fs::read(pdf).unwrap()))
}

/// A binary PBM (P4): one bit a pixel, 1 for black, rows padded to a byte.
fn pbm_file(page: &GrayImage) -> Vec<u8> {
    let mut out = format!("P4\n{} {}\n", page.width(), page.height()).into_bytes();
    for row in page.rows() {
        let bits: Vec<bool> = row.map(|p| p.0[0] < 128).collect();
        out.extend(bits.chunks(8).map(|byte| {
            byte.iter()
                .enumerate()
                .fold(0u8, |acc, (i, &black)| acc | (u8::from(black) << (7 - i)))
        }));
    }
    out
}
