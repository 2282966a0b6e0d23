//! Shared test support: a real server on an ephemeral port, a real tonic client, and test
//! images rendered from known text.
#![allow(dead_code)]

pub mod documents;
pub mod served;

use clap::Parser;
use image::{GrayImage, ImageFormat};
use tesserve::{
    config::Cli, oip::pb::grpc_inference_service_client::GrpcInferenceServiceClient, server::Server,
};
use tesserve_load::render::{encode, Renderer};
use tonic::transport::Channel;

pub type Client = GrpcInferenceServiceClient<Channel>;

pub struct TestServer {
    pub server: Server,
    pub client: Client,
}

impl TestServer {
    /// Starts a server with these extra flags on 127.0.0.1 and an ephemeral port, and waits
    /// until it is ready.
    pub async fn start(flags: &[&str]) -> TestServer {
        let server = Self::start_unready(flags).await;
        server.server.ready().await.expect("engines load");
        server
    }

    pub async fn start_unready(flags: &[&str]) -> TestServer {
        let server = Server::start(config(flags)).await.unwrap();
        let client = client(server.grpc_addr()).await;
        TestServer { server, client }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.grpc_addr()
    }

    /// `http://127.0.0.1:PORT` of the REST listener.
    pub fn http(&self) -> String {
        format!("http://{}", self.server.http_addr())
    }
}

/// The configuration of a test server: loopback, ephemeral ports, two workers unless `flags`
/// say otherwise.
pub fn config(flags: &[&str]) -> tesserve::config::ServeConfig {
    let workers = if flags.contains(&"--workers") {
        &[][..]
    } else {
        &["--workers", "2"][..]
    };
    let args = [
        "tesserve",
        "--bind",
        "127.0.0.1",
        "--grpc-port",
        "0",
        "--http-port",
        "0",
    ]
    .into_iter()
    .chain(workers.iter().copied())
    .chain(flags.iter().copied());
    Cli::try_parse_from(args).unwrap().serve.validate().unwrap()
}

pub async fn client(addr: std::net::SocketAddr) -> Client {
    GrpcInferenceServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// A request as grpcurl and kserve's list inputs send it: typed `bytes_contents`.
pub fn typed_request(images: &[impl AsRef<[u8]>]) -> tesserve::oip::pb::ModelInferRequest {
    use tesserve::oip::pb;
    pb::ModelInferRequest {
        model_name: "ocr".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "image".into(),
            datatype: "BYTES".into(),
            shape: vec![images.len() as i64],
            contents: Some(pb::InferTensorContents {
                bytes_contents: images.iter().map(|i| i.as_ref().to_vec().into()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A page long enough to keep one engine busy for a good while (about a second here).
pub fn long_page() -> Vec<u8> {
    let lines: Vec<String> = (0..40)
        .map(|i| format!("Line {i} of a long page that takes a while to read"))
        .collect();
    png(&lines.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Waits (boundedly) for a condition the server reaches asynchronously.
pub async fn eventually(condition: impl Fn() -> bool) {
    for _ in 0..200 {
        if condition() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("condition not reached within 10 s");
}

/// Renders `lines` of black text on white, 32 px DejaVu Sans, as an 8-bit gray image.
pub fn render_gray(lines: &[&str]) -> GrayImage {
    thread_local! {
        static RENDERER: Renderer = Renderer::new().expect("fonts-dejavu-core is installed");
    }
    RENDERER.with(|renderer| renderer.fit(lines, 32.0))
}

/// Renders `lines` and encodes them as `format`.
pub fn render(lines: &[&str], format: ImageFormat) -> Vec<u8> {
    encode(render_gray(lines), format).unwrap()
}

pub fn png(lines: &[&str]) -> Vec<u8> {
    render(lines, ImageFormat::Png)
}

pub use tesserve_load::images::distance;

/// Asserts OCR text matches what was rendered, allowing at most `slack` character edits.
#[track_caller]
pub fn assert_text(actual: &str, expected: &str, slack: usize) {
    let d = distance(actual, expected);
    assert!(
        d <= slack,
        "OCR text {actual:?} is {d} edits from {expected:?}"
    );
}

/// The typed BYTES values of `name`, as strings.
pub fn typed_strings(response: &tesserve::oip::pb::ModelInferResponse, name: &str) -> Vec<String> {
    let output = response.outputs.iter().find(|o| o.name == name).unwrap();
    output
        .contents
        .as_ref()
        .unwrap()
        .bytes_contents
        .iter()
        .map(|b| String::from_utf8(b.to_vec()).unwrap())
        .collect()
}

/// Splits raw BYTES contents (u32 little-endian length prefixes).
pub fn unframe(raw: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = raw;
    while rest.len() >= 4 {
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        out.push(rest[4..4 + len].to_vec());
        rest = &rest[4 + len..];
    }
    assert!(rest.is_empty(), "trailing bytes in raw contents");
    out
}

pub fn frame(elements: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in elements {
        out.extend((e.len() as u32).to_le_bytes());
        out.extend(*e);
    }
    out
}

/// The body of a GET, as text; the test fails on a connection error.
pub async fn get_text(http: &reqwest::Client, url: impl reqwest::IntoUrl) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

/// The body of a GET, as JSON.
pub async fn get_json(http: &reqwest::Client, url: impl reqwest::IntoUrl) -> serde_json::Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}
