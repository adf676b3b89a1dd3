//! The raw JetStream baseline: the very same events the gateway would publish, sent
//! straight from async-nats with the same concurrency and batching, on a nats-server
//! of their own.

use std::time::Duration;

use async_nats::{
    HeaderMap,
    header::{
        NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL, NATS_BATCH_ID, NATS_BATCH_SEQUENCE,
        NATS_MESSAGE_ID,
    },
    jetstream::{self, message::PublishMessage},
};
use futures::future::try_join_all;
use tokio::time::Instant;

use crate::{
    push::{self, Gate, Outcome, PushRun},
    workload::RawEvent,
};

/// How a batch is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// As the gateway does for more than one change: one atomic batch, every message
    /// but the last staged, the last committing and answered.
    Atomic,
    /// Each message published with its own acknowledgement, all awaited together (what
    /// the gateway does for a single change).
    Individual,
}

/// Publishes `batches_per_device` (one task per device, over one shared connection, as
/// in a gateway) and measures it like the gateway pushes.
pub async fn publish(
    client: async_nats::Client,
    batches_per_device: Vec<Vec<Vec<RawEvent>>>,
    mode: Mode,
    limit: Duration,
    postmaster: Option<u32>,
) -> anyhow::Result<PushRun> {
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .max_ack_inflight(8192)
        .backpressure_on_inflight(true)
        .build(client.clone());
    js.create_or_update_stream(schemas::stream::stream_config(
        schemas::stream::DEFAULT_STREAM,
        1,
    ))
    .await?;
    let gate = Gate::new(batches_per_device.len());
    let mut tasks = Vec::new();
    for (device, batches) in batches_per_device.into_iter().enumerate() {
        let (client, js, gate) = (client.clone(), js.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Outcome::new();
            gate.pass().await;
            out.started = Instant::now();
            let deadline = out.started + limit;
            for (i, batch) in batches.iter().enumerate() {
                if Instant::now() >= deadline {
                    out.complete = false;
                    break;
                }
                let t0 = Instant::now();
                let result = match mode {
                    Mode::Atomic if batch.len() > 1 => {
                        let id = format!("bench-{device}-{i}");
                        tokio::time::timeout(Duration::from_secs(2), atomic(&client, &id, batch))
                            .await
                    }
                    _ => tokio::time::timeout(Duration::from_secs(2), individual(&js, batch)).await,
                };
                match result {
                    Ok(Ok(())) => out.ok(t0.elapsed(), batch.len()),
                    Ok(Err(e)) => out.failed("publish", e),
                    Err(_) => out.failed("timeout", "acknowledgement timed out".to_owned()),
                }
            }
            out.finished = Instant::now();
            out
        }));
    }
    push::collect(tasks, gate, postmaster).await
}

async fn individual(js: &jetstream::Context, batch: &[RawEvent]) -> Result<(), String> {
    let mut acks = Vec::with_capacity(batch.len());
    for e in batch {
        let msg = PublishMessage::build()
            .message_id(&e.msg_id)
            .payload(e.payload.clone());
        let ack = js
            .send_publish(e.subject.clone(), msg)
            .await
            .map_err(|e| e.to_string())?;
        acks.push(ack.into_future());
    }
    try_join_all(acks).await.map_err(|e| e.to_string())?;
    Ok(())
}

async fn atomic(client: &async_nats::Client, id: &str, batch: &[RawEvent]) -> Result<(), String> {
    for (i, e) in batch.iter().enumerate() {
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, e.msg_id.as_str());
        headers.insert(NATS_BATCH_ID, id);
        headers.insert(NATS_BATCH_SEQUENCE, (i + 1).to_string().as_str());
        if i + 1 < batch.len() {
            client
                .publish_with_headers(e.subject.clone(), headers, e.payload.clone())
                .await
                .map_err(|e| e.to_string())?;
            continue;
        }
        headers.insert(NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL);
        let reply = client
            .request_with_headers(e.subject.clone(), headers, e.payload.clone())
            .await
            .map_err(|e| e.to_string())?;
        let answer: serde_json::Value =
            serde_json::from_slice(&reply.payload).map_err(|e| e.to_string())?;
        if answer.get("seq").is_none() {
            return Err(format!("batch refused: {answer}"));
        }
    }
    Ok(())
}
