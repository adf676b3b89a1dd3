//! End-to-end rate into PostgreSQL: from the first push of a burst until the
//! projector's checkpoint reaches the stream's last sequence; and the projector's own
//! rate draining a pre-filled stream, as the baseline.

use std::time::Duration;

use crate::{
    cpu::{self, Usage},
    push::{self, PushRun},
    raw,
    stack::Stack,
    workload::{Device, RawEvent},
};

pub struct E2eRun {
    pub push: PushRun,
    /// First push sent → checkpoint at the stream's last sequence.
    pub total: Duration,
    /// Last push answered → checkpoint at the stream's last sequence.
    pub drain: Duration,
    pub cpu: Usage,
}

impl E2eRun {
    pub fn rate(&self) -> f64 {
        self.push.changes as f64 / self.total.as_secs_f64().max(1e-9)
    }
}

pub async fn measure(
    stack: &Stack,
    devices: Vec<Device>,
    chain_since: bool,
    limit: Duration,
) -> anyhow::Result<E2eRun> {
    stack.wait_idle(limit).await?;
    let push = push::gateway(stack, devices, chain_since, limit).await?;
    let pushed = push.started + push.wall;
    let last = stack.last_seq().await?;
    let reached = stack
        .wait_checkpoint(last, Duration::from_millis(2), limit)
        .await?;
    let cpu = push
        .cpu_before
        .usage_until(&cpu::snapshot(stack.postmaster));
    Ok(E2eRun {
        total: reached.duration_since(push.started),
        drain: reached.saturating_duration_since(pushed),
        push,
        cpu,
    })
}

/// The projector alone: the stack's stream pre-filled with a burst of the same kind of
/// events (published straight to JetStream while the projector is stopped), then the
/// projector started and timed until its checkpoint reaches the stream's last sequence.
pub struct DrainRun {
    pub events: u64,
    pub elapsed: Duration,
    pub cpu: Usage,
}

impl DrainRun {
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

pub async fn drain(
    stack: &mut Stack,
    events: Vec<Vec<Vec<RawEvent>>>,
    limit: Duration,
) -> anyhow::Result<DrainRun> {
    stack.wait_idle(limit).await?;
    let start = stack.last_seq().await?;
    stack.stop_projector().await;
    let published = raw::publish(
        stack.nats.connect_as(Some("gateway")).await?,
        events,
        raw::Mode::Atomic,
        limit,
        stack.postmaster,
    )
    .await?;
    anyhow::ensure!(
        published.complete && published.error_count() == 0,
        "pre-filling the stream failed: {:?}; first: {:?}",
        published.errors,
        published.first_error
    );
    let last = stack.last_seq().await?;
    let before = cpu::snapshot(stack.postmaster);
    let t0 = tokio::time::Instant::now();
    stack.start_projector().await?;
    let reached = stack
        .wait_checkpoint(last, Duration::from_millis(2), limit)
        .await?;
    Ok(DrainRun {
        events: last - start,
        elapsed: reached.duration_since(t0),
        cpu: before.usage_until(&cpu::snapshot(stack.postmaster)),
    })
}
