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
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                Self::unavailable("PostgreSQL", e)
            }
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
