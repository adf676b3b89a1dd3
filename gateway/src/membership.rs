//! Each gateway's view of spaces and memberships: the snapshot PostgreSQL holds at the
//! projector's checkpoint, then every membership event of the log after it, live,
//! through an ordered consumer of `space.*.members`. No TTL, no cache: a
//! `MemberRemoved` takes effect on this gateway as soon as JetStream delivers it
//! (milliseconds), for every request after that.
//!
//! Fail closed: while the view is not following the log (starting, NATS disconnected,
//! consumer lost), access is read from PostgreSQL's projection per request; if that
//! fails too, the request fails with 503. Nobody is ever treated as unrestricted.

use std::{
    sync::{Arc, RwLock, RwLockReadGuard},
    time::Duration,
};

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use futures::StreamExt as _;
use ingest::{Access, membership::Memberships};
use schemas::{Role, subject::MEMBERSHIP_SUBJECTS};
use sqlx::{PgPool, Row as _};
use tokio::sync::watch;

use crate::{
    error::ApiError,
    follow::{Following, keep_following, snapshot_at_checkpoint},
};

const MEMBERSHIP: &str = "membership state";

#[derive(Clone)]
pub struct MembershipView(Arc<Inner>);

struct Inner {
    state: RwLock<Memberships>,
    /// Position: the last membership event applied (or the snapshot's checkpoint).
    following: Following,
    pool: PgPool,
}

impl MembershipView {
    /// Starts following; `disconnects` ticks each time the NATS connection drops.
    pub fn follow(
        js: jetstream::Context,
        stream: String,
        pool: PgPool,
        projector: String,
        disconnects: watch::Receiver<u64>,
    ) -> Self {
        let view = Self(Arc::new(Inner {
            state: RwLock::new(Memberships::default()),
            following: Following::new(),
            pool,
        }));
        let follower = view.clone();
        tokio::spawn(async move {
            let live = follower.0.following.live().clone();
            keep_following("membership view", &live, disconnects, || {
                follower.follow_once(&js, &stream, &projector)
            })
            .await;
        });
        view
    }

    pub fn is_live(&self) -> bool {
        self.0.following.is_live()
    }

    /// How far the view has applied the log.
    pub fn position(&self) -> u64 {
        self.0.following.position()
    }

    /// What `user_id` may read and write at this moment.
    pub async fn access(&self, user_id: &str) -> Result<Access, ApiError> {
        if self.is_live() {
            return Ok(self.read().access(user_id));
        }
        self.access_from_postgres(user_id).await
    }

    /// What `user_id` may read and write, with every membership event up to
    /// `members_seq` in force: from the view once it has applied them, else from
    /// PostgreSQL's projection (which the caller knows holds them). The view is
    /// milliseconds behind the log at most while it follows, but a request may arrive
    /// within those milliseconds (on another gateway than the one that logged a
    /// removal), and longer while its consumer is recreated.
    pub async fn access_as_of(&self, user_id: &str, members_seq: u64) -> Result<Access, ApiError> {
        if self.is_live() && self.0.following.position() >= members_seq {
            return Ok(self.read().access(user_id));
        }
        self.access_from_postgres(user_id).await
    }

    async fn access_from_postgres(&self, user_id: &str) -> Result<Access, ApiError> {
        let rows = sqlx::query("SELECT space_id, role FROM space_members WHERE user_id = $1")
            .bind(user_id)
            .fetch_all(&self.0.pool)
            .await
            .map_err(|e| ApiError::unavailable(MEMBERSHIP, e))?;
        let roles = rows
            .iter()
            .filter_map(|r| {
                let role = Role::parse(r.get::<&str, _>(1))?;
                Some((r.get::<String, _>(0), role))
            })
            .collect();
        Ok(Access::with_roles(user_id, roles))
    }

    /// The live view, for requests that need more than one user's access (the internal
    /// API). Waits (bounded) for the view to follow the log; 503 if it does not.
    pub async fn snapshot(
        &self,
        timeout: Duration,
    ) -> Result<RwLockReadGuard<'_, Memberships>, ApiError> {
        if !self.0.following.wait_live(timeout).await {
            return Err(ApiError::unavailable(
                MEMBERSHIP,
                "the membership view is not following the log",
            ));
        }
        Ok(self.read())
    }

    /// The live view as it is now, if it is following the log.
    pub fn now(&self) -> Option<RwLockReadGuard<'_, Memberships>> {
        self.is_live().then(|| self.read())
    }

    /// Waits (bounded) until the view has applied the log up to `seq`.
    pub async fn wait_for(&self, seq: u64, timeout: Duration) -> bool {
        self.0.following.wait_for(seq, timeout).await
    }

    fn read(&self) -> RwLockReadGuard<'_, Memberships> {
        self.0.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads the snapshot, then applies every membership event after it until the
    /// consumer fails.
    async fn follow_once(
        &self,
        js: &jetstream::Context,
        stream: &str,
        projector: &str,
    ) -> anyhow::Result<()> {
        let (snapshot, checkpoint) = load_snapshot(&self.0.pool, projector).await?;
        let stream = js.get_stream(stream).await?;
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: MEMBERSHIP_SUBJECTS.to_owned(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: checkpoint + 1,
                },
                ..Default::default()
            })
            .await?;
        let mut caught_up = consumer.cached_info().num_pending == 0;
        let mut messages = consumer.messages().await?;
        *self.0.state.write().unwrap_or_else(|e| e.into_inner()) = snapshot;
        self.0.following.reached(checkpoint);
        self.0.following.set_live(caught_up);
        tracing::info!(checkpoint, caught_up, "membership view following the log");
        while let Some(msg) = messages.next().await {
            let msg = msg?;
            let info = msg.info().map_err(|e| anyhow::anyhow!("{e}"))?;
            let seq = info.stream_sequence;
            // The projector's own decoding: what it parks (undecodable, on the wrong
            // subject, holding NUL) the view skips alike.
            match projector::apply::decode(&msg.subject, &msg.payload) {
                Ok(env) => {
                    if let Some(event) = env.event.membership() {
                        self.0
                            .state
                            .write()
                            .unwrap_or_else(|e| e.into_inner())
                            .apply(event);
                    }
                }
                // The projector parks it; the view skips it the same way.
                _ => tracing::warn!(
                    seq,
                    "skipping a membership message that is not a valid event"
                ),
            }
            if !caught_up && info.pending == 0 {
                caught_up = true;
                self.0.following.set_live(true);
            }
            self.0.following.reached(seq);
        }
        anyhow::bail!("the membership consumer ended")
    }
}

/// Spaces and memberships as of the projector's checkpoint, read in one snapshot.
async fn load_snapshot(pool: &PgPool, projector: &str) -> anyhow::Result<(Memberships, u64)> {
    let (mut tx, checkpoint) = snapshot_at_checkpoint(pool, projector).await?;
    let state = projector::memberships::load_all(&mut tx).await?;
    tx.commit().await?;
    Ok((state, checkpoint))
}
