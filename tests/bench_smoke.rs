//! The benchmark's regression guard, in seconds: the server's throughput over gRPC against
//! raw Tesseract's on the same images in the same run. Only a ratio is asserted, and only
//! against a gross regression: absolute times on a shared machine mean nothing.

mod common;

use std::{sync::Arc, time::Duration};

use common::TestServer;
use tesserve::config::TESSDATA_SEARCH_PATH;
use tesserve_load::{ceiling, images, render::Renderer, LoadConfig};

const ENGINES: usize = 2;
const SECONDS: u64 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_throughput_stays_near_raw_tesseract() {
    // Short snippets (1 and 3 lines): many images in a few seconds, so the ratio is stable.
    let samples: Vec<_> = images::snippets(&Renderer::new().unwrap(), 16)
        .unwrap()
        .into_iter()
        .filter(|sample| sample.text.lines().count() <= 3)
        .collect();
    let tessdata = TESSDATA_SEARCH_PATH
        .iter()
        .map(std::path::Path::new)
        .find(|dir| dir.join("eng.traineddata").exists())
        .expect("tesseract-ocr-eng is installed");
    let raw = {
        let samples = samples.clone();
        tokio::task::spawn_blocking(move || {
            ceiling::measure(&samples, tessdata, ENGINES, Duration::from_secs(SECONDS))
        })
        .await
        .unwrap()
        .unwrap()
    };

    let s = TestServer::start(&["--workers", &ENGINES.to_string()]).await;
    let report = tesserve_load::run(LoadConfig {
        grpc: Some(format!("http://{}", s.addr())),
        rest: None,
        model: "ocr".into(),
        api_key: None,
        authority: None,
        concurrency: ENGINES,
        duration: Duration::from_secs(SECONDS),
        requests: None,
        rate: None,
        mix: Default::default(),
        samples: Arc::new(samples),
    })
    .await
    .unwrap();
    let ratio = report.throughput / raw.throughput;
    println!(
        "raw Tesseract {:.1} images/s, server {:.1} images/s: {ratio:.2} of the ceiling",
        raw.throughput, report.throughput
    );
    assert!(report.is_clean(), "{report}");
    assert!(
        ratio >= 0.7,
        "server throughput fell to {ratio:.2} of raw Tesseract's\n{report}"
    );
}
