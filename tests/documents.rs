//! The document stage on documents made here, with known text: scanned-style PDFs (Flate and
//! DCT images), a vector-text PDF, a page turned by `/Rotate 90`, a 3-page TIFF, an encrypted
//! PDF, and the bombs the limits exist for (100,000 pages, a 200-inch page, 10,000 TIFF
//! directories, a directory that points at itself).

mod common;

use std::{io::Cursor, sync::atomic::AtomicBool};

use bytes::Bytes;
use common::documents::{hand_pdf, pages_text, tiff_file, vector_pdf, PAGE_TEXT};
use image::GrayImage;
use pdf_writer::{Content, Filter, Finish, Name, Pdf, Rect, Ref};
use tesserve::ocr::{
    sniff, Document, DocumentError, DocumentLimits, Dpi, Kind, PageIndex, PageSize, RenderedPage,
};
use tesserve_load::pdf::{scan_pdf, Encoding};

const LIMITS: DocumentLimits = DocumentLimits {
    max_bytes: 16 << 20,
    max_pages: 50,
    max_page_pixels: 40_000_000,
};

fn dpi(n: u32) -> Dpi {
    Dpi::new(n).unwrap()
}

fn open(file: Vec<u8>) -> Result<Document, DocumentError> {
    Document::open(Bytes::from(file), &LIMITS)
}

/// The share of pixels darker than mid-gray: text pages have some, blank pages none.
fn dark_fraction(page: &RenderedPage) -> f64 {
    let data = page.pixels.data();
    data.iter().filter(|&&p| p < 128).count() as f64 / data.len() as f64
}

#[track_caller]
fn assert_has_text(page: &RenderedPage) {
    let dark = dark_fraction(page);
    assert!(
        (0.005..0.35).contains(&dark),
        "{}: {:.4} of its pixels are dark",
        page.index,
        dark
    );
}

fn png(page: &RenderedPage) -> Vec<u8> {
    let image = GrayImage::from_raw(
        page.pixels.width(),
        page.pixels.height(),
        page.pixels.data().to_vec(),
    )
    .unwrap();
    let mut out = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// Reads rendered pages through a real server, as the next step will feed them to engines.
async fn ocr(pages: &[&RenderedPage]) -> Vec<String> {
    let mut server = common::TestServer::start(&[]).await;
    let images: Vec<Vec<u8>> = pages.iter().map(|p| png(p)).collect();
    let reply = server
        .client
        .model_infer(common::typed_request(&images))
        .await
        .unwrap()
        .into_inner();
    common::typed_strings(&reply, "text")
}

#[tokio::test]
async fn a_scanned_pdf_renders_every_page_at_the_asked_resolution_and_reads_back() {
    let images = pages_text(3);
    let file = scan_pdf(&images, Encoding::Flate, None);
    assert_eq!(sniff(&file), Kind::Pdf);
    let document = open(file).unwrap();
    assert_eq!(document.kind(), Kind::Pdf);
    assert_eq!(document.page_count(), 3);

    let all = document.page_indexes();
    document.check(&all, dpi(300)).unwrap();
    let cancel = AtomicBool::new(false);
    let rendered: Vec<RenderedPage> = document
        .render_each(&all, dpi(300), &cancel)
        .collect::<Result<_, _>>()
        .unwrap();
    for (page, image) in rendered.iter().zip(&images) {
        // Placed at 300 dpi, rendered at 300 dpi: the scan's own size back.
        assert_eq!(
            (
                page.pixels.width(),
                page.pixels.height(),
                page.pixels.channels()
            ),
            (image.width(), image.height(), 1),
            "{}",
            page.index
        );
        assert_eq!(page.dpi, Some(dpi(300)));
        // The scanner's own pixels, unchanged.
        assert!(
            page.pixels.data() == image.as_raw().as_slice(),
            "{}",
            page.index
        );
    }
    let texts = ocr(&rendered.iter().collect::<Vec<_>>()).await;
    for (text, lines) in texts.iter().zip(PAGE_TEXT) {
        common::assert_text(text.trim(), &lines.join("\n"), 3);
    }
}

#[test]
fn a_scan_is_read_at_its_own_resolution_never_upsampled() {
    let images = pages_text(1);
    let document = open(scan_pdf(&images, Encoding::Flate, None)).unwrap();
    let index = document.page_indexes()[0];
    document.check(&[index], dpi(600)).unwrap();
    let page = document.render(index, dpi(600)).unwrap();
    assert_eq!(
        page.dpi,
        Some(dpi(300)),
        "the scan's resolution, not the one asked for"
    );
    assert!(page.pixels.data() == images[0].as_raw().as_slice());
}

#[test]
fn a_jpeg_scan_renders_at_half_resolution_with_the_size_it_was_promised() {
    let images = pages_text(1);
    let document = open(scan_pdf(&images, Encoding::Dct, None)).unwrap();
    let page = document
        .render(document.page_indexes()[0], dpi(150))
        .unwrap();
    let (w, h, _) = document.pages()[0].pixels_at(dpi(150));
    assert_eq!(
        (
            u64::from(page.pixels.width()),
            u64::from(page.pixels.height())
        ),
        (w, h)
    );
    assert!(w.abs_diff(u64::from(images[0].width() / 2)) <= 1, "{w}");
    assert_eq!(page.dpi, Some(dpi(150)));
    assert_has_text(&page);
}

#[test]
fn a_page_selection_renders_only_the_pages_named() {
    let document = open(scan_pdf(&pages_text(3), Encoding::Flate, None)).unwrap();
    let selection = document.select("3, 1").unwrap();
    assert_eq!(
        selection.iter().map(|p| p.number()).collect::<Vec<_>>(),
        [1, 3]
    );
    assert_eq!(
        document.select("2-4").unwrap_err().to_string(),
        "pages '2-4': the document has 3 pages"
    );
}

#[test]
fn cancelling_stops_before_the_next_page() {
    let document = open(scan_pdf(&pages_text(3), Encoding::Flate, None)).unwrap();
    let all = document.page_indexes();
    let cancel = AtomicBool::new(false);
    let mut pages = document.render_each(&all, dpi(72), &cancel);
    assert!(pages.next().unwrap().is_ok());
    cancel.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(pages.next().unwrap().unwrap_err(), DocumentError::Cancelled);
    assert!(pages.next().is_none(), "nothing is rendered after a cancel");
}

#[test]
fn a_rotated_page_renders_turned() {
    let images = pages_text(1);
    let document = open(scan_pdf(&images, Encoding::Flate, Some(90))).unwrap();
    let PageSize::Points { width, height } = document.pages()[0].size else {
        panic!("a PDF page is measured in points");
    };
    assert!(
        width < height,
        "a landscape image turned 90° stands upright"
    );
    let page = document
        .render(document.page_indexes()[0], dpi(300))
        .unwrap();
    assert_eq!(
        (page.pixels.width(), page.pixels.height()),
        (images[0].height(), images[0].width())
    );
    assert_has_text(&page);
}

#[tokio::test]
async fn a_vector_text_page_renders_in_a_standard_font_and_reads_back() {
    let lines = ["Vector text in Helvetica", "needs no embedded font"];
    let document = open(vector_pdf(&lines)).unwrap();
    let page = document
        .render(document.page_indexes()[0], dpi(300))
        .unwrap();
    // Letter at 300 dpi, rounded rather than truncated to 2550x3299.
    assert_eq!((page.pixels.width(), page.pixels.height()), (2550, 3300));
    let dark = dark_fraction(&page);
    assert!((0.001..0.1).contains(&dark), "{dark}");
    let text = ocr(&[&page]).await.remove(0);
    common::assert_text(text.trim(), &lines.join("\n"), 3);
}

#[test]
fn a_pdf_declaring_100000_pages_is_refused_with_the_limit() {
    // One page tree whose kids are 100,000 inline page dictionaries: 600 kB, no content.
    let kids = "<</Type/Page>>".repeat(100_000);
    let file = hand_pdf(&[
        "<< /Type /Catalog /Pages 2 0 R >>".into(),
        format!("<< /Type /Pages /Count 100000 /MediaBox [0 0 612 792] /Kids [{kids}] >>"),
    ]);
    let err = open(file).unwrap_err();
    assert_eq!(
        err.to_string(),
        "document has 100000 pages, over the limit of 50"
    );
}

#[test]
fn a_pdf_understating_its_pages_is_refused_one_past_the_limit() {
    // The same 100,000 inline pages under a /Count of 1: the page tree is walked, not believed,
    // and the walk stops at the 51st page (`page_tree`'s unit tests count the kids it reads).
    let kids = "<</Type/Page>>".repeat(100_000);
    let file = hand_pdf(&[
        "<< /Type /Catalog /Pages 2 0 R >>".into(),
        format!("<< /Type /Pages /Count 1 /MediaBox [0 0 612 792] /Kids [{kids}] >>"),
    ]);
    let err = open(file).unwrap_err();
    assert_eq!(
        err.to_string(),
        "document has 51 or more pages, over the limit of 50"
    );
}

#[test]
fn a_200_inch_page_is_refused_before_rendering() {
    let file = hand_pdf(&[
        "<< /Type /Catalog /Pages 2 0 R >>".into(),
        "<< /Type /Pages /Count 2 /Kids [3 0 R 4 0 R] >>".into(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>".into(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 14400 14400] >>".into(),
    ]);
    let document = open(file).unwrap();
    let all = document.page_indexes();
    let expected = "page 2 at 300 dpi would be 60000x60000 = 3600000000 pixels, \
                    over the limit of 40000000";
    assert_eq!(
        document.check(&all, dpi(300)).unwrap_err().to_string(),
        expected
    );
    assert_eq!(
        document.render(all[1], dpi(300)).unwrap_err().to_string(),
        expected
    );
    // The small page is fine, and so is the big one at a resolution that fits.
    assert!(document.check(&all[..1], dpi(300)).is_ok());
    assert!(document.check(&all, dpi(30)).is_ok());
}

#[test]
fn a_page_hiding_a_gigapixel_image_is_refused_before_rendering() {
    // Two Letter pages within every limit; page 1 draws a 100000x100000 image whose stream is a
    // few bytes of Flate, page 2 draws it from inside a form.
    let mut pdf = Pdf::new();
    let (catalog, tree, image, form) = (Ref::new(1), Ref::new(2), Ref::new(3), Ref::new(4));
    let pages = [Ref::new(5), Ref::new(6)];
    let contents = [Ref::new(7), Ref::new(8)];
    pdf.catalog(catalog).pages(tree);
    pdf.pages(tree).kids(pages).count(2);
    let zeros = miniz_oxide::deflate::compress_to_vec_zlib(&[0; 4096], 9);
    let mut xobject = pdf.image_xobject(image, &zeros);
    xobject.filter(Filter::FlateDecode);
    xobject.width(100_000).height(100_000).bits_per_component(8);
    xobject.color_space().device_gray();
    xobject.finish();
    let mut draw = Content::new();
    draw.x_object(Name(b"Im0"));
    let draw = draw.finish();
    let mut form_xobject = pdf.form_xobject(form, &draw);
    form_xobject.bbox(Rect::new(0.0, 0.0, 1.0, 1.0));
    form_xobject
        .resources()
        .x_objects()
        .pair(Name(b"Im0"), image);
    form_xobject.finish();
    for (i, (page_id, content_id)) in pages.into_iter().zip(contents).enumerate() {
        let name = if i == 0 { Name(b"Im0") } else { Name(b"Fm0") };
        let mut page = pdf.page(page_id);
        page.parent(tree)
            .media_box(Rect::new(0.0, 0.0, 612.0, 792.0))
            .contents(content_id);
        page.resources()
            .x_objects()
            .pair(name, if i == 0 { image } else { form });
        page.finish();
        let mut content = Content::new();
        content
            .transform([612.0, 0.0, 0.0, 792.0, 0.0, 0.0])
            .x_object(name);
        pdf.stream(content_id, &content.finish());
    }
    let document = open(pdf.finish()).unwrap();
    let all = document.page_indexes();
    let message = |page: u32| {
        format!(
            "page {page} embeds a 100000x100000 image = 10000000000 pixels, \
             over the limit of 160000000"
        )
    };
    assert_eq!(
        document.check(&all, dpi(300)).unwrap_err().to_string(),
        message(1)
    );
    assert_eq!(
        document.render(all[1], dpi(72)).unwrap_err().to_string(),
        message(2)
    );
}

#[test]
fn an_xref_loop_and_deep_nesting_are_refused_not_followed() {
    // The trailer's /Prev points back at its own table.
    let mut looped = hand_pdf(&[
        "<< /Type /Catalog /Pages 2 0 R >>".into(),
        "<< /Type /Pages /Count 1 /Kids [3 0 R] >>".into(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 100 100] >>".into(),
    ]);
    let text = String::from_utf8(looped.clone()).unwrap();
    let xref = text.find("xref\n").unwrap();
    looped = text
        .replace("/Root 1 0 R >>", &format!("/Root 1 0 R /Prev {xref} >>"))
        .into_bytes();
    // A loop costs at most one pass; the document opens (its one page is real) or is refused.
    match open(looped) {
        Ok(document) => assert_eq!(document.page_count(), 1),
        Err(err) => assert!(matches!(err, DocumentError::UnreadablePdf(_)), "{err}"),
    }

    let deep = format!(
        "<< /Type /Catalog /Pages 2 0 R /Deep {}{} >>",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let nested = hand_pdf(&[
        deep,
        "<< /Type /Pages /Count 1 /Kids [3 0 R] >>".into(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 100 100] >>".into(),
    ]);
    // No stack overflow: either refused, or read without the nested value.
    if let Err(err) = open(nested) {
        assert!(matches!(err, DocumentError::UnreadablePdf(_)), "{err}");
    }
}

#[test]
fn an_encrypted_pdf_names_the_missing_password() {
    if std::process::Command::new("qpdf")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: qpdf is not installed (make deps installs it)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("tesserve-encrypted-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (plain, locked, open_locked) = (
        dir.join("plain.pdf"),
        dir.join("locked.pdf"),
        dir.join("open.pdf"),
    );
    std::fs::write(&plain, scan_pdf(&pages_text(1), Encoding::Flate, None)).unwrap();
    let encrypt = |user: &str, out: &std::path::Path| {
        let status = std::process::Command::new("qpdf")
            .args(["--encrypt", user, "owner", "256", "--"])
            .arg(&plain)
            .arg(out)
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::read(out).unwrap()
    };
    let needs_password = encrypt("user", &locked);
    // AES-256 with an empty user password: encrypted, but anyone may open it.
    let anyone = encrypt("", &open_locked);
    std::fs::remove_dir_all(&dir).unwrap();

    assert_eq!(
        open(needs_password).unwrap_err().to_string(),
        "encrypted PDF: a password is needed"
    );
    let document = open(anyone).unwrap();
    let page = document
        .render(document.page_indexes()[0], dpi(150))
        .unwrap();
    assert_has_text(&page);
}

#[tokio::test]
async fn a_three_page_tiff_decodes_each_directory_with_its_resolution() {
    let images = pages_text(3);
    let file = tiff_file(&images);
    assert_eq!(sniff(&file), Kind::Tiff);
    let document = open(file).unwrap();
    assert_eq!(document.kind(), Kind::Tiff);
    assert_eq!(document.page_count(), 3);
    let cancel = AtomicBool::new(false);
    // A TIFF keeps its own pixels whatever dpi is asked for.
    let rendered: Vec<RenderedPage> = document
        .render_each(&document.page_indexes(), dpi(72), &cancel)
        .collect::<Result<_, _>>()
        .unwrap();
    for (page, image) in rendered.iter().zip(&images) {
        assert_eq!(
            page.pixels.data(),
            image.as_raw().as_slice(),
            "{}",
            page.index
        );
        assert_eq!(page.dpi, Some(dpi(300)));
    }
    let text = ocr(&[&rendered[1]]).await.remove(0);
    common::assert_text(text.trim(), &PAGE_TEXT[1].join("\n"), 3);
}

#[test]
fn a_tiff_with_10000_directories_is_refused_at_the_limit() {
    let tiny = GrayImage::new(1, 1);
    let file = tiff_file(&vec![tiny; 10_000]);
    assert_eq!(
        open(file).unwrap_err().to_string(),
        "document has 51 or more pages, over the limit of 50"
    );
}

#[test]
fn a_tiff_directory_pointing_at_itself_is_refused() {
    let mut file = tiff_file(&pages_text(1));
    // Little-endian classic TIFF: the first directory's offset at 4, its entry count there,
    // its next-directory pointer after the 12-byte entries.
    let first = u32::from_le_bytes(file[4..8].try_into().unwrap()) as usize;
    let entries = u16::from_le_bytes(file[first..first + 2].try_into().unwrap()) as usize;
    let next = first + 2 + 12 * entries;
    file[next..next + 4].copy_from_slice(&(first as u32).to_le_bytes());
    let err = open(file).unwrap_err();
    assert!(matches!(err, DocumentError::UnreadableTiff(_)), "{err}");
}

#[test]
fn a_page_index_past_the_end_is_an_error_not_a_panic() {
    let small = open(scan_pdf(&pages_text(1), Encoding::Flate, None)).unwrap();
    let big = open(scan_pdf(&pages_text(3), Encoding::Flate, None)).unwrap();
    let third: PageIndex = big.page_indexes()[2];
    assert_eq!(
        small.render(third, dpi(72)).unwrap_err().to_string(),
        "page 3 of 1: no such page"
    );
}

/// A cheap stand-in for the fuzzer in every test run: real documents cut short and with bytes
/// overwritten, opened under small limits and their first page rendered at a low resolution.
/// Errors are expected; a panic inside hayro or tiff (which `Document` turns into
/// [`DocumentError::Panicked`]) is a failure.
#[test]
fn damaged_documents_fail_cleanly() {
    let small = DocumentLimits {
        max_bytes: 1 << 20,
        max_pages: 4,
        max_page_pixels: 1_000_000,
    };
    let image = common::render_gray(&["Damaged"]);
    let originals = [
        scan_pdf(std::slice::from_ref(&image), Encoding::Flate, Some(90)),
        scan_pdf(std::slice::from_ref(&image), Encoding::Dct, None),
        vector_pdf(&["Damaged"]),
        tiff_file(&[image.clone(), image]),
    ];
    let mut state = 0x2545_f491_u32;
    let mut next = move || {
        // xorshift: deterministic, so a failure names a reproducible case.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state as usize
    };
    let mut cases = 0;
    for original in &originals {
        let step = (original.len() / 40).max(1);
        let truncated = (1..original.len())
            .step_by(step)
            .map(|n| original[..n].to_vec());
        let flipped = (0..200).map(|_| {
            let mut damaged = original.clone();
            for _ in 0..4 {
                let at = next() % damaged.len();
                damaged[at] = next() as u8;
            }
            damaged
        });
        for damaged in truncated.chain(flipped) {
            cases += 1;
            let result = Document::open(Bytes::from(damaged.clone()), &small).and_then(|d| {
                let first = d.page_indexes()[..1].to_vec();
                d.render(first[0], dpi(36))
            });
            if let Err(err @ DocumentError::Panicked(_)) = result {
                let path = std::env::temp_dir().join(format!("tesserve-panic-{cases}.bin"));
                std::fs::write(&path, &damaged).unwrap();
                panic!("{err} on case {cases}, saved as {}", path.display());
            }
        }
    }
    assert!(cases > 900, "{cases}");
}
