//! The gateway: the HTTP edge of the sync backend. Authenticates callers, validates and
//! authorizes pushes, publishes them to the log with acknowledgement, and serves pulls
//! from the PostgreSQL projection with read-your-writes. Stateless: run any number.

pub mod auth;
pub mod config;
mod cors;
pub mod error;
mod follow;
mod log;
pub mod membership;
mod metrics;
mod progress;
mod routes;
pub mod store;
pub mod tail;

use std::{collections::HashSet, future::Future, net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use axum::{
    Json, Router,
    extract::DefaultBodyLimit,
    http::{HeaderValue, StatusCode, header},
    middleware,
    routing::{get, post},
};
use ingest::Access;
use schemas::Since;
use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::net::TcpListener;
use tower_http::{
    CompressionLevel,
    compression::{
        CompressionLayer,
        predicate::{DefaultPredicate, Predicate as _, SizeAbove},
    },
    cors::CorsLayer,
    set_header::SetResponseHeaderLayer,
    trace::TraceLayer,
};

pub use config::Config;
use {
    auth::Verifier,
    error::ApiError,
    log::Log,
    membership::MembershipView,
    metrics::Metrics,
    progress::Progress,
    tail::{LogTail, TailPage, TailQuery},
};

/// Longest a response waits for this gateway's tail before reading PostgreSQL instead
/// (and a resend, before asking it which of its events are logged).
const TAIL_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Shared state of every request.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    config: Config,
    log: Log,
    memberships: MembershipView,
    metrics: Arc<Metrics>,
    pool: PgPool,
    progress: Progress,
    tail: Option<LogTail>,
    verifier: Verifier,
}

impl AppState {
    pub(crate) fn log(&self) -> &Log {
        &self.0.log
    }

    /// This gateway's tail of the log, unless it is turned off.
    pub(crate) fn tail(&self) -> Option<&LogTail> {
        self.0.tail.as_ref()
    }

    pub(crate) fn memberships(&self) -> &MembershipView {
        &self.0.memberships
    }

    pub(crate) fn config(&self) -> &Config {
        &self.0.config
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// What the caller may read and write at this moment (503 if that cannot be known).
    /// While the membership view is not following the log (starting, reconnecting),
    /// access comes from PostgreSQL's projection, once that holds the log as of this
    /// request: a membership change logged before it (a removal above all) holds for it,
    /// however far behind the projector was. With NATS unreachable the projection is
    /// read as it stands.
    pub(crate) async fn access(&self, user_id: &str) -> Result<Access, ApiError> {
        if !self.memberships().is_live()
            && let Ok(end) = self.log().last_seq().await
        {
            self.wait_for_position(end).await?;
        }
        self.memberships().access(user_id).await
    }

    pub(crate) fn progress(&self) -> &Progress {
        &self.0.progress
    }

    pub(crate) fn verifier(&self) -> &Verifier {
        &self.0.verifier
    }

    /// Waits (bounded) until the projector has applied the log up to `target`; returns
    /// the position reads may go up to. A projector that does not catch up in time is
    /// a 503, never a silently stale answer.
    pub(crate) async fn wait_for_position(&self, target: u64) -> Result<u64, ApiError> {
        self.progress()
            .wait_for(target, self.0.config.read_your_writes_timeout())
            .await?
            .ok_or_else(|| {
                ApiError::unavailable("the projector", format!("did not reach {target} in time"))
            })
    }

    /// The position a read goes up to: the log position when it arrived (so it sees
    /// every acknowledged write), or the committed projection if the log is
    /// unreachable (reads stay available; cursors stay exact).
    pub(crate) async fn read_position(&self) -> Result<u64, ApiError> {
        match self.log().last_seq().await {
            Ok(target) => self.wait_for_position(target).await,
            Err(e) => {
                tracing::warn!(error = %e, "log unreachable; reading the committed projection");
                Ok(self.progress().read().await?)
            }
        }
    }

    /// Which of `ids` (events of the caller's push) are in the log, as far as this
    /// gateway can tell, the log ending at `end`: those its tail has seen (once it has
    /// seen `end`, or given up waiting) and those the change log holds, read as the
    /// caller once the projector has applied the log up to `end` (or the wait, within
    /// half the publish timeout, gave up). A failed read only means fewer known.
    pub(crate) async fn logged_events(
        &self,
        access: &Access,
        ids: Vec<uuid::Uuid>,
        end: u64,
    ) -> HashSet<uuid::Uuid> {
        let mut known = HashSet::new();
        if let Some(tail) = &self.0.tail {
            tail.wait_for(end, TAIL_WAIT).await;
            known = tail.logged(&ids);
        }
        let rest: Vec<uuid::Uuid> = ids.into_iter().filter(|id| !known.contains(id)).collect();
        if rest.is_empty() {
            return known;
        }
        // The change log holds every logged record change up to `end` once the projector
        // has applied that far; a projector that is behind (or down) only means fewer
        // known, and the resend's changes then go one by one.
        let wait =
            (self.0.config.publish_timeout() / 2).min(self.0.config.read_your_writes_timeout());
        if let Err(e) = self.progress().wait_for(end, wait).await {
            tracing::debug!(error = %e, "could not wait for the projector before a resend's lookup");
        }
        let projected = async {
            let mut tx = store::begin_as(&self.0.pool, access).await?;
            sqlx::query_scalar::<_, uuid::Uuid>(
                "SELECT event_id FROM change_log WHERE event_id = ANY($1)",
            )
            .bind(&rest)
            .fetch_all(&mut *tx)
            .await
        };
        match projected.await {
            Ok(found) => known.extend(found),
            Err(e) => tracing::debug!(error = %e, "could not look up a resend's events"),
        }
        known
    }

    /// A page of what the caller may see after `since`, served from this gateway's tail
    /// of the log once it has seen `target`: `None` when there is no tail, it does not
    /// reach `target` soon, or it cannot answer exactly (the caller then reads
    /// PostgreSQL).
    pub(crate) async fn tail_page<'q>(
        &self,
        target: u64,
        since: Since,
        query: impl FnOnce(u64) -> TailQuery<'q>,
    ) -> Option<TailPage> {
        let tail = self.0.tail.as_ref()?;
        let after = match since {
            Since::Start => 0,
            Since::After(cursor) => cursor.seq(),
            Since::Timestamp(_) => return None,
        };
        let timeout = TAIL_WAIT.min(self.0.config.read_your_writes_timeout());
        if !tail.wait_for(target, timeout).await {
            return None;
        }
        tail.page(&query(after), target)
    }

    /// What a read as `user_id` up to `upto` (a position the projector has reached) may
    /// see, and the position it goes up to.
    ///
    /// Never past the checkpoint as PostgreSQL holds it now, whatever was heard before:
    /// the projector commits without waiting for the disk, so a crash of PostgreSQL can
    /// take back its last commits (and their rows), which it then applies again. A page
    /// up to the position heard before would skip them.
    ///
    /// Membership as of that checkpoint at least: a removal logged before the read
    /// arrived is in force for it, even when this gateway's membership view has not
    /// heard of it yet (PostgreSQL's projection then answers).
    pub(crate) async fn reader(&self, user_id: &str, upto: u64) -> Result<(Access, u64), ApiError> {
        let at = self.progress().read_positions().await?;
        let access = self
            .memberships()
            .access_as_of(user_id, at.members_seq)
            .await?;
        Ok((access, upto.min(at.checkpoint)))
    }

    /// A page of what the caller may see, read as the caller, up to `upto` (from
    /// [`Self::reader`], with `access`): the query names only `spaces` (which the caller
    /// may read), and PostgreSQL's row-level security holds it to the caller's spaces
    /// and private records again.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn read_page(
        &self,
        access: &Access,
        spaces: &[String],
        app_id: &str,
        table: Option<&str>,
        since: Since,
        upto: u64,
        exclude: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<store::PageJson, ApiError> {
        let mut tx = store::begin_as(&self.0.pool, access).await?;
        let mut query = store::ChangeQuery {
            app_id,
            table,
            spaces,
            after: 0,
            upto,
            exclude,
            limit,
        };
        query.after = match since {
            Since::Start => 0,
            Since::After(cursor) => cursor.seq(),
            Since::Timestamp(t) => store::position_at(&mut tx, &query, t).await?,
        };
        let page = store::changes_since(&mut tx, &query).await?;
        // Read-only: dropped, not committed (its ROLLBACK rides on the next use).
        drop(tx);
        Ok(store::PageJson(page.to_json()?))
    }
}

/// A built gateway: connected and listening, not yet serving.
pub struct App {
    listener: TcpListener,
    router: Router,
}

impl App {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let verifier = Verifier::from_config(&config)?;
        for (name, key) in [
            ("SERVICE_KEY", &config.service_key),
            ("METRICS_TOKEN", &config.metrics_token),
        ] {
            // Set but empty (an unset variable in a deployment file) would guard nothing.
            anyhow::ensure!(
                key.as_ref().is_none_or(|k| !k.0.trim().is_empty()),
                "{name} is set but empty"
            );
        }
        let pool = PgPoolOptions::new()
            .max_connections(32)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(&config.conn.database_url)
            .await
            .context("connecting to PostgreSQL")?;
        let metrics = Arc::new(Metrics::default());
        let log = Log::connect(&config.conn, config.publish_timeout(), Arc::clone(&metrics))
            .await
            .context("connecting to NATS")?;
        let progress = Progress::follow(pool.clone(), config.projector_name.clone());
        let memberships = MembershipView::follow(
            log.jetstream().clone(),
            log.stream_name().to_owned(),
            pool.clone(),
            config.projector_name.clone(),
            log.disconnects(),
        );
        let tail = (config.tail_events > 0).then(|| {
            LogTail::follow(
                log.jetstream().clone(),
                log.stream_name().to_owned(),
                pool.clone(),
                config.projector_name.clone(),
                log.disconnects(),
                config.tail_events,
                config.tail_memory_mib.saturating_mul(1 << 20),
            )
        });
        let cors = cors::layer(&config.cors_allowed_origins)?;
        let compress = config.compress_responses;
        let listener = TcpListener::bind(config.listen)
            .await
            .context("binding the listener")?;
        let state = AppState(Arc::new(Inner {
            config,
            log,
            memberships,
            metrics,
            pool,
            progress,
            tail,
            verifier,
        }));
        Ok(Self {
            listener,
            router: router(state, cors, compress),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await?;
        Ok(())
    }
}

/// Answers smaller than this go uncompressed: an empty push answer is ~90 bytes, a
/// page of 1000 changes hundreds of kilobytes.
const COMPRESS_ABOVE_BYTES: u16 = 1024;

fn router(state: AppState, cors: Option<CorsLayer>, compress: bool) -> Router {
    let mut public = Router::new()
        .route("/sync/{app_id}", post(routes::push::push))
        .route("/sync/{app_id}/pull", get(routes::pull::pull))
        .route("/health", get(routes::health::health))
        // Answers are one caller's data at one moment: no cache may keep or reuse them.
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ));
    if compress {
        // The client's preference by q-value; among equals zstd, then gzip (zstd made a
        // 430 kB page 29 kB, gzip 44 kB, in less time; README, Speed). The default
        // predicate also leaves event streams alone: they must flow as written.
        public = public.layer(
            CompressionLayer::new()
                .quality(CompressionLevel::Fastest)
                .compress_when(DefaultPredicate::new().and(SizeAbove::new(COMPRESS_ABOVE_BYTES))),
        );
    }
    // Browser apps of the allowed origins; the internal API is for services only.
    if let Some(cors) = cors {
        public = public.layer(cors);
    }
    Router::new()
        .merge(public)
        .merge(routes::internal::router())
        .route("/metrics", get(metrics::scrape))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(serde_json::json!({"error": "not_found", "message": "no such endpoint"})),
            )
        })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(middleware::map_response(error::json_errors))
        .layer(DefaultBodyLimit::max(schemas::wire::MAX_BODY_BYTES))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

// Process plumbing shared with the projector (signals, log set-up).
pub use projector::{shutdown_signal, telemetry};
