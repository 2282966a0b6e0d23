//! Intra-page parallelism: a big page on an idle server is recognised in strips on both
//! engines, and the joined text is the whole-page text (within 0.5 % character error), also
//! on a real page set in two columns, which must never come back with its columns interleaved.

mod common;

use common::{typed_request, typed_strings, TestServer};
use tesserve::oip::pb::model_infer_request::InferRequestedOutputTensor;
use tesserve_load::{images, render::Renderer};

async fn read(flags: &[&str], page: &[u8]) -> (String, usize) {
    let mut s = TestServer::start(flags).await;
    // Text only: words, hOCR and TSV carry page coordinates, so those pages are never split.
    let mut request = typed_request(&[page]);
    request.outputs = vec![InferRequestedOutputTensor {
        name: "text".into(),
        ..Default::default()
    }];
    let reply = s.client.model_infer(request).await.unwrap().into_inner();
    let text = typed_strings(&reply, "text").remove(0);
    (text, s.server.model().pool().pages_split())
}

/// The page read with `--split-pages auto` and `off`: both texts, and whether it was split.
async fn read_both_ways(page: &[u8]) -> (String, String, bool) {
    let (split_text, splits) = read(&["--workers", "2"], page).await;
    let (whole_text, no_splits) = read(&["--workers", "2", "--split-pages", "off"], page).await;
    assert_eq!(no_splits, 0);
    (split_text, whole_text, splits == 1)
}

fn assert_close(split_text: &str, whole_text: &str) {
    let errors = images::distance(split_text, whole_text);
    let rate = errors as f64 / whole_text.len() as f64;
    assert!(
        rate <= 0.005,
        "split text is {errors} edits ({:.2} %) from the whole-page text:\n{split_text}",
        rate * 100.0
    );
}

#[tokio::test]
async fn a_big_page_is_split_across_idle_engines_without_changing_its_text() {
    let page = images::a4_page(&Renderer::new().unwrap(), 3).unwrap();
    let (split_text, whole_text, split) = read_both_ways(&page.image).await;
    assert!(split, "a single-column A4 page was not split");
    assert_close(&split_text, &whole_text);
    assert!(images::matches(&split_text, &page.text), "{split_text}");
}

#[tokio::test]
async fn a_page_in_two_columns_keeps_its_reading_order() {
    let page = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/two-columns.png"
    ))
    .unwrap();
    let (split_text, whole_text, _) = read_both_ways(&page).await;
    assert!(whole_text.contains("Dubrovnik"), "{whole_text}");
    assert_close(&split_text, &whole_text);
}
