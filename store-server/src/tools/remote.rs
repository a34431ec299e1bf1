//! A running server's export, read over HTTP as export lines.

use crate::protocol::Position;
use crate::store::export::ExportLine;
use tokio::sync::mpsc;

/// Lines read ahead of their use: what bounds the memory of a remote read.
const READ_AHEAD_LINES: usize = 256;

/// Why a server's export cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The server could not be reached, or the connection broke.
    #[error("cannot read {url}")]
    Http {
        /// The export's address.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The server refused.
    #[error("{url} answered {status}: {body}")]
    Refused {
        /// The export's address.
        url: String,
        /// Its status.
        status: u16,
        /// Its problem document.
        body: String,
    },
    /// A line is not an export line.
    #[error("not an export line: {0}")]
    Line(String),
}

/// A server, by its base URL, and the admin token its export needs.
#[derive(Clone)]
pub struct Source {
    url: String,
    token: Option<String>,
    client: reqwest::Client,
}

impl Source {
    /// The server at `url` (`http://host:port`), with `token` if its auth file needs one.
    pub fn new(url: &str, token: Option<String>) -> Self {
        Self { url: url.trim_end_matches('/').to_owned(), token, client: reqwest::Client::new() }
    }

    /// Its export from `from`, followed or not, as lines in order; a broken read ends with
    /// an error item.
    pub async fn export(
        &self,
        from: Position,
        follow: bool,
    ) -> Result<mpsc::Receiver<Result<ExportLine, RemoteError>>, RemoteError> {
        let url = format!("{}/export?from={}&follow={follow}", self.url, from.0);
        let http = |source| RemoteError::Http { url: url.clone(), source };
        let mut request = self.client.get(&url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let mut response = request.send().await.map_err(http)?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            return Err(RemoteError::Refused { url, status, body });
        }
        let (out, lines) = mpsc::channel(READ_AHEAD_LINES);
        tokio::spawn(async move {
            let mut pending = Vec::new();
            loop {
                let chunk = match response.chunk().await {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => return,
                    Err(source) => {
                        let _ = out.send(Err(RemoteError::Http { url, source })).await;
                        return;
                    }
                };
                pending.extend_from_slice(&chunk);
                let mut start = 0;
                while let Some(end) = pending[start..].iter().position(|&b| b == b'\n') {
                    let text = &pending[start..start + end];
                    start += end + 1;
                    let line =
                        serde_json::from_slice(text).map_err(|e| RemoteError::Line(e.to_string()));
                    let failed = line.is_err();
                    if out.send(line).await.is_err() || failed {
                        return;
                    }
                }
                pending.drain(..start);
            }
        });
        Ok(lines)
    }
}
