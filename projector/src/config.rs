//! Projector configuration, from the environment (or flags) with development defaults.

use std::fmt;

use clap::Args;

/// A secret that never shows up in logs or `Debug` output.
#[derive(Clone)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// Where the log and the database are; shared by every process of the backend.
#[derive(Debug, Clone, Args)]
pub struct Connections {
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// NATS user of this process, when the server requires one (`nats/roles.conf`).
    #[arg(long, env = "NATS_USER")]
    pub nats_user: Option<String>,
    /// That user's password.
    #[arg(long, env = "NATS_PASSWORD")]
    pub nats_password: Option<Secret>,
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
    /// Address to serve `GET /metrics` on (Prometheus), e.g. `127.0.0.1:9464`; port 0
    /// picks a free one. Not served when unset.
    #[arg(long, env = "PROJECTOR_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl Config {
    pub fn linger(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.linger_ms)
    }
}

impl Connections {
    /// Options to connect to NATS as this process: its name and, when configured, its
    /// user.
    pub fn nats_options(&self, name: &str) -> async_nats::ConnectOptions {
        let options = async_nats::ConnectOptions::new().name(name);
        match &self.nats_user {
            Some(user) => options.user_and_password(
                user.clone(),
                self.nats_password
                    .as_ref()
                    .map(|p| p.0.clone())
                    .unwrap_or_default(),
            ),
            None => options,
        }
    }
}
