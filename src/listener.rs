//! Accepting connections for both ports: TCP, then the TLS handshake when TLS is on. Each
//! handshake runs in a task of its own under a timeout, so a client that never finishes one
//! holds nothing but that task, and the accept loop never waits on a client.

use std::{
    io,
    net::SocketAddr,
    num::NonZeroU32,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, LazyLock,
    },
    task::{Context, Poll},
    time::Duration,
};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use metrics::counter;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::{
    identity::Peer,
    telemetry::metrics::TLS_HANDSHAKE_FAILURES,
    tls::{self, Tls},
};

/// Connections handed to the server but not yet taken by it.
const BACKLOG: usize = 64;

/// One accepted connection, plain or TLS, and who is at the other end.
pub struct Connection {
    io: Io,
    peer: Peer,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection {
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    fn tls(stream: TlsStream<TcpStream>) -> Connection {
        let identity = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(tls::identity)
            .map(Arc::from);
        Connection {
            io: Io::Tls(Box::new(stream)),
            peer: Peer { identity },
        }
    }
}

/// Accepts on `listener` until the returned stream is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Tls>,
    handshake_timeout: Duration,
) -> ReceiverStream<io::Result<Connection>> {
    let (sender, receiver) = mpsc::channel(BACKLOG);
    tokio::spawn(accept(listener, tls, handshake_timeout, sender));
    ReceiverStream::new(receiver)
}

async fn accept(
    listener: TcpListener,
    tls: Option<Tls>,
    handshake_timeout: Duration,
    connections: mpsc::Sender<io::Result<Connection>>,
) {
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = connections.closed() => return,
        };
        // Small unary responses must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let Some(tls) = &tls else {
            let plain = Connection {
                io: Io::Plain(stream),
                peer: Peer::default(),
            };
            match connections.send(Ok(plain)).await {
                Ok(()) => continue,
                Err(_) => return,
            }
        };
        let acceptor = tls.acceptor();
        let connections = connections.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let _ = connections.send(Ok(Connection::tls(stream))).await;
                }
                Ok(Err(error)) => refused(remote, tls::handshake_failure(&error), &error),
                Err(_) => {
                    let error = format!("no handshake within {handshake_timeout:?}");
                    refused(remote, "timeout", &error);
                }
            }
        });
    }
}

/// Refused handshakes logged at once before the log is rate limited, and then per second.
const REFUSAL_LOG_BURST: u32 = 10;

/// A refused handshake: counted always, logged at `warn` (with how many were not logged since
/// the last line) at most [`REFUSAL_LOG_BURST`] at once and one a second after that, so a
/// scanner cannot flood the log.
fn refused(remote: SocketAddr, reason: &'static str, error: &dyn std::fmt::Display) {
    static LOG_BUDGET: LazyLock<DefaultDirectRateLimiter> = LazyLock::new(|| {
        let burst = NonZeroU32::new(REFUSAL_LOG_BURST).unwrap_or(NonZeroU32::MIN);
        RateLimiter::direct(Quota::per_second(NonZeroU32::MIN).allow_burst(burst))
    });
    static UNLOGGED: AtomicU64 = AtomicU64::new(0);

    counter!(TLS_HANDSHAKE_FAILURES, "reason" => reason).increment(1);
    if LOG_BUDGET.check().is_ok() {
        let unlogged = UNLOGGED.swap(0, Ordering::Relaxed);
        tracing::warn!(%remote, reason, %error, unlogged, "TLS handshake refused");
    } else {
        UNLOGGED.fetch_add(1, Ordering::Relaxed);
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(stream) => stream.is_write_vectored(),
            Io::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}
