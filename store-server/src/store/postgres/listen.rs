//! LISTEN for other instances' commits, on a connection of its own.

use super::NOTIFY_CHANNEL;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio_postgres::NoTls;
use tracing::warn;

/// How long to wait before reconnecting the LISTEN connection.
const LISTEN_RETRY: Duration = Duration::from_secs(1);

/// Holds a connection of its own (a pooled one would lose its LISTEN when recycled) that
/// LISTENs for other instances' commits, reconnecting after any loss. Every (re)connect
/// notifies once: commits made while nobody listened are found by the read it triggers.
pub(super) async fn listen(
    config: tokio_postgres::Config,
    instance: String,
    commits: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let (notified, own) = (commits.clone(), instance.clone());
                let mut messages = tokio::spawn(async move {
                    while let Some(Ok(message)) =
                        std::future::poll_fn(|cx| connection.poll_message(cx)).await
                    {
                        if let tokio_postgres::AsyncMessage::Notification(notice) = message {
                            if notice.payload() != own {
                                notified.notify_one();
                            }
                        }
                    }
                });
                match client.batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}")).await {
                    Ok(()) => {
                        commits.notify_one();
                        tokio::select! {
                            _ = &mut messages => {}
                            _ = shutdown.wait_for(|stopping| *stopping) => {
                                messages.abort();
                                return;
                            }
                        }
                    }
                    Err(err) => warn!(cause = %crate::error_chain(&err), "LISTEN failed"),
                }
                messages.abort();
                warn!("lost the LISTEN connection; polling covers until it is back");
            }
            Err(err) => warn!(cause = %crate::error_chain(&err), "cannot connect to LISTEN"),
        }
        tokio::select! {
            () = tokio::time::sleep(LISTEN_RETRY) => {}
            _ = shutdown.wait_for(|stopping| *stopping) => return,
        }
    }
}
