//! The durable JetStream consumer: (re)created at the PostgreSQL checkpoint, read in log
//! order, applied in batches, acknowledged after commit.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, pull},
};
use futures::{FutureExt, StreamExt};
use sqlx::PgPool;

use crate::{
    apply::{self, ApplyError, Incoming},
    records::Handoff,
};

/// Drains up to `batch_size` messages: waits for the first, then takes what is already
/// buffered, so batches grow with load and a lone write is applied at once.
pub(crate) async fn next_batch(
    messages: &mut pull::Stream,
    batch_size: usize,
) -> anyhow::Result<Vec<jetstream::Message>> {
    let mut batch = Vec::new();
    let Some(first) = messages.next().await else {
        anyhow::bail!("consumer stream ended");
    };
    batch.push(first.map_err(|e| anyhow::anyhow!("consumer: {e}"))?);
    while batch.len() < batch_size {
        match messages.next().now_or_never() {
            Some(Some(Ok(msg))) => batch.push(msg),
            Some(Some(Err(e))) => anyhow::bail!("consumer: {e}"),
            Some(None) | None => break,
        }
    }
    Ok(batch)
}

/// Creates the durable consumer afresh so it starts right after the checkpoint held in
/// PostgreSQL, whatever acks the previous incarnation managed to send. The database,
/// not the consumer's ack floor, is the truth about what has been applied.
pub(crate) async fn open(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
    checkpoint: u64,
    batch_size: usize,
) -> anyhow::Result<pull::Stream> {
    let stream = js.get_stream(stream).await?;
    // Absent on the first start; any other failure shows up in create_consumer below.
    let _ = stream.delete_consumer(name).await;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(name.to_owned()),
            deliver_policy: if checkpoint == 0 {
                DeliverPolicy::All
            } else {
                DeliverPolicy::ByStartSequence {
                    start_sequence: checkpoint + 1,
                }
            },
            // One ack per committed batch acknowledges everything up to it.
            ack_policy: AckPolicy::All,
            ack_wait: Duration::from_secs(60),
            max_ack_pending: (batch_size * 20) as i64,
            ..Default::default()
        })
        .await?;
    Ok(consumer
        .stream()
        .max_messages_per_batch(batch_size)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await?)
}

/// Applies one delivered batch; poison is isolated message by message and parked.
/// Returns the checkpoint and, when the batch went in whole, what it wrote for the
/// records stage.
pub(crate) async fn process(
    pool: &PgPool,
    name: &str,
    msgs: &[jetstream::Message],
) -> anyhow::Result<(u64, Option<Handoff>)> {
    let batch: Vec<Incoming> = msgs
        .iter()
        .map(|m| {
            let info = m
                .info()
                .map_err(|e| anyhow::anyhow!("message without JetStream info: {e}"))?;
            Ok(Incoming {
                seq: info.stream_sequence,
                subject: m.subject.to_string(),
                payload: m.payload.clone(),
                logged_at: info.published,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let (checkpoint, handoff) = match apply::apply_batch_handing_off(pool, name, &batch).await {
        Ok((applied, handoff)) => (applied.checkpoint, handoff),
        Err(ApplyError::Refused(e)) => {
            tracing::warn!(error = %e, size = batch.len(), "batch refused; applying one by one to isolate poison");
            let mut checkpoint = 0;
            for msg in &batch {
                checkpoint = match apply::apply_batch(pool, name, std::slice::from_ref(msg)).await {
                    Ok(applied) => applied.checkpoint,
                    Err(ApplyError::Refused(e)) => {
                        apply::park(pool, name, msg, &e.to_string())
                            .await?
                            .checkpoint
                    }
                    Err(e) => return Err(e.into()),
                };
            }
            (checkpoint, None)
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(last) = msgs.last() {
        // Best effort: a lost ack only means redelivery, which the checkpoint absorbs.
        if let Err(e) = last.ack().await {
            tracing::debug!(error = %e, "ack failed; the checkpoint covers redelivery");
        }
    }
    Ok((checkpoint, handoff))
}
