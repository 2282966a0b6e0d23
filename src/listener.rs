//! Accepting connections for both ports: TCP, then the TLS handshake when TLS is on. Each
//! handshake runs in a task of its own under a timeout, so a client that never finishes one
//! holds nothing but that task, and the accept loop never waits on a client.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use metrics::counter;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::{
    telemetry::metrics::TLS_HANDSHAKE_FAILURES,
    tls::{self, Peer, Tls},
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
            let failure =
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let _ = connections.send(Ok(Connection::tls(stream))).await;
                        return;
                    }
                    Ok(Err(error)) => error.to_string(),
                    Err(_) => format!("no handshake within {handshake_timeout:?}"),
                };
            counter!(TLS_HANDSHAKE_FAILURES).increment(1);
            tracing::debug!(%remote, error = %failure, "TLS handshake failed");
        });
    }
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
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
