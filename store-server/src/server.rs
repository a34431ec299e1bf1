//! `run`: the one entry point. `main` binds and passes a Ctrl-C/SIGTERM future; tests bind
//! port 0 and pass their own.

use crate::append::Writer;
use crate::config::{Config, Storage};
use crate::http::{AppState, app};
use crate::metrics::Metrics;
use crate::subscriptions::Hub;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tracing::{info, warn};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Storage could not be opened or migrated.
    #[error("cannot open storage")]
    Storage(#[from] crate::store::Error),
    /// Serving failed.
    #[error("cannot serve")]
    Io(#[from] std::io::Error),
    /// The TLS certificate or key could not be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// Refused to serve beyond loopback without an auth file.
    #[error(
        "refusing to listen on {0} without authentication: anyone who can reach it could read \
         and write every stream. Give --auth-file, listen on 127.0.0.1, or pass \
         --insecure-no-auth"
    )]
    Insecure(std::net::SocketAddr),
    /// The metrics registry refused a metric (a bug).
    #[error("cannot register metrics")]
    Metrics(#[from] prometheus::Error),
}

/// Serves the API on `listener` until `shutdown` completes, then stops accepting, lets
/// in-flight requests finish, answers every queued append, and returns.
///
/// # Errors
/// Storage cannot be opened (unreachable, migration refused, unsafe durability), or the
/// listener fails.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let address = listener.local_addr()?;
    if config.auth.is_none() && !address.ip().is_loopback() {
        if !config.insecure_no_auth {
            return Err(Error::Insecure(address));
        }
        warn!(%address, "listening beyond loopback WITHOUT authentication (--insecure-no-auth): anyone who can connect may read and write");
    }
    let limits = &config.transport;
    let transport = crate::listen::Transport {
        tls: match &limits.tls {
            Some((cert, key)) => Some(crate::listen::tls(cert, key).map_err(Error::Tls)?),
            None => None,
        },
        connections_max: limits.connections_max,
        header_bytes_max: limits.header_bytes_max,
        header_read_timeout: limits.header_read_timeout,
    };
    let store = crate::store::open(&config.storage).await?;
    let metrics = Arc::new(Metrics::new()?);
    let head = store.head().await?;
    metrics.head_position.set(crate::store::to_i64(head.0));
    // Every long-lived task watches this; it turns true once `shutdown` completes.
    let (stopping, stop) = watch::channel(false);
    let (hub, tailer) = Hub::start(store.clone(), config.subscriptions, head, stop.clone());
    let (writer, writer_task) =
        Writer::start(store.clone(), config.batch, metrics.clone(), hub.committed());
    let state = AppState {
        store,
        writer,
        http: config.http,
        append: config.append,
        metrics,
        hub,
        subscriptions: config.subscriptions,
        subscription_slots: Arc::new(Semaphore::new(config.subscriptions.subscriptions_max)),
        shutdown: stop,
        consumer_updates: Arc::new(tokio::sync::Notify::new()),
        auth: config.auth.clone(),
        public_metrics: config.public_metrics,
    };
    let storage = match &config.storage {
        Storage::Sqlite { data_dir, .. } => {
            data_dir.join(crate::store::SQLITE_FILE_NAME).display().to_string()
        }
        Storage::Postgres(_) => "postgres".into(),
    };
    info!(
        %address,
        auth = config.auth.is_some(),
        tls = config.transport.tls.is_some(),
        backend = state.store.backend().name(),
        %storage,
        request_body_bytes_max = config.http.request_body_bytes_max,
        append_events_max = config.append.append_events_max,
        event_bytes_max = config.append.event_bytes_max,
        read_limit_max = config.http.read_limit_max,
        "serving"
    );
    let signal = async move {
        shutdown.await;
        info!("shutting down: no new connections, finishing requests in flight");
        // Ends every subscription, so that their responses complete and serving can stop.
        let _ = stopping.send(true);
    };
    crate::listen::serve(
        listener,
        app(state),
        transport,
        signal,
        config.http.shutdown_drain_timeout,
    )
    .await;
    // Every handle to the writer went with the app: it drains what is queued, then ends.
    let _ = writer_task.await;
    let _ = tailer.await;
    info!("stopped");
    Ok(())
}
