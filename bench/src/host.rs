//! How fast the shared host is at the time of each run, so that runs of different days
//! can be told apart by the machine rather than by the code:
//!
//! - the disk: how long a small write takes to become durable where the bench's
//!   nats-servers keep their stores. nats-server 2.15 syncs every atomic batch's staging
//!   store (its two meta files written with `O_SYNC`, the directory and the block
//!   synced: five waits on the disk per batch), so the raw atomic-batch baseline follows
//!   this latency as much as the CPU;
//! - the CPU: one fixed piece of single-threaded work like the gateway's (a push body of
//!   100 changes parsed and serialized again), timed. The same binary does the same
//!   work in every run, so a slower core shows as a longer time.

use std::{fs::OpenOptions, io::Write, time::Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;

use crate::workload;

/// Writes of 4 KiB each made durable (`write` + `fdatasync`), in one file.
const WRITES: usize = 200;

/// Timed repetitions of the CPU work, after as many untimed ones.
const CPU_ROUNDS: usize = 200;

/// Changes in the push body the CPU work parses.
pub const CPU_CHANGES: usize = 100;

/// Latencies of `WRITES` durable 4 KiB writes in a fresh temporary directory (where
/// `tempfile` puts the test harness's nats-server stores), in µs.
pub async fn disk_sync() -> anyhow::Result<Histogram<u64>> {
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
            latencies.saturating_record(started.elapsed().as_micros() as u64);
        }
        Ok(latencies)
    })
    .await?
}

/// Times of `CPU_ROUNDS` rounds of parsing a push body of `CPU_CHANGES` bench changes
/// into JSON values and serializing them again, on one thread, in µs.
pub async fn cpu_work() -> anyhow::Result<Histogram<u64>> {
    tokio::task::spawn_blocking(|| {
        let body = workload::batches("host-probe", 0, 1, CPU_CHANGES, None)
            .pop()
            .context("a push body for the CPU probe")?;
        let round = || -> anyhow::Result<Vec<u8>> {
            let parsed: Vec<serde_json::Value> = serde_json::from_slice(&body)?;
            Ok(serde_json::to_vec(&parsed)?)
        };
        for _ in 0..CPU_ROUNDS {
            std::hint::black_box(round()?);
        }
        let mut times = Histogram::<u64>::new(3)?;
        for _ in 0..CPU_ROUNDS {
            let started = Instant::now();
            std::hint::black_box(round()?);
            times.saturating_record(started.elapsed().as_micros() as u64);
        }
        Ok(times)
    })
    .await?
}
