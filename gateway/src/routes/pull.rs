//! `GET /sync/{appId}/pull?collection=<table>&since=<cursor>`.

use axum::{
    extract::{Path, Query, State},
    http::HeaderMap,
};
use ingest::Access;
use schemas::wire::PAGE_SIZE;
use serde::Deserialize;

use crate::{AppState, auth::AuthUser, error::ApiError, routes, store};

#[derive(Debug, Deserialize)]
pub struct PullParams {
    collection: Option<String>,
    since: Option<String>,
    /// Only this space (which the caller must be a member of).
    #[serde(rename = "spaceId")]
    space_id: Option<String>,
}

#[tracing::instrument(skip_all, fields(user = %user.user_id, app = %app))]
pub async fn pull(
    State(state): State<AppState>,
    user: AuthUser,
    Path(app): Path<String>,
    Query(params): Query<PullParams>,
    headers: HeaderMap,
) -> Result<store::PageJson, ApiError> {
    let app = routes::app_id(&app)?;
    if let Some(table) = &params.collection {
        ingest::validate_id("collection", table).map_err(ApiError::bad_request)?;
    }
    let since = schemas::Since::parse(params.since.as_deref())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let client_id = routes::client_id_header(&headers)?;
    let upto = state.read_position().await?;
    // Membership after the wait, as of the projector's checkpoint at least: a removal
    // logged before this request arrived is in force for it (one logged while it waited
    // is too, once the projector or this gateway's view has applied it).
    let (access, upto) = state.reader(&user.user_id, upto).await?;
    let spaces = match &params.space_id {
        None => access.readable_spaces(),
        Some(raw) => vec![readable_space(&access, raw)?],
    };
    let response = state
        .read_page(
            &access,
            &spaces,
            app,
            params.collection.as_deref(),
            since,
            upto,
            client_id.as_deref().map(|c| (c, user.user_id.as_str())),
            PAGE_SIZE,
        )
        .await?;
    Ok(response)
}

/// The space a pull is limited to, if the caller may read it.
fn readable_space(access: &Access, raw: &str) -> Result<String, ApiError> {
    let space = access
        .resolve_space(Some(raw))
        .map_err(ApiError::forbidden)?;
    if access.role(&space).is_none() {
        return Err(ApiError::forbidden(format!(
            "you are not a member of space {space:?}"
        )));
    }
    Ok(space)
}
