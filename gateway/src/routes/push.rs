//! `POST /sync/{appId}`: validate and authorize the whole batch, publish every change
//! with acknowledgement, answer with what else changed since the client's cursor.

use std::sync::Arc;

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::HeaderMap,
    response::{IntoResponse as _, Response},
};
use chrono::DateTime;
use chrono::Utc;
use ingest::{Access, PreparedEvent, PushContext};
use schemas::Event;
use schemas::wire::PAGE_SIZE;

use crate::{
    AppState, auth::AuthUser, error::ApiError, log::LoggedIds, metrics::AnswerSource, routes,
    tail::TailQuery,
};

#[tracing::instrument(skip_all, fields(user = %user.user_id, app = %app, changes))]
pub async fn push(
    State(state): State<AppState>,
    user: AuthUser,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let received_at = Utc::now();
    let app = routes::app_id(&app)?;
    let body = body.map_err(|e| match e {
        BytesRejection::FailedToBufferBody(_) => ApiError::TooLarge(format!(
            "body is larger than {} bytes",
            schemas::wire::MAX_BODY_BYTES
        )),
        other => ApiError::bad_request(other.body_text()),
    })?;
    let request = ingest::parse_push_request(&body)?;
    let changes = request.changes.len();
    tracing::Span::current().record("changes", changes);
    let client_id = match routes::client_id_header(&headers)? {
        Some(id) => id,
        None => {
            let id = request.client_id.clone().ok_or_else(|| {
                ApiError::bad_request("no client id: send X-Client-Id or `clientId`")
            })?;
            ingest::validate_id("clientId", &id).map_err(ApiError::bad_request)?;
            id
        }
    };
    let since = schemas::Since::parse(request.since.as_deref())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;

    // Shared with the publisher, which asks which events are logged only for a resend.
    let access = Arc::new(state.access(&user.user_id).await?);
    let mut events = ingest::prepare_batch(
        PushContext {
            access: &access,
            app_id: app,
            client_id: &client_id,
            received_at,
        },
        request.changes,
    )?;
    if let Some(first_use) = personal_space_first_use(&state, &access, &events, received_at) {
        // Created by the caller's first write into it, in the same atomic batch.
        events.splice(0..0, first_use);
    }

    // The response must include every push acknowledged before this one arrived: all of
    // them lie before the batch that carried this push (or, when that is unknown, before
    // the log's end). Our own changes are excluded from the response anyway.
    let before = if events.is_empty() {
        None
    } else {
        let logged: LoggedIds = {
            let (state, access) = (state.clone(), Arc::clone(&access));
            Arc::new(move |ids, end| {
                let (state, access) = (state.clone(), Arc::clone(&access));
                Box::pin(async move { state.logged_events(&access, ids, end).await })
            })
        };
        state
            .log()
            .publish_all(events, Some(logged))
            .await?
            .read_bound
    };
    let arrived_at = match before {
        Some(position) => position,
        None => state.log().last_seq().await?,
    };
    // What the caller may read now, after the publish (which may have waited): a removal
    // logged meanwhile holds for the answer, as for a pull.
    let access = state.access(&user.user_id).await?;
    let spaces = access.readable_spaces();
    let exclude = Some((client_id.as_str(), user.user_id.as_str()));
    let from_tail = state.tail_page(arrived_at, since, |after| TailQuery {
        app_id: app,
        table: None,
        spaces: &spaces,
        after,
        exclude,
        caller: &user.user_id,
        limit: PAGE_SIZE,
    });
    if let Some(page) = from_tail.await {
        state.metrics().pushed(changes, AnswerSource::Tail);
        return Ok(Json(page).into_response());
    }
    let upto = state.wait_for_position(arrived_at).await?;
    let (access, upto) = state.reader(&user.user_id, upto).await?;
    let spaces = access.readable_spaces();
    let response = state
        .read_page(&access, &spaces, app, None, since, upto, exclude, PAGE_SIZE)
        .await?;
    state.metrics().pushed(changes, AnswerSource::Postgres);
    Ok(response.into_response())
}

/// The events creating the caller's personal space, if this batch writes into it and
/// the membership view has never seen it. Their ids are derived from the space, so
/// concurrent first pushes (on any gateway) create it once.
fn personal_space_first_use(
    state: &AppState,
    access: &Access,
    events: &[PreparedEvent],
    at: DateTime<Utc>,
) -> Option<Vec<PreparedEvent>> {
    let personal = access.personal_space();
    let writes_into_it = events
        .iter()
        .any(|e| matches!(&e.envelope.event, Event::RecordChanged(rc) if rc.space_id == personal));
    if !writes_into_it {
        return None;
    }
    let known = state
        .memberships()
        .now()
        .is_some_and(|view| view.space(personal).is_some());
    (!known).then(|| routes::internal::personal_space_events(access.user_id(), at))
}
