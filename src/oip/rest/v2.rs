//! `POST /v2/models/{model}[/versions/{version}]/infer`: OIP REST v2 with the binary tensor
//! data extension, transcoded into the protobuf request the gRPC service takes.
//!
//! Inputs always travel to the codec in raw form (JSON `data` is framed like binary data), so
//! the model answers in raw form and each output is sent as JSON `data` or as binary, as the
//! request asks (Triton's rule: an output's `binary_data` overrides the request's
//! `binary_data_output`).

use std::collections::HashMap;

use axum::{
    body::Bytes,
    extract::{FromRequest, Path, Request, State},
    http::{header, HeaderMap, HeaderValue},
    response::{IntoResponse, Response},
    Json,
};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{json_param, parse_json, request_deadline, request_id, RawBody, SharedState};
use crate::{
    failure::{Failure, Reason},
    model::ParamValue,
    ocr::OutputKind,
    oip::{
        codec,
        pb::{self, infer_parameter::ParameterChoice},
        tensor,
    },
};

/// The header that splits a binary-extension body into its JSON part and the binary tail.
const HEADER_LENGTH: &str = "inference-header-content-length";

/// An OIP inference request (JSON part).
#[derive(Deserialize, ToSchema)]
pub struct InferRequestBody {
    #[serde(default)]
    id: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    parameters: Map<String, Value>,
    inputs: Vec<InputTensor>,
    #[serde(default)]
    outputs: Vec<RequestedOutput>,
}

/// One input tensor. BYTES elements are strings, or `{"b64": "..."}` for binary data such as
/// image files; or the tensor is sent in the binary tail with `parameters.binary_data_size`.
#[derive(Deserialize, ToSchema)]
pub struct InputTensor {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    parameters: Map<String, Value>,
    #[schema(value_type = Vec<Object>)]
    data: Option<Value>,
}

#[derive(Deserialize, ToSchema)]
pub struct RequestedOutput {
    name: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    parameters: Map<String, Value>,
}

/// An OIP inference response (JSON part; binary outputs follow it in the body).
#[derive(Serialize, ToSchema)]
pub struct InferResponseBody {
    model_name: String,
    model_version: String,
    id: String,
    outputs: Vec<OutputTensor>,
}

#[derive(Serialize, ToSchema)]
pub struct OutputTensor {
    name: String,
    datatype: String,
    shape: Vec<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    parameters: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Vec<Object>)]
    data: Option<Value>,
}

#[utoipa::path(post, path = "/v2/models/{model}/infer", tag = "oip",
    params(("model" = String, Path, description = "Model name")),
    request_body(content = InferRequestBody, description = "JSON, or JSON followed by binary tensors \
        when the Inference-Header-Content-Length header gives the JSON part's length. \
        Content-Type is not required."),
    responses(
        (status = 200, description = "JSON, or application/octet-stream with \
            Inference-Header-Content-Length when binary outputs were asked for", body = InferResponseBody),
        (status = 400, body = super::ErrorBody), (status = 404, body = super::ErrorBody),
        (status = 413, body = super::ErrorBody), (status = 415, body = super::ErrorBody),
        (status = 503, body = super::ErrorBody), (status = 504, body = super::ErrorBody)))]
pub async fn infer(
    State(state): State<SharedState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    InferBody(body): InferBody,
) -> Result<Response, Failure> {
    run(&state, model, String::new(), &headers, body).await
}

#[utoipa::path(post, path = "/v2/models/{model}/versions/{version}/infer", tag = "oip",
    params(("model" = String, Path), ("version" = String, Path)),
    request_body(content = InferRequestBody),
    responses((status = 200, body = InferResponseBody), (status = 400, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody), (status = 413, body = super::ErrorBody),
        (status = 415, body = super::ErrorBody), (status = 503, body = super::ErrorBody),
        (status = 504, body = super::ErrorBody)))]
pub async fn infer_version(
    State(state): State<SharedState>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    InferBody(body): InferBody,
) -> Result<Response, Failure> {
    run(&state, model, version, &headers, body).await
}

/// An infer request's body: JSON, or JSON followed by binary tensors. Clients send it with
/// many content types or none (tritonclient.http none, curl `-d` a form type), so only types
/// that cannot be JSON are refused, before the body is read, pointing at the upload endpoint.
pub struct InferBody(Bytes);

impl<S: Send + Sync> FromRequest<S> for InferBody {
    type Rejection = Failure;

    async fn from_request(request: Request, state: &S) -> Result<InferBody, Failure> {
        if let Some(refused) = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !is_json_like(v))
        {
            return Err(Failure::new(
                Reason::UnsupportedMediaType,
                format!(
                    "Content-Type '{refused}' is not accepted here: send JSON (application/json), \
                     or JSON followed by binary tensors (application/octet-stream with \
                     {HEADER_LENGTH}); to upload image files, POST multipart/form-data to \
                     /gateway/ocr (field image_file)"
                ),
            ));
        }
        RawBody::from_request(request, state)
            .await
            .map(|RawBody(body)| InferBody(body))
    }
}

/// Whether a Content-Type may carry an infer body.
fn is_json_like(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    matches!(
        essence.as_str(),
        "" | "application/json"
            | "application/octet-stream"
            | "application/x-www-form-urlencoded"
            | "text/plain"
    ) || essence.ends_with("+json")
}

async fn run(
    state: &SharedState,
    model_name: String,
    model_version: String,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, Failure> {
    let (json, mut tail) = split_body(headers, body)?;
    let request: InferRequestBody = parse_json(&json)?;

    let binary_outputs = binary_outputs(&request)?;
    let mut raw_input_contents = Vec::with_capacity(request.inputs.len());
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        raw_input_contents.push(input_bytes(&input, &mut tail)?);
        inputs.push(pb::model_infer_request::InferInputTensor {
            parameters: params(&format!("input '{}'", input.name), input.parameters)?,
            name: input.name,
            datatype: input.datatype,
            shape: input.shape,
            contents: None,
        });
    }
    if !tail.is_empty() {
        return Err(Failure::invalid(format!(
            "{} bytes of binary data follow the inputs that no input's binary_data_size accounts for",
            tail.len()
        )));
    }
    let outputs = request
        .outputs
        .into_iter()
        .map(|o| {
            Ok(pb::model_infer_request::InferRequestedOutputTensor {
                parameters: params(&format!("output '{}'", o.name), o.parameters)?,
                name: o.name,
            })
        })
        .collect::<Result<_, Failure>>()?;
    let id = match request.id.is_empty() {
        true => request_id(headers),
        false => request.id,
    };
    let proto = pb::ModelInferRequest {
        model_name,
        model_version,
        id,
        parameters: params("request", request.parameters)?,
        inputs,
        outputs,
        raw_input_contents,
    };
    let response = codec::infer(&state.model, proto, request_deadline(headers)?).await?;
    Ok(respond(response, &binary_outputs))
}

/// Splits the body at `Inference-Header-Content-Length` (any header case); without the
/// header the whole body is JSON.
fn split_body(headers: &HeaderMap, mut body: Bytes) -> Result<(Bytes, Bytes), Failure> {
    let Some(value) = headers.get(HEADER_LENGTH) else {
        return Ok((body, Bytes::new()));
    };
    let length = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .ok_or_else(|| Failure::invalid(format!("{HEADER_LENGTH} is not a byte count")))?;
    if length > body.len() {
        return Err(Failure::invalid(format!(
            "{HEADER_LENGTH} is {length} but the body has only {} bytes",
            body.len()
        )));
    }
    let json = body.split_to(length);
    Ok((json, body))
}

/// The raw bytes of one input: its slice of the binary tail, or its JSON `data` encoded as
/// the raw form of its datatype.
fn input_bytes(input: &InputTensor, tail: &mut Bytes) -> Result<Bytes, Failure> {
    let place = format!("input '{}'", input.name);
    if let Some(size) = input.parameters.get("binary_data_size") {
        let size = size.as_u64().ok_or_else(|| {
            Failure::invalid(format!("{place}: binary_data_size must be a byte count"))
        })? as usize;
        if size > tail.len() {
            return Err(Failure::invalid(format!(
                "{place}: binary_data_size is {size} but only {} bytes of binary data remain",
                tail.len()
            )));
        }
        return Ok(tail.split_to(size));
    }
    let data = input.data.as_ref().ok_or_else(|| {
        Failure::invalid(format!("{place} has neither data nor binary_data_size"))
    })?;
    let mut elements = Vec::new();
    flatten(data, &mut elements);
    match input.datatype.as_str() {
        "BYTES" => {
            let values = elements
                .iter()
                .enumerate()
                .map(|(index, element)| {
                    bytes_element(element).ok_or_else(|| {
                        Failure::invalid(format!(
                            "{place}: data[{index}] must be a string or {{\"b64\": \"...\"}}"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(tensor::frame_bytes(values.iter().map(Vec::as_slice)).into())
        }
        "UINT8" => elements
            .iter()
            .enumerate()
            .map(|(index, element)| {
                element
                    .as_u64()
                    .and_then(|v| u8::try_from(v).ok())
                    .ok_or_else(|| {
                        Failure::invalid(format!("{place}: data[{index}] is not a UINT8"))
                    })
            })
            .collect::<Result<Vec<u8>, _>>()
            .map(Bytes::from),
        // The codec names the datatypes it takes; only the length matters here.
        _ => Ok(Bytes::new()),
    }
}

/// Row-major flattening of nested `data` arrays.
fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| flatten(item, out)),
        other => out.push(other),
    }
}

fn bytes_element(element: &Value) -> Option<Vec<u8>> {
    match element {
        Value::String(s) => Some(s.as_bytes().to_vec()),
        Value::Object(object) => {
            let encoded = object.get("b64")?.as_str()?;
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()
        }
        _ => None,
    }
}

/// JSON parameters as protobuf parameters: the JSON scalar types map onto the oneof.
fn params(
    place: &str,
    json: Map<String, Value>,
) -> Result<HashMap<String, pb::InferParameter>, Failure> {
    json.into_iter()
        .map(|(name, value)| {
            let choice = match json_param(&value, || format!("{place} parameter '{name}'"))? {
                ParamValue::Bool(b) => ParameterChoice::BoolParam(b),
                ParamValue::Int(i) => ParameterChoice::Int64Param(i),
                ParamValue::Uint(u) => ParameterChoice::Uint64Param(u),
                ParamValue::Double(d) => ParameterChoice::DoubleParam(d),
                ParamValue::Str(s) => ParameterChoice::StringParam(s.to_owned()),
            };
            Ok((
                name,
                pb::InferParameter {
                    parameter_choice: Some(choice),
                },
            ))
        })
        .collect()
}

/// Which outputs go in the binary tail: an output's own `binary_data` flag, else the
/// request's `binary_data_output`.
struct BinaryOutputs {
    default: bool,
    per_output: HashMap<String, bool>,
}

impl BinaryOutputs {
    fn binary(&self, name: &str) -> bool {
        self.per_output.get(name).copied().unwrap_or(self.default)
    }
}

fn binary_outputs(request: &InferRequestBody) -> Result<BinaryOutputs, Failure> {
    let flag = |place: &str, value: Option<&Value>| match value {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(Failure::invalid(format!(
            "{place} must be a boolean, not {other}"
        ))),
    };
    let default = flag(
        "parameter 'binary_data_output'",
        request.parameters.get("binary_data_output"),
    )?
    .unwrap_or(false);
    let mut per_output = HashMap::new();
    for output in &request.outputs {
        let place = format!("output '{}' parameter 'binary_data'", output.name);
        if let Some(binary) = flag(&place, output.parameters.get("binary_data"))? {
            per_output.insert(output.name.clone(), binary);
        }
    }
    Ok(BinaryOutputs {
        default,
        per_output,
    })
}

/// Builds the REST answer from the (raw) protobuf response.
fn respond(response: pb::ModelInferResponse, binary: &BinaryOutputs) -> Response {
    let mut tail = Vec::new();
    let outputs = response
        .outputs
        .into_iter()
        .zip(response.raw_output_contents)
        .map(|(output, raw)| {
            let (parameters, data) = if binary.binary(&output.name) {
                tail.extend_from_slice(&raw);
                (
                    Some(serde_json::json!({"binary_data_size": raw.len()})),
                    None,
                )
            } else {
                (None, Some(json_data(&output.name, &output.datatype, &raw)))
            };
            OutputTensor {
                name: output.name,
                datatype: output.datatype,
                shape: output.shape,
                parameters,
                data,
            }
        })
        .collect();
    let body = InferResponseBody {
        model_name: response.model_name,
        model_version: response.model_version,
        id: response.id,
        outputs,
    };
    if tail.is_empty() {
        return Json(body).into_response();
    }
    let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
    let json_length = bytes.len();
    bytes.extend_from_slice(&tail);
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(HEADER_LENGTH, HeaderValue::from(json_length));
    response
}

/// A raw output as JSON `data`: BYTES as strings, or `{"b64": ...}` for the binary outputs (the
/// convention inputs use), FP32 as numbers.
fn json_data(name: &str, datatype: &str, raw: &[u8]) -> Value {
    let binary = OutputKind::from_name(name).is_some_and(OutputKind::is_binary);
    match datatype {
        // Through the f32's shortest decimal form: 0.96, not 0.9599999785423279.
        "FP32" => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]).to_string())
            .map(|decimal| decimal.parse::<f64>().map_or(Value::Null, Value::from))
            .collect(),
        _ => tensor::split_bytes(&Bytes::copy_from_slice(raw))
            .unwrap_or_default()
            .iter()
            .map(|e| match binary {
                true => serde_json::json!({ "b64": base64::engine::general_purpose::STANDARD.encode(e) }),
                false => Value::from(String::from_utf8_lossy(e).into_owned()),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::is_json_like;

    #[test]
    fn infer_bodies_come_with_many_content_types_but_not_uploads() {
        for accepted in [
            "application/json",
            "application/json; charset=utf-8",
            "application/octet-stream",
            "application/x-www-form-urlencoded",
            "Application/JSON",
            "application/vnd.api+json",
        ] {
            assert!(is_json_like(accepted), "{accepted}");
        }
        for refused in [
            "multipart/form-data; boundary=x",
            "image/png",
            "application/pdf",
        ] {
            assert!(!is_json_like(refused), "{refused}");
        }
    }
}
