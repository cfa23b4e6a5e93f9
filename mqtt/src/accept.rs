//! Accepting clients: TLS, a bound on open connections, the CONNECT
//! deadline and the keep-alive rule, the same for devices and agents.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::frame::{Frame, FrameError, FrameReader};

/// How long a client has to finish its TLS handshake, and then to send its
/// whole CONNECT, however slowly it trickles the bytes.
pub const CONNECT_WITHIN: Duration = Duration::from_secs(10);

/// How long a client may stay silent: one and a half times its keep-alive
/// (3.1.2-24); `None` for a keep-alive of 0, which turns the rule off.
pub fn idle_limit(keep_alive: u16) -> Option<Duration> {
    (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500))
}

/// A client's connection, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// The client's certificate, when it presented one.
    pub fn peer_certificate(&self) -> Option<&CertificateDer<'static>> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(s) => s.get_ref().1.peer_certificates().and_then(|c| c.first()),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Why a client was not handed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAccepted {
    TooManyConnections,
    /// No certificate where one is required, another CA's, an expired one.
    TlsHandshake,
    TlsTimeout,
}

impl NotAccepted {
    pub fn name(self) -> &'static str {
        match self {
            NotAccepted::TooManyConnections => "too_many_connections",
            NotAccepted::TlsHandshake => "tls_handshake",
            NotAccepted::TlsTimeout => "tls_timeout",
        }
    }
}

/// How a listener admits connections.
pub struct Admission {
    /// What the listener is, for logs ("device listener").
    pub name: &'static str,
    pub tls: Option<TlsAcceptor>,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Told of every connection not handed on.
    pub on_refused: Arc<dyn Fn(NotAccepted) + Send + Sync>,
}

/// Accepts connections on `listener` until `stop`, each handled by
/// `handle` on a task of `tasks` (TLS finished first).
pub async fn serve<F, Fut>(
    listener: TcpListener,
    admission: Admission,
    stop: CancellationToken,
    tasks: TaskTracker,
    handle: F,
) where
    F: Fn(Stream, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handle = Arc::new(handle);
    let slots = Arc::new(tokio::sync::Semaphore::new(admission.max_connections));
    let name = admission.name;
    loop {
        let (socket, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            (admission.on_refused)(NotAccepted::TooManyConnections);
            tracing::warn!(listener = name, %peer, limit = admission.max_connections, "too many connections: refused");
            continue;
        };
        let _ = socket.set_nodelay(true);
        let (handle, tls, refused) = (
            handle.clone(),
            admission.tls.clone(),
            admission.on_refused.clone(),
        );
        tasks.spawn(async move {
            let _slot = slot;
            let Some(tls) = tls else {
                return handle(Stream::Plain(socket), peer).await;
            };
            match tokio::time::timeout(CONNECT_WITHIN, tls.accept(socket)).await {
                Ok(Ok(stream)) => handle(Stream::Tls(Box::new(stream)), peer).await,
                Ok(Err(e)) => {
                    refused(NotAccepted::TlsHandshake);
                    tracing::warn!(listener = name, %peer, error = %e, "TLS handshake refused");
                }
                Err(_) => {
                    refused(NotAccepted::TlsTimeout);
                    tracing::info!(listener = name, %peer, "TLS handshake timed out");
                }
            }
        });
    }
}

/// Why no CONNECT came.
#[derive(Debug, thiserror::Error)]
pub enum FirstPacketError {
    #[error("no CONNECT within {} s", CONNECT_WITHIN.as_secs())]
    TimedOut,
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// The first packet, which must arrive whole within [`CONNECT_WITHIN`];
/// `None` if the client closed first.
pub async fn first_packet<R: AsyncRead + Unpin>(
    reader: &mut FrameReader,
    rd: &mut R,
) -> Result<Option<Frame>, FirstPacketError> {
    match tokio::time::timeout(CONNECT_WITHIN, reader.next(rd)).await {
        Ok(frame) => Ok(frame?),
        Err(_) => Err(FirstPacketError::TimedOut),
    }
}

/// The next packet, or `Ok(None)` at a close; `Err(None)` when the client
/// was silent longer than `idle`.
pub async fn next_packet<R: AsyncRead + Unpin>(
    reader: &mut FrameReader,
    rd: &mut R,
    idle: Option<Duration>,
) -> Result<Option<Frame>, Option<FrameError>> {
    let next = reader.next(rd);
    let frame = match idle {
        Some(limit) => tokio::time::timeout(limit, next).await.map_err(|_| None)?,
        None => next.await,
    };
    frame.map_err(Some)
}
