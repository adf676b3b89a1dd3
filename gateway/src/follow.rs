//! What every follower of the log on a gateway shares: run it, and when it stops
//! (consumer lost, NATS disconnected), mark it not live and start it again with backoff,
//! until the gateway's NATS connection is gone for good.

use std::{future::Future, time::Duration};

use tokio::sync::watch;

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
