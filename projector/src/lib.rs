//! The projector: a durable JetStream consumer that maintains the PostgreSQL
//! projections (change log, record state) in log order, exactly once in effect.
//!
//! Exactly-once comes from three things together: events and the checkpoint commit in
//! one transaction; messages at or below the checkpoint are skipped; the consumer is
//! recreated at the checkpoint after any failure. A `kill -9` at any moment therefore
//! loses nothing and applies nothing twice.

pub mod apply;
mod config;
mod consumer;
pub mod memberships;
pub mod metrics;
pub mod records;
pub mod replay;
pub mod telemetry;

use std::{
    future::Future,
    net::SocketAddr,
    pin::pin,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use async_nats::jetstream;
use sqlx::{Executor as _, PgPool, postgres::PgPoolOptions};
use tokio::{
    net::TcpListener,
    sync::{Mutex, mpsc, watch},
};

use apply::ApplyError;
pub use config::{Config, Connections, Secret};
use consumer::Reader;
use metrics::{LOG_STAGE, Metrics, RECORDS_STAGE, StageLabels};
use records::Handoff;

/// Hand-offs from the log stage to the records stage that may wait in memory.
const HANDOFFS_QUEUED: usize = 64;

/// Applies the SQL migrations under `migrations/`.
pub async fn migrate(database_url: &str) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(database_url)
        .await?;
    sqlx::migrate!("../migrations").run(&pool).await?;
    Ok(())
}

/// Creates the log stream, or brings an existing one to this version's configuration.
pub async fn ensure_stream(
    js: &jetstream::Context,
    name: &str,
    replicas: usize,
) -> anyhow::Result<()> {
    js.create_or_update_stream(schemas::stream::stream_config(name, replicas))
        .await?;
    Ok(())
}

/// Resolves once `stop` says so (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Runs a stage until it returns, retrying failures with backoff until stopped.
async fn retrying<F, Fut>(
    what: &StageLabels,
    metrics: &Metrics,
    stop: watch::Receiver<bool>,
    mut stage: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut backoff = Backoff::default();
    loop {
        match stage().await {
            Ok(()) => return Ok(()),
            Err(e) => {
                metrics.failure(what);
                tracing::warn!(stage = what.stage, error.cause_chain = ?e, backoff = ?backoff.0, "stage failed; retrying")
            }
        }
        if !backoff.wait(&stop).await {
            return Ok(());
        }
    }
}

/// Waits between retries: 50 ms, doubling up to 5 s.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_millis(50))
    }
}

impl Backoff {
    /// Waits the current delay and doubles it; false when stopped meanwhile.
    async fn wait(&mut self, stop: &watch::Receiver<bool>) -> bool {
        let delay = self.0;
        self.0 = (delay * 2).min(Duration::from_secs(5));
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = stopped(stop.clone()) => false,
        }
    }
}

/// How often a replay reports how far it got.
const REPLAY_PROGRESS: Duration = Duration::from_secs(5);

/// How often the leader checks that the session holding its lock is alive.
const LOCK_CHECK: Duration = Duration::from_secs(1);

/// Resolves once the session of `conn` has ended (PostgreSQL restarted, the connection
/// dropped or was terminated): its advisory locks are gone with it.
async fn session_ended(conn: &mut sqlx::PgConnection) {
    loop {
        tokio::time::sleep(LOCK_CHECK).await;
        if let Err(e) = sqlx::query("SELECT 1").execute(&mut *conn).await {
            tracing::warn!(error = %e, "the session holding the projector's lock ended");
            return;
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}

pub struct Projector {
    config: Config,
    pool: PgPool,
    js: jetstream::Context,
    metrics: Arc<Metrics>,
    /// Where `GET /metrics` is served, when configured.
    metrics_listener: Option<TcpListener>,
    /// A replay's bound: both stages stop once they have committed it.
    until: Option<u64>,
}

impl Projector {
    /// Connects to PostgreSQL (applying migrations) and NATS, and makes sure the log
    /// stream exists.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // The log, not PostgreSQL, is the source of truth: a commit lost in
                    // a database crash takes its checkpoint with it (same WAL record),
                    // and the events are applied again from the log. So the projector
                    // need not wait for each commit to reach disk.
                    // Every statement's plan suits any batch and table size (key probes,
                    // sequence ranges, `UNNEST` inserts), so generic plans are kept: no
                    // planning per batch.
                    conn.execute("SET synchronous_commit = off").await?;
                    Ok(())
                })
            })
            .connect(&config.conn.database_url)
            .await
            .context("connecting to PostgreSQL")?;
        sqlx::migrate!("../migrations")
            .run(&pool)
            .await
            .context("applying migrations")?;
        let client = config
            .conn
            .nats_options(&format!("projector:{}", config.name))
            .retry_on_initial_connect()
            .connect(&config.conn.nats_url)
            .await
            .context("connecting to NATS")?;
        let js = jetstream::new(client);
        ensure_stream(&js, &config.conn.stream, config.conn.stream_replicas)
            .await
            .context("creating the log stream")?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the metrics listener to {addr}"))?,
            ),
            None => None,
        };
        Ok(Self {
            config,
            pool,
            js,
            metrics: Arc::default(),
            metrics_listener,
            until: None,
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Where `GET /metrics` is served, when it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Projects the log up to `until` (at most its end) through a consumer of its own
    /// (a projector of the same name elsewhere keeps its durable consumer), and returns
    /// once both stages have committed `until`. Resumes from the database's checkpoints;
    /// refuses a database another projector of this name is writing.
    pub async fn replay(mut self, until: u64) -> anyhow::Result<()> {
        self.until = Some(until);
        self.run_until_stopped(std::future::pending()).await
    }

    /// The log's last position.
    pub async fn log_end(&self) -> anyhow::Result<u64> {
        let mut stream = self.js.get_stream(&self.config.conn.stream).await?;
        Ok(stream.info().await?.state.last_sequence)
    }

    /// Projects until `shutdown` resolves, finishing the batch in flight. Failures are
    /// retried with backoff: the consumer is rebuilt at the checkpoint each time.
    pub async fn run_until_stopped(
        mut self,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop) = watch::channel(false);
        if let Some(listener) = self.metrics_listener.take() {
            let endpoint = metrics::Endpoint {
                metrics: Arc::clone(&self.metrics),
                pool: self.pool.clone(),
                js: self.js.clone(),
                stream: self.config.conn.stream.clone(),
                name: self.config.name.clone(),
            };
            // Served while this runs: it stops with the stages, or when this returns.
            tokio::spawn(metrics::serve(listener, endpoint, stopped(stop.clone())));
        }
        let work = async {
            let mut stepped_down = false;
            let mut backoff = Backoff::default();
            loop {
                // One active projector per name; a second one waits here as a standby.
                let lock = tokio::select! {
                    lock = self.leader_lock() => lock,
                    () = stopped(stop.clone()) => return Ok(()),
                };
                let lock = match lock {
                    Ok(lock) => lock,
                    // Having led, a projector waits out PostgreSQL's restart; at start,
                    // or replaying, a failure ends it.
                    Err(e) if stepped_down && self.until.is_none() => {
                        tracing::warn!(error.cause_chain = ?e, backoff = ?backoff.0, "taking the lock failed; retrying");
                        if !backoff.wait(&stop).await {
                            return Ok(());
                        }
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                backoff = Backoff::default();
                self.metrics.leading(true);
                let lost = self.lead(&stop, lock).await;
                self.metrics.leading(false);
                if !lost? {
                    return Ok(());
                }
                stepped_down = true;
                tracing::warn!(
                    name = %self.config.name,
                    "the session holding the projector's lock ended; stepped down, taking the lock again"
                );
            }
        };
        let mut work = pin!(work);
        tokio::select! {
            result = &mut work => result,
            () = shutdown => {
                // Let both stages finish what they have in flight.
                let _ = stop_tx.send(true);
                work.await
            }
        }
    }

    /// Runs both stages while `lock` (the leader lock's session) lives. Returns whether
    /// the session ended: the stages then stop after their batch in flight (whose
    /// commit the checkpoint's row lock still guards), since a standby may take over.
    async fn lead(
        &self,
        stop: &watch::Receiver<bool>,
        mut lock: sqlx::PgConnection,
    ) -> anyhow::Result<bool> {
        let (term_tx, term) = watch::channel(false);
        let (progress_tx, progress) = watch::channel(0u64);
        // What the log stage committed, for the records stage to take in memory. When
        // it is full, hand-offs are dropped: the records stage reads `change_log`.
        let (handoff_tx, handoff_rx) = mpsc::channel::<Handoff>(HANDOFFS_QUEUED);
        let handoff_rx = Mutex::new(handoff_rx);
        let stages = async {
            tokio::try_join!(
                retrying(&LOG_STAGE, &self.metrics, term.clone(), || self.consume(
                    term.clone(),
                    &progress_tx,
                    &handoff_tx
                )),
                retrying(&RECORDS_STAGE, &self.metrics, term.clone(), || self.follow(
                    progress.clone(),
                    &handoff_rx,
                    term.clone()
                )),
            )
            .map(|_| ())
        };
        let mut stages = pin!(stages);
        let lost = tokio::select! {
            done = &mut stages => return done.map(|()| false),
            () = stopped(stop.clone()) => false,
            () = session_ended(&mut lock) => true,
        };
        let _ = term_tx.send(true);
        stages.await?;
        Ok(lost)
    }

    /// The log stage: the durable consumer into `change_log`, batch by batch.
    async fn consume(
        &self,
        stop: watch::Receiver<bool>,
        progress: &watch::Sender<u64>,
        handoffs: &mpsc::Sender<Handoff>,
    ) -> anyhow::Result<()> {
        let name = &self.config.name;
        let mut checkpoint = apply::checkpoint(&self.pool, name).await?;
        if self.until.is_some_and(|until| checkpoint >= until) {
            progress.send_replace(checkpoint);
            return Ok(());
        }
        let reader = match self.until {
            Some(_) => Reader::Replay,
            None => Reader::Durable,
        };
        let mut messages = consumer::open(
            &self.js,
            &self.config.conn.stream,
            name,
            checkpoint,
            self.config.batch_size,
            reader,
        )
        .await?;
        tracing::info!(
            checkpoint,
            ?reader,
            until = self.until,
            "projector consuming"
        );
        let mut reported = Instant::now();
        loop {
            let mut batch = tokio::select! {
                batch = consumer::next_batch(&mut messages, self.config.batch_size, self.config.linger()) => batch?,
                () = stopped(stop.clone()) => return Ok(()),
            };
            // A replay applies nothing beyond its bound.
            let mut beyond = false;
            if let Some(until) = self.until {
                let mut within = Vec::with_capacity(batch.len());
                for msg in batch {
                    if consumer::position(&msg)? <= until {
                        within.push(msg);
                    } else {
                        beyond = true;
                    }
                }
                batch = within;
            }
            // Not raced against shutdown: the batch in flight is finished.
            let mut rest: &[jetstream::Message] = &batch;
            while !rest.is_empty() {
                let started = Instant::now();
                let mut absorb = |processed: consumer::Processed| {
                    self.metrics.batch(
                        &LOG_STAGE,
                        checkpoint,
                        processed.checkpoint,
                        started.elapsed(),
                    );
                    self.metrics.parked(processed.parked);
                    checkpoint = processed.checkpoint;
                    if let Some(handoff) = processed.handoff {
                        let _ = handoffs.try_send(handoff);
                    }
                    progress.send_replace(checkpoint);
                };
                let e = match consumer::process(&self.pool, name, rest, reader).await {
                    Ok(processed) => {
                        absorb(processed);
                        tracing::debug!(checkpoint, size = rest.len(), "batch applied");
                        break;
                    }
                    Err(e) => e,
                };
                let Some(&ApplyError::Gap { expected, found }) = e.downcast_ref::<ApplyError>()
                else {
                    return Err(e);
                };
                if found <= expected
                    || !consumer::removed_from_log(
                        &self.js,
                        &self.config.conn.stream,
                        expected,
                        found,
                    )
                    .await?
                {
                    // Taken by another reader: the consumer is opened again at the checkpoint.
                    return Err(e.context("positions the log holds were not delivered"));
                }
                tracing::warn!(
                    expected,
                    found,
                    "log positions removed from the log; stepping over them"
                );
                // What lies before the hole (in log order, up to it), then over the hole.
                let split = rest
                    .iter()
                    .position(|m| consumer::position(m).is_ok_and(|p| p >= found))
                    .unwrap_or(rest.len());
                if split > 0 {
                    absorb(consumer::process(&self.pool, name, &rest[..split], reader).await?);
                }
                checkpoint = apply::advance_checkpoint(&self.pool, name, found - 1).await?;
                progress.send_replace(checkpoint);
                rest = &rest[split..];
            }
            if let Some(until) = self.until
                && reported.elapsed() >= REPLAY_PROGRESS
            {
                reported = Instant::now();
                tracing::info!(checkpoint, until, "replaying");
            }
            if let Some(until) = self.until {
                if beyond && checkpoint < until {
                    // Past the bound with no message at it (one removed from the log).
                    checkpoint = apply::advance_checkpoint(&self.pool, name, until).await?;
                    progress.send_replace(checkpoint);
                }
                if checkpoint >= until {
                    return Ok(());
                }
            }
        }
    }

    /// The records stage: follows the log stage's checkpoint, taking what the log stage
    /// hands over in memory when it continues where the records stage stands, and
    /// reading `change_log` otherwise (after a restart, a dropped hand-off, or a log
    /// stage in another process).
    async fn follow(
        &self,
        mut progress: watch::Receiver<u64>,
        handoffs: &Mutex<mpsc::Receiver<Handoff>>,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let name = records::checkpoint_name(&self.config.name);
        let limit = self.config.batch_size;
        let mut at = apply::checkpoint(&self.pool, &name).await?;
        let mut logged = apply::read_checkpoint(&self.pool, &self.config.name).await?;
        let mut incoming = handoffs.lock().await;
        let mut waiting = records::Handoffs::default();
        loop {
            if *stop.borrow() || self.until.is_some_and(|until| at >= until) {
                return Ok(());
            }
            while waiting.len() < HANDOFFS_QUEUED
                && let Ok(h) = incoming.try_recv()
            {
                waiting.push(h);
            }
            let run = waiting.take_run(at, limit);
            if !run.is_empty() {
                let started = Instant::now();
                let to = records::apply_handed(&self.pool, &name, run, limit).await?;
                self.metrics
                    .batch(&RECORDS_STAGE, at, to, started.elapsed());
                at = to;
                continue;
            }
            logged = logged.max(*progress.borrow_and_update());
            let upto = waiting.next_start().map_or(logged, |next| next.min(logged));
            if upto > at {
                let started = Instant::now();
                let to = records::apply_upto(&self.pool, &name, upto, limit).await?;
                self.metrics
                    .batch(&RECORDS_STAGE, at, to, started.elapsed());
                at = to;
                continue;
            }
            tokio::select! {
                Some(h) = incoming.recv(), if waiting.len() < HANDOFFS_QUEUED => waiting.push(h),
                _ = progress.changed() => {}
                // Catches up with a log stage running in another process.
                () = tokio::time::sleep(Duration::from_secs(1)) => {
                    logged = apply::read_checkpoint(&self.pool, &self.config.name).await?;
                }
                () = stopped(stop.clone()) => return Ok(()),
            }
        }
    }

    /// A session-level advisory lock held on a dedicated connection for as long as the
    /// returned connection lives; released by PostgreSQL if this process dies or the
    /// session ends (see [`session_ended`]). A projector waits for it; a replay does not.
    async fn leader_lock(&self) -> anyhow::Result<sqlx::PgConnection> {
        let mut conn = self.pool.acquire().await?.detach();
        let key = format!("projector:{}", self.config.name);
        if self.until.is_none() {
            sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
                .bind(key)
                .execute(&mut conn)
                .await?;
            return Ok(conn);
        }
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                .bind(key)
                .fetch_one(&mut conn)
                .await?;
        anyhow::ensure!(
            locked,
            "a projector named {:?} is writing this database: replay into another one",
            self.config.name
        );
        Ok(conn)
    }
}
