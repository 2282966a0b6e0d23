//! `inference.GRPCInferenceService`: the OIP gRPC adapter around [`Model`].

use std::{
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::{
    codec::infer,
    pb::{self, grpc_inference_service_server::GrpcInferenceService},
    EXTENSIONS, SERVER_NAME,
};
use crate::{
    failure::{Failure, Reason},
    model::{InferError, Model, TensorSpec, INPUT, PLATFORM, VERSION},
    ocr::OutputKind,
    telemetry::Arrived,
};

pub struct OipService {
    model: Arc<Model>,
}

impl OipService {
    pub fn new(model: Arc<Model>) -> OipService {
        OipService { model }
    }
}

type StreamInferResponses =
    Pin<Box<dyn Stream<Item = Result<pb::ModelStreamInferResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcInferenceService for OipService {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        let ready = self.model.is_ready();
        Ok(Response::new(pb::ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let request = request.into_inner();
        self.model
            .resolve(&request.name, &request.version)
            .map_err(status)?;
        let ready = self.model.is_ready();
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: SERVER_NAME.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            extensions: EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let request = request.into_inner();
        self.model
            .resolve(&request.name, &request.version)
            .map_err(status)?;
        let tensor = |spec: TensorSpec| pb::model_metadata_response::TensorMetadata {
            name: spec.name.to_owned(),
            datatype: spec.datatype.to_owned(),
            shape: spec.shape.to_vec(),
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: self.model.name().to_owned(),
            versions: vec![VERSION.to_owned()],
            platform: PLATFORM.to_owned(),
            inputs: vec![tensor(INPUT)],
            outputs: OutputKind::ALL.map(|k| tensor(k.spec())).to_vec(),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let deadline = grpc_deadline(&request)?;
        let response = infer(&self.model, request.into_inner(), deadline)
            .await
            .map_err(status)?;
        Ok(Response::new(response))
    }

    type ModelStreamInferStream = StreamInferResponses;

    /// Requests on one stream run concurrently (up to one per engine) and are answered in the
    /// order they came; a failed request answers with `error_message` and the stream goes on.
    async fn model_stream_infer(
        &self,
        request: Request<Streaming<pb::ModelInferRequest>>,
    ) -> Result<Response<StreamInferResponses>, Status> {
        let deadline = grpc_deadline(&request)?;
        let model = self.model.clone();
        let concurrency = model.pool().workers();
        let responses = request
            .into_inner()
            .map(move |message| {
                let model = model.clone();
                async move {
                    let request = message?;
                    let (id, model_name) = (request.id.clone(), request.model_name.clone());
                    Ok(match infer(&model, request, deadline).await {
                        Ok(response) => pb::ModelStreamInferResponse {
                            error_message: String::new(),
                            infer_response: Some(response),
                        },
                        Err(error) => pb::ModelStreamInferResponse {
                            error_message: Failure::from(error).message().to_owned(),
                            infer_response: Some(pb::ModelInferResponse {
                                model_name,
                                id,
                                ..Default::default()
                            }),
                        },
                    })
                }
            })
            .buffered(concurrency);
        Ok(Response::new(Box::pin(responses)))
    }

    async fn model_config(
        &self,
        request: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let request = request.into_inner();
        self.model
            .resolve(&request.name, &request.version)
            .map_err(status)?;
        let data_type = |spec: TensorSpec| match spec.datatype {
            "FP32" => pb::DataType::TypeFp32,
            _ => pb::DataType::TypeString,
        } as i32;
        let config = pb::ModelConfig {
            name: self.model.name().to_owned(),
            platform: PLATFORM.to_owned(),
            backend: SERVER_NAME.to_owned(),
            // The batch is the input's only dimension, not a separate leading one.
            max_batch_size: 0,
            input: vec![pb::ModelInput {
                name: INPUT.name.to_owned(),
                data_type: data_type(INPUT),
                dims: INPUT.shape.to_vec(),
            }],
            output: OutputKind::ALL
                .map(|kind| pb::ModelOutput {
                    name: kind.name().to_owned(),
                    data_type: data_type(kind.spec()),
                    dims: kind.spec().shape.to_vec(),
                })
                .to_vec(),
        };
        Ok(Response::new(pb::ModelConfigResponse {
            config: Some(config),
        }))
    }

    async fn model_statistics(
        &self,
        request: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let request = request.into_inner();
        if !request.name.is_empty() {
            self.model
                .resolve(&request.name, &request.version)
                .map_err(status)?;
        }
        let stats = self.model.stats();
        let duration = |d: crate::model::DurationTotal| {
            Some(pb::StatisticDuration {
                count: d.count,
                ns: d.ns,
            })
        };
        let model_stats = pb::ModelStatistics {
            name: self.model.name().to_owned(),
            version: VERSION.to_owned(),
            last_inference: stats.last_inference_ms,
            inference_count: stats.inference_count,
            execution_count: stats.execution_count,
            inference_stats: Some(pb::InferStatistics {
                success: duration(stats.success),
                fail: duration(stats.fail),
                queue: duration(stats.queue),
                compute_input: duration(stats.compute_input),
                compute_infer: duration(stats.compute_infer),
                compute_output: duration(Default::default()),
                cache_hit: duration(Default::default()),
                cache_miss: duration(Default::default()),
            }),
            ..Default::default()
        };
        Ok(Response::new(pb::ModelStatisticsResponse {
            model_stats: vec![model_stats],
        }))
    }

    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let ready = self.model.is_ready();
        let models = if request.into_inner().ready && !ready {
            Vec::new()
        } else {
            vec![pb::repository_index_response::ModelIndex {
                name: self.model.name().to_owned(),
                version: VERSION.to_owned(),
                state: if ready { "READY" } else { "LOADING" }.to_owned(),
                reason: String::new(),
            }]
        };
        Ok(Response::new(pb::RepositoryIndexResponse { models }))
    }

    /// The model is built in and always loaded: loading it again succeeds and does nothing.
    async fn repository_model_load(
        &self,
        request: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        let request = request.into_inner();
        let name = repository_model_name(&request.model_name, &request.repository_name);
        self.model.resolve(name, "").map_err(status)?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {
            model_name: name.to_owned(),
            is_loaded: true,
        }))
    }

    async fn repository_model_unload(
        &self,
        request: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        let request = request.into_inner();
        let name = repository_model_name(&request.model_name, &request.repository_name);
        self.model.resolve(name, "").map_err(status)?;
        Err(Failure::new(
            Reason::Unimplemented,
            format!("model '{name}' is built into this server and cannot be unloaded"),
        )
        .into())
    }
}

/// gRPC methods anyone may call, like the REST probes: health checking, reflection, and
/// server liveness and readiness.
pub fn open_methods() -> impl Iterator<Item = String> {
    super::grpc_methods().filter(|method| {
        method.starts_with("/grpc.health.")
            || method.starts_with("/grpc.reflection.")
            || method.ends_with("/ServerLive")
            || method.ends_with("/ServerReady")
    })
}

/// KServe clients put the model name in field 1, Triton clients in field 2.
fn repository_model_name<'a>(model_name: &'a str, repository_name: &'a str) -> &'a str {
    if model_name.is_empty() {
        repository_name
    } else {
        model_name
    }
}

/// An inference error as a gRPC status, through the one classification.
pub fn status(error: InferError) -> Status {
    Failure::from(error).into_status()
}

/// The most the server's deadline runs ahead of the client's; see [`grpc_deadline`].
const DEADLINE_HEADROOM: Duration = Duration::from_millis(50);

/// The deadline a client set with `grpc-timeout`. Left to tonic, an expired timeout becomes
/// CANCELLED with no work stopped; read here, the work is cancelled and the answer is
/// DEADLINE_EXCEEDED. The server gives up a little (10 %, at most 50 ms) before the client does,
/// so that answer arrives before the client's own timer fires, counting from when the request
/// arrived (the client's timer starts then too), not from when its body was decoded. A
/// malformed `grpc-timeout` is refused rather than ignored: the client believes it is bounded.
pub fn grpc_deadline<T>(request: &Request<T>) -> Result<Option<Instant>, Failure> {
    let Some(value) = request.metadata().get("grpc-timeout") else {
        return Ok(None);
    };
    let timeout = value
        .to_str()
        .ok()
        .and_then(parse_grpc_timeout)
        .ok_or_else(|| {
            Failure::invalid(
                "metadata grpc-timeout must be at most 8 digits and a unit (H, M, S, m, u, n)",
            )
        })?;
    let arrived = request
        .extensions()
        .get::<Arrived>()
        .map_or_else(Instant::now, |arrived| arrived.0);
    Ok(crate::model::deadline_after(
        arrived,
        timeout - (timeout / 10).min(DEADLINE_HEADROOM),
    ))
}

/// `grpc-timeout` is at most 8 digits and a unit: H, M, S, m (ms), u (µs), n (ns).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("5s"), None);
        assert_eq!(parse_grpc_timeout("-5S"), None);
    }

    use tonic::Code;

    #[test]
    fn every_error_kind_has_its_code() {
        let cases = [
            (InferError::InvalidInput("x".into()), Code::InvalidArgument),
            (
                InferError::ModelNotFound {
                    requested: "a".into(),
                    served: "ocr".into(),
                },
                Code::NotFound,
            ),
            (InferError::NotReady("ocr".into()), Code::Unavailable),
            (InferError::DeadlineExceeded, Code::DeadlineExceeded),
            (InferError::Cancelled, Code::Cancelled),
            (InferError::Internal("secret detail".into()), Code::Internal),
        ];
        for (error, code) in cases {
            let status = status(error);
            assert_eq!(status.code(), code);
            assert!(!status.message().contains("secret"));
        }
    }

    #[test]
    fn repository_requests_take_the_name_from_either_field() {
        assert_eq!(repository_model_name("ocr", ""), "ocr");
        assert_eq!(repository_model_name("", "ocr"), "ocr");
        assert_eq!(repository_model_name("ocr", "repo"), "ocr");
    }
}
