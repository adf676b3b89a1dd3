//! How far the projector has applied the log, followed through PostgreSQL
//! notifications, so requests can wait for their own writes to be readable.

use std::time::Duration;

use projector::apply::{Positions, read_checkpoint, read_positions};
use schemas::projection::CHECKPOINT_CHANNEL;
use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::watch;

/// The projector's committed position as this gateway last heard it.
#[derive(Clone)]
pub struct Progress {
    rx: watch::Receiver<u64>,
    pool: PgPool,
    name: String,
}

impl Progress {
    /// Starts following the checkpoint of projector `name`.
    pub fn follow(pool: PgPool, name: String) -> Self {
        let (tx, rx) = watch::channel(0);
        tokio::spawn(watch_checkpoint(pool.clone(), name.clone(), tx));
        Self { rx, pool, name }
    }

    /// The checkpoint as last heard.
    pub fn current(&self) -> u64 {
        *self.rx.borrow()
    }

    /// Reads the checkpoint from the database (authoritative, one round trip).
    pub async fn read(&self) -> Result<u64, sqlx::Error> {
        read_checkpoint(&self.pool, &self.name).await
    }

    /// Reads the checkpoint and the position of the last membership event applied up to
    /// it, as one committed row holds them.
    ///
    /// A database not yet migrated to hold the membership position (a gateway upgraded
    /// before the projector) gives the checkpoint and a position no view reaches: reads
    /// then take memberships from PostgreSQL.
    pub async fn read_positions(&self) -> Result<Positions, sqlx::Error> {
        match read_positions(&self.pool, &self.name).await {
            Err(e) if is_undefined_column(&e) => Ok(Positions {
                checkpoint: self.read().await?,
                members_seq: u64::MAX,
            }),
            other => other,
        }
    }

    /// The records stage's checkpoint (record state follows the change log).
    pub async fn read_records(&self) -> Result<u64, sqlx::Error> {
        read_checkpoint(&self.pool, &projector::records::checkpoint_name(&self.name)).await
    }

    /// Waits until the projector has applied the log up to `target`, at most `timeout`.
    /// Returns the checkpoint reached, or `None` when it was not reached in time.
    pub async fn wait_for(
        &self,
        target: u64,
        timeout: Duration,
    ) -> Result<Option<u64>, sqlx::Error> {
        let now = self.current();
        if now >= target {
            return Ok(Some(now));
        }
        let mut rx = self.rx.clone();
        let waited = tokio::time::timeout(timeout, async {
            rx.wait_for(|seq| *seq >= target).await.map(|seq| *seq)
        })
        .await;
        match waited {
            Ok(Ok(seq)) => Ok(Some(seq)),
            // The notification path may be down or late: ask the database itself.
            _ => Ok(Some(self.read().await?).filter(|seq| *seq >= target)),
        }
    }
}

/// Listens for checkpoint notifications; on any failure reconnects, re-reading the
/// table so nothing missed while disconnected is lost. A slow poll backs up LISTEN.
async fn watch_checkpoint(pool: PgPool, name: String, tx: watch::Sender<u64>) {
    let prefix = format!("{name}:");
    let advance = |seq: u64| {
        tx.send_if_modified(|cur| {
            let newer = seq > *cur;
            if newer {
                *cur = seq;
            }
            newer
        });
    };
    loop {
        let result: Result<(), sqlx::Error> = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(CHECKPOINT_CHANNEL).await?;
            advance(read_checkpoint(&pool, &name).await?);
            loop {
                tokio::select! {
                    n = listener.recv() => {
                        let n = n?;
                        if let Some(seq) = n.payload().strip_prefix(&prefix).and_then(|s| s.parse().ok()) {
                            advance(seq);
                        }
                    }
                    () = tokio::time::sleep(Duration::from_secs(1)) => advance(read_checkpoint(&pool, &name).await?),
                    () = tx.closed() => return Ok(()),
                }
            }
        }
        .await;
        if tx.is_closed() {
            return;
        }
        if let Err(e) = result {
            tracing::warn!(error = %e, "checkpoint listener failed; reconnecting");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// PostgreSQL's `undefined_column`.
fn is_undefined_column(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|code| code == "42703")
}
