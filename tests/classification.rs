//! One cause, one answer: client-controlled numbers that used to panic a handler, the same
//! limit answered alike by every protocol and counted under one reason, unknown models refused
//! before their bodies are read, and the routes, the OpenAPI document, the index and the open
//! paths all agreeing because they come from one registration.

mod common;

use std::time::Duration;

use common::{png, typed_request, TestServer};
use reqwest::{multipart, StatusCode};
use serde_json::{json, Value};
use tesserve::{auth::key_digest, oip::pb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Code, Request};

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn infer_body(image: &[u8]) -> Value {
    json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                       "data": [{"b64": b64(image)}]}]})
}

async fn error_of(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.expect("errors are JSON");
    let message = body["error"].as_str().expect("{\"error\": ...}").to_owned();
    (status, message)
}

/// The value of one series of the Prometheus exposition, 0 if absent.
fn series(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn an_x_request_timeout_of_1e19_seconds_is_capped_not_a_panic() {
    let s = TestServer::start(&["--request-timeout", "30"]).await;
    let http = reqwest::Client::new();
    let upload = || {
        let part = multipart::Part::bytes(png(&["CAPPED DEADLINE"])).file_name("page.png");
        multipart::Form::new().part("file", part)
    };
    let response = http
        .post(format!("{}/predict", s.http()))
        .header("x-request-timeout", "1e19")
        .multipart(upload())
        .send()
        .await
        .expect("an answer, not a dropped connection");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    common::assert_text(body["text"].as_str().unwrap().trim(), "CAPPED DEADLINE", 2);

    for bad in ["-1", "NaN", "soon", "inf"] {
        let response = http
            .post(format!("{}/predict", s.http()))
            .header("x-request-timeout", bad)
            .multipart(upload())
            .send()
            .await
            .unwrap();
        let (status, message) = error_of(response).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(message.contains("x-request-timeout"), "{bad}: {message}");
    }

    // Triton's `timeout` parameter, in microseconds, at its largest.
    let mut request = typed_request(&[png(&["HUGE TIMEOUT"])]);
    request.parameters.insert(
        "timeout".into(),
        pb::InferParameter {
            parameter_choice: Some(pb::infer_parameter::ParameterChoice::Int64Param(i64::MAX)),
        },
    );
    let mut client = s.client.clone();
    let response = client.model_infer(request).await.unwrap().into_inner();
    common::assert_text(
        common::typed_strings(&response, "text")[0].trim(),
        "HUGE TIMEOUT",
        2,
    );
}

#[tokio::test]
async fn a_malformed_grpc_timeout_is_invalid_argument() {
    let s = TestServer::start(&[]).await;
    let mut request = Request::new(typed_request(&[png(&["NO TIMEOUT"])]));
    request
        .metadata_mut()
        .insert("grpc-timeout", "soon".parse().unwrap());
    let status = s.client.clone().model_infer(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("grpc-timeout"), "{status:?}");
}

#[tokio::test]
async fn an_image_over_the_byte_limit_is_too_large_in_every_protocol() {
    let s = TestServer::start(&["--max-image-bytes", "2000"]).await;
    let image = png(&["A PAGE WITH TEXT ON IT", "AND A SECOND LINE", "AND A THIRD"]);
    assert!(image.len() > 2000, "the test image must pass the limit");
    let http = reqwest::Client::new();

    let part = multipart::Part::bytes(image.clone()).file_name("page.png");
    let response = http
        .post(format!("{}/predict", s.http()))
        .multipart(multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response).await.0, StatusCode::PAYLOAD_TOO_LARGE);

    let response = http
        .post(format!("{}/v2/models/ocr/infer", s.http()))
        .json(&infer_body(&image))
        .send()
        .await
        .unwrap();
    let (status, message) = error_of(response).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(message.contains("'image'[0]"), "{message}");

    let status = s
        .client
        .clone()
        .model_infer(typed_request(&[&image]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("'image'[0]"), "{status:?}");

    // The access log's outcome and the metrics read the same reason.
    let metrics = common::get_text(&http, format!("{}/metrics", s.http())).await;
    for endpoint in [
        "/predict",
        "/v2/models/{model}/infer",
        "/inference.GRPCInferenceService/ModelInfer",
    ] {
        let labels = [("endpoint", endpoint), ("outcome", "too_large")];
        assert!(
            series(&metrics, "tesserve_requests_total", &labels) >= 1.0,
            "{endpoint} counted as too_large"
        );
    }
    let rejected = [("reason", "too_large")];
    assert!(series(&metrics, "tesserve_rejected_requests_total", &rejected) >= 3.0);
}

#[tokio::test]
async fn a_model_that_is_not_served_is_404_whatever_the_body() {
    let s = TestServer::start(&["--workers", "1"]).await;
    let http = reqwest::Client::new();
    let image = png(&["UNKNOWN MODEL"]);
    for path in [
        "/v2/models/nope/infer",
        "/v2/models/nope/versions/1/infer",
        "/v2/models/ocr/versions/9/infer",
    ] {
        for body in [
            json!({}).to_string(),
            "garbage{".to_owned(),
            infer_body(&image).to_string(),
        ] {
            let response = http
                .post(format!("{}{path}", s.http()))
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let (status, message) = error_of(response).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path} {body}");
            assert!(
                message.contains("nope") || message.contains("'9'"),
                "{path}: {message}"
            );
        }
        let part = multipart::Part::bytes(image.clone()).file_name("page.png");
        let response = http
            .post(format!("{}{path}", s.http()))
            .multipart(multipart::Form::new().part("file", part))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path} multipart");
    }
    for path in [
        "/v2/models/nope",
        "/v2/models/nope/ready",
        "/v2/models/ocr/versions/9",
        "/v1/models/nope",
    ] {
        let response = http
            .get(format!("{}{path}", s.http()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }

    // Said before the body is read: a client that announces 100 MB and sends none of it still
    // gets its answer.
    let mut stream = tokio::net::TcpStream::connect(s.server.http_addr())
        .await
        .unwrap();
    stream
        .write_all(
            b"POST /v1/models/nope:predict HTTP/1.1\r\nhost: x\r\n\
              content-type: application/json\r\ncontent-length: 100000000\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = vec![0u8; 512];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut head))
        .await
        .expect("an answer without the body")
        .unwrap();
    let head = String::from_utf8_lossy(&head[..read]);
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    let mut request = typed_request(&[&image]);
    request.model_name = "nope".into();
    let status = s.client.clone().model_infer(request).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn an_upload_to_infer_gets_415_pointing_at_the_gateway() {
    let s = TestServer::start(&["--workers", "1"]).await;
    let part = multipart::Part::bytes(png(&["UPLOAD"])).file_name("page.png");
    let response = reqwest::Client::new()
        .post(format!("{}/v2/models/ocr/infer", s.http()))
        .multipart(multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap();
    let (status, message) = error_of(response).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(message.contains("multipart/form-data"), "{message}");
    assert!(message.contains("/gateway/ocr"), "{message}");
    assert!(message.contains("application/json"), "{message}");
}

#[tokio::test]
async fn every_listed_endpoint_is_routed_and_only_the_documented_ones_are_open() {
    let keys = std::env::temp_dir().join(format!("tesserve-open-{}.txt", std::process::id()));
    std::fs::write(&keys, format!("acme:{}\n", key_digest("acme-key"))).unwrap();
    let s = TestServer::start(&["--workers", "1", "--api-keys-file", keys.to_str().unwrap()]).await;
    let http = reqwest::Client::new();

    let index = common::get_json(&http, s.http()).await;
    let endpoints: Vec<&str> = index["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .filter(|e| !e.starts_with("gRPC"))
        .collect();
    let document = common::get_json(&http, format!("{}/openapi.json", s.http())).await;
    let documented = document["paths"].as_object().unwrap();
    assert!(endpoints.len() >= 17, "{endpoints:?}");

    for endpoint in endpoints {
        let (method, template) = endpoint.split_once(' ').unwrap();
        let open = documented[template][method.to_ascii_lowercase()]["security"]
            .as_array()
            .is_some_and(|s| {
                s.iter()
                    .any(|r| r.as_object().is_some_and(|r| r.is_empty()))
            });
        let path = template.replace("{model}", "ocr").replace("{version}", "1");
        let request = |key: Option<&str>| {
            let url = format!("{}{path}", s.http());
            let request = match method {
                "GET" => http.get(url),
                "POST" => http.post(url).body("{}"),
                other => panic!("unexpected method {other}"),
            };
            match key {
                Some(key) => request.header("x-api-key", key),
                None => request,
            }
        };
        let anonymous = request(None).send().await.unwrap();
        match open {
            true => assert_ne!(anonymous.status(), StatusCode::UNAUTHORIZED, "{endpoint}"),
            false => assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED, "{endpoint}"),
        }
        // With a key, every endpoint is served by its own handler, never the fallback.
        let served = request(Some("acme-key")).send().await.unwrap();
        let status = served.status();
        let body = served.text().await.unwrap();
        assert!(
            !body.contains("no such endpoint") && status != StatusCode::METHOD_NOT_ALLOWED,
            "{endpoint}: {status} {body}"
        );
    }
    std::fs::remove_file(keys).ok();
}
