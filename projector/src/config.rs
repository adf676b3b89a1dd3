//! Projector configuration, from the environment (or flags) with development defaults.

use clap::Args;

/// Where the log and the database are; shared by every process of the backend.
#[derive(Debug, Clone, Args)]
pub struct Connections {
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// PostgreSQL URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://sync@127.0.0.1:54329/sync"
    )]
    pub database_url: String,
    /// Name of the JetStream stream holding the log.
    #[arg(long, env = "SYNC_STREAM", default_value = schemas::stream::DEFAULT_STREAM)]
    pub stream: String,
    /// Replicas of the stream when this process creates it (3 on a cluster).
    #[arg(long, env = "SYNC_STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    #[command(flatten)]
    pub conn: Connections,
    /// Name of the durable consumer and of the checkpoint row.
    #[arg(long, env = "PROJECTOR_NAME", default_value = schemas::projection::DEFAULT_PROJECTOR)]
    pub name: String,
    /// Most events applied in one transaction.
    #[arg(long, env = "PROJECTOR_BATCH", default_value_t = 1000)]
    pub batch_size: usize,
    /// Under load (a batch already holding dozens of events), how long, in
    /// milliseconds, a batch may wait for more events to fill up: bigger transactions
    /// cost far less per event. A lone write is never held back. 0 never waits.
    #[arg(long, env = "PROJECTOR_LINGER_MS", default_value_t = 4)]
    pub linger_ms: u64,
}

impl Config {
    pub fn linger(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.linger_ms)
    }
}
