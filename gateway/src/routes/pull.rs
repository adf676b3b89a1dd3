//! `GET /sync/{appId}/pull?collection=<table>&since=<cursor>`.

use axum::{
    Json,
    extract::{Path, Query, State},
    http::HeaderMap,
};
use ingest::Access;
use schemas::wire::{PAGE_SIZE, SyncResponse};
use serde::Deserialize;

use crate::{AppState, auth::AuthUser, error::ApiError, routes};

#[derive(Debug, Deserialize)]
pub struct PullParams {
    collection: Option<String>,
    since: Option<String>,
}

#[tracing::instrument(skip_all, fields(user = %user.user_id, app = %app))]
pub async fn pull(
    State(state): State<AppState>,
    user: AuthUser,
    Path(app): Path<String>,
    Query(params): Query<PullParams>,
    headers: HeaderMap,
) -> Result<Json<SyncResponse>, ApiError> {
    let app = routes::app_id(&app)?;
    if let Some(table) = &params.collection {
        ingest::validate_id("collection", table).map_err(ApiError::bad_request)?;
    }
    let since = schemas::Since::parse(params.since.as_deref())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let client_id = routes::client_id_header(&headers)?;
    let access = Access::personal_only(&user.user_id);
    let upto = state.read_position().await?;
    let response = state
        .read_page(
            &access,
            app,
            params.collection.as_deref(),
            since,
            upto,
            client_id.as_deref().map(|c| (c, user.user_id.as_str())),
            PAGE_SIZE,
        )
        .await?;
    Ok(Json(response))
}
