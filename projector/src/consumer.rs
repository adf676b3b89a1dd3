//! The durable JetStream consumer: (re)created at the PostgreSQL checkpoint, read in log
//! order, applied in batches, acknowledged after commit.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, pull},
    stream::RawMessageErrorKind,
};
use futures::{FutureExt, Stream, StreamExt};
use sqlx::PgPool;

use crate::{
    apply::{self, ApplyError, Incoming},
    records::Handoff,
};

/// A batch that already holds this many messages when the buffered ones are taken
/// means heavy load: it waits out the whole linger for more.
pub(crate) const LINGER_FROM: usize = 64;

/// With fewer at hand, but more than one (writers at work), a batch waits for more only
/// while they keep coming: at most this long for each, and never beyond the linger.
pub(crate) const LINGER_GAP: Duration = Duration::from_millis(2);

/// Takes up to `batch_size` messages: waits for the first, then takes what is already
/// buffered, so batches grow with load and a lone write is applied at once. When more
/// than one message is at hand it waits up to `linger` more for the batch to fill —
/// with fewer than [`LINGER_FROM`], only while they keep coming ([`LINGER_GAP`]):
/// PostgreSQL's cost per event falls steeply with the size of the transaction, and a
/// transaction per handful of events is mostly overhead (README, Speed). The price is
/// at most `linger` before a change is readable.
pub(crate) async fn next_batch<M, E: std::fmt::Display>(
    messages: &mut (impl Stream<Item = Result<M, E>> + Unpin),
    batch_size: usize,
    linger: Duration,
) -> anyhow::Result<Vec<M>> {
    let mut batch = Vec::new();
    let Some(first) = messages.next().await else {
        anyhow::bail!("consumer stream ended");
    };
    batch.push(first.map_err(|e| anyhow::anyhow!("consumer: {e}"))?);
    let mut deadline = None;
    while batch.len() < batch_size {
        let next = match messages.next().now_or_never() {
            Some(next) => next,
            None if batch.len() < 2 || linger.is_zero() => break,
            None => {
                let now = tokio::time::Instant::now();
                let mut until = *deadline.get_or_insert(now + linger);
                if batch.len() < LINGER_FROM {
                    until = until.min(now + LINGER_GAP);
                }
                match tokio::time::timeout_at(until, messages.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                }
            }
        };
        match next {
            Some(Ok(msg)) => batch.push(msg),
            Some(Err(e)) => anyhow::bail!("consumer: {e}"),
            None => break,
        }
    }
    Ok(batch)
}

/// What reads the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reader {
    /// The projector's durable consumer, acknowledged after each commit.
    Durable,
    /// A consumer of a replay's own, never acknowledged, gone 30 s after the replay:
    /// the durable consumer of a projector of the same name is left alone.
    Replay,
}

/// How long a replay's consumer outlives its last read.
const REPLAY_CONSUMER_IDLE: Duration = Duration::from_secs(30);

/// Opens a consumer that starts right after the checkpoint held in PostgreSQL. The
/// durable consumer is created afresh, whatever acks the previous incarnation managed
/// to send: the database, not the consumer's ack floor, is the truth about what has
/// been applied.
pub(crate) async fn open(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
    checkpoint: u64,
    batch_size: usize,
    reader: Reader,
) -> anyhow::Result<pull::Stream> {
    let stream = js.get_stream(stream).await?;
    let deliver_policy = if checkpoint == 0 {
        DeliverPolicy::All
    } else {
        DeliverPolicy::ByStartSequence {
            start_sequence: checkpoint + 1,
        }
    };
    let config = match reader {
        Reader::Durable => {
            // Absent on the first start; any other failure shows up in create_consumer.
            let _ = stream.delete_consumer(name).await;
            pull::Config {
                durable_name: Some(name.to_owned()),
                deliver_policy,
                // One ack per committed batch acknowledges everything up to it.
                ack_policy: AckPolicy::All,
                ack_wait: Duration::from_secs(60),
                max_ack_pending: (batch_size * 20) as i64,
                ..Default::default()
            }
        }
        Reader::Replay => pull::Config {
            deliver_policy,
            ack_policy: AckPolicy::None,
            inactive_threshold: REPLAY_CONSUMER_IDLE,
            ..Default::default()
        },
    };
    let consumer = stream.create_consumer(config).await?;
    Ok(consumer
        .stream()
        .max_messages_per_batch(batch_size)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await?)
}

/// Whether every position in `from..to` is gone from the log (removed by an operator,
/// or below its first message), so that a consumer may skip them: the log's first
/// message at or after `from` lies at `to` or beyond (one request, however long the
/// range).
pub(crate) async fn removed_from_log(
    js: &jetstream::Context,
    stream: &str,
    from: u64,
    to: u64,
) -> anyhow::Result<bool> {
    let stream = js.get_stream(stream).await?;
    match stream.get_first_raw_message_by_subject(">", from).await {
        Ok(next) => Ok(next.sequence >= to),
        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// What one delivered batch came to.
pub(crate) struct Processed {
    pub checkpoint: u64,
    /// When the batch went in whole, what it wrote, for the records stage.
    pub handoff: Option<Handoff>,
    /// Messages parked as poison.
    pub parked: usize,
}

/// Where a delivered message lies in the log, and when it was stored.
fn info(msg: &jetstream::Message) -> anyhow::Result<jetstream::message::Info<'_>> {
    msg.info()
        .map_err(|e| anyhow::anyhow!("message without JetStream info: {e}"))
}

/// The log position of a delivered message.
pub(crate) fn position(msg: &jetstream::Message) -> anyhow::Result<u64> {
    Ok(info(msg)?.stream_sequence)
}

/// Applies one delivered batch; poison is isolated message by message and parked. The
/// batch is acknowledged once committed when `reader` is the durable consumer.
pub(crate) async fn process(
    pool: &PgPool,
    name: &str,
    msgs: &[jetstream::Message],
    reader: Reader,
) -> anyhow::Result<Processed> {
    let batch: Vec<Incoming> = msgs
        .iter()
        .map(|m| {
            let info = info(m)?;
            Ok(Incoming {
                seq: info.stream_sequence,
                subject: m.subject.to_string(),
                payload: m.payload.clone(),
                logged_at: info.published,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let processed = match apply::apply_batch_handing_off(pool, name, &batch).await {
        Ok((applied, handoff)) => Processed {
            checkpoint: applied.checkpoint,
            handoff,
            parked: applied.parked,
        },
        Err(ApplyError::Refused(e)) => {
            tracing::warn!(error = %e, size = batch.len(), "batch refused; applying one by one to isolate poison");
            let mut processed = Processed {
                checkpoint: 0,
                handoff: None,
                parked: 0,
            };
            for msg in &batch {
                let applied = match apply::apply_batch(pool, name, std::slice::from_ref(msg)).await
                {
                    Ok(applied) => applied,
                    Err(ApplyError::Refused(e)) => {
                        apply::park(pool, name, msg, &e.to_string()).await?
                    }
                    Err(e) => return Err(e.into()),
                };
                processed.checkpoint = applied.checkpoint;
                processed.parked += applied.parked;
            }
            processed
        }
        Err(e) => return Err(e.into()),
    };
    if reader == Reader::Durable
        && let Some(last) = msgs.last()
    {
        // Best effort: a lost ack only means redelivery, which the checkpoint absorbs.
        if let Err(e) = last.ack().await {
            tracing::debug!(error = %e, "ack failed; the checkpoint covers redelivery");
        }
    }
    Ok(processed)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use futures::channel::mpsc;

    use super::*;

    const LINGER: Duration = Duration::from_millis(4);

    fn sent(tx: &mpsc::UnboundedSender<Result<u32, Infallible>>, from: u32, n: u32) {
        for i in from..from + n {
            tx.unbounded_send(Ok(i)).expect("receiver alive");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_message_is_not_held_back() {
        let (tx, mut rx) = mpsc::unbounded();
        sent(&tx, 0, 1);
        let started = tokio::time::Instant::now();
        let batch = next_batch(&mut rx, 1000, LINGER).await.unwrap();
        assert_eq!(batch, [0]);
        assert_eq!(started.elapsed(), Duration::ZERO);
        // A few wait one gap for more, no longer when none comes.
        sent(&tx, 1, 10);
        assert_eq!(next_batch(&mut rx, 1000, LINGER).await.unwrap().len(), 10);
        assert_eq!(started.elapsed(), LINGER_GAP);
    }

    #[tokio::test(start_paused = true)]
    async fn a_few_at_hand_wait_for_more_while_they_keep_coming() {
        let linger = Duration::from_millis(10);
        let (tx, mut rx) = mpsc::unbounded();
        sent(&tx, 0, 3);
        // One more every millisecond, for longer than the linger.
        let feeder = tx.clone();
        tokio::spawn(async move {
            for i in 3..30 {
                tokio::time::sleep(Duration::from_millis(1)).await;
                sent(&feeder, i, 1);
            }
        });
        let started = tokio::time::Instant::now();
        let batch = next_batch(&mut rx, 1000, linger).await.unwrap();
        assert_eq!(started.elapsed(), linger);
        // Those of the first 9 ms at least (the 10th lands on the deadline's tick).
        assert!(batch.len() >= 12, "{batch:?}");
        assert_eq!(batch, (0..batch.len() as u32).collect::<Vec<_>>());

        // When they stop coming, the batch goes one gap after the last.
        let (tx, mut rx) = mpsc::unbounded();
        sent(&tx, 0, 3);
        let feeder = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            sent(&feeder, 3, 1);
            tokio::time::sleep(Duration::from_millis(20)).await;
            sent(&feeder, 4, 1);
        });
        let started = tokio::time::Instant::now();
        let batch = next_batch(&mut rx, 1000, linger).await.unwrap();
        assert_eq!(batch, [0, 1, 2, 3]);
        assert_eq!(started.elapsed(), Duration::from_millis(1) + LINGER_GAP);
    }

    #[tokio::test(start_paused = true)]
    async fn under_load_a_batch_waits_to_fill_up_to_the_linger() {
        let (tx, mut rx) = mpsc::unbounded();
        sent(&tx, 0, 100);
        // More arrive 1 ms later, and again 10 ms later (after the linger).
        let feeder = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            sent(&feeder, 100, 50);
            tokio::time::sleep(Duration::from_millis(9)).await;
            sent(&feeder, 150, 50);
        });
        let started = tokio::time::Instant::now();
        let batch = next_batch(&mut rx, 1000, LINGER).await.unwrap();
        assert_eq!(batch.len(), 150, "took what came within the linger");
        assert_eq!(started.elapsed(), LINGER);
        let batch = next_batch(&mut rx, 1000, LINGER).await.unwrap();
        assert_eq!(batch, (150..200).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_goes_at_once_and_no_linger_means_none() {
        let (tx, mut rx) = mpsc::unbounded();
        sent(&tx, 0, 250);
        let started = tokio::time::Instant::now();
        assert_eq!(next_batch(&mut rx, 200, LINGER).await.unwrap().len(), 200);
        assert_eq!(
            next_batch(&mut rx, 200, Duration::ZERO)
                .await
                .unwrap()
                .len(),
            50
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
