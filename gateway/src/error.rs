//! HTTP errors: a JSON body everywhere, a generic message for 5xx, the full cause in
//! the log only.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use ingest::RejectedBatch;
use schemas::wire::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest {
        code: &'static str,
        message: String,
        index: Option<usize>,
    },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{message}")]
    Forbidden {
        message: String,
        index: Option<usize>,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    /// A dependency is down; the string names it for the client, the cause is logged.
    #[error("{what} is unavailable")]
    Unavailable { what: &'static str, cause: String },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest {
            code: "bad_request",
            message: message.into(),
            index: None,
        }
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::Forbidden {
            message: message.into(),
            index: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::Conflict(message.into())
    }

    pub fn unavailable(what: &'static str, cause: impl std::fmt::Display) -> Self {
        Self::Unavailable {
            what,
            cause: cause.to_string(),
        }
    }
}

impl From<RejectedBatch> for ApiError {
    fn from(r: RejectedBatch) -> Self {
        match r {
            RejectedBatch::Invalid { index, message } => Self::BadRequest {
                code: "invalid_change",
                message,
                index,
            },
            RejectedBatch::Forbidden { index, message } => Self::Forbidden { message, index },
            RejectedBatch::TooLarge { message, .. } => Self::TooLarge(message),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        // The server going away mid-query (shut down, restarted, failed over: SQLSTATE
        // class 57 "operator intervention", 08 "connection exception") is the
        // dependency being down, not a fault of ours.
        let server_gone = e
            .as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|code| code.starts_with("57") || code.starts_with("08"));
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => Self::unavailable("PostgreSQL", e),
            e if server_gone => Self::unavailable("PostgreSQL", e),
            e => Self::Internal(e.into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message, index) = match &self {
            Self::BadRequest {
                code,
                message,
                index,
            } => (StatusCode::BAD_REQUEST, *code, message.clone(), *index),
            Self::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "unauthorized", m.clone(), None),
            Self::Forbidden { message, index } => {
                (StatusCode::FORBIDDEN, "forbidden", message.clone(), *index)
            }
            Self::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m.clone(), None),
            Self::Conflict(m) => (StatusCode::CONFLICT, "conflict", m.clone(), None),
            Self::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large", m.clone(), None),
            Self::Unavailable { what, cause } => {
                tracing::warn!(%what, %cause, "dependency unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!("{what} is unavailable; retry later"),
                    None,
                )
            }
            Self::Internal(e) => {
                tracing::error!(error.cause_chain = ?e, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error".to_owned(),
                    None,
                )
            }
        };
        let body = ErrorBody {
            error: code.to_owned(),
            message,
            index,
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        response
    }
}

/// Errors answered by the framework rather than by a handler (a path or query that does
/// not parse, a method the route does not take) come as plain text or empty: rewritten
/// as the JSON error every other answer is, with the same status and its text as the
/// message (what the framework says names the problem and nothing internal).
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let message = if text.is_empty() || status.is_server_error() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let mut rewritten = (
        status,
        Json(serde_json::json!({"error": code, "message": message})),
    )
        .into_response();
    // Keep what else the answer said (`Allow` of a 405, CORS headers).
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            rewritten.headers_mut().append(name.clone(), value.clone());
        }
    }
    rewritten
}
