//! Thirty seconds of a hostile mixed workload from the load tool, on both protocols at once,
//! against a server with small queues so shedding happens too: no wrong text, no crash, and
//! every failure is the one its request deserved.

mod common;

use std::{sync::Arc, time::Duration};

use common::{png, typed_request, typed_strings, TestServer};
use tesserve_load::{images, render::Renderer, Kind, LoadConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_hostile_workload_gets_only_right_answers_and_expected_failures() {
    let mut s = TestServer::start(&[
        "--workers",
        "2",
        "--queue-capacity",
        "6",
        "--max-concurrent-requests",
        "10",
    ])
    .await;
    let samples = images::snippets(&Renderer::new().unwrap(), 16).unwrap();
    let config = LoadConfig {
        grpc: Some(format!("http://{}", s.addr())),
        rest: Some(s.http()),
        model: "ocr".into(),
        api_key: None,
        authority: None,
        concurrency: 12,
        duration: Duration::from_secs(30),
        requests: None,
        rate: None,
        mix: "valid=60,corrupt=8,over_limit=8,cancel=12,short_deadline=12"
            .parse()
            .unwrap(),
        samples: Arc::new(samples),
    };
    let report = tesserve_load::run(config).await.unwrap();
    println!("{report}");

    assert!(report.is_clean(), "{report}");
    assert!(report.count(Kind::Valid, "ok") >= 10, "{report}");
    assert!(report.count(Kind::Corrupt, "refused") > 0, "{report}");
    assert!(report.count(Kind::OverLimit, "refused") > 0, "{report}");
    assert!(report.count(Kind::Cancel, "cancelled") > 0, "{report}");
    assert!(
        report.count(Kind::ShortDeadline, "deadline") > 0,
        "{report}"
    );
    for protocol in ["grpc", "rest"] {
        assert!(report.latency[protocol].count > 0, "{report}");
    }

    // Afterwards the server is whole: nothing queued, every engine free, and it still reads.
    let model = s.server.model().clone();
    common::eventually(|| model.pool().queued() == 0 && model.pool().busy() == 0).await;
    let reply = s
        .client
        .model_infer(typed_request(&[png(&["Still standing"])]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(typed_strings(&reply, "text")[0].trim(), "Still standing");
}
