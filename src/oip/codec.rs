//! The protobuf form of an inference, both ways: `ModelInferRequest` into the model's
//! [`InferRequest`] and the model's answer back into `ModelInferResponse`. gRPC uses it
//! directly; the REST transcoder builds the same messages from JSON, so every OIP transport
//! shares one validation.

use std::{collections::HashMap, time::Instant};

use bytes::Bytes;

use super::{
    pb::{
        self, infer_parameter::ParameterChoice, model_infer_request::InferInputTensor,
        model_infer_response::InferOutputTensor,
    },
    tensor::{self, OutputTensor},
};
use crate::{
    model::{
        self, InferError, InferRequest, InferResponse, Model, OptionsBuilder, ParamValue,
        INPUT_NAME, VERSION,
    },
    ocr::OutputKind,
};

/// Runs one protobuf inference request through the model.
pub async fn infer(
    model: &Model,
    request: pb::ModelInferRequest,
    deadline: Option<Instant>,
) -> Result<pb::ModelInferResponse, InferError> {
    let raw = !request.raw_input_contents.is_empty();
    let request = decode(model, request, deadline)?;
    let response = model.infer(request).await?;
    Ok(encode(model, response, raw))
}

/// Turns a ModelInferRequest into the model's request, checking everything that is specific
/// to the protobuf encoding. Public for the fuzz target.
pub fn decode(
    model: &Model,
    mut request: pb::ModelInferRequest,
    deadline: Option<Instant>,
) -> Result<InferRequest, InferError> {
    model.resolve(&request.model_name, &request.model_version)?;
    let raw = std::mem::take(&mut request.raw_input_contents);
    if !raw.is_empty() && raw.len() != request.inputs.len() {
        return Err(InferError::InvalidInput(format!(
            "raw_input_contents has {} entries for {} inputs; expected one per input",
            raw.len(),
            request.inputs.len()
        )));
    }
    let index = single_image_input(&request.inputs)?;
    let mut input = request.inputs.swap_remove(index);
    let raw = raw.into_iter().nth(index);

    let images = match (raw, input.contents.take()) {
        (Some(_), Some(_)) => {
            return Err(InferError::InvalidInput(format!(
                "input '{INPUT_NAME}' has both contents and raw_input_contents; send one"
            )))
        }
        (Some(raw), None) => match input.datatype.as_str() {
            "BYTES" => tensor::encoded_images(&input.shape, tensor::split_bytes(&raw)?)?,
            "UINT8" => tensor::pixel_images(&input.shape, raw)?,
            other => return Err(unsupported_datatype(other)),
        },
        (None, contents) => {
            let contents = contents.unwrap_or_default();
            match input.datatype.as_str() {
                "BYTES" => tensor::encoded_images(&input.shape, contents.bytes_contents)?,
                "UINT8" => {
                    tensor::pixel_images(&input.shape, typed_uint8(&contents.uint_contents)?)?
                }
                other => return Err(unsupported_datatype(other)),
            }
        }
    };

    let mut options = model.options_builder();
    apply_params(&mut options, "request parameter", &request.parameters)?;
    let tensor_place = format!("input '{INPUT_NAME}' parameter");
    apply_params(&mut options, &tensor_place, &input.parameters)?;
    let asked = options
        .timeout()
        .and_then(|timeout| model::deadline_after(Instant::now(), timeout));
    let deadline = model::earliest(deadline, asked);

    Ok(InferRequest {
        id: request.id,
        images,
        options: options.build(),
        outputs: requested_outputs(&request.outputs)?,
        deadline,
    })
}

/// The index of the one `image` input; any other input is a mistake worth naming.
fn single_image_input(inputs: &[InferInputTensor]) -> Result<usize, InferError> {
    if let Some(other) = inputs.iter().find(|i| i.name != INPUT_NAME) {
        return Err(InferError::InvalidInput(format!(
            "unexpected input '{}'; the model takes one input '{INPUT_NAME}'",
            other.name
        )));
    }
    match inputs.len() {
        0 => Err(InferError::InvalidInput(format!(
            "missing input '{INPUT_NAME}'"
        ))),
        1 => Ok(0),
        n => Err(InferError::InvalidInput(format!(
            "input '{INPUT_NAME}' appears {n} times; send it once with all images in its batch"
        ))),
    }
}

fn unsupported_datatype(datatype: &str) -> InferError {
    InferError::InvalidInput(format!(
        "input '{INPUT_NAME}': datatype '{datatype}' is not accepted; \
         expected BYTES (encoded image files) or UINT8 (raw pixels)"
    ))
}

/// UINT8 in typed form arrives widened to u32, one element per pixel byte.
fn typed_uint8(values: &[u32]) -> Result<Bytes, InferError> {
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            u8::try_from(v).map_err(|_| {
                InferError::InvalidInput(format!(
                    "input '{INPUT_NAME}': uint_contents[{i}] = {v} does not fit UINT8"
                ))
            })
        })
        .collect::<Result<Vec<u8>, _>>()
        .map(Bytes::from)
}

fn apply_params(
    options: &mut OptionsBuilder<'_>,
    place: &str,
    params: &HashMap<String, pb::InferParameter>,
) -> Result<(), InferError> {
    for (name, param) in params {
        let value = match &param.parameter_choice {
            Some(ParameterChoice::BoolParam(b)) => ParamValue::Bool(*b),
            Some(ParameterChoice::Int64Param(i)) => ParamValue::Int(*i),
            Some(ParameterChoice::Uint64Param(u)) => ParamValue::Uint(*u),
            Some(ParameterChoice::DoubleParam(d)) => ParamValue::Double(*d),
            Some(ParameterChoice::StringParam(s)) => ParamValue::Str(s),
            None => {
                tracing::info!(place, parameter = %name, "ignoring parameter without a value");
                continue;
            }
        };
        options.apply(place, name, value)?;
    }
    Ok(())
}

/// The outputs in the order the request lists them. A request that lists none gets every output
/// but the costly or document-only ones (`alto`, `pdf`, `pages`), in model order: the protocol
/// says all of them, but a searchable PDF nobody asked for would double the work.
fn requested_outputs(
    requested: &[pb::model_infer_request::InferRequestedOutputTensor],
) -> Result<Vec<OutputKind>, InferError> {
    if requested.is_empty() {
        return Ok(OutputKind::DEFAULT.to_vec());
    }
    let mut outputs = Vec::with_capacity(requested.len());
    for output in requested {
        let kind = OutputKind::from_name(&output.name).ok_or_else(|| {
            let names: Vec<_> = OutputKind::ALL.map(OutputKind::name).to_vec();
            InferError::InvalidInput(format!(
                "unknown output '{}'; the model's outputs are {}",
                output.name,
                names.join(", ")
            ))
        })?;
        if outputs.contains(&kind) {
            return Err(InferError::InvalidInput(format!(
                "output '{kind}' is requested twice"
            )));
        }
        if let Some(name) = output
            .parameters
            .keys()
            .find(|k| is_unsupported_output_param(k))
        {
            return Err(InferError::InvalidInput(format!(
                "output '{kind}' parameter '{name}': this server does not support that extension"
            )));
        }
        outputs.push(kind);
    }
    Ok(outputs)
}

fn is_unsupported_output_param(name: &str) -> bool {
    name == "classification" || name.starts_with("shared_memory_")
}

/// Encodes results in the carrier the request used: raw inputs get every output in
/// `raw_output_contents` (tritonclient reads nothing else), typed inputs get typed contents.
fn encode(model: &Model, response: InferResponse, raw: bool) -> pb::ModelInferResponse {
    let InferResponse {
        id,
        outputs,
        mut results,
    } = response;
    let mut encoded = pb::ModelInferResponse {
        model_name: model.name().to_owned(),
        model_version: VERSION.to_owned(),
        id,
        ..Default::default()
    };
    for kind in outputs {
        let values = OutputTensor::take(kind, &mut results);
        let mut output = InferOutputTensor {
            name: kind.name().to_owned(),
            datatype: kind.spec().datatype.to_owned(),
            shape: vec![values.len() as i64],
            ..Default::default()
        };
        if raw {
            encoded.raw_output_contents.push(values.to_raw().into());
        } else {
            output.contents = Some(match values {
                OutputTensor::Bytes(bytes_contents) => pb::InferTensorContents {
                    bytes_contents,
                    ..Default::default()
                },
                OutputTensor::Fp32(fp32_contents) => pb::InferTensorContents {
                    fp32_contents,
                    ..Default::default()
                },
            });
        }
        encoded.outputs.push(output);
    }
    encoded
}
