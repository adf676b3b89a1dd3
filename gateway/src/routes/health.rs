//! `GET /health`: NATS, PostgreSQL and projector lag.

use axum::{Json, extract::State, http::StatusCode};
use serde_json::{Value, json};

use crate::AppState;

/// The state of the gateway's dependencies at one moment (also read by `GET /metrics`).
pub struct Status {
    /// The log's end, when NATS answered.
    pub last_seq: Option<u64>,
    /// The projector's log-stage checkpoint, when PostgreSQL answered.
    pub checkpoint: Option<u64>,
    /// Its records-stage checkpoint.
    pub records: Option<u64>,
    /// Whether the tail follows the log; `None` when it is turned off.
    pub tail: Option<bool>,
    pub memberships_live: bool,
}

impl Status {
    pub async fn read(state: &AppState) -> Self {
        Self {
            last_seq: state.log().last_seq().await.ok(),
            checkpoint: state.progress().read().await.ok(),
            records: state.progress().read_records().await.ok(),
            tail: state.tail().map(|t| t.is_live()),
            memberships_live: state.memberships().is_live(),
        }
    }

    pub fn nats_ok(&self) -> bool {
        self.last_seq.is_some()
    }

    pub fn pg_ok(&self) -> bool {
        self.checkpoint.is_some()
    }

    /// How far `stage` is behind the log's end.
    pub fn lag(&self, stage: Option<u64>) -> Option<u64> {
        self.last_seq.zip(stage).map(|(l, c)| l.saturating_sub(c))
    }
}

pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let s = Status::read(&state).await;
    let status = if s.nats_ok() && s.pg_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if status == StatusCode::OK { "ok" } else { "degraded" },
        "nats": { "ok": s.nats_ok(), "lastSeq": s.last_seq },
        "postgres": { "ok": s.pg_ok() },
        "projector": {
            "checkpoint": s.checkpoint,
            "lag": s.lag(s.checkpoint),
            "records": { "checkpoint": s.records, "lag": s.lag(s.records) },
        },
        // Not a dependency: without it push responses are read from PostgreSQL.
        "tail": { "enabled": s.tail.is_some(), "live": s.tail.unwrap_or(false) },
    });
    (status, Json(body))
}
