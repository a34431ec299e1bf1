//! Request bodies: JSON, read up to the configured size.

use super::ApiError;
use axum::body::Body;
use axum::http::{HeaderMap, header};
use serde::de::DeserializeOwned;

/// Reads a JSON body of at most `limit` bytes as `T`; `what` names it in errors. A larger
/// declared length is refused before anything is read.
pub async fn json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    what: &str,
) -> Result<T, ApiError> {
    let bytes = read(headers, body, limit).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::InvalidRequest(format!("malformed {what}: {e}")))
}

/// Reads the body up to `limit` bytes; a larger declared length is refused before reading.
async fn read(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let too_large =
        || ApiError::PayloadTooLarge(format!("the request body is larger than {limit} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => Ok(bytes.into()),
        Err(err) if is_length_limit(&err) => Err(too_large()),
        Err(err) => {
            Err(ApiError::InvalidRequest(format!("could not read the request body: {err}")))
        }
    }
}

fn is_length_limit(err: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = source {
        if cause.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = cause.source();
    }
    false
}
