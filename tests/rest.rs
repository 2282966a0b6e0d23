//! The REST transcoder end to end: a real server, reqwest, images rendered from known text.

mod common;

use base64::Engine as _;
use common::{assert_text, png, TestServer};
use reqwest::{
    multipart::{Form, Part},
    Client, Response, StatusCode,
};
use serde_json::{json, Value};
use tesserve::oip::pb;

const HELLO: &str = "Hello tesserve";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Asserts an error answer: status, exact JSON content type, and a message containing `needle`.
async fn assert_error(response: Response, status: StatusCode, needle: &str) {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    let message = body["error"].as_str().unwrap();
    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
}

fn infer_url(s: &TestServer) -> String {
    format!("{}/v2/models/ocr/infer", s.http())
}

fn json_request(image: &[u8], outputs: &[&str]) -> Value {
    let outputs: Vec<Value> = outputs.iter().map(|name| json!({"name": name})).collect();
    json!({
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [{"b64": b64(image)}]}],
        "outputs": outputs,
    })
}

#[tokio::test]
async fn service_and_metadata_endpoints() {
    let s = TestServer::start(&[]).await;
    let http = Client::new();
    let get = |path: &str| http.get(format!("{}{path}", s.http())).send();

    let index: Value = get("/").await.unwrap().json().await.unwrap();
    assert_eq!(index["model"], "ocr");
    assert!(index["endpoints"].as_array().unwrap().len() > 10);

    let healthz = get("/healthz").await.unwrap();
    assert_eq!(healthz.status(), StatusCode::OK);
    assert_eq!(healthz.json::<Value>().await.unwrap()["ready"], true);

    let meta: Value = get("/v2").await.unwrap().json().await.unwrap();
    assert_eq!(meta["name"], "tesserve");
    assert!(meta["extensions"]
        .as_array()
        .unwrap()
        .contains(&json!("binary_tensor_data")));
    assert_eq!(
        get("/v2/health/live")
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap(),
        json!({"live": true})
    );
    assert_eq!(
        get("/v2/health/ready")
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap(),
        json!({"ready": true})
    );
    for path in ["/v2/models/ocr", "/v2/models/ocr/versions/1"] {
        let model: Value = get(path).await.unwrap().json().await.unwrap();
        assert_eq!(model["platform"], "tesseract");
        assert_eq!(
            model["inputs"][0],
            json!({"name": "image", "datatype": "BYTES", "shape": [-1]})
        );
        assert_eq!(model["outputs"].as_array().unwrap().len(), 8);
    }
    for path in ["/v2/models/ocr/ready", "/v2/models/ocr/versions/1/ready"] {
        let ready: Value = get(path).await.unwrap().json().await.unwrap();
        assert_eq!(ready, json!({"name": "ocr", "ready": true}));
    }
    let v1: Value = get("/v1/models/ocr").await.unwrap().json().await.unwrap();
    assert_eq!(v1, json!({"name": "ocr", "ready": true}));

    assert_error(
        get("/v2/models/nope").await.unwrap(),
        StatusCode::NOT_FOUND,
        "unknown model 'nope'",
    )
    .await;
    assert_error(
        get("/v2/models/ocr/versions/2/ready").await.unwrap(),
        StatusCode::NOT_FOUND,
        "no version '2'",
    )
    .await;
    assert_error(
        get("/no/such/path").await.unwrap(),
        StatusCode::NOT_FOUND,
        "no such endpoint",
    )
    .await;
}

#[tokio::test]
async fn request_ids_are_echoed_or_made() {
    let s = TestServer::start(&[]).await;
    let http = Client::new();
    let url = format!("{}/healthz", s.http());
    let given = http
        .get(&url)
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers()["x-request-id"], "trace-me-42");
    let made = http.get(&url).send().await.unwrap();
    assert_eq!(made.headers()["x-request-id"].len(), 36, "a UUID");

    // The gateway puts it in the body too, and v2 uses it when the body has no id.
    let form = Form::new().part("file", Part::bytes(png(&[HELLO])).file_name("a.png"));
    let answer: Value = http
        .post(format!("{}/predict", s.http()))
        .header("x-request-id", "upload-7")
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["request_id"], "upload-7");
    let answer: Value = http
        .post(infer_url(&s))
        .header("x-request-id", "v2-9")
        .json(&json_request(&png(&[HELLO]), &["text"]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["id"], "v2-9");
}

#[tokio::test]
async fn v2_json_infer() {
    let s = TestServer::start(&[]).await;
    let mut request = json_request(&png(&[HELLO]), &["confidence", "text"]);
    request["id"] = json!("json-1");
    request["parameters"] = json!({"psm": 7});
    let response = Client::new()
        .post(infer_url(&s))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["model_name"], "ocr");
    assert_eq!(body["model_version"], "1");
    assert_eq!(body["id"], "json-1");
    assert_eq!(body["outputs"][0]["name"], "confidence");
    assert_eq!(body["outputs"][0]["datatype"], "FP32");
    assert!(body["outputs"][0]["data"][0].as_f64().unwrap() > 0.5);
    assert_eq!(body["outputs"][1]["shape"], json!([1]));
    assert_text(body["outputs"][1]["data"][0].as_str().unwrap(), HELLO, 1);
}

/// What tritonclient.http sends by default: no Content-Type, a binary tail, binary outputs.
#[tokio::test]
async fn v2_binary_extension() {
    let s = TestServer::start(&[]).await;
    let image = png(&[HELLO]);
    let framed = common::frame(&[&image]);
    let header = json!({
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                    "parameters": {"binary_data_size": framed.len()}}],
        "parameters": {"binary_data_output": true},
    })
    .to_string();
    let body = [header.as_bytes(), &framed].concat();
    let response = Client::new()
        .post(infer_url(&s))
        .header("Inference-Header-Content-Length", header.len())
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    let json_length: usize = response.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = response.bytes().await.unwrap();
    let head: Value = serde_json::from_slice(&bytes[..json_length]).unwrap();
    let mut tail = &bytes[json_length..];
    let mut blocks = Vec::new();
    for output in head["outputs"].as_array().unwrap() {
        assert!(output.get("data").is_none());
        let size = output["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
        blocks.push((
            output["name"].as_str().unwrap().to_owned(),
            tail[..size].to_vec(),
        ));
        tail = &tail[size..];
    }
    assert!(tail.is_empty());
    let names: Vec<_> = blocks.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["text", "confidence", "words", "hocr", "tsv"]);
    let text = String::from_utf8(common::unframe(&blocks[0].1).remove(0)).unwrap();
    assert_text(&text, HELLO, 1);
    let confidence = f32::from_le_bytes(blocks[1].1[..].try_into().unwrap());
    assert!(confidence > 0.5);

    // A per-output flag overrides the request's: text as JSON, confidence binary.
    let header = json!({
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                    "parameters": {"binary_data_size": framed.len()}}],
        "outputs": [{"name": "text", "parameters": {"binary_data": false}},
                    {"name": "confidence", "parameters": {"binary_data": true}}],
        "parameters": {"binary_data_output": true},
    })
    .to_string();
    let response = Client::new()
        .post(infer_url(&s))
        .header("inference-header-content-length", header.len())
        .body([header.as_bytes(), &framed].concat())
        .send()
        .await
        .unwrap();
    let json_length: usize = response.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = response.bytes().await.unwrap();
    let head: Value = serde_json::from_slice(&bytes[..json_length]).unwrap();
    assert_text(head["outputs"][0]["data"][0].as_str().unwrap(), HELLO, 1);
    assert_eq!(head["outputs"][1]["parameters"]["binary_data_size"], 4);
    assert_eq!(bytes.len(), json_length + 4);
}

#[tokio::test]
async fn v2_errors_say_what_and_where() {
    let s = TestServer::start(&[]).await;
    let http = Client::new();
    let post = |body: Vec<u8>| http.post(infer_url(&s)).body(body).send();

    assert_error(
        post(b"{not json".to_vec()).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "request body is not valid JSON",
    )
    .await;
    let bad_image = json!({"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES",
        "data": [{"b64": b64(&png(&[HELLO]))}, {"b64": b64(b"garbage")}]}]});
    assert_error(
        post(bad_image.to_string().into_bytes()).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "input 'image'[1]: image format not recognised",
    )
    .await;
    let bad_param = json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
        "data": [{"b64": b64(&png(&[HELLO]))}]}], "parameters": {"psm": 99}});
    assert_error(
        post(bad_param.to_string().into_bytes()).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "'psm'",
    )
    .await;
    let no_data = json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES"}]});
    assert_error(
        post(no_data.to_string().into_bytes()).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "input 'image' has neither data nor binary_data_size",
    )
    .await;
    let too_long = http
        .post(infer_url(&s))
        .header("inference-header-content-length", "100000")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_error(
        too_long,
        StatusCode::BAD_REQUEST,
        "the body has only 2 bytes",
    )
    .await;
    let unknown = http
        .post(format!("{}/v2/models/other/infer", s.http()))
        .json(&json_request(&png(&[HELLO]), &[]))
        .send()
        .await
        .unwrap();
    assert_error(unknown, StatusCode::NOT_FOUND, "unknown model 'other'").await;
}

#[tokio::test]
async fn rest_and_grpc_answer_the_same_image_identically() {
    let mut s = TestServer::start(&[]).await;
    let image = png(&["Same answer on every protocol 123"]);
    let rest: Value = Client::new()
        .post(infer_url(&s))
        .json(&json_request(&image, &[]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let grpc = s
        .client
        .model_infer(pb::ModelInferRequest {
            model_name: "ocr".into(),
            inputs: vec![pb::model_infer_request::InferInputTensor {
                name: "image".into(),
                datatype: "BYTES".into(),
                shape: vec![1],
                contents: Some(pb::InferTensorContents {
                    bytes_contents: vec![image.into()],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for (index, output) in grpc.outputs.iter().enumerate() {
        let rest_output = &rest["outputs"][index];
        assert_eq!(rest_output["name"], output.name);
        let contents = output.contents.as_ref().unwrap();
        match output.datatype.as_str() {
            "FP32" => {
                let rest_value = rest_output["data"][0].as_f64().unwrap() as f32;
                assert_eq!(
                    rest_value, contents.fp32_contents[0],
                    "output {}",
                    output.name
                );
            }
            _ => {
                let grpc_value = String::from_utf8(contents.bytes_contents[0].to_vec()).unwrap();
                assert_eq!(
                    rest_output["data"][0],
                    json!(grpc_value),
                    "output {}",
                    output.name
                );
            }
        }
    }
}

#[tokio::test]
async fn grpc_is_served_on_the_rest_port_too() {
    let s = TestServer::start(&[]).await;
    let mut client = common::client(s.server.http_addr()).await;
    let ready = client
        .server_ready(pb::ServerReadyRequest {})
        .await
        .unwrap();
    assert!(ready.into_inner().ready);
    let unknown = client
        .model_ready(pb::ModelReadyRequest {
            name: "x".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn kserve_v1_predict() {
    let s = TestServer::start(&[]).await;
    let http = Client::new();
    let url = format!("{}/v1/models/ocr:predict", s.http());
    let request = json!({
        "instances": [{"image": {"b64": b64(&png(&["First 101"]))}}, {"b64": b64(&png(&["Second 202"]))}],
        "parameters": {"psm": 7},
    });
    let body: Value = http
        .post(&url)
        .json(&request)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let predictions = body["predictions"].as_array().unwrap();
    assert_text(predictions[0]["text"].as_str().unwrap(), "First 101", 1);
    assert_text(predictions[1]["text"].as_str().unwrap(), "Second 202", 1);
    assert!(predictions[0]["confidence"].as_f64().unwrap() > 0.5);
    assert_eq!(predictions[0]["boxes"][1]["text"], "101");

    // curl -d sends a form Content-Type; the body is JSON all the same.
    let as_curl_sends_it = http
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(request.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(as_curl_sends_it.status(), StatusCode::OK);

    let bad = json!({"instances": [{"image": {"b64": b64(&png(&["ok"]))}}, {"image": "raw"}]});
    assert_error(
        http.post(&url).json(&bad).send().await.unwrap(),
        StatusCode::BAD_REQUEST,
        "instances[1]",
    )
    .await;
    let explain = http
        .post(format!("{}/v1/models/ocr:explain", s.http()))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_error(explain, StatusCode::NOT_FOUND, "unknown v1 action").await;
}

#[tokio::test]
async fn multipart_gateway() {
    let s = TestServer::start(&[]).await;
    let http = Client::new();
    let file = |text: &str| {
        Part::bytes(png(&[text]))
            .file_name("page.png")
            .mime_str("image/png")
            .unwrap()
    };

    let one: Value = http
        .post(format!("{}/predict", s.http()))
        .multipart(Form::new().part("file", file(HELLO)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_text(one["text"].as_str().unwrap(), HELLO, 1);
    assert!(one["latency_ms"].as_f64().unwrap() > 0.0);
    assert!(one["confidence"].as_f64().unwrap() > 0.5);
    let first_box = &one["boxes"][0];
    assert_eq!(first_box["text"], "Hello");
    for key in ["x1", "y1", "x2", "y2", "conf"] {
        assert!(first_box[key].is_number(), "{key}");
    }

    // Several files → a list in upload order; lang and psm as query or form fields.
    let form = Form::new()
        .part("image_file", file("Upload one 11"))
        .part("image_file", file("Upload two 22"))
        .text("psm", "7");
    let many: Value = http
        .post(format!("{}/gateway/ocr?lang=eng", s.http()))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_text(many[0]["text"].as_str().unwrap(), "Upload one 11", 1);
    assert_text(many[1]["text"].as_str().unwrap(), "Upload two 22", 1);

    let wrong_field = http
        .post(format!("{}/predict", s.http()))
        .multipart(Form::new().part("image_file", file(HELLO)))
        .send()
        .await
        .unwrap();
    assert_error(
        wrong_field,
        StatusCode::BAD_REQUEST,
        "no file in multipart field 'file'",
    )
    .await;
    let bad_psm = http
        .post(format!("{}/predict?psm=42", s.http()))
        .multipart(Form::new().part("file", file(HELLO)))
        .send()
        .await
        .unwrap();
    assert_error(bad_psm, StatusCode::BAD_REQUEST, "parameter 'psm'").await;
    let bad_lang = http
        .post(format!("{}/predict?lang=xx", s.http()))
        .multipart(Form::new().part("file", file(HELLO)))
        .send()
        .await
        .unwrap();
    assert_error(
        bad_lang,
        StatusCode::BAD_REQUEST,
        "language 'xx' is not installed",
    )
    .await;
    let not_multipart = http
        .post(format!("{}/predict", s.http()))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(not_multipart.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(not_multipart.headers()["content-type"], "application/json");
}

#[tokio::test]
async fn uploads_over_the_limits_are_refused() {
    let s = TestServer::start(&[
        "--max-image-bytes",
        "4000",
        "--max-upload-files",
        "2",
        "--max-message-bytes",
        "200000",
    ])
    .await;
    let http = Client::new();
    let big = Part::bytes(vec![0u8; 100_000]).file_name("big.png");
    let response = http
        .post(format!("{}/predict", s.http()))
        .multipart(Form::new().part("file", big))
        .send()
        .await
        .unwrap();
    assert_error(
        response,
        StatusCode::PAYLOAD_TOO_LARGE,
        "over the limit of 4000 bytes",
    )
    .await;

    let small = || Part::bytes(png(&["a"])).file_name("a.png");
    let form = Form::new()
        .part("file", small())
        .part("file", small())
        .part("file", small());
    let response = http
        .post(format!("{}/predict", s.http()))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_error(
        response,
        StatusCode::BAD_REQUEST,
        "at most 2 files per upload",
    )
    .await;

    let huge_body = vec![b' '; 300_000];
    let response = http
        .post(infer_url(&s))
        .body(huge_body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn read_ocr_takes_base64_and_data_urls_and_allow_listed_options() {
    let s = TestServer::start(&[]).await;
    let http = Client::new();
    let url = format!("{}/read_ocr", s.http());
    let image = png(&["Total 4711 EUR"]);

    let plain: Value = http
        .post(&url)
        .json(&json!({"image": b64(&image)}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_text(plain["text"].as_str().unwrap(), "Total 4711 EUR", 1);
    let data_url = format!("data:image/png;base64,{}", b64(&image));
    let request = json!({"image": data_url, "lang": "eng", "config": "--psm 7 -c tessedit_char_whitelist=0123456789"});
    let digits: Value = http
        .post(&url)
        .json(&request)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(digits["text"].as_str().unwrap().trim(), "4711");

    let refused = http
        .post(&url)
        .json(&json!({"image": b64(&image), "config": "--oem 0"}))
        .send()
        .await
        .unwrap();
    assert_error(
        refused,
        StatusCode::BAD_REQUEST,
        "config option '--oem' is not allowed",
    )
    .await;
    let no_urls = http
        .post(&url)
        .json(&json!({"image": "http://127.0.0.1:9/a.png"}))
        .send()
        .await
        .unwrap();
    assert_error(
        no_urls,
        StatusCode::BAD_REQUEST,
        "fetching URLs is disabled",
    )
    .await;
    let not_base64 = http
        .post(&url)
        .json(&json!({"image": "%%%"}))
        .send()
        .await
        .unwrap();
    assert_error(not_base64, StatusCode::BAD_REQUEST, "not valid base64").await;
}

#[tokio::test]
async fn read_ocr_fetches_urls_only_from_allow_listed_hosts() {
    // A local image host standing in for an internal file server.
    let image = png(&["Fetched by URL"]);
    let app = axum::Router::new()
        .route(
            "/scan.png",
            axum::routing::get(move || async move { image.clone() }),
        )
        .route(
            "/elsewhere",
            axum::routing::get(|| async {
                axum::response::Redirect::temporary("http://localhost/scan.png")
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let s = TestServer::start(&["--allow-url-fetch", "127.0.0.1"]).await;
    let http = Client::new();
    let url = format!("{}/read_ocr", s.http());
    let fetched: Value = http
        .post(&url)
        .json(&json!({"image": format!("http://{host}/scan.png")}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_text(fetched["text"].as_str().unwrap(), "Fetched by URL", 1);

    let other_host = http
        .post(&url)
        .json(&json!({"image": format!("http://localhost:{}/scan.png", host.port())}))
        .send()
        .await
        .unwrap();
    assert_error(
        other_host,
        StatusCode::BAD_REQUEST,
        "host 'localhost' is not in this server's --allow-url-fetch list",
    )
    .await;
    let redirect = http
        .post(&url)
        .json(&json!({"image": format!("http://{host}/elsewhere")}))
        .send()
        .await
        .unwrap();
    assert_error(redirect, StatusCode::BAD_GATEWAY, "answered 307").await;
    let missing = http
        .post(&url)
        .json(&json!({"image": format!("http://{host}/missing.png")}))
        .send()
        .await
        .unwrap();
    assert_error(missing, StatusCode::BAD_GATEWAY, "answered 404").await;
}

#[tokio::test]
async fn openapi_describes_every_endpoint_and_docs_render_it() {
    let s = TestServer::start(&[]).await;
    let http = Client::new();
    let spec: Value = http
        .get(format!("{}/openapi.json", s.http()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let paths = spec["paths"].as_object().unwrap();
    for path in [
        "/",
        "/healthz",
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{model}",
        "/v2/models/{model}/versions/{version}",
        "/v2/models/{model}/ready",
        "/v2/models/{model}/infer",
        "/v2/models/{model}/versions/{version}/infer",
        "/v1/models/{model}",
        "/v1/models/{model}:predict",
        "/predict",
        "/gateway/ocr",
        "/read_ocr",
    ] {
        assert!(paths.contains_key(path), "openapi.json lacks {path}");
    }
    let docs = http.get(format!("{}/docs", s.http())).send().await.unwrap();
    assert!(docs.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = docs.text().await.unwrap();
    assert!(page.contains("/openapi.json"));
    assert!(
        !page.contains("https://"),
        "the docs page must not load assets from elsewhere"
    );
}
