//! The gateway's side of the log: publishing a push's events with acknowledgement, as
//! one atomic JetStream batch, and reading the current log position.

use std::{sync::Arc, time::Duration};

use async_nats::{
    HeaderMap,
    connection::State,
    header::{
        NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL, NATS_BATCH_ID, NATS_BATCH_SEQUENCE,
        NATS_MESSAGE_ID,
    },
    jetstream::{self, ErrorCode, message::PublishMessage},
};
use futures::future::try_join_all;
use ingest::PreparedEvent;
use serde::Deserialize;
use tokio::sync::{Semaphore, watch};

use crate::error::ApiError;

/// Most messages JetStream accepts in one atomic batch.
const MAX_ATOMIC_BATCH: usize = 1000;

/// Atomic batches this gateway keeps in flight at once; the server allows 50 per
/// stream, so a few gateways at full load stay under it.
const ATOMIC_BATCHES_IN_FLIGHT: usize = 16;

const LOG: &str = "the log (NATS)";

#[derive(Clone)]
pub struct Log {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: String,
    publish_timeout: Duration,
    batches: Arc<Semaphore>,
    disconnects: watch::Sender<u64>,
}

/// The server's answer to a batch commit: an ack or an API error.
#[derive(Deserialize)]
#[serde(untagged)]
enum CommitReply {
    Err { error: jetstream::Error },
    Ack { seq: u64 },
}

enum PublishFailure {
    /// Part of the batch was committed before (a resend): publish one by one, deduplicated.
    AlreadyPartlyLogged,
    Failed(String),
}

impl Log {
    pub async fn connect(
        conn: &projector::Connections,
        publish_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let disconnects = watch::Sender::new(0u64);
        let ticks = disconnects.clone();
        let client = async_nats::ConnectOptions::new()
            .name("gateway")
            .event_callback(move |event| {
                if matches!(event, async_nats::Event::Disconnected) {
                    ticks.send_modify(|n| *n += 1);
                }
                std::future::ready(())
            })
            .retry_on_initial_connect()
            .connect(&conn.nats_url)
            .await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(publish_timeout)
            .max_ack_inflight(8192)
            .backpressure_on_inflight(true)
            .build(client.clone());
        projector::ensure_stream(&js, &conn.stream, conn.stream_replicas).await?;
        Ok(Self {
            client,
            js,
            stream: conn.stream.clone(),
            publish_timeout,
            batches: Arc::new(Semaphore::new(ATOMIC_BATCHES_IN_FLIGHT)),
            disconnects,
        })
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    pub fn stream_name(&self) -> &str {
        &self.stream
    }

    /// Ticks each time the connection to NATS drops.
    pub fn disconnects(&self) -> watch::Receiver<u64> {
        self.disconnects.subscribe()
    }

    pub fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// Publishes a push's events and returns only once JetStream has stored all of them.
    /// Up to 1000 events go in as one atomic batch: all are stored or none. Any failure
    /// is a 503 and the client retries; the deterministic message ids make a retry land
    /// each event exactly once.
    ///
    /// Returns the log position just before the push's first change when it is known
    /// (not for a resend JetStream recognised): every push acknowledged before this one
    /// arrived lies at or below it, so it bounds what read-your-writes must wait for
    /// without another round trip.
    pub async fn publish_all(&self, events: &[PreparedEvent]) -> Result<Option<u64>, ApiError> {
        if !self.connected() {
            return Err(ApiError::unavailable(LOG, "not connected"));
        }
        let max_payload = self.client.server_info().max_payload;
        if let Some((i, _)) = events
            .iter()
            .enumerate()
            .find(|(_, e)| e.payload.len() + 1024 > max_payload)
        {
            return Err(ApiError::TooLarge(format!(
                "change {i} is larger than the log accepts ({max_payload} bytes)"
            )));
        }
        let publish = async {
            let mut before_first = None;
            for (i, chunk) in events.chunks(MAX_ATOMIC_BATCH).enumerate() {
                let before = match self.publish_atomic(chunk).await {
                    Ok(before) => before,
                    Err(PublishFailure::AlreadyPartlyLogged) => self.publish_each(chunk).await?,
                    Err(PublishFailure::Failed(why)) => return Err(why),
                };
                if i == 0 {
                    before_first = before;
                }
            }
            Ok(before_first)
        };
        match tokio::time::timeout(self.publish_timeout, publish).await {
            Ok(Ok(before)) => Ok(before),
            Ok(Err(why)) => Err(ApiError::unavailable(LOG, why)),
            Err(_) => Err(ApiError::unavailable(
                LOG,
                "publish acknowledgement timed out",
            )),
        }
    }

    /// One atomic batch: every message but the last is staged by the server; the last
    /// commits the batch and is answered with the sequence of the last message stored.
    /// Returns the position just before the batch.
    async fn publish_atomic(&self, chunk: &[PreparedEvent]) -> Result<Option<u64>, PublishFailure> {
        if chunk.len() == 1 {
            return self
                .publish_each(chunk)
                .await
                .map_err(PublishFailure::Failed);
        }
        let _permit = self
            .batches
            .acquire()
            .await
            .map_err(|e| PublishFailure::Failed(e.to_string()))?;
        let batch_id = uuid::Uuid::new_v4().simple().to_string();
        let failed = |e: &dyn std::fmt::Display| PublishFailure::Failed(e.to_string());
        for (i, event) in chunk.iter().enumerate() {
            let mut headers = HeaderMap::new();
            headers.insert(NATS_MESSAGE_ID, event.msg_id.as_str());
            headers.insert(NATS_BATCH_ID, batch_id.as_str());
            headers.insert(NATS_BATCH_SEQUENCE, (i + 1).to_string().as_str());
            let payload = event.payload.clone().into();
            if i + 1 < chunk.len() {
                self.client
                    .publish_with_headers(event.subject.clone(), headers, payload)
                    .await
                    .map_err(|e| failed(&e))?;
                continue;
            }
            headers.insert(NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL);
            let reply = self
                .client
                .request_with_headers(event.subject.clone(), headers, payload)
                .await
                .map_err(|e| failed(&e))?;
            return match serde_json::from_slice::<CommitReply>(&reply.payload) {
                Ok(CommitReply::Ack { seq }) => Ok(seq.checked_sub(chunk.len() as u64)),
                Ok(CommitReply::Err { error })
                    if error.error_code()
                        == ErrorCode::ATOMIC_PUBLISH_CONTAINS_DUPLICATE_MESSAGE =>
                {
                    Err(PublishFailure::AlreadyPartlyLogged)
                }
                Ok(CommitReply::Err { error }) => Err(failed(&error)),
                Err(e) => Err(failed(&e)),
            };
        }
        Err(PublishFailure::Failed("empty batch".into()))
    }

    /// Events published one by one (each deduplicated by its message id), all acks
    /// awaited. Returns the position just before the first, unless one was a duplicate.
    async fn publish_each(&self, events: &[PreparedEvent]) -> Result<Option<u64>, String> {
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let msg = PublishMessage::build()
                .message_id(&event.msg_id)
                .payload(event.payload.clone().into());
            let ack = self
                .js
                .send_publish(event.subject.clone(), msg)
                .await
                .map_err(|e| e.to_string())?;
            acks.push(ack.into_future());
        }
        let acks = try_join_all(acks).await.map_err(|e| e.to_string())?;
        if acks.iter().any(|a| a.duplicate) {
            return Ok(None);
        }
        Ok(acks
            .iter()
            .map(|a| a.sequence)
            .min()
            .and_then(|s| s.checked_sub(1)))
    }

    /// Publishes events that must be stored together (an atomic batch) and returns the
    /// sequence of the last one.
    pub async fn publish_events(&self, events: &[PreparedEvent]) -> Result<u64, ApiError> {
        match self.publish_all(events).await? {
            Some(before) => Ok(before + events.len() as u64),
            // A resend: the events are in the log already, at or before its end.
            None => self.last_seq().await,
        }
    }

    /// The sequence of the last event in the log.
    pub async fn last_seq(&self) -> Result<u64, ApiError> {
        if !self.connected() {
            return Err(ApiError::unavailable(LOG, "not connected"));
        }
        let stream = tokio::time::timeout(self.publish_timeout, self.js.get_stream(&self.stream))
            .await
            .map_err(|_| ApiError::unavailable(LOG, "stream info timed out"))?
            .map_err(|e| ApiError::unavailable(LOG, e))?;
        Ok(stream.cached_info().state.last_sequence)
    }
}
