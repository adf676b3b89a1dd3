//! Gateway configuration, from the environment (or flags) with development defaults.

use std::{net::SocketAddr, time::Duration};

use clap::Args;

pub use projector::Secret;

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// NATS, PostgreSQL (used for reads) and the stream.
    #[command(flatten)]
    pub conn: projector::Connections,
    /// Name of the projector whose checkpoint bounds reads.
    #[arg(long, env = "PROJECTOR_NAME", default_value = schemas::projection::DEFAULT_PROJECTOR)]
    pub projector_name: String,
    /// HS256 secret for development and test tokens.
    #[arg(long, env = "JWT_HS256_SECRET")]
    pub jwt_hs256_secret: Option<Secret>,
    /// JWKS URL of the auth service (EdDSA tokens).
    #[arg(long, env = "JWKS_URL")]
    pub jwks_url: Option<String>,
    /// Required `iss` claim, when set.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, when set.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Longest a request waits for the projector to reach the log position current when
    /// it arrived (read-your-writes), in milliseconds.
    #[arg(long, env = "READ_YOUR_WRITES_TIMEOUT_MS", default_value_t = 10_000)]
    pub read_your_writes_timeout_ms: u64,
    /// Key that trusted services present (`Authorization: Bearer <key>`) to use the
    /// internal membership API. Without one, that API is disabled.
    #[arg(long, env = "SERVICE_KEY")]
    pub service_key: Option<Secret>,
    /// Record changes each gateway keeps in memory from the log it follows (its tail),
    /// so push responses need not wait for PostgreSQL. 0 turns the tail off: every
    /// response is then read from PostgreSQL.
    #[arg(long, env = "TAIL_EVENTS", default_value_t = 100_000)]
    pub tail_events: usize,
    /// Memory the tail may hold, in MiB (the oldest changes go first).
    #[arg(long, env = "TAIL_MEMORY_MIB", default_value_t = 128)]
    pub tail_memory_mib: usize,
    /// Longest a push waits for JetStream to acknowledge its events, in milliseconds.
    #[arg(long, env = "PUBLISH_TIMEOUT_MS", default_value_t = 5_000)]
    pub publish_timeout_ms: u64,
    /// Origins whose browser apps may call the sync and health endpoints (CORS): `*` for
    /// any, a comma-separated list of origins as browsers send them
    /// (`https://app.example,http://localhost:5173`), or empty for none. Callers present
    /// bearer tokens, never cookies, so allowing any origin lets a page do only what a
    /// script outside a browser can do anyway. The internal API answers no other origin.
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", default_value = "*")]
    pub cors_allowed_origins: String,
    /// Compress answers (zstd or gzip, at their fastest) for clients that accept it.
    /// Turn off behind a proxy that compresses already.
    #[arg(long, env = "COMPRESS_RESPONSES", default_value_t = true, action = clap::ArgAction::Set)]
    pub compress_responses: bool,
    /// Token a scraper of `GET /metrics` must present (`Authorization: Bearer <token>`).
    /// Without one the endpoint is open: its labels never name an app, space or user.
    #[arg(long, env = "METRICS_TOKEN")]
    pub metrics_token: Option<Secret>,
}

impl Config {
    pub fn read_your_writes_timeout(&self) -> Duration {
        Duration::from_millis(self.read_your_writes_timeout_ms)
    }

    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }
}
