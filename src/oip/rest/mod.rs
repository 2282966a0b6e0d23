//! The REST transcoder: OIP REST v2 (with the binary tensor extension), KServe v1, and a
//! multipart gateway for people with curl. Every handler turns its request into the model's
//! request and calls the one inference path; none validates tensors or images itself.

mod gateway;
mod openapi;
mod v1;
mod v2;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    body::Bytes,
    extract::{DefaultBodyLimit, FromRequest, Path, Request, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::{
    config::RestConfig,
    model::{ErrorKind, InferError, Model, ParamValue, TensorSpec, INPUT, PLATFORM, VERSION},
    ocr::OutputKind,
    oip::{EXTENSIONS, SERVER_NAME},
};

/// Shared by every REST handler.
pub struct RestState {
    pub model: Arc<Model>,
    pub config: RestConfig,
    fetcher: gateway::UrlFetcher,
}

pub type SharedState = Arc<RestState>;

/// The REST routes, without a fallback (the server adds one that also knows gRPC).
pub fn router(model: Arc<Model>, config: RestConfig) -> Router {
    let fetcher =
        gateway::UrlFetcher::new(&config.url_fetch_hosts, model.pool().limits().max_bytes);
    let body_limit = config.max_body_bytes;
    let state = Arc::new(RestState {
        model,
        config,
        fetcher,
    });
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::spec))
        .route("/docs", get(openapi::docs))
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{model}", get(model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(model_version_metadata),
        )
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_version_ready),
        )
        .route("/v2/models/{model}/infer", post(v2::infer))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(v2::infer_version),
        )
        .route(
            "/v1/models/{model}",
            get(v1::model_status).post(v1::predict),
        )
        .route("/predict", post(gateway::predict))
        .route("/gateway/ocr", post(gateway::gateway_ocr))
        .route("/read_ocr", post(gateway::read_ocr))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// An error as REST clients expect it: a status and `{"error": "..."}` as `application/json`.
#[derive(Debug)]
pub struct RestError {
    status: StatusCode,
    message: String,
}

impl RestError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> RestError {
        RestError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> RestError {
        RestError::new(StatusCode::BAD_REQUEST, message)
    }
}

/// The one mapping from inference errors to HTTP statuses.
impl From<InferError> for RestError {
    fn from(error: InferError) -> RestError {
        let status = match error.kind() {
            ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            // Nobody reads it; nginx's "client closed request".
            ErrorKind::Cancelled => {
                StatusCode::from_u16(499).unwrap_or(StatusCode::REQUEST_TIMEOUT)
            }
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        RestError::new(status, error.client_message())
    }
}

/// The body of every error response.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// What was wrong, and where (tensor, batch index, field).
    error: String,
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The raw request body. A body over the limit is a JSON 413, like every other error.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = RestError;

    async fn from_request(request: Request, state: &S) -> Result<RawBody, RestError> {
        Bytes::from_request(request, state)
            .await
            .map(RawBody)
            .map_err(|e| RestError::new(e.status(), e.body_text()))
    }
}

/// Parses a JSON body whatever its Content-Type says: tritonclient.http sends none and curl's
/// `-d` sends a form type.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, RestError> {
    serde_json::from_slice(body).map_err(|e| {
        RestError::bad_request(format!(
            "request body is not valid JSON for this endpoint: {e}"
        ))
    })
}

/// A JSON parameter value as the model takes it: JSON's scalars map onto the parameter types;
/// `label` names the parameter in the error for anything else.
pub fn json_param<'a>(
    value: &'a Value,
    label: impl FnOnce() -> String,
) -> Result<ParamValue<'a>, RestError> {
    Ok(match value {
        Value::Bool(b) => ParamValue::Bool(*b),
        Value::String(s) => ParamValue::Str(s),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => ParamValue::Int(i),
            (None, Some(u)) => ParamValue::Uint(u),
            _ => ParamValue::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        other => {
            return Err(RestError::bad_request(format!(
                "{} must be a string, number or boolean, not {other}",
                label()
            )))
        }
    })
}

/// JSON for paths no route serves.
pub async fn not_found() -> RestError {
    RestError::new(
        StatusCode::NOT_FOUND,
        "no such endpoint; see GET / for the list",
    )
}

/// The request id the request-id layer assigned (the client's `x-request-id`, or a new UUID).
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[derive(Serialize, ToSchema)]
pub struct Index {
    name: &'static str,
    version: &'static str,
    model: String,
    /// Every endpoint, `METHOD /path`.
    endpoints: Vec<&'static str>,
}

const ENDPOINTS: &[&str] = &[
    "GET /healthz",
    "GET /metrics",
    "GET /openapi.json",
    "GET /docs",
    "GET /v2",
    "GET /v2/health/live",
    "GET /v2/health/ready",
    "GET /v2/models/{model}[/versions/{version}]",
    "GET /v2/models/{model}[/versions/{version}]/ready",
    "POST /v2/models/{model}[/versions/{version}]/infer",
    "GET /v1/models/{model}",
    "POST /v1/models/{model}:predict",
    "POST /predict",
    "POST /gateway/ocr",
    "POST /read_ocr",
    "gRPC inference.GRPCInferenceService/*",
];

#[utoipa::path(get, path = "/", tag = "service",
    responses((status = 200, description = "What this server is and its endpoints", body = Index)))]
async fn index(State(state): State<SharedState>) -> Json<Index> {
    Json(Index {
        name: SERVER_NAME,
        version: env!("CARGO_PKG_VERSION"),
        model: state.model.name().to_owned(),
        endpoints: ENDPOINTS.to_vec(),
    })
}

#[derive(Serialize, ToSchema)]
pub struct Healthz {
    ready: bool,
    /// Why the server is not ready, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[utoipa::path(get, path = "/metrics", tag = "service",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
async fn metrics(State(state): State<SharedState>) -> Response {
    match crate::telemetry::metrics::exporter() {
        Some(exporter) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            exporter.render(&state.model),
        )
            .into_response(),
        None => RestError::new(StatusCode::NOT_FOUND, "metrics are not enabled").into_response(),
    }
}

#[utoipa::path(get, path = "/healthz", tag = "service", responses(
    (status = 200, description = "Ready to serve", body = Healthz),
    (status = 503, description = "Not ready, with the reason", body = Healthz)))]
async fn healthz(State(state): State<SharedState>) -> (StatusCode, Json<Healthz>) {
    match state.model.readiness() {
        Ok(()) => {
            let body = Healthz {
                ready: true,
                reason: None,
            };
            (StatusCode::OK, Json(body))
        }
        Err(why) => {
            let body = Healthz {
                ready: false,
                reason: Some(why.reason().to_owned()),
            };
            (StatusCode::SERVICE_UNAVAILABLE, Json(body))
        }
    }
}

/// The header REST clients bound a request with, in seconds (`2.5`).
const TIMEOUT_HEADER: &str = "x-request-timeout";

/// The deadline a REST client asked for with `x-request-timeout`.
pub fn request_deadline(headers: &HeaderMap) -> Result<Option<Instant>, RestError> {
    let Some(value) = headers.get(TIMEOUT_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .map(|timeout| Some(Instant::now() + timeout))
        .ok_or_else(|| {
            RestError::bad_request(format!("{TIMEOUT_HEADER} must be a number of seconds"))
        })
}

#[derive(Serialize, ToSchema)]
pub struct ServerMetadata {
    name: &'static str,
    version: &'static str,
    extensions: Vec<&'static str>,
}

#[utoipa::path(get, path = "/v2", tag = "oip", responses((status = 200, body = ServerMetadata)))]
async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: SERVER_NAME,
        version: env!("CARGO_PKG_VERSION"),
        extensions: EXTENSIONS.to_vec(),
    })
}

#[utoipa::path(get, path = "/v2/health/live", tag = "oip",
    responses((status = 200, body = inline(Object), example = json!({"live": true}))))]
async fn live() -> Json<serde_json::Value> {
    Json(json!({"live": true}))
}

#[utoipa::path(get, path = "/v2/health/ready", tag = "oip", responses(
    (status = 200, body = inline(Object), example = json!({"ready": true})),
    (status = 503, body = inline(Object), example = json!({"ready": false, "error": "Server is not ready."}))))]
async fn ready(State(state): State<SharedState>) -> Response {
    if state.model.is_ready() {
        Json(json!({"ready": true})).into_response()
    } else {
        let body = json!({"ready": false, "error": "Server is not ready."});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

#[derive(Serialize, ToSchema)]
pub struct TensorMetadata {
    name: &'static str,
    datatype: &'static str,
    shape: &'static [i64],
}

impl From<TensorSpec> for TensorMetadata {
    fn from(spec: TensorSpec) -> TensorMetadata {
        TensorMetadata {
            name: spec.name,
            datatype: spec.datatype,
            shape: spec.shape,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ModelMetadata {
    name: String,
    versions: Vec<&'static str>,
    platform: &'static str,
    inputs: Vec<TensorMetadata>,
    outputs: Vec<TensorMetadata>,
}

#[utoipa::path(get, path = "/v2/models/{model}", tag = "oip",
    params(("model" = String, Path, description = "Model name")),
    responses((status = 200, body = ModelMetadata), (status = 404, body = ErrorBody)))]
async fn model_metadata(
    State(state): State<SharedState>,
    Path(model): Path<String>,
) -> Result<Json<ModelMetadata>, RestError> {
    metadata(&state, &model, "")
}

#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}", tag = "oip",
    params(("model" = String, Path), ("version" = String, Path)),
    responses((status = 200, body = ModelMetadata), (status = 404, body = ErrorBody)))]
async fn model_version_metadata(
    State(state): State<SharedState>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<ModelMetadata>, RestError> {
    metadata(&state, &model, &version)
}

fn metadata(
    state: &RestState,
    model: &str,
    version: &str,
) -> Result<Json<ModelMetadata>, RestError> {
    state.model.resolve(model, version)?;
    Ok(Json(ModelMetadata {
        name: state.model.name().to_owned(),
        versions: vec![VERSION],
        platform: PLATFORM,
        inputs: vec![INPUT.into()],
        outputs: OutputKind::ALL.map(|k| k.spec().into()).into(),
    }))
}

#[utoipa::path(get, path = "/v2/models/{model}/ready", tag = "oip",
    params(("model" = String, Path)),
    responses((status = 200, body = inline(Object), example = json!({"name": "ocr", "ready": true})),
        (status = 404, body = ErrorBody), (status = 503, body = inline(Object))))]
async fn model_ready(
    State(state): State<SharedState>,
    Path(model): Path<String>,
) -> Result<Response, RestError> {
    readiness(&state, &model, "")
}

#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}/ready", tag = "oip",
    params(("model" = String, Path), ("version" = String, Path)),
    responses((status = 200, body = inline(Object)), (status = 404, body = ErrorBody)))]
async fn model_version_ready(
    State(state): State<SharedState>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Response, RestError> {
    readiness(&state, &model, &version)
}

fn readiness(state: &RestState, model: &str, version: &str) -> Result<Response, RestError> {
    state.model.resolve(model, version)?;
    let ready = state.model.is_ready();
    let body = json!({"name": state.model.name(), "ready": ready});
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((status, Json(body)).into_response())
}
