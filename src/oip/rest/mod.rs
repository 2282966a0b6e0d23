//! The REST transcoder: OIP REST v2 (with the binary tensor extension), KServe v1, and a
//! multipart gateway for people with curl. Every handler turns its request into the model's
//! request and calls the one inference path; none validates tensors or images itself.

mod gateway;
mod openapi;
mod v1;
mod v2;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    body::Bytes,
    extract::{rejection::PathRejection, DefaultBodyLimit, FromRequest, Path, Request, State},
    http::{header, HeaderMap, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::post,
    Extension, Json, Router,
};
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::OpenApi as _;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    failure::{Failure, Reason},
    model::{Model, ParamValue, TensorSpec, INPUT, PLATFORM, VERSION},
    ocr::OutputKind,
    oip::{EXTENSIONS, SERVER_NAME},
};

/// What the REST side needs beyond the model.
#[derive(Clone, Debug)]
pub struct RestConfig {
    pub max_body_bytes: usize,
    pub max_upload_files: usize,
    /// Lower-case host names image URLs may point at; empty disables URL fetching.
    pub url_fetch_hosts: Vec<String>,
}

/// Shared by every REST handler.
pub struct RestState {
    pub model: Arc<Model>,
    pub config: RestConfig,
    fetcher: gateway::UrlFetcher,
}

pub type SharedState = Arc<RestState>;

/// The REST side: its routes (without a fallback: the server adds one that also knows gRPC),
/// and the paths its OpenAPI document marks as needing no credentials.
pub struct Rest {
    pub router: Router,
    pub open_paths: Vec<String>,
}

/// Every REST route, each registered together with its OpenAPI description, so the document,
/// the index and the auth layer's open paths all come from the router.
pub fn router(model: Arc<Model>, config: RestConfig) -> Rest {
    let fetcher =
        gateway::UrlFetcher::new(&config.url_fetch_hosts, model.pool().limits().max_bytes);
    let body_limit = config.max_body_bytes;
    let state = Arc::new(RestState {
        model,
        config,
        fetcher,
    });
    // Routes whose path names a model: a model or version this server does not serve is a
    // 404 before anything reads the body.
    let per_model = OpenApiRouter::new()
        .routes(routes!(model_metadata))
        .routes(routes!(model_version_metadata))
        .routes(routes!(model_ready))
        .routes(routes!(model_version_ready))
        .routes(routes!(v2::infer))
        .routes(routes!(v2::infer_version))
        .routes(routes!(v1::model_status))
        .route("/v1/models/{model}", post(v1::predict))
        .route_layer(middleware::from_fn_with_state(state.clone(), served_model));
    let (router, document) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(index))
        .routes(routes!(healthz))
        .routes(routes!(metrics))
        .routes(routes!(openapi::spec))
        .routes(routes!(openapi::docs))
        .routes(routes!(server_metadata))
        .routes(routes!(live))
        .routes(routes!(ready))
        .merge(per_model)
        .routes(routes!(gateway::predict))
        .routes(routes!(gateway::gateway_ocr))
        .routes(routes!(gateway::read_ocr))
        .split_for_parts();
    let open_paths = openapi::open_paths(&document);
    let router = router
        .layer(Extension(Arc::new(document)))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state);
    Rest { router, open_paths }
}

/// Answers 404 for a model or version the path names and this server does not serve, before
/// the handler reads anything, as Triton and KServe do.
async fn served_model(
    State(state): State<SharedState>,
    params: Result<Path<HashMap<String, String>>, PathRejection>,
    request: Request,
    next: Next,
) -> Response {
    let Path(params) = match params {
        Ok(params) => params,
        Err(rejection) => return Failure::invalid(rejection.body_text()).into_http(),
    };
    let model = params.get("model").map_or("", String::as_str);
    // KServe v1 puts the verb in the model's segment: `ocr:predict`.
    let model = model.split_once(':').map_or(model, |(model, _)| model);
    let version = params.get("version").map_or("", String::as_str);
    match state.model.resolve(model, version) {
        Ok(()) => next.run(request).await,
        Err(error) => Failure::from(error).into_http(),
    }
}

/// The body of every error response.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// What was wrong, and where (tensor, batch index, field).
    error: String,
}

/// The raw request body. A body over the limit is a JSON 413, like every other error.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = Failure;

    async fn from_request(request: Request, state: &S) -> Result<RawBody, Failure> {
        Bytes::from_request(request, state)
            .await
            .map(RawBody)
            .map_err(|e| body_failure(e.status(), e.body_text()))
    }
}

/// A body that could not be read: over the limit, or it stalled or broke off.
pub fn body_failure(status: StatusCode, text: String) -> Failure {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => Failure::new(Reason::TooLarge, text),
        _ => Failure::invalid(format!("request body: {text}")),
    }
}

/// Parses a JSON body whatever its Content-Type says: tritonclient.http sends none and curl's
/// `-d` sends a form type.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(body).map_err(|e| {
        Failure::invalid(format!(
            "request body is not valid JSON for this endpoint: {e}"
        ))
    })
}

/// A JSON parameter value as the model takes it: JSON's scalars map onto the parameter types;
/// `label` names the parameter in the error for anything else.
pub fn json_param<'a>(
    value: &'a Value,
    label: impl FnOnce() -> String,
) -> Result<ParamValue<'a>, Failure> {
    Ok(match value {
        Value::Bool(b) => ParamValue::Bool(*b),
        Value::String(s) => ParamValue::Str(s),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => ParamValue::Int(i),
            (None, Some(u)) => ParamValue::Uint(u),
            _ => ParamValue::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        other => {
            return Err(Failure::invalid(format!(
                "{} must be a string, number or boolean, not {other}",
                label()
            )))
        }
    })
}

/// The answer for paths no route serves.
pub fn not_found() -> Failure {
    Failure::new(Reason::NotFound, "no such endpoint; see GET / for the list")
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
    /// Every endpoint, `METHOD /path`, from the OpenAPI document.
    endpoints: Vec<String>,
}

#[utoipa::path(get, path = "/", security(()), tag = "service",
    responses((status = 200, description = "What this server is and its endpoints", body = Index)))]
async fn index(
    State(state): State<SharedState>,
    Extension(document): Extension<Arc<utoipa::openapi::OpenApi>>,
) -> Json<Index> {
    let mut endpoints = openapi::endpoints(&document);
    endpoints.push("gRPC inference.GRPCInferenceService/*".to_owned());
    Json(Index {
        name: SERVER_NAME,
        version: env!("CARGO_PKG_VERSION"),
        model: state.model.name().to_owned(),
        endpoints,
    })
}

#[derive(Serialize, ToSchema)]
pub struct Healthz {
    ready: bool,
    /// Why the server is not ready, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[utoipa::path(get, path = "/metrics", security(()), tag = "service",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
async fn metrics(State(state): State<SharedState>) -> Response {
    match crate::telemetry::metrics::exporter() {
        Some(exporter) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], {
            state.model.export_metrics();
            exporter.render()
        })
            .into_response(),
        None => Failure::new(Reason::NotFound, "metrics are not enabled").into_response(),
    }
}

#[utoipa::path(get, path = "/healthz", security(()), tag = "service", responses(
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
pub fn request_deadline(headers: &HeaderMap) -> Result<Option<Instant>, Failure> {
    let Some(value) = headers.get(TIMEOUT_HEADER) else {
        return Ok(None);
    };
    let timeout = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| {
            Failure::invalid(format!(
                "header {TIMEOUT_HEADER} must be a non-negative number of seconds"
            ))
        })?;
    Ok(crate::model::deadline_after(Instant::now(), timeout))
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

#[utoipa::path(get, path = "/v2/health/live", security(()), tag = "oip",
    responses((status = 200, body = inline(Object), example = json!({"live": true}))))]
async fn live() -> Json<serde_json::Value> {
    Json(json!({"live": true}))
}

#[utoipa::path(get, path = "/v2/health/ready", security(()), tag = "oip", responses(
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
async fn model_metadata(State(state): State<SharedState>) -> Json<ModelMetadata> {
    metadata(&state)
}

#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}", tag = "oip",
    params(("model" = String, Path), ("version" = String, Path)),
    responses((status = 200, body = ModelMetadata), (status = 404, body = ErrorBody)))]
async fn model_version_metadata(State(state): State<SharedState>) -> Json<ModelMetadata> {
    metadata(&state)
}

/// The model's metadata; [`served_model`] has already checked that the path names it.
fn metadata(state: &RestState) -> Json<ModelMetadata> {
    Json(ModelMetadata {
        name: state.model.name().to_owned(),
        versions: vec![VERSION],
        platform: PLATFORM,
        inputs: vec![INPUT.into()],
        outputs: OutputKind::ALL.map(|k| k.spec().into()).into(),
    })
}

#[utoipa::path(get, path = "/v2/models/{model}/ready", security(()), tag = "oip",
    params(("model" = String, Path)),
    responses((status = 200, body = inline(Object), example = json!({"name": "ocr", "ready": true})),
        (status = 404, body = ErrorBody), (status = 503, body = inline(Object))))]
async fn model_ready(State(state): State<SharedState>) -> Response {
    readiness(&state)
}

#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}/ready", security(()), tag = "oip",
    params(("model" = String, Path), ("version" = String, Path)),
    responses((status = 200, body = inline(Object)), (status = 404, body = ErrorBody)))]
async fn model_version_ready(State(state): State<SharedState>) -> Response {
    readiness(&state)
}

/// The model's readiness; [`served_model`] has already checked that the path names it.
fn readiness(state: &RestState) -> Response {
    let ready = state.model.is_ready();
    let body = json!({"name": state.model.name(), "ready": ready});
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
