//! Documents through a real server, on every protocol: pages read in order, document-level
//! outputs (text with form feeds, words with pages, hOCR/TSV/ALTO for every page, a searchable
//! PDF, the `pages` report), page selection, rotation, and the limits named in the errors.

mod common;

use std::collections::HashMap;

use base64::Engine as _;
use bytes::Bytes;
use common::{
    assert_text, distance,
    documents::{pages_text, tiff_file, PAGE_TEXT},
    TestServer,
};
use image::{imageops, GrayImage};
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};
use tesserve::{
    ocr::{Document, DocumentLimits},
    oip::pb::{
        self, infer_parameter::ParameterChoice, model_infer_request::InferRequestedOutputTensor,
        InferParameter,
    },
};
use tesserve_load::pdf::{scan_pdf, Encoding};
use tonic::Code;

fn page_text(number: usize) -> String {
    PAGE_TEXT[number - 1].join("\n")
}

fn three_page_pdf() -> Vec<u8> {
    scan_pdf(&pages_text(3), Encoding::Flate, None)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A typed gRPC request for `files` asking for `outputs`, with string parameters.
fn grpc_request(
    files: &[&[u8]],
    outputs: &[&str],
    parameters: &[(&str, &str)],
) -> pb::ModelInferRequest {
    let mut request = common::typed_request(files);
    request.outputs = outputs
        .iter()
        .map(|name| InferRequestedOutputTensor {
            name: name.to_string(),
            ..Default::default()
        })
        .collect();
    request.parameters = parameters
        .iter()
        .map(|(k, v)| {
            let choice = ParameterChoice::StringParam(v.to_string());
            (
                k.to_string(),
                InferParameter {
                    parameter_choice: Some(choice),
                },
            )
        })
        .collect::<HashMap<_, _>>();
    request
}

/// POSTs an OIP REST v2 infer body and returns the status and JSON answer.
async fn rest_infer(s: &TestServer, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/v2/models/ocr/infer", s.http()))
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn rest_body(files: &[&[u8]], outputs: &[&str], parameters: Value) -> Value {
    let data: Vec<Value> = files.iter().map(|f| json!({"b64": b64(f)})).collect();
    let outputs: Vec<Value> = outputs.iter().map(|n| json!({"name": n})).collect();
    json!({
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [files.len()], "data": data}],
        "outputs": outputs,
        "parameters": parameters,
    })
}

fn rest_output<'a>(answer: &'a Value, name: &str) -> &'a Vec<Value> {
    answer["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output {name} in {answer}"))["data"]
        .as_array()
        .unwrap()
}

/// Each page's text, split at the form feeds, checked against what was rendered.
#[track_caller]
fn assert_pages(text: &str, numbers: &[usize]) {
    let pages: Vec<&str> = text.split('\u{c}').collect();
    assert_eq!(pages.len(), numbers.len(), "{text:?}");
    for (page, &number) in pages.iter().zip(numbers) {
        assert_text(page.trim(), &page_text(number), 3);
    }
}

#[tokio::test]
async fn a_three_page_pdf_over_grpc_reads_every_page_with_document_outputs() {
    let mut s = TestServer::start(&["--workers", "2"]).await;
    let pdf = three_page_pdf();
    let outputs = [
        "text",
        "confidence",
        "words",
        "hocr",
        "tsv",
        "alto",
        "pdf",
        "pages",
    ];
    let reply = s
        .client
        .model_infer(grpc_request(&[&pdf], &outputs, &[]))
        .await
        .unwrap()
        .into_inner();
    assert!(reply.outputs.iter().all(|o| o.shape == [1]));

    let text = common::typed_strings(&reply, "text").remove(0);
    assert_pages(&text, &[1, 2, 3]);

    let words: Value = serde_json::from_str(&common::typed_strings(&reply, "words")[0]).unwrap();
    let pages_of_words: Vec<u64> = words
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["page"].as_u64().unwrap())
        .collect();
    assert_eq!(pages_of_words.first(), Some(&1));
    assert_eq!(pages_of_words.last(), Some(&3));
    assert!(pages_of_words.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(words[0]["text"], "The");

    let hocr = common::typed_strings(&reply, "hocr").remove(0);
    assert!(hocr.starts_with("<?xml"), "one document: {}", &hocr[..80]);
    assert_eq!(hocr.matches("class='ocr_page'").count(), 3);
    for number in 1..=3 {
        assert!(hocr.contains(&format!("id='page_{number}'")), "{hocr}");
    }
    assert!(
        hocr.contains("ocr-number-of-pages\" content=\"3\""),
        "{hocr}"
    );

    let tsv = common::typed_strings(&reply, "tsv").remove(0);
    let page_rows: Vec<&str> = tsv
        .lines()
        .filter(|line| line.starts_with("1\t"))
        .map(|line| line.split('\t').nth(1).unwrap())
        .collect();
    assert_eq!(page_rows, ["1", "2", "3"], "{tsv}");

    let alto = common::typed_strings(&reply, "alto").remove(0);
    assert!(alto.contains("<alto"), "{alto}");
    assert_eq!(alto.matches("<Page ").count(), 3, "{alto}");
    assert!(alto.contains("CONTENT=\"second\""), "{alto}");

    let confidence = &reply
        .outputs
        .iter()
        .find(|o| o.name == "confidence")
        .unwrap()
        .contents
        .as_ref()
        .unwrap()
        .fp32_contents;
    assert!(confidence[0] > 0.8, "{confidence:?}");

    let report: Value = serde_json::from_str(&common::typed_strings(&reply, "pages")[0]).unwrap();
    let report = report.as_array().unwrap();
    assert_eq!(report.len(), 3);
    let images = pages_text(3);
    for (i, (page, image)) in report.iter().zip(&images).enumerate() {
        assert_eq!(page["index"], i);
        assert_eq!(page["page"], i + 1);
        assert_eq!(
            (page["width"].as_u64(), page["height"].as_u64()),
            (Some(image.width().into()), Some(image.height().into()))
        );
        assert_eq!(page["dpi"], 300);
        assert_text(page["text"].as_str().unwrap().trim(), &page_text(i + 1), 3);
        assert!(page["confidence"].as_f64().unwrap() > 0.8);
        assert!(page["orientation"].is_null(), "rotate defaults to off");
        assert!(page["timings"]["recognize_ms"].as_f64().unwrap() > 0.0);
    }

    // The searchable PDF: three pages, each with an invisible text layer that says the page.
    let searchable = reply
        .outputs
        .iter()
        .find(|o| o.name == "pdf")
        .unwrap()
        .contents
        .as_ref()
        .unwrap()
        .bytes_contents[0]
        .clone();
    assert_searchable(&searchable, 3);
}

/// A PDF as Tesseract's renderer writes it: `pages` pages whose text layer (render mode 3,
/// invisible) reads back as the pages' words, and which tesserve itself can open again.
#[track_caller]
fn assert_searchable(file: &[u8], pages: usize) {
    assert!(file.starts_with(b"%PDF-"));
    let pdf = lopdf::Document::load_mem(file).unwrap();
    assert_eq!(pdf.get_pages().len(), pages);
    let content = pdf.get_page_content(pdf.page_iter().next().unwrap());
    let content = String::from_utf8_lossy(&content);
    assert!(content.contains("3 Tr"), "text drawn invisibly: {content}");
    assert!(
        String::from_utf8_lossy(file).contains("GlyphLessFont"),
        "Tesseract's text-layer font"
    );
    let limits = DocumentLimits {
        max_bytes: 64 << 20,
        max_pages: 10,
        max_page_pixels: 50_000_000,
    };
    let reopened = Document::open(Bytes::copy_from_slice(file), &limits).unwrap();
    assert_eq!(reopened.page_count(), pages);
}

#[tokio::test]
async fn a_batch_of_an_image_a_pdf_and_a_tiff_keeps_element_and_page_order() {
    let mut s = TestServer::start(&["--workers", "2"]).await;
    let png = common::png(&["A single image first"]);
    let pdf = scan_pdf(&pages_text(2), Encoding::Dct, None);
    let tiff = tiff_file(&pages_text(3));
    let reply = s
        .client
        .model_infer(grpc_request(&[&png, &pdf, &tiff], &["text"], &[]))
        .await
        .unwrap()
        .into_inner();
    let texts = common::typed_strings(&reply, "text");
    assert_eq!(texts.len(), 3);
    assert_text(texts[0].trim(), "A single image first", 1);
    assert_pages(&texts[1], &[1, 2]);
    assert_pages(&texts[2], &[1, 2, 3]);
}

#[tokio::test]
async fn a_g4_fax_tiff_and_a_g4_pdf_read_back_page_by_page() {
    let Some((tiff, pdf)) = common::documents::g4_tiff_and_pdf(&pages_text(3)) else {
        return;
    };
    assert!(
        String::from_utf8_lossy(&pdf).contains("/CCITTFaxDecode"),
        "the PDF keeps the G4 images"
    );
    let mut s = TestServer::start(&["--workers", "2"]).await;
    let reply = s
        .client
        .model_infer(grpc_request(&[&tiff, &pdf], &["text", "pages"], &[]))
        .await
        .unwrap()
        .into_inner();
    let texts = common::typed_strings(&reply, "text");
    assert_pages(&texts[0], &[1, 2, 3]);
    assert_pages(&texts[1], &[1, 2, 3]);
    let reports = common::typed_strings(&reply, "pages");
    for report in &reports {
        let report: Value = serde_json::from_str(report).unwrap();
        assert!(
            report.as_array().unwrap().iter().all(|p| p["dpi"] == 300),
            "{report}"
        );
    }
}

#[tokio::test]
async fn pages_selects_pages_and_a_bad_range_is_named() {
    let s = TestServer::start(&[]).await;
    let pdf = three_page_pdf();
    let (status, answer) = rest_infer(
        &s,
        rest_body(
            &[&pdf],
            &["text", "words", "pages"],
            json!({"pages": "3,2"}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_pages(rest_output(&answer, "text")[0].as_str().unwrap(), &[2, 3]);
    let words: Value =
        serde_json::from_str(rest_output(&answer, "words")[0].as_str().unwrap()).unwrap();
    assert_eq!(
        words[0]["page"], 2,
        "words name the document's page numbers"
    );
    let report: Value =
        serde_json::from_str(rest_output(&answer, "pages")[0].as_str().unwrap()).unwrap();
    let numbers: Vec<_> = report
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["index"].as_u64().unwrap(), p["page"].as_u64().unwrap()))
        .collect();
    assert_eq!(numbers, [(1, 2), (2, 3)]);

    for (pages, message) in [
        (
            "2-5",
            "input 'image'[0]: pages '2-5': the document has 3 pages",
        ),
        (
            "0",
            "input 'image'[0]: pages '0': pages are numbered from 1",
        ),
    ] {
        let (status, answer) =
            rest_infer(&s, rest_body(&[&pdf], &["text"], json!({ "pages": pages }))).await;
        assert_eq!((status, answer["error"].as_str()), (400, Some(message)));
    }
}

#[tokio::test]
async fn a_document_over_the_page_limit_is_refused_with_the_limit_named() {
    let mut s = TestServer::start(&["--max-pages", "2"]).await;
    let png = common::png(&["Fine"]);
    let pdf = three_page_pdf();
    let err = s
        .client
        .model_infer(grpc_request(&[&png, &pdf], &["text"], &[]))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (
            Code::InvalidArgument,
            "input 'image'[1]: document has 3 pages, over the limit of 2"
        )
    );
    // The limit bounds the document, not the selection: its page tree is not walked further.
    let (status, answer) =
        rest_infer(&s, rest_body(&[&pdf], &["text"], json!({"pages": "1-2"}))).await;
    assert_eq!(status, 413, "{answer}");
}

#[tokio::test]
async fn an_upside_down_page_is_turned_by_rotate_auto() {
    let s = TestServer::start(&[]).await;
    let lines = [
        "An upside down page is read",
        "after it has been turned over",
        "by the orientation detector",
    ];
    let expected = lines.join("\n");
    let upright = common::render_gray(&lines);
    let turned: GrayImage = imageops::rotate180(&upright);
    let pdf = scan_pdf(&[turned, upright], Encoding::Flate, None);

    let read = |rotate: &'static str| {
        let body = rest_body(&[&pdf], &["text", "pages"], json!({ "rotate": rotate }));
        let s = &s;
        async move {
            let (status, answer) = rest_infer(s, body).await;
            assert_eq!(status, 200, "{answer}");
            let text = rest_output(&answer, "text")[0].as_str().unwrap().to_owned();
            let pages: Value =
                serde_json::from_str(rest_output(&answer, "pages")[0].as_str().unwrap()).unwrap();
            let orientations: Vec<Value> = pages
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["orientation"].clone())
                .collect();
            (
                text.split('\u{c}').map(str::to_owned).collect::<Vec<_>>(),
                orientations,
            )
        }
    };
    let (off, no_orientation) = read("off").await;
    let (auto, orientation) = read("auto").await;
    let cer = |text: &str| distance(text.trim(), &expected) as f64 / expected.len() as f64;
    assert!(no_orientation.iter().all(Value::is_null));
    assert_eq!(
        (&orientation[0]["angle"], &orientation[0]["applied"]),
        (&json!(180), &json!(true)),
        "{orientation:?}"
    );
    assert_eq!(
        (&orientation[1]["angle"], &orientation[1]["applied"]),
        (&json!(0), &json!(false)),
        "{orientation:?}"
    );
    let (before, after) = (cer(&off[0]), cer(&auto[0]));
    assert!(
        after < 0.05 && before > 0.5,
        "CER off {before:.2} ({off:?}), auto {after:.2} ({auto:?})"
    );
    assert!(
        cer(&off[1]) < 0.05 && cer(&auto[1]) < 0.05,
        "{off:?} {auto:?}"
    );
}

#[tokio::test]
async fn an_encrypted_pdf_is_a_clear_400() {
    if std::process::Command::new("qpdf")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: qpdf is not installed (make deps installs it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (plain, locked) = (dir.path().join("plain.pdf"), dir.path().join("locked.pdf"));
    std::fs::write(&plain, three_page_pdf()).unwrap();
    let status = std::process::Command::new("qpdf")
        .args(["--encrypt", "user", "owner", "256", "--"])
        .arg(&plain)
        .arg(&locked)
        .status()
        .unwrap();
    assert!(status.success());
    let s = TestServer::start(&[]).await;
    let (status, answer) = rest_infer(
        &s,
        rest_body(&[&std::fs::read(&locked).unwrap()], &["text"], json!({})),
    )
    .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (
            400,
            Some("input 'image'[0]: encrypted PDF: a password is needed")
        )
    );
}

#[tokio::test]
async fn rest_v2_carries_the_pdf_output_as_b64_and_in_the_binary_extension() {
    let s = TestServer::start(&[]).await;
    let pdf = scan_pdf(&pages_text(1), Encoding::Flate, None);
    let (status, answer) = rest_infer(&s, rest_body(&[&pdf], &["pdf"], json!({}))).await;
    assert_eq!(status, 200, "{answer}");
    let encoded = rest_output(&answer, "pdf")[0]["b64"].as_str().unwrap();
    let searchable = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    assert_searchable(&searchable, 1);

    let mut body = rest_body(&[&pdf], &["pdf"], json!({}));
    body["outputs"][0]["parameters"] = json!({"binary_data": true});
    let response = reqwest::Client::new()
        .post(format!("{}/v2/models/ocr/infer", s.http()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let header: usize = response.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = response.bytes().await.unwrap();
    let framed = common::unframe(&bytes[header..]);
    assert_searchable(&framed[0], 1);
}

#[tokio::test]
async fn upload_endpoints_and_kserve_v1_answer_documents_with_pages() {
    let s = TestServer::start(&["--workers", "2"]).await;
    let http = reqwest::Client::new();
    let pdf = three_page_pdf();
    let tiff = tiff_file(&pages_text(2));

    let upload = |path: &str, field: &'static str, file: &[u8], name: &str| {
        let part = Part::bytes(file.to_vec()).file_name(name.to_owned());
        http.post(format!("{}{path}", s.http()))
            .multipart(Form::new().part(field, part))
            .send()
    };
    // The file name says PNG: the content decides.
    let predict: Value = upload("/predict?pages=1-2", "file", &pdf, "scan.png")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_pages(predict["text"].as_str().unwrap(), &[1, 2]);
    assert_eq!(predict["pages"].as_array().unwrap().len(), 2, "{predict}");
    assert_eq!(
        predict["boxes"].as_array().unwrap().last().unwrap()["page"],
        2
    );

    let gateway: Value = upload("/gateway/ocr", "image_file", &tiff, "fax.tif")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_pages(gateway["text"].as_str().unwrap(), &[1, 2]);
    assert_eq!(gateway["pages"].as_array().unwrap().len(), 2, "{gateway}");

    // A single image has no `pages`.
    let single: Value = upload("/predict", "file", &common::png(&["Alone"]), "a.png")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(single.get("pages").is_none(), "{single}");

    let read: Value = http
        .post(format!("{}/read_ocr", s.http()))
        .json(&json!({"image": b64(&pdf), "pages": "3"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_pages(read["text"].as_str().unwrap(), &[3]);
    assert_eq!(read["pages"][0]["page"], 3, "{read}");

    let v1: Value = http
        .post(format!("{}/v1/models/ocr:predict", s.http()))
        .json(&json!({"instances": [{"image": {"b64": b64(&pdf)}}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let prediction = &v1["predictions"][0];
    assert_pages(prediction["text"].as_str().unwrap(), &[1, 2, 3]);
    assert_eq!(prediction["pages"].as_array().unwrap().len(), 3, "{v1}");
}

#[tokio::test]
async fn a_document_past_its_deadline_stops_with_deadline_exceeded() {
    let mut s = TestServer::start(&["--workers", "1"]).await;
    let long = image::load_from_memory(&common::long_page())
        .unwrap()
        .to_luma8();
    let pdf = scan_pdf(&vec![long; 6], Encoding::Flate, None);
    let mut request = tonic::Request::new(grpc_request(&[&pdf], &["text"], &[]));
    request.set_timeout(std::time::Duration::from_millis(1500));
    let err = s.client.model_infer(request).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    // The pages not yet read were dropped, not left queued for an engine.
    common::eventually(|| s.server.model().pool().queued() == 0).await;
}
