//! Shared test support: a real server on an ephemeral port, a real tonic client, and test
//! images rendered from known text.
#![allow(dead_code)]

pub mod served;

use std::io::Cursor;

use ab_glyph::{Font, FontVec, PxScale, ScaleFont};
use clap::Parser;
use image::{GrayImage, ImageFormat, Luma};
use tesserve::{
    config::Cli, oip::pb::grpc_inference_service_client::GrpcInferenceServiceClient, server::Server,
};
use tonic::transport::Channel;

pub type Client = GrpcInferenceServiceClient<Channel>;

/// Debian's fonts-dejavu-core; `make test` installs it.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

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
        let config = Cli::try_parse_from(args).unwrap().serve.validate().unwrap();
        let server = Server::start(config).await.unwrap();
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
    let data = std::fs::read(FONT).expect("fonts-dejavu-core is installed");
    let font = FontVec::try_from_vec(data).unwrap();
    let scale = PxScale::from(32.0);
    let scaled = font.as_scaled(scale);
    let line_height = (scaled.height() + scaled.line_gap()).ceil() as u32 + 8;
    let margin = 24;
    let width = lines
        .iter()
        .map(|line| {
            line.chars()
                .map(|c| scaled.h_advance(font.glyph_id(c)))
                .sum::<f32>()
                .ceil() as u32
        })
        .max()
        .unwrap_or(0)
        + 2 * margin;
    let height = line_height * lines.len() as u32 + 2 * margin;
    let mut image = GrayImage::from_pixel(width, height, Luma([255]));
    for (row, line) in lines.iter().enumerate() {
        let mut x = margin as f32;
        let baseline = (margin + row as u32 * line_height) as f32 + scaled.ascent();
        for c in line.chars() {
            let glyph = font
                .glyph_id(c)
                .with_scale_and_position(scale, ab_glyph::point(x, baseline));
            x += scaled.h_advance(glyph.id);
            let Some(outline) = font.outline_glyph(glyph) else {
                continue;
            };
            let bounds = outline.px_bounds();
            outline.draw(|gx, gy, coverage| {
                let (px, py) = (
                    bounds.min.x as i64 + gx as i64,
                    bounds.min.y as i64 + gy as i64,
                );
                if px >= 0 && py >= 0 && (px as u32) < width && (py as u32) < height {
                    let shade = (255.0 * (1.0 - coverage.clamp(0.0, 1.0))) as u8;
                    let pixel = image.get_pixel_mut(px as u32, py as u32);
                    pixel.0[0] = pixel.0[0].min(shade);
                }
            });
        }
    }
    image
}

/// Renders `lines` and encodes them as `format`.
pub fn render(lines: &[&str], format: ImageFormat) -> Vec<u8> {
    let image = image::DynamicImage::ImageLuma8(render_gray(lines));
    let image = match format {
        // These encoders take colour images only.
        ImageFormat::Jpeg | ImageFormat::WebP => image::DynamicImage::ImageRgb8(image.to_rgb8()),
        ImageFormat::Gif => image::DynamicImage::ImageRgba8(image.to_rgba8()),
        _ => image,
    };
    let mut out = Vec::new();
    image.write_to(&mut Cursor::new(&mut out), format).unwrap();
    out
}

pub fn png(lines: &[&str]) -> Vec<u8> {
    render(lines, ImageFormat::Png)
}

/// Edit distance between the words of two texts, whitespace-insensitive, in characters.
pub fn distance(a: &str, b: &str) -> usize {
    let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let (a, b): (Vec<char>, Vec<char>) = (norm(a).chars().collect(), norm(b).chars().collect());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// Asserts OCR text matches what was rendered, allowing at most `slack` character edits.
#[track_caller]
pub fn assert_text(actual: &str, expected: &str, slack: usize) {
    let d = distance(actual, expected);
    assert!(
        d <= slack,
        "OCR text {actual:?} is {d} edits from {expected:?}"
    );
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
