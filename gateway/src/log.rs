//! The gateway's side of the log: publishing a push's events with acknowledgement, as
//! one atomic JetStream batch, and reading the current log position.
//!
//! A push is one atomic batch, however many changes it holds, up to the most the server
//! accepts in one (1000 on a stock nats-server; `nats/log-limits.conf` raises it). The
//! gateway learns that limit from the server's refusal of a larger batch (nothing of a
//! refused batch is stored) and from then on publishes larger pushes atomically per
//! that many changes. A resend that also carries new changes publishes the new ones as
//! one atomic batch too (`Publisher::publish_resend`).
//!
//! Group commit: pushes that arrive while earlier ones are being committed are
//! published together, as one atomic batch of up to 1000 events. Each push stays
//! all-or-nothing (the batch they share is), and JetStream's cost of an atomic batch is
//! mostly per batch, not per event: batches of 500 go through about twice as fast as
//! batches of 100 (see README, Speed).

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_nats::{
    HeaderMap,
    connection::State,
    header::{
        NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL, NATS_BATCH_ID, NATS_BATCH_SEQUENCE,
        NATS_MESSAGE_ID,
    },
    jetstream::{self, ErrorCode, message::PublishMessage},
};
use futures::future::{BoxFuture, try_join_all};
use ingest::PreparedEvent;
use serde::Deserialize;
use tokio::{
    sync::{Semaphore, mpsc, oneshot, watch},
    task::JoinSet,
};
use uuid::Uuid;

use crate::{
    error::ApiError,
    metrics::{Alone, Metrics},
};

/// Most events published together as one combined batch: what a stock nats-server
/// accepts in one atomic batch. Bigger combined batches would save little (the per-batch
/// cost is already shared by several pushes) and cost the pushes in them latency.
const MAX_COMBINED_BATCH: usize = 1000;

/// The server's atomic batch limit before it is known: a push is tried whole.
const LIMIT_UNKNOWN: usize = usize::MAX;

/// The limit assumed when the server refuses a batch as too large without saying how
/// large it may be (nats-server's default).
const DEFAULT_SERVER_LIMIT: usize = 1000;

/// Atomic batches this gateway keeps in flight at once; the server allows 50 per
/// stream, so a few gateways at full load stay under it.
const ATOMIC_BATCHES_IN_FLIGHT: usize = 16;

/// Combined batches in flight at once, at most.
const COMBINED_IN_FLIGHT: usize = 4;

/// Pushes waiting to be combined.
const COMBINER_QUEUE: usize = 1024;

const LOG: &str = "the log (NATS)";

/// Time allowed per event of a push beyond the publish timeout: the server stages an
/// atomic batch message by message, so the largest pushes (100,000 changes) take
/// seconds; a batch dropped before its commit is abandoned whole, so a timeout too short
/// for it would fail it on every retry.
const TIME_PER_EVENT: Duration = Duration::from_micros(100);

#[derive(Clone)]
pub struct Log {
    publisher: Publisher,
    combiner: mpsc::Sender<Queued>,
    publish_timeout: Duration,
    disconnects: watch::Sender<u64>,
}

/// Which of a push's event ids are known to be in the log, given the log's end (the
/// gateway asks its tail and PostgreSQL); the others may or may not be.
pub type LoggedIds = Arc<dyn Fn(Vec<Uuid>, u64) -> BoxFuture<'static, HashSet<Uuid>> + Send + Sync>;

/// What publishes: the connection, the limit on atomic batches in flight, and the
/// server's limit on events per atomic batch once learned.
#[derive(Clone)]
struct Publisher {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: String,
    batches: Arc<Semaphore>,
    batch_limit: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    publish_timeout: Duration,
}

/// A push waiting for its events to be published: the answer is where they went, or
/// why they did not.
struct Queued {
    events: Vec<PreparedEvent>,
    logged: Option<LoggedIds>,
    reply: oneshot::Sender<Result<Placed, String>>,
}

/// Where a push's events went in the log, as far as known (not for a resend JetStream
/// recognised).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Placed {
    /// The position just before the push's first event.
    pub first: Option<u64>,
    /// The position just before the atomic batch that carried it, shared with the
    /// pushes combined with it. Every push acknowledged before this one arrived lies at
    /// or below it (those acknowledged together with it do not), so it is all that
    /// read-your-writes must wait for.
    pub read_bound: Option<u64>,
}

impl Placed {
    /// A push published on its own: its batch starts with it.
    fn alone(first: Option<u64>) -> Self {
        Self {
            first,
            read_bound: first,
        }
    }
}

/// The server's answer to a batch commit: an ack or an API error.
#[derive(Deserialize)]
#[serde(untagged)]
enum CommitReply {
    Err { error: jetstream::Error },
    Ack { seq: u64 },
}

/// A push tried whole: its answer, or what is left to do.
enum Whole {
    Done(Result<Option<u64>, String>),
    /// Refused as holding events in the log already; nothing was stored.
    Resend,
    /// More events than the server takes at once; nothing was stored.
    TooLarge,
}

enum PublishFailure {
    /// Some of the batch was committed before (a resend); none of it was stored now.
    AlreadyPartlyLogged,
    /// More events than the server takes in one atomic batch (at most this many); none
    /// was stored.
    TooLarge(usize),
    Failed(String),
}

impl PublishFailure {
    fn why(self) -> String {
        match self {
            Self::AlreadyPartlyLogged => "the batch holds events logged before".to_owned(),
            Self::TooLarge(max) => format!("the log takes at most {max} events at once"),
            Self::Failed(why) => why,
        }
    }
}

impl Log {
    pub async fn connect(
        conn: &projector::Connections,
        publish_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let disconnects = watch::Sender::new(0u64);
        let ticks = disconnects.clone();
        let client = conn
            .nats_options("gateway")
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
        let publisher = Publisher {
            client,
            js,
            stream: conn.stream.clone(),
            batches: Arc::new(Semaphore::new(ATOMIC_BATCHES_IN_FLIGHT)),
            batch_limit: Arc::new(AtomicUsize::new(LIMIT_UNKNOWN)),
            metrics,
            publish_timeout,
        };
        let (combiner, queue) = mpsc::channel(COMBINER_QUEUE);
        // Ends when every `Log` (so every sender) is gone.
        tokio::spawn(combine(publisher.clone(), queue));
        Ok(Self {
            publisher,
            combiner,
            publish_timeout,
            disconnects,
        })
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.publisher.js
    }

    pub fn stream_name(&self) -> &str {
        &self.publisher.stream
    }

    /// Ticks each time the connection to NATS drops.
    pub fn disconnects(&self) -> watch::Receiver<u64> {
        self.disconnects.subscribe()
    }

    pub fn connected(&self) -> bool {
        self.publisher.client.connection_state() == State::Connected
    }

    /// Publishes a push's events and returns only once JetStream has stored all of them.
    /// They go in as one atomic batch, all stored or none, up to the server's limit per
    /// batch (beyond it, atomically per that many). Any failure is a 503 and the client
    /// retries; the deterministic message ids make a retry land each event exactly once.
    ///
    /// A resend that also carries new changes (some of its events are in the log) has
    /// the new ones published as one atomic batch, leaving out those `logged` knows to
    /// be in the log; without `logged`, or when it misses one, each goes on its own.
    ///
    /// Returns where the events went (see [`Placed`]): read-your-writes then needs no
    /// other round trip to know what to wait for.
    pub async fn publish_all(
        &self,
        events: Vec<PreparedEvent>,
        logged: Option<LoggedIds>,
    ) -> Result<Placed, ApiError> {
        if !self.connected() {
            return Err(ApiError::unavailable(LOG, "not connected"));
        }
        let max_payload = self.publisher.client.server_info().max_payload;
        if let Some((i, _)) = events
            .iter()
            .enumerate()
            .find(|(_, e)| e.payload.len() + 1024 > max_payload)
        {
            return Err(ApiError::TooLarge(format!(
                "change {i} is larger than the log accepts ({max_payload} bytes)"
            )));
        }
        let timeout = self.publisher.time_for(events.len());
        let publish = async {
            if events.len() == 1 {
                // One message is atomic by itself, and cheaper published alone.
                let events: Vec<&PreparedEvent> = events.iter().collect();
                return self
                    .publisher
                    .publish_alone(&events, Alone::Single)
                    .await
                    .map(Placed::alone);
            }
            if events.len() <= self.publisher.combined_limit() {
                // Through the combiner: published together with concurrent pushes.
                let (reply, answer) = oneshot::channel();
                let queued = Queued {
                    events,
                    logged,
                    reply,
                };
                self.combiner
                    .send(queued)
                    .await
                    .map_err(|_| "the publisher has stopped".to_owned())?;
                return answer
                    .await
                    .map_err(|_| "the publisher has stopped".to_owned())?;
            }
            let events: Vec<&PreparedEvent> = events.iter().collect();
            self.publisher
                .publish_push(&events, logged.as_ref())
                .await
                .map(Placed::alone)
        };
        match tokio::time::timeout(timeout, publish).await {
            Ok(Ok(placed)) => Ok(placed),
            Ok(Err(why)) => Err(ApiError::unavailable(LOG, why)),
            Err(_) => Err(ApiError::unavailable(
                LOG,
                "publish acknowledgement timed out",
            )),
        }
    }

    /// Publishes events that must be stored together (an atomic batch) and returns the
    /// sequence of the last one.
    pub async fn publish_events(&self, events: Vec<PreparedEvent>) -> Result<u64, ApiError> {
        let n = events.len() as u64;
        match self.publish_all(events, None).await?.first {
            Some(before) => Ok(before + n),
            // A resend: the events are in the log already, at or before its end.
            None => self.last_seq().await,
        }
    }

    /// The sequence of the last event in the log.
    pub async fn last_seq(&self) -> Result<u64, ApiError> {
        if !self.connected() {
            return Err(ApiError::unavailable(LOG, "not connected"));
        }
        tokio::time::timeout(self.publish_timeout, self.publisher.log_end())
            .await
            .map_err(|_| ApiError::unavailable(LOG, "stream info timed out"))?
            .map_err(|e| ApiError::unavailable(LOG, e))
    }
}

impl Publisher {
    /// The sequence of the last event in the log.
    async fn log_end(&self) -> Result<u64, String> {
        let stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| e.to_string())?;
        Ok(stream.cached_info().state.last_sequence)
    }

    /// How long publishing `events` may take.
    fn time_for(&self, events: usize) -> Duration {
        self.publish_timeout + TIME_PER_EVENT * u32::try_from(events).unwrap_or(u32::MAX)
    }

    /// The server's limit on events per atomic batch, as far as known.
    fn batch_limit(&self) -> usize {
        self.batch_limit.load(Ordering::Relaxed)
    }

    /// Most events of pushes published together.
    fn combined_limit(&self) -> usize {
        MAX_COMBINED_BATCH.min(self.batch_limit())
    }

    /// The server refused a batch as larger than `max` events.
    fn learn_batch_limit(&self, max: usize) {
        let max = max.max(1);
        let before = self.batch_limit.fetch_min(max, Ordering::Relaxed);
        if max < before {
            tracing::info!(
                limit = max,
                "the log takes at most this many events per atomic batch; larger pushes are atomic per this many"
            );
        }
    }

    /// One push: one atomic batch when the server takes that many events at once (tried
    /// whole while its limit is unknown), else atomically per the server's limit. A
    /// batch that holds events in the log already (a resend) goes as [`publish_resend`]
    /// says.
    ///
    /// [`publish_resend`]: Self::publish_resend
    async fn publish_push(
        &self,
        events: &[&PreparedEvent],
        logged: Option<&LoggedIds>,
    ) -> Result<Option<u64>, String> {
        match self.try_whole(events).await {
            Whole::Done(result) => result,
            Whole::Resend => {
                self.metrics.resend();
                self.publish_resend(events, logged).await
            }
            Whole::TooLarge => self.publish_chunks(events, logged).await,
        }
    }

    /// A push tried as one atomic batch, unless the server is known to take fewer.
    async fn try_whole(&self, events: &[&PreparedEvent]) -> Whole {
        if events.len() > self.batch_limit() {
            return Whole::TooLarge;
        }
        match self.publish_atomic(events).await {
            Ok(before) => Whole::Done(Ok(before)),
            Err(PublishFailure::AlreadyPartlyLogged) => Whole::Resend,
            Err(PublishFailure::TooLarge(max)) if max < events.len() => {
                self.learn_batch_limit(max);
                Whole::TooLarge
            }
            Err(failure) => Whole::Done(Err(failure.why())),
        }
    }

    /// A push atomically per the server's limit.
    async fn publish_chunks(
        &self,
        events: &[&PreparedEvent],
        logged: Option<&LoggedIds>,
    ) -> Result<Option<u64>, String> {
        let mut before_first = None;
        for (i, chunk) in events.chunks(self.batch_limit()).enumerate() {
            let before = match self.publish_atomic(chunk).await {
                Ok(before) => before,
                Err(PublishFailure::AlreadyPartlyLogged) => {
                    self.publish_resend(chunk, logged).await?
                }
                Err(failure) => return Err(failure.why()),
            };
            if i == 0 {
                before_first = before;
            }
        }
        Ok(before_first)
    }

    /// A batch the server refused because some of its events are in the log already: a
    /// resend, perhaps with new changes added (a client's queue that grew while it
    /// waited for an answer it never got). The events known to be logged are left out
    /// and the rest published as one atomic batch; only when that still holds a logged
    /// event (one `logged` did not know) does each event go on its own, deduplicated.
    /// Returns `None`: where the push's changes lie is not known.
    async fn publish_resend(
        &self,
        events: &[&PreparedEvent],
        logged: Option<&LoggedIds>,
    ) -> Result<Option<u64>, String> {
        let mut known = HashSet::new();
        if let Some(logged) = logged {
            // What the log holds now, the part of the resend that is in it included.
            let end = self.log_end().await?;
            known = logged(events.iter().map(|e| e.envelope.event_id).collect(), end).await;
        }
        let rest: Vec<&PreparedEvent> = events
            .iter()
            .filter(|e| !known.contains(&e.envelope.event_id))
            .copied()
            .collect();
        if rest.is_empty() {
            return Ok(None);
        }
        if !known.is_empty() {
            match self.publish_atomic(&rest).await {
                Ok(_) => return Ok(None),
                Err(PublishFailure::AlreadyPartlyLogged) => {}
                Err(failure) => return Err(failure.why()),
            }
        }
        self.publish_alone(&rest, Alone::Resend).await.map(|_| None)
    }

    /// Pushes queued together, as one atomic batch. When it holds an event already in
    /// the log (someone's resend), each push goes on its own instead.
    async fn publish_group(&self, mut group: Vec<Queued>) {
        if group.len() == 1
            && let Some(queued) = group.pop()
        {
            // Awaited here, so the combiner sends the next group once this push is
            // stored; unless it is a resend, which is handed off.
            let events: Vec<&PreparedEvent> = queued.events.iter().collect();
            let result = match self.try_whole(&events).await {
                Whole::Done(result) => {
                    if result.is_ok() {
                        self.metrics.group(1);
                    }
                    result.map(Placed::alone)
                }
                Whole::TooLarge => self
                    .publish_chunks(&events, queued.logged.as_ref())
                    .await
                    .map(Placed::alone),
                Whole::Resend => {
                    drop(events);
                    self.metrics.resend();
                    self.hand_off(queued, true);
                    return;
                }
            };
            let _ = queued.reply.send(result);
            return;
        }
        let events: Vec<&PreparedEvent> = group.iter().flat_map(|q| &q.events).collect();
        match self.publish_atomic(&events).await {
            Ok(before) => {
                self.metrics.group(group.len());
                let mut at = before;
                for queued in group {
                    let n = queued.events.len() as u64;
                    let placed = Placed {
                        first: at,
                        read_bound: before,
                    };
                    let _ = queued.reply.send(Ok(placed));
                    at = at.map(|a| a + n);
                }
                return;
            }
            Err(PublishFailure::Failed(why)) => {
                for queued in group {
                    let _ = queued.reply.send(Err(why.clone()));
                }
                return;
            }
            Err(PublishFailure::AlreadyPartlyLogged) => {
                // Counted once its pushes, going one by one, meet the resend among them.
                tracing::debug!(
                    pushes = group.len(),
                    "a combined batch holds a resend; publishing push by push"
                );
            }
            Err(PublishFailure::TooLarge(max)) => {
                // A server that takes fewer than a combined batch: each push alone.
                self.learn_batch_limit(max);
            }
        }
        // Each push on its own (nothing of this group was stored, so the next may go).
        for queued in group {
            self.hand_off(queued, false);
        }
    }

    /// Publishes a push apart from the combiner: a resend's lookup of what is logged may
    /// wait for the projector, and the pushes queued behind it must not wait with it.
    /// `resend`: JetStream refused the push whole as holding logged events.
    fn hand_off(&self, queued: Queued, resend: bool) {
        let publisher = self.clone();
        tokio::spawn(async move {
            let events: Vec<&PreparedEvent> = queued.events.iter().collect();
            let logged = queued.logged.as_ref();
            let result = if resend {
                publisher.publish_resend(&events, logged).await
            } else {
                publisher.publish_push(&events, logged).await
            };
            let _ = queued.reply.send(result.map(Placed::alone));
        });
    }

    /// One atomic batch: every message but the last is staged by the server; the last
    /// commits the batch and is answered with the sequence of the last message stored.
    /// Returns the position just before the batch.
    async fn publish_atomic(
        &self,
        chunk: &[&PreparedEvent],
    ) -> Result<Option<u64>, PublishFailure> {
        if chunk.len() == 1 {
            return self
                .publish_alone(chunk, Alone::Single)
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
            let payload = event.payload.clone();
            if i + 1 < chunk.len() {
                self.client
                    .publish_with_headers(event.subject.clone(), headers, payload)
                    .await
                    .map_err(|e| failed(&e))?;
                continue;
            }
            headers.insert(NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL);
            // Bounded by the batch's own time (not the client's 10 s default): a lost
            // commit reply (a reconnect while it was in flight) keeps the combiner from
            // sending the next batch no longer than the batch may take.
            let commit = async_nats::Request::new()
                .headers(headers)
                .payload(payload)
                .timeout(Some(self.time_for(chunk.len())));
            let reply = self
                .client
                .send_request(event.subject.clone(), commit)
                .await
                .map_err(|e| failed(&e))?;
            return match serde_json::from_slice::<CommitReply>(&reply.payload) {
                Ok(CommitReply::Ack { seq }) => {
                    self.metrics.atomic_batch(chunk.len());
                    Ok(seq.checked_sub(chunk.len() as u64))
                }
                Ok(CommitReply::Err { error })
                    if error.error_code()
                        == ErrorCode::ATOMIC_PUBLISH_CONTAINS_DUPLICATE_MESSAGE =>
                {
                    Err(PublishFailure::AlreadyPartlyLogged)
                }
                Ok(CommitReply::Err { error })
                    if error.error_code() == ErrorCode::ATOMIC_PUBLISH_TOO_LARGE_BATCH =>
                {
                    Err(PublishFailure::TooLarge(
                        size_limit(&error.to_string()).unwrap_or(DEFAULT_SERVER_LIMIT),
                    ))
                }
                Ok(CommitReply::Err { error }) => Err(failed(&error)),
                Err(e) => Err(failed(&e)),
            };
        }
        Err(PublishFailure::Failed("empty batch".into()))
    }

    /// [`Self::publish_each`], counted by why.
    async fn publish_alone(
        &self,
        events: &[&PreparedEvent],
        why: Alone,
    ) -> Result<Option<u64>, String> {
        let result = self.publish_each(events).await;
        if result.is_ok() {
            self.metrics.alone(events.len(), why);
        }
        result
    }

    /// Events published one by one (each deduplicated by its message id), all acks
    /// awaited. Returns the position just before the first, unless one was a duplicate.
    async fn publish_each(&self, events: &[&PreparedEvent]) -> Result<Option<u64>, String> {
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let msg = PublishMessage::build()
                .message_id(&event.msg_id)
                .payload(event.payload.clone());
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
}

/// The combiner. A combined batch goes out at once when none is in flight; while one
/// is, pushes queue up, and another goes out beside it only when they overflow a whole
/// batch. JetStream's cost of an atomic batch is mostly per batch (a staging store is
/// created and removed for each), so under load batches grow instead of multiplying.
/// (Measured with the bench's 8 clients, alternating runs: a second batch once half a
/// batch waited, 16.7/17.0/13.9/15.9k changes/s; one at a time, 18.3/18.5/19.2k; one at
/// a time after lingering 1.5 ms for more pushes, 16.1/17.4/16.0k.)
async fn combine(publisher: Publisher, mut queue: mpsc::Receiver<Queued>) {
    let mut in_flight = JoinSet::new();
    let mut group = Group::default();
    // The next push, when it did not fit in `group`.
    let mut carried: Option<Queued> = None;
    let mut open = true;
    loop {
        while carried.is_none() {
            let Ok(next) = queue.try_recv() else { break };
            carried = group.add(next, publisher.combined_limit());
        }
        let overflowing = carried.is_some();
        if !group.pushes.is_empty()
            && (in_flight.is_empty() || (overflowing && in_flight.len() < COMBINED_IN_FLIGHT))
        {
            let pushes = std::mem::take(&mut group).pushes;
            let sender = publisher.clone();
            in_flight.spawn(async move { sender.publish_group(pushes).await });
            if let Some(next) = carried.take() {
                group.add(next, publisher.combined_limit());
            }
            continue;
        }
        if !open && group.pushes.is_empty() && in_flight.is_empty() {
            return;
        }
        // A branch is always enabled here: with nothing in flight, a non-empty group went
        // out above, and `carried` is only ever set beside a non-empty group.
        tokio::select! {
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            next = queue.recv(), if open && carried.is_none() => match next {
                Some(next) => carried = group.add(next, publisher.combined_limit()),
                None => open = false,
            },
        }
    }
}

/// The limit in nats-server's refusal of a batch as too large ("atomic publish batch is
/// too large: 1000 (code …)").
fn size_limit(refusal: &str) -> Option<usize> {
    let (_, rest) = refusal.split_once("too large: ")?;
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..digits].parse().ok()
}

/// Pushes to be published together.
#[derive(Default)]
struct Group {
    pushes: Vec<Queued>,
    events: usize,
}

impl Group {
    /// Adds the push, or hands it back when the batch would grow past `limit` events.
    fn add(&mut self, push: Queued, limit: usize) -> Option<Queued> {
        if !self.pushes.is_empty() && self.events + push.events.len() > limit {
            return Some(push);
        }
        self.events += push.events.len();
        self.pushes.push(push);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::size_limit;

    #[test]
    fn the_limit_is_read_from_the_servers_refusal() {
        let refusal = "atomic publish batch is too large: 1000 (code 400, error code 10199)";
        assert_eq!(size_limit(refusal), Some(1000));
        assert_eq!(
            size_limit("atomic publish batch is too large: 250"),
            Some(250)
        );
        assert_eq!(size_limit("atomic publish batch is too large"), None);
        assert_eq!(size_limit("too large: many"), None);
    }
}
