//! The data pushed: distinct record inserts, serialized before any timing starts, both
//! as push bodies for the gateway and as the events the gateway would publish for them
//! (for the raw JetStream baseline).

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use ingest::{Access, PushContext};
use serde_json::json;

/// The app and table every benchmark writes to.
pub const APP: &str = "bench";
pub const TABLE: &str = "items";

/// One simulated device: who it is and the batches it will push, in order.
pub struct Device {
    pub user: String,
    pub client_id: String,
    pub token: String,
    /// Each batch's `changes` array, already serialized.
    pub batches: Vec<Bytes>,
    pub per_batch: usize,
}

/// One event as the gateway would publish it.
pub struct RawEvent {
    pub subject: async_nats::Subject,
    pub msg_id: String,
    pub payload: Bytes,
}

/// A distinct record insert, about the size of a small app record; into `space`, or
/// the author's personal space.
fn change(record_id: &str, n: usize, space: Option<&str>) -> serde_json::Value {
    let mut change = json!({
        "table": TABLE,
        "id": record_id,
        "op": "insert",
        "data": {
            "title": format!("Item {n}: buy milk, eggs and bread"),
            "done": n.is_multiple_of(3),
            "priority": n % 5,
            "tags": ["home", "errands"],
            "notes": "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.",
        },
    });
    if let Some(space) = space {
        change["spaceId"] = json!(space);
    }
    change
}

/// `requests` batches of `per_batch` distinct inserts for device `device` of run `tag`,
/// into `space` (or the device's user's personal space).
pub fn batches(
    tag: &str,
    device: usize,
    requests: usize,
    per_batch: usize,
    space: Option<&str>,
) -> Vec<Bytes> {
    (0..requests)
        .map(|r| {
            let changes: Vec<_> = (0..per_batch)
                .map(|i| {
                    let n = r * per_batch + i;
                    change(&format!("{tag}-d{device}-{n:07}"), n, space)
                })
                .collect();
            Bytes::from(serde_json::to_vec(&changes).expect("JSON values serialize"))
        })
        .collect()
}

pub fn token(user: &str) -> anyhow::Result<String> {
    gateway::auth::mint_dev_token(sync_tests::SECRET, user, Duration::from_secs(6 * 3600))
        .context("minting a token")
}

/// `devices` devices, each its own user, each pushing `requests` batches of `per_batch`:
/// into its user's personal space (so no push response carries another device's
/// changes), or all into `space`.
pub fn devices(
    tag: &str,
    devices: usize,
    requests: usize,
    per_batch: usize,
    space: Option<&str>,
) -> anyhow::Result<Vec<Device>> {
    (0..devices)
        .map(|d| {
            let user = format!("{tag}-user{d}");
            Ok(Device {
                token: token(&user)?,
                client_id: format!("device{d}"),
                batches: batches(tag, d, requests, per_batch, space),
                per_batch,
                user,
            })
        })
        .collect()
}

/// A push body: `since` (the cursor of the previous response, as real clients send
/// it) spliced in front of the pre-serialized changes; a copy, no serialization.
/// Sends a request and reads its whole body, timing both: the latency a client sees.
pub async fn timed_request(
    request: impl std::future::Future<Output = reqwest::Result<reqwest::Response>>,
) -> (Duration, reqwest::Result<(reqwest::StatusCode, Bytes)>) {
    let t0 = std::time::Instant::now();
    let reply = match request.await {
        Ok(resp) => {
            let status = resp.status();
            resp.bytes().await.map(|b| (status, b))
        }
        Err(e) => Err(e),
    };
    (t0.elapsed(), reply)
}

pub fn body(since: Option<&str>, changes: &Bytes) -> Bytes {
    let mut b = Vec::with_capacity(changes.len() + 48);
    b.push(b'{');
    if let Some(since) = since {
        b.extend_from_slice(b"\"since\":");
        b.extend_from_slice(
            serde_json::to_string(since)
                .expect("strings serialize")
                .as_bytes(),
        );
        b.push(b',');
    }
    b.extend_from_slice(b"\"changes\":");
    b.extend_from_slice(changes);
    b.push(b'}');
    Bytes::from(b)
}

/// The events the gateway would publish for `device`'s batches: same subjects, same
/// message ids, same payloads.
pub fn raw_events(device: &Device) -> anyhow::Result<Vec<Vec<RawEvent>>> {
    let access = Access::personal_only(&device.user);
    device
        .batches
        .iter()
        .map(|changes| {
            let request = ingest::parse_push_request(&body(None, changes))
                .map_err(|e| anyhow::anyhow!("bench body refused: {e}"))?;
            let events = ingest::prepare_batch(
                PushContext {
                    access: &access,
                    app_id: APP,
                    client_id: &device.client_id,
                    received_at: chrono::Utc::now(),
                },
                request.changes,
            )
            .map_err(|e| anyhow::anyhow!("bench batch refused: {e}"))?;
            Ok(events
                .into_iter()
                .map(|e| RawEvent {
                    subject: e.subject.into(),
                    msg_id: e.msg_id,
                    payload: e.payload,
                })
                .collect())
        })
        .collect()
}
