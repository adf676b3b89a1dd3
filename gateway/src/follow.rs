//! What every follower of the log on a gateway shares: whether it follows the log and
//! how far it has come; running it, and when it stops (consumer lost, NATS
//! disconnected), marking it not live and starting it again with backoff, until the
//! gateway's NATS connection is gone for good.

use std::{future::Future, time::Duration};

use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::watch;

/// A read-only transaction that sees PostgreSQL's projection as of one commit, and the
/// projector checkpoint `projector` had then: a follower loads its state from it and
/// follows the log from the message after the checkpoint.
pub(crate) async fn snapshot_at_checkpoint(
    pool: &PgPool,
    projector: &str,
) -> Result<(Transaction<'static, Postgres>, u64), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let checkpoint: Option<i64> =
        sqlx::query_scalar("SELECT last_seq FROM projector_checkpoints WHERE name = $1")
            .bind(projector)
            .fetch_optional(&mut *tx)
            .await?;
    Ok((tx, checkpoint.unwrap_or(0) as u64))
}

/// A follower's state as requests see it.
pub(crate) struct Following {
    /// Following the log right now.
    live: watch::Sender<bool>,
    /// Every message up to here has been seen.
    position: watch::Sender<u64>,
}

impl Following {
    pub(crate) fn new() -> Self {
        Self {
            live: watch::Sender::new(false),
            position: watch::Sender::new(0),
        }
    }

    pub(crate) fn is_live(&self) -> bool {
        *self.live.borrow()
    }

    pub(crate) fn set_live(&self, live: bool) {
        self.live.send_replace(live);
    }

    pub(crate) fn live(&self) -> &watch::Sender<bool> {
        &self.live
    }

    /// Every message up to here has been seen.
    pub(crate) fn position(&self) -> u64 {
        *self.position.borrow()
    }

    pub(crate) fn reached(&self, seq: u64) {
        self.position.send_replace(seq);
    }

    /// Waits (at most `timeout`) until the follower has seen the log up to `seq`.
    pub(crate) async fn wait_for(&self, seq: u64, timeout: Duration) -> bool {
        let mut rx = self.position.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|p| *p >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits (at most `timeout`) until the follower follows the log.
    pub(crate) async fn wait_live(&self, timeout: Duration) -> bool {
        let mut live = self.live.subscribe();
        tokio::time::timeout(timeout, live.wait_for(|l| *l))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Runs `follow_once` again and again. `live` is cleared each time it stops;
/// `disconnects` ticks each time the NATS connection drops, which restarts it too.
pub(crate) async fn keep_following<F, Fut>(
    what: &'static str,
    live: &watch::Sender<bool>,
    mut disconnects: watch::Receiver<u64>,
    mut follow_once: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut backoff = Duration::from_millis(50);
    loop {
        if disconnects.has_changed().is_err() {
            // The gateway's NATS connection is gone for good: it has shut down.
            return;
        }
        disconnects.mark_unchanged();
        let outcome = tokio::select! {
            r = follow_once() => r,
            _ = disconnects.changed() => Err(anyhow::anyhow!("NATS connection lost")),
        };
        if live.send_replace(false) {
            // It had been following: a fresh failure, not a persistent one.
            backoff = Duration::from_millis(50);
        }
        if let Err(e) = outcome {
            tracing::warn!(follower = what, error = %e, ?backoff, "stopped following the log; restarting");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
