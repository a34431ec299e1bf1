//! `/groups`: consumer groups (shared/API.md, "Consumer groups"). A scoped token reaches a
//! group only if it covers the group's category; a group without one needs an unscoped
//! token.

use super::authorize::Visible;
use super::body::json_object;
use super::params::{self, RawQuery, segment};
use super::{ApiError, AppState};
use crate::groups::state::Refused;
use crate::groups::{Member, serve};
use crate::protocol::{
    CreateGroup, Group, GroupAck, GroupMember, GroupNack, GroupName, GroupStart, MemberName,
    PARTITIONS_MAX, ParkedEvent, Timestamp, partition_of,
};
use crate::store::Filter;
use crate::store::groups::{Created, GroupSettings, GroupState};
use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

fn group_name(path: Result<Path<String>, PathRejection>) -> Result<GroupName, ApiError> {
    GroupName::new(segment(path)?).map_err(|e| ApiError::InvalidRequest(format!("group name: {e}")))
}

/// Whether `visible` reaches `group`: every stream of its category, or everything.
pub(super) fn reaches(visible: Option<&Extension<Visible>>, group: &GroupState) -> bool {
    let Some(scope) = Visible::scope_of(visible) else { return true };
    group
        .settings
        .category
        .as_ref()
        .is_some_and(|category| scope.iter().any(|pattern| pattern.covers_category(category)))
}

/// The group, if it exists and `visible` reaches it.
async fn visible_group(
    state: &AppState,
    name: &GroupName,
    visible: Option<&Extension<Visible>>,
) -> Result<GroupState, ApiError> {
    let group =
        state.store.group(name).await?.ok_or_else(|| ApiError::GroupNotFound(name.clone()))?;
    if !reaches(visible, &group) {
        return Err(ApiError::Forbidden(visible.map(|v| v.token.clone()).unwrap_or_default()));
    }
    Ok(group)
}

async fn describe(state: &AppState, group: GroupState) -> Result<Group, ApiError> {
    let head = state.store.head().await?;
    let (lag, _) = crate::groups::lag(&*state.store, &group, head).await?;
    let members = group
        .members
        .keys()
        .map(|member| GroupMember { member: member.clone(), partitions: group.assigned_to(member) })
        .collect();
    Ok(Group {
        positions: (0u32..).zip(group.partitions.iter().map(|p| p.position)).collect(),
        members,
        lag,
        parked: group.parked,
        partitions: group.settings.partitions,
        category: group.settings.category,
        types: group.settings.types,
        name: group.name,
    })
}

/// `PUT /groups/{group}`: `201` created, `200` if it exists with the same filter and
/// partitions (`after` counts only at creation), `409 group-exists` otherwise.
pub async fn put(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let name = group_name(path)?;
    let create: CreateGroup =
        json_object(&headers, body, state.http.request_body_bytes_max, "group").await?;
    if !(1..=PARTITIONS_MAX).contains(&create.partitions) {
        return Err(ApiError::InvalidRequest(format!("partitions must be 1 to {PARTITIONS_MAX}")));
    }
    let head = state.store.head().await?;
    let start = match create.after {
        GroupStart::End => head,
        GroupStart::After(position) if position > head => {
            return Err(ApiError::InvalidRequest(format!(
                "after {position} is past the head of the log ({head})"
            )));
        }
        GroupStart::After(position) => position,
    };
    let mut types = create.types;
    types.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    types.dedup();
    let settings =
        GroupSettings { category: create.category, types, partitions: create.partitions, start };
    let group = GroupState::new(name.clone(), settings.clone());
    match state.store.create_group(&group, Timestamp::now()).await? {
        Created::New => {
            Ok((StatusCode::CREATED, Json(describe(&state, group).await?)).into_response())
        }
        Created::Exists(existing) => {
            let same = existing.category == settings.category
                && existing.types == settings.types
                && existing.partitions == settings.partitions;
            if !same {
                return Err(ApiError::GroupExists(name));
            }
            let stored = state.store.group(&name).await?.ok_or(ApiError::GroupNotFound(name))?;
            Ok(Json(describe(&state, stored).await?).into_response())
        }
    }
}

/// `GET /groups`: the groups the token reaches.
pub async fn list(
    State(state): State<AppState>,
    visible: Option<Extension<Visible>>,
) -> Result<Json<Vec<Group>>, ApiError> {
    let mut answer = Vec::new();
    for group in state.store.groups().await? {
        if reaches(visible.as_ref(), &group) {
            answer.push(describe(&state, group).await?);
        }
    }
    Ok(Json(answer))
}

/// `GET /groups/{group}`.
pub async fn get(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    visible: Option<Extension<Visible>>,
) -> Result<Json<Group>, ApiError> {
    let name = group_name(path)?;
    let group = visible_group(&state, &name, visible.as_ref()).await?;
    Ok(Json(describe(&state, group).await?))
}

/// `DELETE /groups/{group}`: `204`; its members' connections end at their next refresh.
pub async fn delete(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let name = group_name(path)?;
    if !state.store.delete_group(&name).await? {
        return Err(ApiError::GroupNotFound(name));
    }
    state.groups.changed(&name);
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /groups/{group}/subscribe?member=M`: joins, then serves the member over SSE.
pub async fn subscribe(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    visible: Option<Extension<Visible>>,
    query: RawQuery,
) -> Result<Response, ApiError> {
    let name = group_name(path)?;
    let query = params::query(query)?;
    let member = query
        .get("member")?
        .ok_or_else(|| ApiError::InvalidRequest("member is required".into()))?;
    let member =
        MemberName::new(member).map_err(|e| ApiError::InvalidRequest(format!("member: {e}")))?;
    visible_group(&state, &name, visible.as_ref()).await?;
    let permit = state
        .subscription_slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::TooManySubscriptions)?;
    let session = uuid::Uuid::now_v7().to_string();
    let (ttl, mut refused, mut moved) = (state.group_options.member_timeout, None, false);
    let mut join =
        |group: &mut GroupState| match group.join(&member, &session, Timestamp::now(), ttl) {
            Ok(()) => moved = group.rebalance(Timestamp::now()),
            Err(refusal) => refused = Some(refusal),
        };
    if !state.store.change_group(&name, &mut join).await? {
        return Err(ApiError::GroupNotFound(name));
    }
    if let Some(refusal) = refused {
        return Err(ApiError::GroupRefused(refusal.to_string()));
    }
    state.groups.rebalanced(&name, moved);
    state.groups.changed(&name);
    let Some(joined) = state.store.group(&name).await? else {
        return Err(ApiError::GroupNotFound(name));
    };
    let (out, ready) = tokio::sync::mpsc::channel(super::subscribe::READY_CHUNKS_MAX);
    let member = Member { group: name, member, session };
    tokio::spawn(async move {
        serve(
            state.store,
            state.hub,
            state.groups,
            state.group_options,
            state.subscriptions.keep_alive_interval,
            member,
            joined,
            out,
            state.shutdown,
        )
        .await;
        drop(permit);
    });
    Ok(super::subscribe::event_stream(ready))
}

fn refusal(refused: Refused) -> ApiError {
    match refused {
        Refused::NoPartition(_) => ApiError::InvalidRequest(refused.to_string()),
        _ => ApiError::GroupRefused(refused.to_string()),
    }
}

/// `POST /groups/{group}/ack`: `204`; `409` for a partition the member does not own.
pub async fn ack(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    visible: Option<Extension<Visible>>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let name = group_name(path)?;
    let ack: GroupAck =
        json_object(&headers, body, state.http.request_body_bytes_max, "ack").await?;
    visible_group(&state, &name, visible.as_ref()).await?;
    let head = state.store.head().await?;
    if let Some((k, past)) = ack.positions.iter().find(|(_, p)| **p > head) {
        return Err(ApiError::InvalidRequest(format!(
            "partition {k}: position {past} is past the head of the log ({head})"
        )));
    }
    member_change(&state, name, |group| group.ack(&ack.member, &ack.positions)).await
}

/// Applies a member's `change` to group `name`: `204`, or its refusal; tells this server's
/// sessions of the group.
async fn member_change(
    state: &AppState,
    name: GroupName,
    change: impl Fn(&mut GroupState) -> Result<(), Refused> + Send + Sync,
) -> Result<StatusCode, ApiError> {
    let mut outcome = Ok(());
    let mut apply = |group: &mut GroupState| outcome = change(group);
    if !state.store.change_group(&name, &mut apply).await? {
        return Err(ApiError::GroupNotFound(name));
    }
    outcome.map_err(refusal)?;
    state.groups.changed(&name);
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /groups/{group}/nack`: parks the event, or has it (and what follows it in its
/// partition) sent again; `204`.
pub async fn nack(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    visible: Option<Extension<Visible>>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let name = group_name(path)?;
    let nack: GroupNack =
        json_object(&headers, body, state.http.request_body_bytes_max, "nack").await?;
    let group = visible_group(&state, &name, visible.as_ref()).await?;
    let event = crate::groups::event_at(&*state.store, nack.position).await?;
    let filter = Filter {
        category: group.settings.category.clone(),
        types: group.settings.types.clone(),
        ..Filter::default()
    };
    if !event.as_ref().is_some_and(|e| filter.matches(e)) {
        return Err(ApiError::InvalidRequest(format!(
            "no event of the group's filter is at position {}",
            nack.position
        )));
    }
    let stream = event.map(|e| e.stream).expect("checked above");
    let partition = partition_of(stream.as_str(), group.settings.partitions);
    member_change(&state, name, |group| {
        group.nack(&nack.member, partition, nack.position, nack.park)
    })
    .await
}

/// `GET /groups/{group}/parked`.
pub async fn parked(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    visible: Option<Extension<Visible>>,
) -> Result<Json<Vec<ParkedEvent>>, ApiError> {
    let name = group_name(path)?;
    visible_group(&state, &name, visible.as_ref()).await?;
    Ok(Json(state.store.parked(&name).await?))
}

/// `POST /groups/{group}/parked/replay`: `{"replayed": N}`; the owners of their partitions
/// are sent them again, then they are forgotten.
pub async fn replay(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let name = group_name(path)?;
    if state.store.group(&name).await?.is_none() {
        return Err(ApiError::GroupNotFound(name));
    }
    let replayed = state.store.replay_parked(&name).await?;
    state.groups.changed(&name);
    Ok(Json(json!({ "replayed": replayed })))
}
