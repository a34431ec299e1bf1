//! `/data-subjects/{subject}`: what the store holds of a person, and their erasure. An
//! erasure goes through the writer, decided in order with the appends of that subject.

use super::params::segment;
use super::{ApiError, AppState};
use crate::decide::{Command, Erase, Outcome};
use crate::protocol::{DataSubject, DataSubjectInfo};
use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use std::time::Duration;

/// How long an erasure waits for this server's tailer to pass it before answering: from
/// the answer on, live subscriptions here deliver the subject's events as erased.
const TAILED_WAIT: Duration = Duration::from_secs(5);

fn subject(path: Result<Path<String>, PathRejection>) -> Result<DataSubject, ApiError> {
    DataSubject::new(segment(path)?).map_err(|e| ApiError::InvalidRequest(e.to_string()))
}

/// `GET /data-subjects/{subject}`.
pub async fn get(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<DataSubjectInfo>, ApiError> {
    let subject = subject(path)?;
    match state.store.data_subject(&subject).await? {
        Some(info) => Ok(Json(info)),
        None => Err(ApiError::DataSubjectNotFound(subject)),
    }
}

/// `DELETE /data-subjects/{subject}`: `204` once the key is destroyed, durably. Erasing an
/// erased subject again is a `204` that records nothing.
pub async fn erase(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let subject = subject(path)?;
    match state.writer.submit(Command::Erase(Erase::new(subject.clone()))).await? {
        Outcome::Erased { position } => {
            state.metrics.data_subjects_erased_total.inc();
            if !state.hub.tailed_past(position, TAILED_WAIT).await {
                tracing::warn!(%position, "the tailer did not reach an erasure in time");
            }
            Ok(StatusCode::NO_CONTENT)
        }
        Outcome::AlreadyErased => Ok(StatusCode::NO_CONTENT),
        Outcome::SubjectNotFound => Err(ApiError::DataSubjectNotFound(subject)),
        other => {
            tracing::error!(?other, "an erasure was not answered as one");
            Err(ApiError::Unavailable(None))
        }
    }
}
