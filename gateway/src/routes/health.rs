//! `GET /health`: NATS, PostgreSQL and projector lag.

use axum::{Json, extract::State, http::StatusCode};
use serde_json::{Value, json};

use crate::AppState;

pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let last_seq = state.log().last_seq().await.ok();
    let checkpoint = state.progress().read().await.ok();
    let records = state.progress().read_records().await.ok();
    let nats_ok = last_seq.is_some();
    let pg_ok = checkpoint.is_some();
    let lag = |stage: Option<u64>| last_seq.zip(stage).map(|(l, c)| l.saturating_sub(c));
    // Not a dependency: without it push responses are read from PostgreSQL.
    let tail = state.tail().map(|t| t.is_live());
    let status = if nats_ok && pg_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if status == StatusCode::OK { "ok" } else { "degraded" },
        "nats": { "ok": nats_ok, "lastSeq": last_seq },
        "postgres": { "ok": pg_ok },
        "projector": {
            "checkpoint": checkpoint,
            "lag": lag(checkpoint),
            "records": { "checkpoint": records, "lag": lag(records) },
        },
        "tail": { "enabled": tail.is_some(), "live": tail.unwrap_or(false) },
    });
    (status, Json(body))
}
