//! Metrics, the dashboard that charts them, and the access log, against a real server.

mod common;

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    thread,
};

use common::{png, served::Served, typed_request, TestServer};
use reqwest::multipart::{Form, Part};
use serde_json::Value;

/// gRPC and REST traffic with successes and each kind of failure.
async fn mixed_workload(s: &mut TestServer) {
    let ok = s
        .client
        .model_infer(typed_request(&[png(&["Metrics 1"])]))
        .await;
    assert!(ok.is_ok());
    let bad = s
        .client
        .model_infer(typed_request(&[b"junk".to_vec()]))
        .await;
    assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument);
    let unknown = s
        .client
        .model_infer({
            let mut request = typed_request(&[png(&["x"])]);
            request.model_name = "nope".into();
            request
        })
        .await;
    assert_eq!(unknown.unwrap_err().code(), tonic::Code::NotFound);
    let http = reqwest::Client::new();
    let form = Form::new().part("file", Part::bytes(png(&["Metrics 2"])).file_name("a.png"));
    let upload = http
        .post(format!("{}/predict", s.http()))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert!(upload.status().is_success());
    let missing = http
        .get(format!("{}/no/such", s.http()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

async fn scrape(s: &TestServer) -> String {
    let response = reqwest::get(format!("{}/metrics", s.http())).await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// The value of the first series whose line starts with `prefix`.
fn value(exposition: &str, prefix: &str) -> f64 {
    exposition
        .lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no series {prefix} in:\n{exposition}"))
}

#[tokio::test]
async fn metrics_after_a_mixed_workload() {
    let mut s = TestServer::start(&[]).await;
    mixed_workload(&mut s).await;
    let text = scrape(&s).await;

    let at_least = |prefix: &str, min: f64| {
        let v = value(&text, prefix);
        assert!(v >= min, "{prefix} = {v}, expected at least {min}");
    };
    at_least(
        r#"tesserve_requests_total{protocol="grpc",endpoint="/inference.GRPCInferenceService/ModelInfer",model="ocr",outcome="ok",tenant="anonymous"}"#,
        1.0,
    );
    at_least(
        r#"tesserve_requests_total{protocol="grpc",endpoint="/inference.GRPCInferenceService/ModelInfer",model="ocr",outcome="invalid_image",tenant="anonymous"}"#,
        1.0,
    );
    at_least(
        r#"tesserve_requests_total{protocol="grpc",endpoint="/inference.GRPCInferenceService/ModelInfer",model="",outcome="not_found",tenant="anonymous"}"#,
        1.0,
    );
    at_least(
        r#"tesserve_requests_total{protocol="rest",endpoint="/predict",model="ocr",outcome="ok",tenant="anonymous"}"#,
        1.0,
    );
    at_least(
        r#"tesserve_requests_total{protocol="rest",endpoint="unmatched",model="",outcome="not_found",tenant="anonymous"}"#,
        1.0,
    );
    at_least(
        r#"tesserve_request_duration_seconds_count{protocol="grpc",endpoint="/inference.GRPCInferenceService/ModelInfer"}"#,
        3.0,
    );
    at_least(
        r#"tesserve_rejected_requests_total{reason="invalid_image"}"#,
        1.0,
    );
    at_least("tesserve_images_total", 2.0);
    for histogram in [
        "tesserve_queue_wait_seconds_count",
        "tesserve_decode_duration_seconds_count",
        "tesserve_recognition_duration_seconds_count",
        "tesserve_image_size_bytes_count",
        "tesserve_image_pixels_count",
    ] {
        at_least(histogram, 2.0);
    }
    assert!(value(&text, "tesserve_recognition_duration_seconds_sum") > 0.0);
    at_least(r#"request_predict_seconds_count{model_name="ocr"}"#, 2.0);
    at_least("tesserve_queue_pushed_total", 2.0);
    at_least("tesserve_queue_popped_total", 2.0);
    at_least("tesserve_queue_depth", 0.0);
    at_least("tesserve_queue_capacity", 128.0);
    at_least("tesserve_requests_in_flight", 1.0); // the scrape itself
    at_least("tesserve_engines_busy", 0.0);
    at_least("tesserve_workers", 2.0);
    at_least(r#"tesserve_engines_loaded{lang="eng"}"#, 2.0);
    at_least("tesserve_ready", 1.0);
    at_least(r#"tesserve_images_dropped_total{reason="abandoned"}"#, 0.0);
    at_least("process_resident_memory_bytes", 1e6);
    at_least("process_open_fds", 1.0);
    at_least("process_start_time_seconds", 1e9);
    at_least("process_cpu_seconds_total", 0.0);
    // Every request path label comes from a fixed vocabulary: no raw paths, no client strings.
    assert!(!text.contains("/no/such"));
    assert!(!text.contains("nope"));

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; `make deps` installs it)");
    use std::io::Write as _;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    let findings =
        String::from_utf8_lossy(&output.stdout) + String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && findings.trim().is_empty(),
        "promtool: {findings}"
    );
}

#[tokio::test]
async fn dashboard_queries_use_only_exported_metrics() {
    let mut s = TestServer::start(&[]).await;
    mixed_workload(&mut s).await;
    let text = scrape(&s).await;
    let exported: BTreeSet<&str> = text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .collect();

    let dashboard: Value =
        serde_json::from_str(include_str!("../monitoring/grafana-dashboard.json")).unwrap();
    let mut used = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            used.extend(metric_names(expr));
        }
    }
    assert!(used.len() >= 10, "{used:?}");
    for name in &used {
        assert!(
            exported.contains(name.as_str()),
            "the dashboard queries {name}, which /metrics lacks"
        );
    }
}

/// Identifiers directly followed by a label selector: the metric names of a PromQL query.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    for (i, _) in expr.match_indices('{') {
        let start = expr[..i]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .map_or(0, |p| p + 1);
        if start < i && !bytes[start].is_ascii_digit() {
            names.push(expr[start..i].to_owned());
        }
    }
    names
}

#[test]
fn every_request_writes_exactly_one_json_access_line() {
    let mut served = Served::start(&["--workers", "1", "--log-format", "json"], |command| {
        command.stderr(Stdio::piped());
    });
    let stderr = served.child.stderr.take().unwrap();
    let reader = thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    served.wait_ready();
    let (grpc_port, http_port) = (served.grpc_port, served.http_port);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let http = reqwest::Client::new();
        let form = Form::new().part(
            "file",
            Part::bytes(png(&["Logged once"])).file_name("a.png"),
        );
        http.post(format!("http://127.0.0.1:{http_port}/predict"))
            .header("x-request-id", "log-rest-1")
            .header("x-tenant-id", "acme")
            .multipart(form)
            .send()
            .await
            .unwrap();
        http.get(format!("http://127.0.0.1:{http_port}/v2/health/ready"))
            .header("x-request-id", "log-rest-2")
            .send()
            .await
            .unwrap();
        let mut client = common::client(([127, 0, 0, 1], grpc_port).into()).await;
        let mut request = tonic::Request::new(typed_request(&[png(&["Logged twice"])]));
        request
            .metadata_mut()
            .insert("x-request-id", "log-grpc-1".parse().unwrap());
        client.model_infer(request).await.unwrap();
        let mut request = tonic::Request::new(typed_request(&[b"junk".to_vec()]));
        request
            .metadata_mut()
            .insert("x-request-id", "log-grpc-2".parse().unwrap());
        assert!(client.model_infer(request).await.is_err());
    });
    served.sigterm();
    assert!(served.wait().success());
    let lines = reader.join().unwrap();

    let records: Vec<Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let access: Vec<&Value> = records
        .iter()
        .filter(|r| r["target"] == "tesserve::access")
        .collect();
    let only = |id: &str| {
        let matching: Vec<_> = access.iter().filter(|r| r["request_id"] == id).collect();
        assert_eq!(matching.len(), 1, "{id}: {matching:?}");
        *matching[0]
    };
    let upload = only("log-rest-1");
    assert_eq!(upload["protocol"], "rest");
    assert_eq!(upload["endpoint"], "/predict");
    assert_eq!(upload["model"], "ocr");
    assert_eq!(upload["tenant_id"], "acme");
    assert_eq!(upload["status"], 200);
    assert_eq!(upload["outcome"], "ok");
    assert_eq!(upload["images"], 1);
    assert!(upload["payload_size"].as_u64().unwrap() > 100);
    assert!(upload["latency_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(only("log-rest-2")["endpoint"], "/v2/health/ready");
    let grpc = only("log-grpc-1");
    assert_eq!(grpc["protocol"], "grpc");
    assert_eq!(
        grpc["endpoint"],
        "/inference.GRPCInferenceService/ModelInfer"
    );
    assert_eq!(grpc["status"], 0);
    let failed = only("log-grpc-2");
    // The classification's reason, not a guess from the status code.
    assert_eq!(failed["outcome"], "invalid_image");
    assert_eq!(failed["status"], 3);
    // Never image content: the longest line stays far below a base64 image.
    assert!(lines.iter().all(|line| line.len() < 2000));
}
