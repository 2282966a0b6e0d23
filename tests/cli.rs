//! The `tesserve` binary itself: `ocr`, `serve` + `healthcheck`, usage errors, signals.

mod common;

use std::{path::PathBuf, process::Output};

use common::served::{free_port, tesserve, Served};
use serde_json::json;

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn temp_png(name: &str, lines: &[&str]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("tesserve-cli-{}-{name}.png", std::process::id()));
    std::fs::write(&path, common::png(lines)).unwrap();
    path
}

#[test]
fn ocr_prints_the_text_of_each_file() {
    let first = temp_png("first", &["Command line one"]);
    let second = temp_png("second", &["Command line two"]);
    let output = tesserve(&["ocr", first.to_str().unwrap(), second.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8(output.stdout).unwrap();
    common::assert_text(&stdout, "Command line one Command line two", 2);
}

#[test]
fn ocr_json_has_text_confidence_and_words() {
    let file = temp_png("json", &["Invoice 2024"]);
    let output = tesserve(&["ocr", "--json", "--psm", "7", file.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let line: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    common::assert_text(line["text"].as_str().unwrap(), "Invoice 2024", 1);
    assert!(line["confidence"].as_f64().unwrap() > 0.5);
    assert_eq!(line["words"][1]["text"], "2024");
}

#[test]
fn ocr_reads_a_pdf_page_by_page() {
    use common::documents::{pages_text, PAGE_TEXT};
    use tesserve_load::pdf::{scan_pdf, Encoding};
    let path = std::env::temp_dir().join(format!("tesserve-cli-{}.pdf", std::process::id()));
    std::fs::write(&path, scan_pdf(&pages_text(3), Encoding::Flate, None)).unwrap();
    let file = path.to_str().unwrap();

    let output = tesserve(&["ocr", file]);
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let pages: Vec<&str> = stdout.split('\u{c}').collect();
    assert_eq!(pages.len(), 3, "pages separated by form feeds: {stdout:?}");
    for (page, lines) in pages.iter().zip(PAGE_TEXT) {
        common::assert_text(page.trim(), &lines.join("\n"), 3);
    }

    let output = tesserve(&["ocr", "--json", "--pages", "2-3", file]);
    assert!(output.status.success(), "{}", stderr(&output));
    let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "one object per page: {lines:?}");
    for (line, number) in lines.iter().zip([2, 3]) {
        assert_eq!(
            (&line["file"], &line["page"]),
            (&json!(file), &json!(number))
        );
        let text = line["text"].as_str().unwrap();
        common::assert_text(text.trim(), &PAGE_TEXT[number - 1].join("\n"), 3);
        assert_eq!(line["words"][0]["page"], number);
    }
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn ocr_names_the_file_it_could_not_use() {
    let output = tesserve(&["ocr", "/nonexistent/scan.png"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("/nonexistent/scan.png"),
        "{}",
        stderr(&output)
    );

    let garbage = std::env::temp_dir().join(format!("tesserve-cli-{}.png", std::process::id()));
    std::fs::write(&garbage, b"not a picture").unwrap();
    let output = tesserve(&["ocr", garbage.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("image format not recognised"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn configuration_mistakes_are_usage_errors_before_anything_binds() {
    let output = tesserve(&["--lang", "klingon", "--grpc-port", "1", "--http-port", "1"]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(
        message.contains("--lang: language 'klingon' is not installed (installed: "),
        "{message}"
    );
    assert!(message.contains("eng"), "{message}");

    let output = tesserve(&["--workers", "0"]);
    assert_eq!(output.status.code(), Some(2));
    let output = tesserve(&["--tessdata", "/nonexistent"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("/nonexistent"));
}

#[test]
fn serve_reports_ready_and_exits_cleanly_on_sigterm() {
    let mut served = Served::start(&["--workers", "1"], |_| {});
    served.wait_ready();
    served.sigterm();
    let status = served.wait();
    assert!(status.success(), "{status:?}");
}

#[test]
fn healthcheck_fails_when_nothing_listens() {
    let output = tesserve(&[
        "healthcheck",
        "--grpc-port",
        &free_port().to_string(),
        "--timeout",
        "1",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("not reachable"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn kserve_style_environment_configures_the_server() {
    let served = Served::start(&["--workers", "1"], |command| {
        command.env("TESSERVE_MODEL_NAME", "receipts");
    });
    served.wait_ready();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = common::client(([127, 0, 0, 1], served.grpc_port).into()).await;
        let ready = client
            .model_ready(tesserve::oip::pb::ModelReadyRequest {
                name: "receipts".into(),
                version: String::new(),
            })
            .await
            .unwrap();
        assert!(ready.into_inner().ready);
    });
}

/// Regression: libgomp reads OMP_THREAD_LIMIT when it loads, before `main`; the binary must
/// re-execute itself with the limit set or parallel engines crawl.
#[test]
fn openmp_thread_limit_is_set_before_tesseract_loads() {
    let served = Served::start(&["--workers", "1"], |command| {
        command.env_remove("OMP_THREAD_LIMIT");
    });
    served.wait_ready();
    let environ = std::fs::read(format!("/proc/{}/environ", served.child.id())).unwrap();
    assert!(
        environ
            .split(|&b| b == 0)
            .any(|entry| entry == b"OMP_THREAD_LIMIT=1"),
        "the serving process runs without OMP_THREAD_LIMIT=1"
    );
}

#[test]
fn check_config_validates_without_serving() {
    // The default ports may be taken on this machine: nothing may bind when checking.
    let output = tesserve(&["serve", "--check-config", "--model-name", "receipts"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("\"receipts\""), "{printed}");

    let output = tesserve(&["--check-config", "--api-keys-file", "/nonexistent/keys"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("/nonexistent/keys"),
        "{}",
        stderr(&output)
    );
}
