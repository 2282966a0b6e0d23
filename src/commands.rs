//! The one-shot subcommands: `ocr` (files through the engine pool) and `healthcheck`.

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};
use tower::service_fn;

use crate::{
    config::{HealthcheckArgs, OcrArgs},
    model::{Admission, InferError, InferRequest, Model, ParamValue, DEFAULT_MODEL_NAME},
    ocr::{EnginePool, ImageInput, OutputKind},
    oip::pb::{grpc_inference_service_client::GrpcInferenceServiceClient, ServerReadyRequest},
    tls,
};

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Pool(#[from] crate::ocr::PoolError),
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Infer { path: String, source: InferError },
    #[error("{0}")]
    Option(InferError),
    #[error("server at {addr} is not reachable: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("server at {0} is not ready")]
    NotReady(String),
    #[error("--tls-cert: {0}")]
    Tls(#[from] tls::TlsError),
}

/// Recognises each file and prints its text (or one JSON object per line with `--json`).
pub async fn ocr(args: OcrArgs) -> Result<(), CommandError> {
    let pool = EnginePool::start(args.engine.validate()?)?;
    let model = Model::new(
        DEFAULT_MODEL_NAME.to_owned(),
        pool,
        Admission::default(),
        None,
    );
    model.pool().wait_ready().await?;
    let mut options = model.options_builder();
    let given = [
        ("psm", args.psm.map(ParamValue::Int)),
        ("pages", args.pages.as_deref().map(ParamValue::Str)),
        ("rotate", args.rotate.as_deref().map(ParamValue::Str)),
        ("render_dpi", args.render_dpi.map(ParamValue::Int)),
    ];
    for (name, value) in given {
        if let Some(value) = value {
            options
                .apply("option", name, value)
                .map_err(CommandError::Option)?;
        }
    }
    let options = options.build();
    let outputs = if args.json {
        vec![OutputKind::Words, OutputKind::Pages]
    } else {
        vec![OutputKind::Text]
    };
    for path in &args.files {
        let name = path.display().to_string();
        let file = std::fs::read(path).map_err(|source| CommandError::Read {
            path: name.clone(),
            source,
        })?;
        let request = InferRequest {
            id: name.clone(),
            images: vec![ImageInput::Encoded(Bytes::from(file))],
            options: options.clone(),
            outputs: outputs.clone(),
            deadline: None,
        };
        let mut response = model
            .infer(request)
            .await
            .map_err(|source| CommandError::Infer {
                path: name.clone(),
                source,
            })?;
        let result = response.results.remove(0);
        if !args.json {
            print!("{}", result.text.unwrap_or_default());
            continue;
        }
        let words = result.words.unwrap_or_default();
        for page in result.pages {
            let line = json!({
                "file": name,
                "page": page.page,
                "text": page.text,
                "confidence": page.confidence,
                "orientation": page.orientation,
                "words": words.iter().filter(|w| w.page == page.page).collect::<Vec<_>>(),
            });
            println!("{line}");
        }
    }
    Ok(())
}

/// Succeeds when the server answers ServerReady with `ready: true` within the timeout.
pub async fn healthcheck(args: HealthcheckArgs) -> Result<(), CommandError> {
    let addr = args.addr().to_string();
    let unreachable = |reason: String| CommandError::Unreachable {
        addr: addr.clone(),
        reason,
    };
    let tls = args
        .tls_cert
        .as_deref()
        .map(tls::pinned_client)
        .transpose()?;
    let check = async {
        let channel = channel(args.addr(), tls).await.map_err(unreachable)?;
        let mut client = GrpcInferenceServiceClient::new(channel);
        let reply = client
            .server_ready(ServerReadyRequest {})
            .await
            .map_err(|status| unreachable(status.message().to_owned()))?;
        match reply.into_inner().ready {
            true => Ok(()),
            false => Err(CommandError::NotReady(addr.clone())),
        }
    };
    tokio::time::timeout(args.timeout(), check)
        .await
        .unwrap_or_else(|_| {
            Err(unreachable(format!(
                "no answer within {:?}",
                args.timeout()
            )))
        })
}

/// A gRPC channel to `addr`: plaintext, or over TLS with `tls`.
async fn channel(addr: SocketAddr, tls: Option<rustls::ClientConfig>) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).map_err(|e| e.to_string())?;
    let Some(tls) = tls else {
        return endpoint.connect().await.map_err(|e| with_sources(&e));
    };
    let connector = TlsConnector::from(Arc::new(tls));
    let connect = service_fn(move |_: Uri| {
        let connector = connector.clone();
        async move {
            let tcp = TcpStream::connect(addr).await?;
            let name = ServerName::IpAddress(addr.ip().into());
            let stream = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    endpoint
        .connect_with_connector(connect)
        .await
        .map_err(|e| with_sources(&e))
}

/// An error and its causes, `: `-separated: tonic's own message is only "transport error".
fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
