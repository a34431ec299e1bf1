//! The accept loop: connections, TLS, per-connection limits and graceful shutdown. The HTTP
//! of each connection is hyper's; the routes are `http::app`.

use axum::Router;
use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tracing::{debug, warn};

/// `--connections-max` when not given.
pub const CONNECTIONS_MAX: usize = 10_000;
/// `--header-bytes-max` when not given.
pub const HEADER_BYTES_MAX: usize = 16_384;
/// `--header-read-timeout-ms` when not given.
pub const HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// `--write-timeout-ms` when not given.
pub const WRITE_TIMEOUT_MS: u64 = 30_000;

/// How connections are accepted and held.
#[derive(Debug, Clone)]
pub struct Transport {
    /// HTTPS only, with this certificate chain and private key (PEM files), when set.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Most connections open at once; past it, new ones wait to be accepted.
    pub connections_max: usize,
    /// Largest request head (request line and headers); past it, hyper answers 431.
    pub header_bytes_max: usize,
    /// How long a client may take to send a request's head (slow clients hold no slot).
    pub header_read_timeout: Duration,
    /// How long an answer may wait for its client to take a byte before the connection is
    /// closed (a client that stopped reading holds no memory); subscriptions aside.
    pub write_timeout: Duration,
}

impl Default for Transport {
    fn default() -> Self {
        Self {
            tls: None,
            connections_max: CONNECTIONS_MAX,
            header_bytes_max: HEADER_BYTES_MAX,
            header_read_timeout: Duration::from_millis(HEADER_READ_TIMEOUT_MS),
            write_timeout: Duration::from_millis(WRITE_TIMEOUT_MS),
        }
    }
}

/// The HTTP settings of one connection.
#[derive(Debug, Clone, Copy)]
struct Head {
    bytes_max: usize,
    read_timeout: Duration,
    write_timeout: Duration,
}

/// Loads a certificate chain and its private key (PEM) for HTTPS.
///
/// # Errors
/// A file cannot be read or parsed, or the key does not fit the certificate.
pub fn tls(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read the certificate {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read the private key {}: {e}", key.display()))?;
    // One crypto provider, named here: ring.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| format!("cannot use the certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` (over TLS with `tls`) until `shutdown` completes; then stops accepting,
/// lets open requests finish for at most `drain_timeout`, and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    transport: &Transport,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
    drain_timeout: Duration,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(transport.connections_max));
    let mut shutdown = std::pin::pin!(shutdown);
    // Every connection's task, so that those still open at the drain deadline can be ended:
    // a client that stopped reading would otherwise hold its connection, and the state it
    // serves (the writer's queue among it), for ever.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the connection semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(err) => {
                    // Out of file descriptors, say: wait a little rather than spin or stop.
                    warn!(cause = %err, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let (app, tls, watcher) = (app.clone(), tls.clone(), graceful.watcher());
        let head = Head {
            bytes_max: transport.header_bytes_max,
            read_timeout: transport.header_read_timeout,
            write_timeout: transport.write_timeout,
        };
        connections.spawn(async move {
            match tls {
                None => connection(tcp, app, head, watcher).await,
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => connection(tls, app, head, watcher).await,
                        Ok(Err(err)) => debug!(cause = %err, "TLS handshake failed"),
                        Err(_) => debug!("TLS handshake timed out"),
                    }
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain_timeout) => {
            warn!(?drain_timeout, open = connections.len(), "drain timeout: closing the connections still open");
        }
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

async fn connection<I>(io: I, app: Router, head: Head, watcher: Watcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(head.read_timeout)
        .max_buf_size(head.bytes_max);
    let streaming = Arc::new(AtomicBool::new(false));
    let io = WriteDeadline {
        io,
        timeout: head.write_timeout,
        streaming: streaming.clone(),
        stalled: None,
    };
    let app = TowerToHyperService::new(app);
    // Each request learns how to say that its answer streams (a subscription); requests on
    // one connection come one after another, so each starts as not streaming.
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        streaming.store(false, Ordering::Relaxed);
        request.extensions_mut().insert(crate::http::Streaming::new(streaming.clone()));
        app.call(request)
    });
    let connection = http.serve_connection(TokioIo::new(io), service);
    if let Err(err) = watcher.watch(connection).await {
        debug!(cause = %err, "connection ended with an error");
    }
}

/// A connection whose writes give up once the client has taken no byte for `timeout`: a
/// client that stopped reading an answer then holds neither a connection nor the answer's
/// memory. A streaming answer (a subscription) is exempt: a slow reader slows it down
/// instead, as the API promises.
struct WriteDeadline<I> {
    io: I,
    timeout: Duration,
    streaming: Arc<AtomicBool>,
    /// Since when a write has waited for the client.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<I> WriteDeadline<I> {
    fn deadline<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if poll.is_ready() || self.streaming.load(Ordering::Relaxed) {
            self.stalled = None;
            return poll;
        }
        let timeout = self.timeout;
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took no byte of the answer in time",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteDeadline<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.deadline(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.deadline(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.deadline(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
