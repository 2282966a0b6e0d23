//! Endpoints for people with curl and for clients of older OCR APIs: multipart uploads
//! (`/predict`, `/gateway/ocr`) and base64 / data URL / allow-listed URL images (`/read_ocr`).
//! They build the model's request directly; images and parameters are validated by the model.

use std::time::{Duration, Instant};

use axum::{
    body::Bytes,
    extract::{
        multipart::{Multipart, MultipartError, MultipartRejection},
        rejection::QueryRejection,
        Query, State,
    },
    http::HeaderMap,
    response::{IntoResponse, Response},
    Json,
};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::{
    body_failure, json_param, parse_json, request_deadline, request_id, RawBody, RestState,
    SharedState,
};
use crate::{
    failure::{Failure, Reason},
    model::{self, InferRequest},
    ocr::{document, ImageInput, OcrResult, OutputKind, PageReport},
};

/// How long fetching an image URL may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Parameters from the query string, or as form fields beside the files.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GatewayQuery {
    /// Language(s), e.g. `eng` or `eng+deu`.
    lang: Option<String>,
    /// Page segmentation mode, 0 to 13.
    psm: Option<String>,
    /// Pages of a PDF or TIFF to read, e.g. `1-3,5`; all by default.
    pages: Option<String>,
    /// Resolution PDF pages are rendered at (default 300).
    render_dpi: Option<String>,
    /// `off` (default) or `auto`: turn each page upright first.
    rotate: Option<String>,
}

/// The parameters the upload endpoints take, as query or form fields.
const UPLOAD_PARAMS: [&str; 5] = ["lang", "psm", "pages", "render_dpi", "rotate"];

/// One recognised file.
#[derive(Serialize, ToSchema)]
pub struct GatewayResult {
    request_id: String,
    /// The text; a document's pages are separated by form feeds (`\f`).
    text: String,
    /// Mean word confidence, 0 to 1.
    confidence: f32,
    /// Time the server spent on the request, in milliseconds.
    latency_ms: f64,
    boxes: Vec<WordBox>,
    /// For a PDF or TIFF: one entry per page read.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pages: Option<Vec<PageReport>>,
}

/// A recognised word and its bounding box in image pixels.
#[derive(Serialize, ToSchema)]
pub struct WordBox {
    x1: i32,
    y1: i32,
    x2: i32,
    y2: i32,
    text: String,
    /// Word confidence, 0 to 1.
    conf: f32,
    /// The page the word is on, from 1.
    page: u32,
}

/// The text, confidence and boxes of one image, as the gateway and KServe v1 return them.
#[derive(Serialize, ToSchema)]
pub struct Prediction {
    pub text: String,
    pub confidence: f32,
    pub boxes: Vec<WordBox>,
    /// For a PDF or TIFF: one entry per page read.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub pages: Option<Vec<PageReport>>,
}

impl Prediction {
    fn new(result: OcrResult, document: bool) -> Prediction {
        let boxes = result
            .words
            .unwrap_or_default()
            .into_iter()
            .map(|w| WordBox {
                x1: w.x1,
                y1: w.y1,
                x2: w.x2,
                y2: w.y2,
                text: w.text,
                conf: w.conf,
                page: w.page,
            })
            .collect();
        Prediction {
            text: result.text.unwrap_or_default(),
            confidence: result.confidence.unwrap_or_default(),
            boxes,
            pages: document.then_some(result.pages),
        }
    }
}

/// Recognises images with parameters given as JSON scalars, through the one inference path.
pub(super) async fn recognize(
    state: &RestState,
    headers: &HeaderMap,
    images: Vec<ImageInput>,
    params: &[(String, Value)],
) -> Result<Vec<Prediction>, Failure> {
    let mut options = state.model.options_builder();
    for (name, value) in params {
        let value = json_param(value, || format!("parameter '{name}'"))?;
        options.apply("parameter", name, value)?;
    }
    let asked = options
        .timeout()
        .and_then(|timeout| model::deadline_after(Instant::now(), timeout));
    let deadline = model::earliest(asked, request_deadline(headers)?);
    let documents: Vec<bool> = images
        .iter()
        .map(|image| match image {
            ImageInput::Encoded(file) => document::sniff(file) != document::Kind::Image,
            ImageInput::Raw(_) => false,
        })
        .collect();
    let mut outputs = vec![OutputKind::Text, OutputKind::Confidence, OutputKind::Words];
    if documents.contains(&true) {
        outputs.push(OutputKind::Pages);
    }
    let request = InferRequest {
        id: String::new(),
        images,
        options: options.build(),
        outputs,
        deadline,
    };
    let response = state.model.infer(request).await?;
    let results = response.results.into_iter().zip(documents);
    Ok(results
        .map(|(result, document)| Prediction::new(result, document))
        .collect())
}

#[utoipa::path(post, path = "/predict", tag = "gateway", params(GatewayQuery),
    request_body(content_type = "multipart/form-data",
        description = "One or more files in the field `file`; optional fields `lang`, `psm`, `pages`, `render_dpi`, `rotate`"),
    responses(
        (status = 200, description = "One result, or a list when several files were sent", body = GatewayResult),
        (status = 400, body = super::ErrorBody), (status = 413, body = super::ErrorBody),
        (status = 415, description = "Not a multipart/form-data upload", body = super::ErrorBody),
        (status = 503, body = super::ErrorBody), (status = 504, body = super::ErrorBody)))]
pub async fn predict(
    State(state): State<SharedState>,
    headers: HeaderMap,
    query: Result<Query<GatewayQuery>, QueryRejection>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, Failure> {
    upload(&state, "file", &headers, query, multipart).await
}

#[utoipa::path(post, path = "/gateway/ocr", tag = "gateway", params(GatewayQuery),
    request_body(content_type = "multipart/form-data",
        description = "One or more files in the field `image_file`; optional fields `lang`, `psm`, `pages`, `render_dpi`, `rotate`"),
    responses(
        (status = 200, description = "One result, or a list when several files were sent", body = GatewayResult),
        (status = 400, body = super::ErrorBody), (status = 413, body = super::ErrorBody),
        (status = 415, description = "Not a multipart/form-data upload", body = super::ErrorBody),
        (status = 503, body = super::ErrorBody), (status = 504, body = super::ErrorBody)))]
pub async fn gateway_ocr(
    State(state): State<SharedState>,
    headers: HeaderMap,
    query: Result<Query<GatewayQuery>, QueryRejection>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, Failure> {
    upload(&state, "image_file", &headers, query, multipart).await
}

/// Streams a multipart upload: each file is refused with 413 as soon as it passes the image
/// byte limit, without reading the rest.
async fn upload(
    state: &RestState,
    file_field: &str,
    headers: &HeaderMap,
    query: Result<Query<GatewayQuery>, QueryRejection>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, Failure> {
    let started = Instant::now();
    let Query(query) = query.map_err(|e| Failure::invalid(e.body_text()))?;
    let mut multipart = multipart.map_err(|e| {
        Failure::new(
            Reason::UnsupportedMediaType,
            format!(
                "expected a multipart/form-data upload (curl -F {file_field}=@page.png): {}",
                e.body_text()
            ),
        )
    })?;
    let max_bytes = state.model.pool().limits().max_bytes;
    let max_files = state.config.max_upload_files;

    let GatewayQuery {
        lang,
        psm,
        pages,
        render_dpi,
        rotate,
    } = query;
    let mut params: Vec<(String, Value)> = UPLOAD_PARAMS
        .into_iter()
        .zip([lang, psm, pages, render_dpi, rotate])
        .filter_map(|(name, value)| Some((name.to_owned(), Value::String(value?))))
        .collect();
    let mut images = Vec::new();
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or_default().to_owned();
        if name == file_field {
            if images.len() == max_files {
                return Err(Failure::invalid(format!(
                    "at most {max_files} files per upload"
                )));
            }
            let mut file = Vec::new();
            while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                if file.len() + chunk.len() > max_bytes {
                    return Err(Failure::new(
                        Reason::TooLarge,
                        format!(
                            "file {} in field '{file_field}' is over the limit of {max_bytes} bytes",
                            images.len()
                        ),
                    ));
                }
                file.extend_from_slice(&chunk);
            }
            images.push(ImageInput::Encoded(file.into()));
        } else if UPLOAD_PARAMS.contains(&name.as_str()) {
            let value = field.text().await.map_err(multipart_error)?;
            params.push((name, Value::String(value)));
        } else {
            tracing::info!(field = %name, "ignoring unknown multipart field");
        }
    }
    if images.is_empty() {
        return Err(Failure::invalid(format!(
            "no file in multipart field '{file_field}' (send it with curl -F {file_field}=@page.png)"
        )));
    }
    let several = images.len() > 1;
    let predictions = recognize(state, headers, images, &params).await?;
    let results = gateway_results(headers, started, predictions);
    Ok(match several {
        true => Json(results).into_response(),
        false => Json(results.into_iter().next()).into_response(),
    })
}

fn gateway_results(
    headers: &HeaderMap,
    started: Instant,
    predictions: Vec<Prediction>,
) -> Vec<GatewayResult> {
    let request_id = request_id(headers);
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    predictions
        .into_iter()
        .map(|p| GatewayResult {
            request_id: request_id.clone(),
            text: p.text,
            confidence: p.confidence,
            latency_ms,
            boxes: p.boxes,
            pages: p.pages,
        })
        .collect()
}

fn multipart_error(error: MultipartError) -> Failure {
    body_failure(
        error.status(),
        format!("multipart body: {}", error.body_text()),
    )
}

/// A request in the style of older OCR APIs.
#[derive(Deserialize, ToSchema)]
pub struct ReadOcrRequest {
    /// The image as base64, a `data:` URL, or an http(s) URL from an allow-listed host.
    image: String,
    /// Language(s), e.g. `eng` or `eng+deu`.
    #[serde(default)]
    lang: Option<String>,
    /// Tesseract command-line options; only `--psm N`, `--dpi N`, `-l LANG`,
    /// `-c tessedit_char_whitelist=...` and `-c preserve_interword_spaces=0|1` are accepted.
    #[serde(default)]
    config: String,
    /// Pages of a PDF or TIFF to read, e.g. `1-3,5`; all by default.
    #[serde(default)]
    pages: Option<String>,
    /// Resolution PDF pages are rendered at (default 300).
    #[serde(default)]
    render_dpi: Option<u32>,
    /// `off` (default) or `auto`.
    #[serde(default)]
    rotate: Option<String>,
}

#[utoipa::path(post, path = "/read_ocr", tag = "gateway", request_body = ReadOcrRequest,
    responses((status = 200, body = GatewayResult), (status = 400, body = super::ErrorBody),
        (status = 413, body = super::ErrorBody), (status = 502, body = super::ErrorBody)))]
pub async fn read_ocr(
    State(state): State<SharedState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<GatewayResult>, Failure> {
    let started = Instant::now();
    let request: ReadOcrRequest = parse_json(&body)?;
    let image = match request.image.trim() {
        url if url.starts_with("http://") || url.starts_with("https://") => {
            state.fetcher.fetch(url).await?
        }
        data => decode_base64(data)?,
    };
    let mut params = config_params(&request.config)?;
    let fields = [
        ("lang", request.lang.map(Value::String)),
        ("pages", request.pages.map(Value::String)),
        ("render_dpi", request.render_dpi.map(Value::from)),
        ("rotate", request.rotate.map(Value::String)),
    ];
    for (name, value) in fields {
        params.extend(value.map(|value| (name.to_owned(), value)));
    }
    let predictions =
        recognize(&state, &headers, vec![ImageInput::Encoded(image)], &params).await?;
    let result = gateway_results(&headers, started, predictions)
        .into_iter()
        .next();
    result
        .map(Json)
        .ok_or_else(|| Failure::internal("read_ocr: the model returned no result"))
}

/// Plain base64 or a `data:<type>;base64,<data>` URL.
fn decode_base64(data: &str) -> Result<Bytes, Failure> {
    let payload = match data.strip_prefix("data:") {
        Some(url) => url
            .split_once(";base64,")
            .map(|(_, payload)| payload)
            .ok_or_else(|| {
                Failure::invalid("image: a data URL must be base64 (data:<type>;base64,...)")
            })?,
        None => data,
    };
    let compact: String = payload.split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map(Bytes::from)
        .map_err(|e| Failure::invalid(format!("image: not valid base64: {e}")))
}

const ALLOWED_CONFIG: &str = "--psm N, --dpi N, -l LANG, -c tessedit_char_whitelist=CHARS, \
                              -c preserve_interword_spaces=0|1";

/// Translates the allow-listed Tesseract command-line options into model parameters.
fn config_params(config: &str) -> Result<Vec<(String, Value)>, Failure> {
    let refuse = |option: &str| {
        Failure::invalid(format!(
            "config option '{option}' is not allowed (allowed: {ALLOWED_CONFIG})"
        ))
    };
    let mut params = Vec::new();
    let mut tokens = config.split_whitespace();
    while let Some(token) = tokens.next() {
        let (option, inline) = match token.split_once('=') {
            Some((option, value)) if option.starts_with("--") => (option, Some(value)),
            _ => (token, None),
        };
        let mut value = || {
            inline
                .or_else(|| tokens.next())
                .ok_or_else(|| Failure::invalid(format!("config option '{option}' needs a value")))
        };
        let (name, value) = match option {
            "--psm" => ("psm", value()?),
            "--dpi" => ("dpi", value()?),
            "-l" | "--lang" => ("lang", value()?),
            "-c" => {
                let setting = value()?;
                match setting.split_once('=') {
                    Some(("tessedit_char_whitelist", chars)) => ("char_whitelist", chars),
                    Some(("preserve_interword_spaces", flag)) => {
                        ("preserve_interword_spaces", flag)
                    }
                    _ => return Err(refuse(&format!("-c {setting}"))),
                }
            }
            other => return Err(refuse(other)),
        };
        params.push((name.to_owned(), Value::String(value.to_owned())));
    }
    Ok(params)
}

/// Fetches image URLs, only from allow-listed hosts, never following redirects (a redirect
/// could lead anywhere), with the image byte limit enforced while streaming.
pub(super) struct UrlFetcher {
    hosts: Vec<String>,
    client: Option<reqwest::Client>,
    max_bytes: usize,
}

impl UrlFetcher {
    pub(super) fn new(hosts: &[String], max_bytes: usize) -> UrlFetcher {
        let client = (!hosts.is_empty())
            .then(|| {
                reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .timeout(FETCH_TIMEOUT)
                    .build()
                    .map_err(
                        |e| tracing::error!(error = %e, "URL fetching disabled: no HTTP client"),
                    )
                    .ok()
            })
            .flatten();
        UrlFetcher {
            hosts: hosts.to_vec(),
            client,
            max_bytes,
        }
    }

    async fn fetch(&self, url: &str) -> Result<Bytes, Failure> {
        let Some(client) = &self.client else {
            return Err(Failure::invalid(
                "image: fetching URLs is disabled on this server (see --allow-url-fetch); send base64",
            ));
        };
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| Failure::invalid(format!("image: bad URL: {e}")))?;
        let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
        if !self.hosts.contains(&host) {
            return Err(Failure::invalid(format!(
                "image: host '{host}' is not in this server's --allow-url-fetch list"
            )));
        }
        let upstream =
            |reason: String| Failure::new(Reason::Upstream, format!("image: {url}: {reason}"));
        let mut response = client
            .get(parsed)
            .send()
            .await
            .map_err(|e| upstream(e.to_string()))?;
        if !response.status().is_success() {
            return Err(upstream(format!("answered {}", response.status())));
        }
        let too_large = || {
            Failure::new(
                Reason::TooLarge,
                format!("image: {url} is over the limit of {} bytes", self.max_bytes),
            )
        };
        if response
            .content_length()
            .is_some_and(|len| len > self.max_bytes as u64)
        {
            return Err(too_large());
        }
        let mut image = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| upstream(e.to_string()))?
        {
            if image.len() + chunk.len() > self.max_bytes {
                return Err(too_large());
            }
            image.extend_from_slice(&chunk);
        }
        Ok(image.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_accepts_only_the_allow_list() {
        let params = config_params("--psm 6 --dpi=300 -l eng -c tessedit_char_whitelist=0123 -c preserve_interword_spaces=1").unwrap();
        let names: Vec<_> = params
            .iter()
            .map(|(n, v)| format!("{n}={}", v.as_str().unwrap()))
            .collect();
        assert_eq!(
            names,
            [
                "psm=6",
                "dpi=300",
                "lang=eng",
                "char_whitelist=0123",
                "preserve_interword_spaces=1"
            ]
        );
        for refused in [
            "--oem 1",
            "-c tessedit_write_images=1",
            "--user-words /etc/passwd",
            "--tessdata-dir /",
        ] {
            let err = config_params(refused).unwrap_err();
            assert!(
                err.message().contains("is not allowed"),
                "{refused}: {}",
                err.message()
            );
        }
        assert!(config_params("--psm").is_err());
        assert!(config_params("").unwrap().is_empty());
    }

    #[test]
    fn base64_and_data_urls() {
        assert_eq!(&decode_base64("aGVsbG8=").unwrap()[..], b"hello");
        assert_eq!(
            &decode_base64("data:image/png;base64,aGVs\nbG8=").unwrap()[..],
            b"hello"
        );
        assert!(decode_base64("data:image/png,hello").is_err());
        assert!(decode_base64("***").is_err());
    }
}
