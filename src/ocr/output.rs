//! One element's outputs from its pages' results: every page was recognised on its own
//! (perhaps on different engines, in any order), and here they become one document, as the
//! `tesseract` command would have written it for the whole file.

use std::{collections::BTreeMap, sync::OnceLock};

use bytes::Bytes;

use super::{
    engine::{OcrResult, PageReport},
    OutputKind, OutputSet,
};

#[derive(Debug, thiserror::Error)]
#[error("the searchable PDF pages could not be joined: {0}")]
pub struct JoinError(String);

/// Joins the results of an element's pages, in page order, into the element's result.
pub fn assemble(pages: Vec<OcrResult>, outputs: OutputSet) -> Result<OcrResult, JoinError> {
    let count = pages.len();
    let mut joined = OcrResult {
        cached: !pages.is_empty() && pages.iter().all(|p| p.cached),
        ..OcrResult::default()
    };
    let mut texts = Vec::with_capacity(count);
    let (mut hocr, mut alto, mut tsv) = (String::new(), String::new(), String::new());
    let mut pdfs = Vec::new();
    let mut weighted = 0.0f64;
    for page in pages {
        joined.timings += page.timings;
        joined.pixels += page.pixels;
        joined.word_count += page.word_count;
        if let Some(confidence) = page.confidence {
            weighted += f64::from(confidence) * page.word_count as f64;
        }
        if let Some(words) = page.words {
            joined.words.get_or_insert_with(Vec::new).extend(words);
        }
        hocr.push_str(page.hocr.as_deref().unwrap_or_default());
        alto.push_str(page.alto.as_deref().unwrap_or_default());
        tsv.push_str(page.tsv.as_deref().unwrap_or_default());
        pdfs.extend(page.pdf);
        for mut report in page.pages {
            if outputs.contains(OutputKind::Pages) {
                report.text.clone_from(&page.text);
                report.confidence = page.confidence;
            }
            joined.pages.push(report);
        }
        texts.push(page.text.unwrap_or_default());
    }
    if outputs.contains(OutputKind::Text) {
        // The `tesseract` command separates pages with a form feed.
        joined.text = Some(texts.join("\u{c}"));
    }
    if outputs.contains(OutputKind::Confidence) {
        joined.confidence = Some((weighted / joined.word_count.max(1) as f64) as f32);
    }
    if outputs.contains(OutputKind::Words) {
        joined.words.get_or_insert_with(Vec::new);
    }
    if outputs.contains(OutputKind::Hocr) {
        joined.hocr = Some(hocr_document(&hocr, count));
    }
    if outputs.contains(OutputKind::Tsv) {
        joined.tsv = Some(tsv);
    }
    if outputs.contains(OutputKind::Alto) {
        joined.alto = Some(alto_document(&alto));
    }
    if outputs.contains(OutputKind::Pdf) {
        joined.pdf = Some(join_pdfs(pdfs)?);
    }
    Ok(joined)
}

/// The `pages` output: one JSON object per page.
pub fn pages_json(pages: &[PageReport]) -> String {
    serde_json::to_string(pages).unwrap_or_else(|_| "[]".to_owned())
}

fn tesseract_version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(tesseract_rs::TesseractAPI::version)
}

/// An hOCR file around the pages' `ocr_page` elements, as Tesseract's hOCR renderer frames them.
fn hocr_document(pages: &str, count: usize) -> String {
    let version = tesseract_version();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\"\n    \
         \"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">\n\
         <html xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"en\" lang=\"en\">\n \
         <head>\n  <title></title>\n  \
         <meta http-equiv=\"Content-Type\" content=\"text/html;charset=utf-8\"/>\n  \
         <meta name=\"ocr-system\" content=\"tesseract {version}\"/>\n  \
         <meta name=\"ocr-capabilities\" content=\"ocr_page ocr_carea ocr_par ocr_line ocrx_word ocrp_wconf\"/>\n  \
         <meta name=\"ocr-number-of-pages\" content=\"{count}\"/>\n \
         </head>\n <body>\n{pages} </body>\n</html>\n"
    )
}

/// An ALTO v3 file around the pages' `Page` elements.
fn alto_document(pages: &str) -> String {
    let version = tesseract_version();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <alto xmlns=\"http://www.loc.gov/standards/alto/ns-v3#\" \
         xmlns:xlink=\"http://www.w3.org/1999/xlink\" \
         xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
         xsi:schemaLocation=\"http://www.loc.gov/standards/alto/ns-v3# \
         http://www.loc.gov/alto/v3/alto-3-0.xsd\">\n \
         <Description>\n  <MeasurementUnit>pixel</MeasurementUnit>\n  \
         <sourceImageInformation>\n   <fileName></fileName>\n  </sourceImageInformation>\n  \
         <OCRProcessing ID=\"OCR_0\">\n   <ocrProcessingStep>\n    <processingSoftware>\n     \
         <softwareName>tesseract {version}</softwareName>\n    </processingSoftware>\n   \
         </ocrProcessingStep>\n  </OCRProcessing>\n </Description>\n \
         <Layout>\n{pages} </Layout>\n</alto>\n"
    )
}

/// One PDF from one-page PDFs, pages in the given order. Each part keeps its own objects (font,
/// image, text layer), renumbered; a new page tree and catalogue hold them together.
fn join_pdfs(parts: Vec<Bytes>) -> Result<Bytes, JoinError> {
    use lopdf::{dictionary, Document, Object, ObjectId};

    if parts.len() == 1 {
        return Ok(parts.into_iter().next().unwrap_or_default());
    }
    let fail = |e: lopdf::Error| JoinError(e.to_string());
    let mut next_id = 1;
    let mut page_ids: Vec<ObjectId> = Vec::new();
    let mut objects: BTreeMap<ObjectId, Object> = BTreeMap::new();
    for part in &parts {
        let mut doc = Document::load_mem(part).map_err(fail)?;
        doc.renumber_objects_with(next_id);
        next_id = doc.max_id + 1;
        page_ids.extend(doc.get_pages().into_values());
        for (id, object) in doc.objects {
            let kind = object.as_dict().ok().and_then(|d| d.get(b"Type").ok());
            let kind = kind.and_then(|t| t.as_name().ok());
            // Each part's own catalogue and page tree are replaced by the joined ones.
            if !matches!(kind, Some(b"Catalog" | b"Pages")) {
                objects.insert(id, object);
            }
        }
    }
    let mut joined = Document::with_version("1.5");
    joined.objects = objects;
    joined.max_id = next_id;
    let pages_id = joined.new_object_id();
    for id in &page_ids {
        if let Ok(page) = joined.get_object_mut(*id).and_then(Object::as_dict_mut) {
            page.set("Parent", pages_id);
        }
    }
    let kids: Vec<Object> = page_ids.iter().map(|&id| Object::Reference(id)).collect();
    let count = i64::try_from(kids.len()).unwrap_or(i64::MAX);
    joined.objects.insert(
        pages_id,
        Object::Dictionary(dictionary! { "Type" => "Pages", "Kids" => kids, "Count" => count }),
    );
    let catalog_id = joined.add_object(dictionary! { "Type" => "Catalog", "Pages" => pages_id });
    joined.trailer.set("Root", catalog_id);
    let mut out = Vec::new();
    joined
        .save_to(&mut out)
        .map_err(|e| JoinError(e.to_string()))?;
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ocr::Word;

    fn page(text: &str, confidence: f32, words: usize, number: u32) -> OcrResult {
        OcrResult {
            text: Some(text.to_owned()),
            confidence: Some(confidence),
            word_count: words,
            words: Some(vec![Word {
                text: text.trim().to_owned(),
                conf: confidence,
                x1: 0,
                y1: 0,
                x2: 1,
                y2: 1,
                page: number,
            }]),
            hocr: Some(format!("<div class='ocr_page' id='page_{number}'></div>\n")),
            pages: vec![PageReport {
                index: number - 1,
                page: number,
                ..PageReport::default()
            }],
            ..OcrResult::default()
        }
    }

    #[test]
    fn pages_join_in_order_with_form_feeds_and_a_word_weighted_confidence() {
        let outputs: OutputSet = OutputKind::ALL
            .into_iter()
            .filter(|k| *k != OutputKind::Pdf)
            .collect();
        let joined = assemble(
            vec![page("one\n", 0.9, 3, 1), page("two\n", 0.6, 1, 2)],
            outputs,
        )
        .unwrap();
        assert_eq!(joined.text.as_deref(), Some("one\n\u{c}two\n"));
        assert!((joined.confidence.unwrap() - 0.825).abs() < 1e-6);
        let words = joined.words.unwrap();
        assert_eq!(words.iter().map(|w| w.page).collect::<Vec<_>>(), [1, 2]);
        let hocr = joined.hocr.unwrap();
        assert!(hocr.contains("content=\"2\""));
        assert!(hocr.find("page_1").unwrap() < hocr.find("page_2").unwrap());
        assert!(joined.alto.unwrap().contains("<Layout>"));
        assert_eq!(joined.pages.len(), 2);
        assert_eq!(joined.pages[1].text.as_deref(), Some("two\n"));
        let json = pages_json(&joined.pages);
        assert!(json.contains("\"page\":2"), "{json}");
    }

    #[test]
    fn outputs_not_asked_for_stay_empty() {
        let text: OutputSet = [OutputKind::Text].into_iter().collect();
        let joined = assemble(vec![page("a", 0.5, 1, 1)], text).unwrap();
        assert_eq!(joined.text.as_deref(), Some("a"));
        assert!(joined.confidence.is_none() && joined.hocr.is_none() && joined.pdf.is_none());
        assert!(joined.pages[0].text.is_none());
    }
}
