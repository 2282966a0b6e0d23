//! KServe's v1 protocol: `GET /v1/models/{model}` and `POST /v1/models/{model}:predict`.

use axum::{
    extract::{Path, State},
    http::HeaderMap,
    Json,
};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{
    gateway::{recognize, Prediction},
    parse_json, RawBody, SharedState,
};
use crate::{
    failure::{Failure, Reason},
    ocr::ImageInput,
};

#[derive(Serialize, ToSchema)]
pub struct ModelStatus {
    name: String,
    ready: bool,
}

#[utoipa::path(get, path = "/v1/models/{model}", tag = "kserve-v1",
    params(("model" = String, Path)),
    responses((status = 200, body = ModelStatus), (status = 404, body = super::ErrorBody)))]
pub async fn model_status(
    State(state): State<SharedState>,
    Path(model): Path<String>,
) -> Json<ModelStatus> {
    // The route's layer has already checked that `model` is served.
    Json(ModelStatus {
        name: model,
        ready: state.model.is_ready(),
    })
}

/// `{"instances": [{"image": {"b64": "..."}}, ...], "parameters": {"lang": "eng"}}`
#[derive(Deserialize, ToSchema)]
pub struct PredictRequest {
    #[schema(value_type = Vec<Object>, example = json!([{"image": {"b64": "iVBORw0KGgo..."}}]))]
    instances: Vec<Value>,
    #[serde(default)]
    #[schema(value_type = Object)]
    parameters: Map<String, Value>,
}

#[derive(Serialize, ToSchema)]
pub struct PredictResponse {
    predictions: Vec<Prediction>,
}

#[utoipa::path(post, path = "/v1/models/{model}:predict", tag = "kserve-v1", operation_id = "kserve_v1_predict",
    params(("model" = String, Path)), request_body = PredictRequest,
    responses((status = 200, body = PredictResponse), (status = 400, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody)))]
pub async fn predict(
    State(state): State<SharedState>,
    Path(target): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<PredictResponse>, Failure> {
    // The route captures "ocr:predict" as one path segment; its layer has checked the model.
    let (_, action) = target.split_once(':').unwrap_or((&target, ""));
    if action != "predict" {
        return Err(Failure::new(
            Reason::NotFound,
            format!("unknown v1 action '{target}'; use POST /v1/models/{{model}}:predict"),
        ));
    }
    let request: PredictRequest = parse_json(&body)?;
    let images = request
        .instances
        .iter()
        .enumerate()
        .map(|(index, instance)| {
            instance_image(instance)
                .map_err(|why| Failure::invalid(format!("instances[{index}]: {why}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let params: Vec<_> = request.parameters.into_iter().collect();
    let predictions = recognize(&state, &headers, images, &params).await?;
    Ok(Json(PredictResponse { predictions }))
}

/// An instance is `{"image": {"b64": "..."}}`; `{"b64": "..."}` alone is accepted too.
fn instance_image(instance: &Value) -> Result<ImageInput, &'static str> {
    let image = instance.get("image").unwrap_or(instance);
    let encoded = image
        .get("b64")
        .and_then(Value::as_str)
        .ok_or("expected {\"image\": {\"b64\": \"<base64 image file>\"}}")?;
    base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map(|file| ImageInput::Encoded(file.into()))
        .map_err(|_| "image.b64 is not valid base64")
}
