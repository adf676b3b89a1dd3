//! Replay at scale: the whole log of a run (every push of every measurement before it)
//! rebuilt into an empty database, timed, and its checksum compared with the live
//! projection's (ARCHITECTURE, invariant 10). A difference fails the bench.

use std::time::Duration;

use anyhow::Context as _;
use projector::replay::checksum;
use sync_tests::TestDb;
use tokio::time::Instant;

use crate::stack::Stack;

const NAME: &str = schemas::projection::DEFAULT_PROJECTOR;

pub struct ReplayRun {
    /// Log positions rebuilt.
    pub events: u64,
    /// From the start of the replay until both stages committed the last position.
    pub elapsed: Duration,
}

impl ReplayRun {
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

pub async fn measure(stack: &Stack, limit: Duration) -> anyhow::Result<ReplayRun> {
    stack.wait_idle(limit).await?;
    let live = checksum(&stack.db.pool, NAME).await?;
    let db = TestDb::create().await;
    let config = sync_tests::projector_config(&stack.nats, &db, NAME);
    let until = live.log_checkpoint;
    let elapsed = stack
        .projector_runtime()
        .spawn(async move {
            let projector = projector::Projector::build(config).await?;
            let started = Instant::now();
            tokio::time::timeout(limit, projector.replay(until))
                .await
                .context("the replay did not finish in time")??;
            anyhow::Ok(started.elapsed())
        })
        .await??;
    let rebuilt = checksum(&db.pool, NAME).await?;
    anyhow::ensure!(
        rebuilt == live,
        "the rebuilt projections differ from the live ones:\nlive {live:?}\nrebuilt {rebuilt:?}"
    );
    Ok(ReplayRun {
        events: until,
        elapsed,
    })
}
