//! The gateway's side of the log: publishing events with acknowledgement and reading
//! the current log position.

use std::time::Duration;

use async_nats::{
    connection::State,
    jetstream::{self, context::PublishErrorKind, message::PublishMessage},
};
use futures::future::try_join_all;
use ingest::PreparedEvent;

use crate::error::ApiError;

#[derive(Clone)]
pub struct Log {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: String,
    publish_timeout: Duration,
}

impl Log {
    pub async fn connect(
        conn: &projector::Connections,
        publish_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let client = async_nats::ConnectOptions::new()
            .name("gateway")
            .retry_on_initial_connect()
            .connect(&conn.nats_url)
            .await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(publish_timeout)
            .max_ack_inflight(8192)
            .backpressure_on_inflight(true)
            .build(client.clone());
        js.get_or_create_stream(schemas::stream::stream_config(
            &conn.stream,
            conn.stream_replicas,
        ))
        .await?;
        Ok(Self {
            client,
            js,
            stream: conn.stream.clone(),
            publish_timeout,
        })
    }

    pub fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// Publishes every event and returns only once JetStream acknowledged all of them
    /// (a duplicate acknowledged as such is already durable). Any failure is a 503:
    /// the client retries, and the deterministic message ids make the retry land each
    /// event exactly once.
    pub async fn publish_all(&self, events: &[PreparedEvent]) -> Result<u64, ApiError> {
        if !self.connected() {
            return Err(ApiError::unavailable("the log (NATS)", "not connected"));
        }
        let publish = async {
            let mut acks = Vec::with_capacity(events.len());
            for event in events {
                let msg = PublishMessage::build()
                    .message_id(&event.msg_id)
                    .payload(event.payload.clone().into());
                acks.push(
                    self.js
                        .send_publish(event.subject.clone(), msg)
                        .await?
                        .into_future(),
                );
            }
            let acks = try_join_all(acks).await.map_err(|e| {
                async_nats::jetstream::context::PublishError::with_source(
                    PublishErrorKind::Other,
                    e,
                )
            })?;
            Ok::<_, async_nats::jetstream::context::PublishError>(
                acks.iter().map(|a| a.sequence).max().unwrap_or(0),
            )
        };
        match tokio::time::timeout(self.publish_timeout, publish).await {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(e)) => Err(ApiError::unavailable("the log (NATS)", e)),
            Err(_) => Err(ApiError::unavailable(
                "the log (NATS)",
                "publish acknowledgement timed out",
            )),
        }
    }

    /// The sequence of the last event in the log.
    pub async fn last_seq(&self) -> Result<u64, ApiError> {
        if !self.connected() {
            return Err(ApiError::unavailable("the log (NATS)", "not connected"));
        }
        let stream = tokio::time::timeout(self.publish_timeout, self.js.get_stream(&self.stream))
            .await
            .map_err(|_| ApiError::unavailable("the log (NATS)", "stream info timed out"))?
            .map_err(|e| ApiError::unavailable("the log (NATS)", e))?;
        Ok(stream.cached_info().state.last_sequence)
    }
}
