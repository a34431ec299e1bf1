//! `run`: the one entry point. `main` binds and passes a Ctrl-C/SIGTERM future; tests bind
//! port 0 and pass their own.

use crate::append::Writer;
use crate::config::Config;
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

/// A server's state and background tasks, started but not yet serving: [`run`] serves it on a
/// socket; tests can drive [`Started::app`] without one.
pub struct Started {
    /// What every handler shares.
    pub state: AppState,
    stopping: watch::Sender<bool>,
    writer_task: tokio::task::JoinHandle<()>,
    tailer: tokio::task::JoinHandle<()>,
    scavenger: tokio::task::JoinHandle<()>,
    coordinator: tokio::task::JoinHandle<()>,
}

/// Opens storage and starts the writer, the tailer and the scavenger.
///
/// # Errors
/// Storage cannot be opened (unreachable, migration refused, unsafe durability).
pub async fn start(config: &Config) -> Result<Started, Error> {
    let store = crate::store::open(&config.storage, config.encryption.clone()).await?;
    store.check_key().await?;
    let metrics = Arc::new(Metrics::new()?);
    let head = store.head().await?;
    metrics.head_position.set(crate::store::to_i64(head.0));
    // Every long-lived task watches this; it turns true once `shutdown` completes.
    let (stopping, stop) = watch::channel(false);
    // The tailer starts at what reads see: behind a replica, perhaps less than the head (and
    // from the start, when the replica does not answer yet).
    let readable = match store.reads_from_replica() {
        true => store.read_head().await.unwrap_or_default(),
        false => head,
    };
    let (hub, tailer) = Hub::start(store.clone(), config.subscriptions, readable, stop.clone());
    let (writer, writer_task) =
        Writer::start(store.clone(), config.batch, metrics.clone(), hub.committed());
    let scavenger =
        crate::scavenger::start(store.clone(), config.scavenger, metrics.clone(), stop.clone());
    let groups = Arc::new(crate::groups::Groups::new(metrics.group_rebalances_total.clone()));
    let coordinator =
        crate::groups::coordinate(store.clone(), groups.clone(), config.groups, stop.clone());
    let state = AppState {
        groups,
        group_options: config.groups,
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
        tickets: Arc::new(crate::auth::Tickets::new(config.http.ui_tickets_max)),
    };
    Ok(Started { state, stopping, writer_task, tailer, scavenger, coordinator })
}

impl Started {
    /// The API over this state, to serve or to call without a socket.
    pub fn app(&self) -> axum::Router {
        app(self.state.clone())
    }

    /// Ends every subscription, answers every queued append, and waits for the background
    /// tasks. Every clone of the state (and of [`Started::app`]) must be gone by then.
    pub async fn stop(self) {
        let Self { state, stopping, writer_task, tailer, scavenger, coordinator } = self;
        let _ = stopping.send(true);
        let _ = scavenger.await;
        let _ = coordinator.await;
        // The writer ends once every handle to it is gone and its queue is drained.
        drop(state);
        let _ = writer_task.await;
        let _ = tailer.await;
    }
}

/// Serves the API on `listener` until `shutdown` completes, then stops accepting, lets
/// in-flight requests finish, answers every queued append, and returns.
///
/// # Errors
/// Storage cannot be opened (unreachable, migration refused, unsafe durability), the TLS
/// files cannot be used, or the listener fails.
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
    let tls = match &config.transport.tls {
        Some((cert, key)) => Some(crate::listen::tls(cert, key).map_err(Error::Tls)?),
        None => None,
    };
    let started = start(&config).await?;
    let replication = started.state.store.replication().await?;
    info!(
        %address,
        auth = config.auth.is_some(),
        tls = tls.is_some(),
        personal_data = config.encryption.is_some(),
        backend = started.state.store.backend().name(),
        storage = %config.storage.describe(),
        replication = replication.commits.name(),
        standbys = replication.standbys,
        read_replica = started.state.store.reads_from_replica(),
        request_body_bytes_max = config.http.request_body_bytes_max,
        append_events_max = config.append.append_events_max,
        event_bytes_max = config.append.event_bytes_max,
        read_limit_max = config.http.read_limit_max,
        "serving"
    );
    let stopping = started.stopping.clone();
    let signal = async move {
        shutdown.await;
        info!("shutting down: no new connections, finishing requests in flight");
        // Ends every subscription, so that their responses complete and serving can stop.
        let _ = stopping.send(true);
    };
    let drain = config.http.shutdown_drain_timeout;
    crate::listen::serve(listener, started.app(), &config.transport, tls, signal, drain).await;
    started.stop().await;
    info!("stopped");
    Ok(())
}
