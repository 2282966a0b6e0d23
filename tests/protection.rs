//! Protection: load shedding, readiness under saturation, deadlines on both protocols, and a
//! graceful shutdown that loses nothing.

mod common;

use std::time::{Duration, Instant};

use common::{assert_text, eventually, long_page, png, served::Served, typed_request, TestServer};
use serde_json::Value;
use tesserve::oip::pb;
use tonic::Code;

/// A typed request for the `text` output only.
fn request(images: Vec<Vec<u8>>) -> pb::ModelInferRequest {
    let mut request = typed_request(&images);
    request.outputs = vec![pb::model_infer_request::InferRequestedOutputTensor {
        name: "text".into(),
        ..Default::default()
    }];
    request
}

fn text(response: &pb::ModelInferResponse) -> String {
    let bytes = &response.outputs[0]
        .contents
        .as_ref()
        .unwrap()
        .bytes_contents[0];
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn requests_beyond_the_concurrency_limit_are_shed_at_once() {
    let s = TestServer::start(&["--workers", "1", "--max-concurrent-requests", "1"]).await;
    let mut busy = s.client.clone();
    let running = tokio::spawn(async move { busy.model_infer(request(vec![long_page()])).await });
    eventually(|| s.server.model().pool().busy() == 1).await;

    let shed = s
        .client
        .clone()
        .model_infer(request(vec![png(&["x"])]))
        .await
        .unwrap_err();
    assert_eq!(shed.code(), Code::Unavailable);
    assert!(
        shed.message().contains("1 requests are in flight"),
        "{}",
        shed.message()
    );
    assert_eq!(shed.metadata().get("retry-after").unwrap(), "1");

    let http = reqwest::Client::new();
    let rest = http
        .post(format!("{}/read_ocr", s.http()))
        .body(format!(r#"{{"image": "{}"}}"#, base64(&png(&["x"]))))
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status(), 503);
    assert_eq!(rest.headers()["retry-after"], "1");
    // Probes are never shed.
    let live = http
        .get(format!("{}/v2/health/live", s.http()))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);

    assert!(running.await.unwrap().is_ok());
    let after = s
        .client
        .clone()
        .model_infer(request(vec![png(&["Again"])]))
        .await;
    assert_text(&text(&after.unwrap().into_inner()), "Again", 1);
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn readiness_turns_false_while_the_queue_stays_saturated() {
    let s = TestServer::start(&["--workers", "1", "--queue-capacity", "2"]).await;
    // One page running and two waiting, topped up as pages finish: the queue stays full.
    let client = s.client.clone();
    let filler = tokio::spawn(async move {
        let mut outstanding = futures::stream::FuturesUnordered::new();
        loop {
            while outstanding.len() < 3 {
                let mut client = client.clone();
                outstanding
                    .push(async move { client.model_infer(request(vec![long_page()])).await });
            }
            futures::StreamExt::next(&mut outstanding).await;
        }
    });
    eventually(|| s.server.model().pool().queued() == 2).await;

    let http = reqwest::Client::new();
    let healthz = || http.get(format!("{}/healthz", s.http())).send();
    let started = Instant::now();
    loop {
        let response = healthz().await.unwrap();
        if response.status() == 503 {
            let body: Value = response.json().await.unwrap();
            assert!(
                body["reason"].as_str().unwrap().starts_with("overloaded"),
                "{body}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never reported overloaded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = s
        .client
        .clone()
        .server_ready(pb::ServerReadyRequest {})
        .await
        .unwrap();
    assert!(!ready.into_inner().ready);

    // Callers give up: the queue empties and readiness comes back.
    filler.abort();
    eventually(|| s.server.model().is_ready()).await;
    assert_eq!(healthz().await.unwrap().status(), 200);
}

#[tokio::test]
async fn short_deadlines_on_both_protocols_and_the_server_cap() {
    let mut s = TestServer::start(&["--workers", "1"]).await;
    let mut call = tonic::Request::new(request(vec![long_page()]));
    call.set_timeout(Duration::from_millis(50));
    let err = s.client.model_infer(call).await.unwrap_err();
    // At 50 ms the client's own timer may win the race; either way the work is cancelled.
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );

    let http = reqwest::Client::new();
    let url = format!("{}/v2/models/ocr/infer", s.http());
    let page = base64(&long_page());
    let body = serde_json::json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
        "data": [{"b64": page}]}]});
    let response = http
        .post(&url)
        .header("x-request-timeout", "0.05")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    let bad = http
        .post(&url)
        .header("x-request-timeout", "soon")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    // Both pages were stopped short: skipped in the queue, or cancelled inside Tesseract.
    eventually(|| {
        let dropped = s.server.model().pool().dropped();
        dropped.abandoned + dropped.expired + dropped.cancelled >= 2
    })
    .await;
    let next = s
        .client
        .model_infer(request(vec![png(&["Still fine"])]))
        .await
        .unwrap();
    assert_text(&text(&next.into_inner()), "Still fine", 1);

    // The server-wide cap applies when the client sets no deadline at all.
    let mut capped = TestServer::start(&["--workers", "1", "--request-timeout", "0.1"]).await;
    let err = capped
        .client
        .model_infer(request(vec![long_page()]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
}

#[test]
fn sigterm_during_a_burst_loses_no_request() {
    let mut served = Served::start(&["--workers", "2", "--shutdown-grace", "0.5"], |_| {});
    served.wait_ready();
    let grpc_port = served.grpc_port;

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut calls = Vec::new();
        for i in 0..8 {
            let mut client = common::client(([127, 0, 0, 1], grpc_port).into()).await;
            let expected = format!("Burst request {}", 100 + i);
            calls.push(tokio::spawn(async move {
                let response = client.model_infer(request(vec![png(&[&expected])])).await;
                (expected, response)
            }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        served.sigterm();

        // Readiness is false at once, while the work goes on.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut client = common::client(([127, 0, 0, 1], grpc_port).into()).await;
        let ready = client
            .server_ready(pb::ServerReadyRequest {})
            .await
            .unwrap();
        assert!(!ready.into_inner().ready);

        for call in calls {
            let (expected, response) = call.await.unwrap();
            let response = response.unwrap_or_else(|e| panic!("{expected}: {e:?}"));
            assert_text(&text(&response.into_inner()), &expected, 1);
        }
    });
    let status = served.wait();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let s = TestServer::start(&["--header-read-timeout", "0.5"]).await;
    let mut slow = tokio::net::TcpStream::connect(s.server.http_addr())
        .await
        .unwrap();
    slow.write_all(b"POST /predict HTTP/1.1\r\nHost: tesserve\r\n")
        .await
        .unwrap();

    // Everyone else is served meanwhile.
    let healthz = reqwest::get(format!("{}/healthz", s.http())).await.unwrap();
    assert_eq!(healthz.status(), 200);

    // The server closes the connection (the bound is generous; the timeout is 0.5 s).
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buffer = [0u8; 1024];
        while let Ok(read) = slow.read(&mut buffer).await {
            if read == 0 {
                break;
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a connection without complete headers was kept open"
    );
}

#[tokio::test]
async fn a_request_body_that_stalls_is_failed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let s = TestServer::start(&["--body-read-timeout", "0.5"]).await;
    let mut slow = tokio::net::TcpStream::connect(s.server.http_addr())
        .await
        .unwrap();
    let head =
        "POST /v2/models/ocr/infer HTTP/1.1\r\nHost: tesserve\r\nContent-Length: 1000\r\n\r\n";
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(b"{\"inputs\":").await.unwrap();

    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        let mut answer = Vec::new();
        let mut buffer = [0u8; 1024];
        while let Ok(read) = slow.read(&mut buffer).await {
            if read == 0 {
                break;
            }
            answer.extend_from_slice(&buffer[..read]);
            if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .expect("a stalled body was waited for without end");
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer:?}");
}

#[tokio::test]
async fn a_grpc_stream_that_stalls_is_failed_on_the_grpc_port_too() {
    // Both ports are one serving stack, so the body-read timeout holds on the gRPC port: a
    // stream that never sends its first message is ended instead of held open.
    let s = TestServer::start(&["--body-read-timeout", "0.5"]).await;
    let mut client = s.client.clone();
    let outcome = tokio::time::timeout(Duration::from_secs(10), async move {
        let stalled = futures::stream::pending::<pb::ModelInferRequest>();
        match client.model_stream_infer(stalled).await {
            Err(status) => Err(status),
            Ok(responses) => responses.into_inner().message().await.map(|_| ()),
        }
    })
    .await
    .expect("a stalled gRPC stream was waited for without end");
    assert!(outcome.is_err(), "a stalled stream ended as a success");
}

#[tokio::test]
async fn the_grpc_port_speaks_only_http2() {
    let s = TestServer::start(&["--workers", "1"]).await;
    let http1 = reqwest::get(format!("http://{}/healthz", s.addr())).await;
    assert!(
        http1.is_err(),
        "HTTP/1.1 was served on the gRPC port: {http1:?}"
    );
}
