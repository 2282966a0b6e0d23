//! The gRPC listener: the OIP service, standard health checking that follows readiness, server
//! reflection (v1 and v1alpha), and graceful shutdown.

use std::{future::Future, net::SocketAddr, sync::Arc};

use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tokio_stream::{wrappers::TcpListenerStream, StreamExt};
use tonic::codec::CompressionEncoding;
use tonic_health::{server::HealthReporter, ServingStatus};

use crate::{
    config::ServeConfig,
    model::Model,
    ocr::{EnginePool, PoolError},
    oip::{
        grpc::OipService,
        pb::{self, grpc_inference_service_server::GrpcInferenceServiceServer},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A server that is listening. Engines may still be loading: see [`Server::ready`].
pub struct Server {
    grpc_addr: SocketAddr,
    model: Arc<Model>,
    health: HealthReporter,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

/// The fully qualified name health checks use for the inference service.
pub const SERVICE_NAME: &str =
    <GrpcInferenceServiceServer<OipService> as tonic::server::NamedService>::NAME;

impl Server {
    /// Binds the listener and starts serving; the engines load in the background while health
    /// reports NOT_SERVING.
    pub async fn start(config: ServeConfig) -> Result<Server, ServeError> {
        let listener = TcpListener::bind(config.grpc_addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: config.grpc_addr,
                source,
            })?;
        let grpc_addr = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: config.grpc_addr,
            source,
        })?;
        let model = Model::new(config.model_name, EnginePool::start(config.pool)?);

        let (health, health_service) = tonic_health::server::health_reporter();
        set_health(&health, ServingStatus::NotServing).await;
        // grpcurl up to 1.8.7, Postman and Python's grpcio-reflection speak only v1alpha.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;
        let oip = GrpcInferenceServiceServer::new(OipService::new(model.clone()))
            .max_decoding_message_size(config.max_message_bytes)
            .max_encoding_message_size(config.max_message_bytes)
            .accept_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Gzip);

        let incoming = TcpListenerStream::new(listener).map(|stream| {
            let stream = stream?;
            // Small unary responses must not wait for Nagle's algorithm.
            stream.set_nodelay(true)?;
            Ok::<_, std::io::Error>(stream)
        });
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let router = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(oip);
        let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
            let _ = shutdown_rx.await;
        }));
        tracing::info!(%grpc_addr, model = model.name(), "listening for gRPC");
        Ok(Server {
            grpc_addr,
            model,
            health,
            shutdown,
            task,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Waits for the engines to load, then reports SERVING.
    pub async fn ready(&self) -> Result<(), ServeError> {
        self.model.pool().wait_ready().await?;
        set_health(&self.health, ServingStatus::Serving).await;
        tracing::info!(
            workers = self.model.pool().workers(),
            lang = self.model.pool().default_lang().as_str(),
            "ready"
        );
        Ok(())
    }

    /// Reports NOT_SERVING, stops accepting, lets in-flight calls finish, then returns.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        set_health(&self.health, ServingStatus::NotServing).await;
        let _ = self.shutdown.send(());
        self.task.await??;
        Ok(())
    }
}

/// Runs until `signal` resolves, then shuts down gracefully.
pub async fn run(config: ServeConfig, signal: impl Future<Output = ()>) -> Result<(), ServeError> {
    let server = Server::start(config).await?;
    tokio::pin!(signal);
    tokio::select! {
        loaded = server.ready() => loaded?,
        () = &mut signal => return server.shutdown().await,
    }
    signal.await;
    tracing::info!("shutting down");
    server.shutdown().await
}

/// The whole server ("") and the inference service follow readiness together.
async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(SERVICE_NAME, status).await;
}
