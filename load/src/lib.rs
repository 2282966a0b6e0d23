//! The load and fault generator behind `tesserve-load`, the hostile-workload test and the
//! benchmarks: clients on gRPC and REST at a set concurrency (or rate) for a set time,
//! sending a weighted mix of valid images, corrupt ones, decompression bombs, requests the
//! client abandons and requests with deadlines too short to meet. Every answer is judged:
//! a recognised text must match the text drawn on its own image, and every failure must be
//! the one that kind of request deserves.
//!
//! Beside it: [`render`] and [`images`] draw test images from known text (the integration
//! tests use them too), and [`ceiling`] runs raw Tesseract, the yardstick `make bench`
//! compares the server against.
//!
//! A crate of its own, beside the server rather than inside it: the font rasteriser and the
//! client side of the protocols are for tests, benchmarks and load runs, and the image that
//! serves carries none of it. It depends on `tesserve` only for the generated OIP client.

pub mod ceiling;
pub mod images;
pub mod pdf;
pub mod render;
mod report;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use tonic::transport::{Channel, Endpoint};

pub use report::{Latency, Report};

use images::{Rng, Sample};
use tesserve::oip::pb::{self, grpc_inference_service_client::GrpcInferenceServiceClient};

/// The deadline of `ShortDeadline` requests: far less than a long image needs.
const SHORT_DEADLINE: Duration = Duration::from_millis(20);

/// What one request tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A rendered image whose text must come back.
    Valid,
    /// A truncated, scribbled-on image: must be refused as invalid.
    Corrupt,
    /// A 100000 × 100000 PNG header: must be refused from the header.
    OverLimit,
    /// A long image the client gives up on after a few milliseconds.
    Cancel,
    /// A long image with a 20 ms deadline: DEADLINE_EXCEEDED / 504 (or the right text).
    ShortDeadline,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Valid,
        Kind::Corrupt,
        Kind::OverLimit,
        Kind::Cancel,
        Kind::ShortDeadline,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Valid => "valid",
            Kind::Corrupt => "corrupt",
            Kind::OverLimit => "over_limit",
            Kind::Cancel => "cancel",
            Kind::ShortDeadline => "short_deadline",
        }
    }
}

/// Relative weights of the kinds, e.g. `valid=80,corrupt=5,over_limit=5,cancel=5,short_deadline=5`.
#[derive(Clone, Debug, PartialEq)]
pub struct Mix {
    weights: Vec<(Kind, u32)>,
}

impl Default for Mix {
    /// Only valid images: what a benchmark sends.
    fn default() -> Mix {
        Mix {
            weights: vec![(Kind::Valid, 1)],
        }
    }
}

impl std::str::FromStr for Mix {
    type Err = String;

    fn from_str(text: &str) -> Result<Mix, String> {
        let mut weights = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part.split_once('=').unwrap_or((part, "1"));
            let kind = Kind::ALL
                .into_iter()
                .find(|k| k.name() == name.trim())
                .ok_or_else(|| {
                    let known: Vec<_> = Kind::ALL.iter().map(|k| k.name()).collect();
                    format!("unknown kind '{name}'; known: {}", known.join(", "))
                })?;
            let weight = weight
                .trim()
                .parse::<u32>()
                .map_err(|_| format!("weight of '{name}' must be a whole number"))?;
            weights.push((kind, weight));
        }
        match weights.iter().map(|(_, w)| w).sum::<u32>() {
            0 => Err("the mix needs at least one kind with a weight above 0".into()),
            _ => Ok(Mix { weights }),
        }
    }
}

impl Mix {
    fn pick(&self, rng: &mut Rng) -> Kind {
        let total: u32 = self.weights.iter().map(|(_, w)| w).sum();
        let mut ticket = rng.below(u64::from(total)) as u32;
        for &(kind, weight) in &self.weights {
            if ticket < weight {
                return kind;
            }
            ticket -= weight;
        }
        Kind::Valid
    }
}

/// Where to send, how hard and for how long.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// `http://host:port` of the gRPC port.
    pub grpc: Option<String>,
    /// `http://host:port` of the REST port (multipart `/predict`).
    pub rest: Option<String>,
    pub model: String,
    pub api_key: Option<String>,
    /// The host name to ask for (gRPC `:authority`, HTTP `Host`) when it is not the
    /// address connected to, as behind an ingress gateway that routes by host.
    pub authority: Option<String>,
    pub concurrency: usize,
    pub duration: Duration,
    /// Stop after this many requests, if sooner than `duration`.
    pub requests: Option<u64>,
    /// Requests started per second across all clients; `None`: as fast as answers come.
    pub rate: Option<f64>,
    pub mix: Mix,
    /// The valid images, cycled through; the largest also serves cancels and deadlines.
    pub samples: Arc<Vec<Sample>>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("nothing to load: give a gRPC address, a REST URL or both")]
    NoTarget,
    #[error("no sample images")]
    NoSamples,
    #[error("cannot connect to {target}: {reason}")]
    Connect { target: String, reason: String },
}

/// The protocol one request went over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    Grpc,
    Rest,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Rest => "rest",
        }
    }
}

/// How a request ended, as judged against what its kind deserves.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The right text.
    Ok,
    /// Text came back, but not the text on the image: the worst possible bug.
    WrongText { got: String, want: String },
    /// Refused as invalid, as a corrupt or over-limit image should be.
    Refused,
    /// Shed or rate limited (UNAVAILABLE, RESOURCE_EXHAUSTED / 503, 429): allowed under load.
    Shed,
    /// DEADLINE_EXCEEDED / 504 for a request with a deadline too short to meet.
    Deadline,
    /// The client gave up before the answer, on purpose.
    Cancelled,
    /// Anything else: a wrong status, a transport error, an accepted corrupt image.
    Unexpected(String),
}

impl Outcome {
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::WrongText { .. } => "wrong_text",
            Outcome::Refused => "refused",
            Outcome::Shed => "shed",
            Outcome::Deadline => "deadline",
            Outcome::Cancelled => "cancelled",
            Outcome::Unexpected(_) => "unexpected",
        }
    }
}

/// A failed call, classified by its status.
enum Failure {
    Invalid,
    Shed,
    Deadline,
    Other(String),
}

impl Failure {
    fn describe(self) -> String {
        match self {
            Failure::Invalid => "refused as invalid".into(),
            Failure::Shed => "shed".into(),
            Failure::Deadline => "deadline exceeded".into(),
            Failure::Other(what) => what,
        }
    }
}

/// One client's connection.
enum Client {
    Grpc(GrpcInferenceServiceClient<Channel>),
    Rest(reqwest::Client, String),
}

/// Drives the server as configured and judges every answer.
pub async fn run(config: LoadConfig) -> Result<Report, LoadError> {
    if config.samples.is_empty() {
        return Err(LoadError::NoSamples);
    }
    let mut protocols = Vec::new();
    if config.grpc.is_some() {
        protocols.push(Protocol::Grpc);
    }
    if config.rest.is_some() {
        protocols.push(Protocol::Rest);
    }
    if protocols.is_empty() {
        return Err(LoadError::NoTarget);
    }
    let rest = reqwest::Client::builder()
        .pool_max_idle_per_host(config.concurrency)
        .build()
        .map_err(|e| LoadError::Connect {
            target: "REST".into(),
            reason: e.to_string(),
        })?;
    let mut clients = Vec::new();
    for worker in 0..config.concurrency {
        let protocol = protocols[worker % protocols.len()];
        clients.push(match protocol {
            Protocol::Grpc => {
                let target = config.grpc.clone().unwrap_or_default();
                Client::Grpc(grpc_client(&target, config.authority.as_deref()).await?)
            }
            Protocol::Rest => {
                let base = config.rest.clone().unwrap_or_default();
                Client::Rest(
                    rest.clone(),
                    format!("{}/predict", base.trim_end_matches('/')),
                )
            }
        });
    }

    let shared = Arc::new(Shared {
        config,
        started: Instant::now(),
        issued: AtomicU64::new(0),
        pacer: Mutex::new(None),
        results: Mutex::new(Vec::new()),
    });
    let cpu_before = report::process_cpu();
    let workers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(index, client)| tokio::spawn(work(shared.clone(), index as u64, client)))
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
    let elapsed = shared.started.elapsed();
    let results = std::mem::take(
        &mut *shared
            .results
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    Ok(Report::new(
        results,
        elapsed,
        report::process_cpu() - cpu_before,
        shared.config.concurrency,
    ))
}

async fn grpc_client(
    target: &str,
    authority: Option<&str>,
) -> Result<GrpcInferenceServiceClient<Channel>, LoadError> {
    let connect = |reason: String| LoadError::Connect {
        target: target.to_owned(),
        reason,
    };
    let mut endpoint =
        Endpoint::from_shared(target.to_owned()).map_err(|e| connect(e.to_string()))?;
    if let Some(authority) = authority {
        let origin = format!("http://{authority}")
            .parse()
            .map_err(|e: http::uri::InvalidUri| connect(e.to_string()))?;
        endpoint = endpoint.origin(origin);
    }
    let channel = endpoint
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| connect(e.to_string()))?;
    Ok(GrpcInferenceServiceClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX))
}

struct Shared {
    config: LoadConfig,
    started: Instant,
    issued: AtomicU64,
    /// When the next request may start, with `rate` set.
    pacer: Mutex<Option<Instant>>,
    results: Mutex<Vec<report::Result>>,
}

impl Shared {
    /// The next request's turn, or `None` when time or the request budget is spent.
    async fn next_turn(&self) -> Option<u64> {
        let number = self.issued.fetch_add(1, Ordering::Relaxed);
        if self.config.requests.is_some_and(|max| number >= max)
            || self.started.elapsed() >= self.config.duration
        {
            return None;
        }
        if let Some(rate) = self.config.rate.filter(|r| *r > 0.0) {
            let start = {
                let mut pacer = self.pacer.lock().unwrap_or_else(|e| e.into_inner());
                let start = pacer.unwrap_or_else(Instant::now).max(Instant::now());
                *pacer = Some(start + Duration::from_secs_f64(1.0 / rate));
                start
            };
            tokio::time::sleep_until(start.into()).await;
        }
        Some(number)
    }
}

async fn work(shared: Arc<Shared>, index: u64, mut client: Client) {
    let mut rng = Rng::new(index + 1);
    let config = &shared.config;
    let longest = config
        .samples
        .iter()
        .max_by_key(|s| s.image.len())
        .cloned()
        .unwrap_or_else(|| config.samples[0].clone());
    while let Some(number) = shared.next_turn().await {
        let kind = config.mix.pick(&mut rng);
        let sample = &config.samples[(number % config.samples.len() as u64) as usize];
        let started = Instant::now();
        let outcome = match kind {
            Kind::Valid => judge(call(&mut client, config, &sample.image, None).await, sample),
            Kind::Corrupt => {
                refused(call(&mut client, config, &images::corrupt(&sample.image), None).await)
            }
            Kind::OverLimit => {
                refused(call(&mut client, config, &images::pixel_bomb(), None).await)
            }
            Kind::Cancel => {
                let patience = Duration::from_millis(5 + rng.below(45));
                let answer = call(&mut client, config, &longest.image, None);
                match tokio::time::timeout(patience, answer).await {
                    Ok(answer) => judge(answer, &longest),
                    Err(_) => Outcome::Cancelled,
                }
            }
            Kind::ShortDeadline => {
                match call(&mut client, config, &longest.image, Some(SHORT_DEADLINE)).await {
                    Err(Failure::Deadline) => Outcome::Deadline,
                    answer => judge(answer, &longest),
                }
            }
        };
        let latency = started.elapsed();
        let shed = outcome == Outcome::Shed;
        let protocol = match client {
            Client::Grpc(_) => Protocol::Grpc,
            Client::Rest(..) => Protocol::Rest,
        };
        shared
            .results
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(report::Result {
                kind,
                protocol,
                outcome,
                latency,
            });
        if shed {
            // As a well-behaved client would: back off a little before trying again.
            tokio::time::sleep(Duration::from_millis(20 + rng.below(50))).await;
        }
    }
}

fn judge(answer: Result<String, Failure>, sample: &Sample) -> Outcome {
    match answer {
        Ok(text) if images::matches(&text, &sample.text) => Outcome::Ok,
        Ok(text) => Outcome::WrongText {
            got: text,
            want: sample.text.clone(),
        },
        Err(Failure::Shed) => Outcome::Shed,
        Err(other) => Outcome::Unexpected(other.describe()),
    }
}

fn refused(answer: Result<String, Failure>) -> Outcome {
    match answer {
        Err(Failure::Invalid) => Outcome::Refused,
        Err(Failure::Shed) => Outcome::Shed,
        Ok(text) => Outcome::Unexpected(format!("an invalid image was recognised as {text:?}")),
        Err(other) => Outcome::Unexpected(other.describe()),
    }
}

/// Sends one image; the recognised text, or the failure's class.
async fn call(
    client: &mut Client,
    config: &LoadConfig,
    image: &Bytes,
    deadline: Option<Duration>,
) -> Result<String, Failure> {
    match client {
        Client::Grpc(grpc) => {
            let mut request = tonic::Request::new(pb::ModelInferRequest {
                model_name: config.model.clone(),
                inputs: vec![pb::model_infer_request::InferInputTensor {
                    name: "image".into(),
                    datatype: "BYTES".into(),
                    shape: vec![1],
                    contents: Some(pb::InferTensorContents {
                        bytes_contents: vec![image.clone()],
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                outputs: vec![pb::model_infer_request::InferRequestedOutputTensor {
                    name: "text".into(),
                    ..Default::default()
                }],
                ..Default::default()
            });
            if let Some(deadline) = deadline {
                request.set_timeout(deadline);
            }
            if let Some(key) = &config.api_key {
                if let Ok(value) = format!("Bearer {key}").parse() {
                    request.metadata_mut().insert("authorization", value);
                }
            }
            let response = grpc.model_infer(request).await.map_err(|status| {
                use tonic::Code;
                // The server says when to come back; a refused connection does not.
                let retry_after = status.metadata().contains_key("retry-after");
                // tonic's client runs its own timer for `grpc-timeout` and reports CANCELLED
                // when it fires before the server's DEADLINE_EXCEEDED arrives.
                let client_timer =
                    std::iter::successors(std::error::Error::source(&status), |e| e.source())
                        .any(|e| e.is::<tonic::TimeoutExpired>());
                match status.code() {
                    _ if client_timer => Failure::Deadline,
                    Code::InvalidArgument => Failure::Invalid,
                    Code::Unavailable | Code::ResourceExhausted if retry_after => Failure::Shed,
                    Code::DeadlineExceeded => Failure::Deadline,
                    code => Failure::Other(format!("{code:?}: {}", status.message())),
                }
            })?;
            let response = response.into_inner();
            let text = response
                .outputs
                .first()
                .and_then(|o| o.contents.as_ref())
                .and_then(|c| c.bytes_contents.first())
                .ok_or_else(|| Failure::Other("no text output in the response".into()))?;
            Ok(String::from_utf8_lossy(text).into_owned())
        }
        Client::Rest(http, url) => {
            let part = reqwest::multipart::Part::stream(reqwest::Body::from(image.clone()))
                .file_name("image");
            let form = reqwest::multipart::Form::new().part("file", part);
            let mut request = http.post(url.as_str()).multipart(form);
            if let Some(deadline) = deadline {
                request = request.header("x-request-timeout", deadline.as_secs_f64().to_string());
            }
            if let Some(key) = &config.api_key {
                request = request.bearer_auth(key);
            }
            if let Some(authority) = &config.authority {
                request = request.header(http::header::HOST, authority.as_str());
            }
            let response = request
                .send()
                .await
                .map_err(|e| Failure::Other(format!("transport: {e}")))?;
            let status = response.status().as_u16();
            let retry_after = response.headers().contains_key("retry-after");
            let body = response
                .bytes()
                .await
                .map_err(|e| Failure::Other(format!("body: {e}")))?;
            match status {
                200 => serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["text"].as_str().map(str::to_owned))
                    .ok_or_else(|| Failure::Other("200 without a text field".into())),
                400 | 413 => Err(Failure::Invalid),
                429 | 503 if retry_after => Err(Failure::Shed),
                504 => Err(Failure::Deadline),
                other => Err(Failure::Other(format!(
                    "HTTP {other}: {}",
                    String::from_utf8_lossy(&body)
                ))),
            }
        }
    }
}
