//! How long the disk takes to make a small write durable, where the bench's nats-servers
//! keep their stores: nats-server 2.15 syncs every atomic batch's staging store (its
//! two meta files written with `O_SYNC`, the directory and the block synced: five waits
//! on the disk per batch), so the raw atomic-batch baseline, and to a lesser degree the
//! gateway's pushes, follow this latency as much as the CPU.

use std::{
    fs::OpenOptions,
    io::Write,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use hdrhistogram::Histogram;

/// Writes of 4 KiB each made durable (`write` + `fdatasync`), in one file.
const WRITES: usize = 200;

/// Latencies of `WRITES` durable 4 KiB writes in a fresh temporary directory (where
/// `tempfile` puts the test harness's nats-server stores), in µs.
pub async fn probe() -> anyhow::Result<Histogram<u64>> {
    tokio::task::spawn_blocking(|| {
        let dir = tempfile::tempdir().context("a directory for the disk probe")?;
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(dir.path().join("probe"))
            .context("creating the disk probe's file")?;
        let block = [0x5au8; 4096];
        let mut latencies = Histogram::<u64>::new(3)?;
        for _ in 0..WRITES {
            let started = Instant::now();
            file.write_all(&block)?;
            file.sync_data()?;
            latencies.record(micros(started.elapsed()))?;
        }
        Ok(latencies)
    })
    .await?
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}
