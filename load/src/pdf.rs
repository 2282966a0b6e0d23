//! Scanned-style PDFs made from known images, as copiers write them: what the document tests
//! and the document benchmark both read.

use image::{codecs::jpeg::JpegEncoder, GrayImage};
use pdf_writer::{Content, Filter, Finish, Name, Pdf, Rect, Ref};

#[derive(Clone, Copy)]
pub enum Encoding {
    Flate,
    Dct,
}

/// A scanned-style PDF: each page one gray image filling it, placed at 300 dpi, as a copier
/// writes them.
pub fn scan_pdf(pages: &[GrayImage], encoding: Encoding, rotate: Option<i32>) -> Vec<u8> {
    let mut pdf = Pdf::new();
    let catalog = Ref::new(1);
    let tree = Ref::new(2);
    let mut next = 3;
    let mut alloc = || {
        next += 1;
        Ref::new(next)
    };
    let mut kids = Vec::new();
    for image in pages {
        let (page_id, image_id, content_id) = (alloc(), alloc(), alloc());
        kids.push(page_id);
        let (w, h) = (image.width() as f32, image.height() as f32);
        let (pw, ph) = (w * 72.0 / 300.0, h * 72.0 / 300.0);
        let mut page = pdf.page(page_id);
        page.parent(tree)
            .media_box(Rect::new(0.0, 0.0, pw, ph))
            .contents(content_id);
        if let Some(degrees) = rotate {
            page.rotate(degrees);
        }
        page.resources().x_objects().pair(Name(b"Im0"), image_id);
        page.finish();

        let (data, filter) = match encoding {
            Encoding::Flate => (
                miniz_oxide::deflate::compress_to_vec_zlib(image.as_raw(), 6),
                Filter::FlateDecode,
            ),
            Encoding::Dct => {
                let mut out = Vec::new();
                JpegEncoder::new_with_quality(&mut out, 90)
                    .encode_image(image)
                    .expect("encoding a gray image as JPEG into memory");
                (out, Filter::DctDecode)
            }
        };
        let mut xobject = pdf.image_xobject(image_id, &data);
        xobject.filter(filter);
        xobject
            .width(image.width() as i32)
            .height(image.height() as i32)
            .bits_per_component(8);
        xobject.color_space().device_gray();
        xobject.finish();

        let mut content = Content::new();
        content
            .save_state()
            .transform([pw, 0.0, 0.0, ph, 0.0, 0.0])
            .x_object(Name(b"Im0"))
            .restore_state();
        pdf.stream(content_id, &content.finish());
    }
    pdf.pages(tree)
        .kids(kids.iter().copied())
        .count(kids.len() as i32);
    pdf.catalog(catalog).pages(tree);
    pdf.finish()
}
