//! HTTP routes.

pub mod health;
pub mod internal;
pub mod pull;
pub mod push;

use axum::http::HeaderMap;

use crate::error::ApiError;

/// The header naming the client (device) of a request.
pub const CLIENT_ID_HEADER: &str = "x-client-id";

/// `X-Client-Id`, when the client sent one.
pub fn client_id_header(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get(CLIENT_ID_HEADER) {
        None => Ok(None),
        Some(v) => {
            let id = v
                .to_str()
                .map_err(|_| ApiError::bad_request("X-Client-Id is not valid text"))?;
            ingest::validate_id("X-Client-Id", id).map_err(ApiError::bad_request)?;
            Ok(Some(id.to_owned()))
        }
    }
}

/// The app id of the path, checked like every id that may reach a subject.
pub fn app_id(raw: &str) -> Result<&str, ApiError> {
    ingest::validate_id("appId", raw).map_err(ApiError::bad_request)?;
    Ok(raw)
}
