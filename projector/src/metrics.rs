//! Metrics in the Prometheus (OpenMetrics) text format: the projector's own, served on
//! `PROJECTOR_METRICS_LISTEN`, and the pieces the gateway's `GET /metrics` shares.
//!
//! Labels only ever take values from small fixed sets (stages, routes, status codes):
//! never an app, space, user or record id, so a scrape reveals no tenant and the number
//! of series stays bounded.

use std::{future::Future, sync::Arc, time::Duration};

use async_nats::jetstream;
use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Metric, Registry},
};
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::{apply, records};

/// What a scrape answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Encodes `registry` as the answer to a scrape.
pub fn render(registry: &Registry) -> Response {
    let mut body = String::with_capacity(8 * 1024);
    match encode(&mut body, registry) {
        Ok(()) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// A histogram of durations from 0.5 ms to ~8 s (doubling).
pub fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

/// A histogram of batch sizes from 1 to ~16k (doubling).
pub fn size_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 15))
}

/// `metric`, registered in `registry` as `name` (a counter gets `_total` appended).
pub fn registered<M: Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// A gauge set from a log position (positions fit an `i64` for any real log).
pub fn set_position(gauge: &Gauge, position: u64) {
    gauge.set(i64::try_from(position).unwrap_or(i64::MAX));
}

/// The two stages of the projector.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// `log` (the durable consumer into `change_log`) or `records` (the merge into
    /// `records`).
    pub stage: &'static str,
}

pub const LOG_STAGE: StageLabels = StageLabels { stage: "log" };
pub const RECORDS_STAGE: StageLabels = StageLabels { stage: "records" };

/// The projector's metrics.
pub struct Metrics {
    registry: Registry,
    batches: Family<StageLabels, Histogram, fn() -> Histogram>,
    batch_seconds: Family<StageLabels, Histogram, fn() -> Histogram>,
    positions: Family<StageLabels, Counter>,
    failures: Family<StageLabels, Counter>,
    parked: Counter,
    checkpoint: Family<StageLabels, Gauge>,
    lag: Family<StageLabels, Gauge>,
    log_end: Gauge,
    dead_letters: Gauge,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let r = &mut Registry::default();
        Self {
            batches: registered(
                r,
                "projector_batch_positions",
                "Log positions each committed transaction of a stage covered",
                Family::new_with_constructor(size_histogram as fn() -> Histogram),
            ),
            batch_seconds: registered(
                r,
                "projector_batch_seconds",
                "Time to apply and commit one batch of a stage",
                Family::new_with_constructor(seconds_histogram as fn() -> Histogram),
            ),
            positions: registered(
                r,
                "projector_positions_applied",
                "Log positions a stage has applied since this process started",
                Family::default(),
            ),
            failures: registered(
                r,
                "projector_stage_failures",
                "Failures of a stage (each retried with backoff from its checkpoint)",
                Family::default(),
            ),
            parked: registered(
                r,
                "projector_parked_messages",
                "Messages the log stage parked as poison since this process started",
                Counter::default(),
            ),
            checkpoint: registered(
                r,
                "projector_checkpoint",
                "The log position a stage has committed",
                Family::default(),
            ),
            lag: registered(
                r,
                "projector_lag_positions",
                "Log positions a stage is behind the end of the log (read at scrape)",
                Family::default(),
            ),
            log_end: registered(
                r,
                "projector_log_last_sequence",
                "The end of the log, from JetStream (read at scrape)",
                Gauge::default(),
            ),
            dead_letters: registered(
                r,
                "projector_dead_letters",
                "Events parked in dead_letters by either stage, all time (read at scrape)",
                Gauge::default(),
            ),
            leader: registered(
                r,
                "projector_leader",
                "Whether this process holds its name's lock and projects (1), or waits as a standby (0)",
                Gauge::default(),
            ),
            registry: std::mem::take(r),
        }
    }
}

impl Metrics {
    /// A committed batch of `stage` that moved its checkpoint from `from` to `to`.
    pub fn batch(&self, stage: &StageLabels, from: u64, to: u64, took: Duration) {
        let covered = to.saturating_sub(from);
        self.batches.get_or_create(stage).observe(covered as f64);
        self.batch_seconds
            .get_or_create(stage)
            .observe(took.as_secs_f64());
        self.positions.get_or_create(stage).inc_by(covered);
        set_position(&self.checkpoint.get_or_create(stage), to);
    }

    pub fn parked(&self, messages: usize) {
        self.parked.inc_by(messages as u64);
    }

    pub fn leading(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    pub fn failure(&self, stage: &StageLabels) {
        self.failures.get_or_create(stage).inc();
    }

    /// Reads what is measured at scrape time: the log's end, both checkpoints and the
    /// parked events. What cannot be read keeps its last value.
    async fn refresh(&self, pool: &PgPool, js: &jetstream::Context, stream: &str, name: &str) {
        let end = match js.get_stream(stream).await {
            Ok(s) => Some(s.cached_info().state.last_sequence),
            Err(e) => {
                tracing::debug!(error = %e, "metrics: stream info unavailable");
                None
            }
        };
        if let Some(end) = end {
            set_position(&self.log_end, end);
        }
        for (stage, checkpoint) in [
            (LOG_STAGE, name.to_owned()),
            (RECORDS_STAGE, records::checkpoint_name(name)),
        ] {
            let Ok(at) = apply::read_checkpoint(pool, &checkpoint).await else {
                continue;
            };
            set_position(&self.checkpoint.get_or_create(&stage), at);
            if let Some(end) = end {
                set_position(&self.lag.get_or_create(&stage), end.saturating_sub(at));
            }
        }
        if let Ok(n) = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM dead_letters")
            .fetch_one(pool)
            .await
        {
            self.dead_letters.set(n);
        }
    }
}

/// What the projector's metrics endpoint reads.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub metrics: Arc<Metrics>,
    pub pool: PgPool,
    pub js: jetstream::Context,
    pub stream: String,
    pub name: String,
}

/// Serves `GET /metrics` on `listener` until `stop` resolves.
pub(crate) async fn serve(
    listener: TcpListener,
    endpoint: Endpoint,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let router = Router::new()
        .route("/metrics", get(scrape))
        .with_state(endpoint);
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::warn!(error = %e, "the metrics endpoint stopped");
    }
}

async fn scrape(State(e): State<Endpoint>) -> Response {
    e.metrics.refresh(&e.pool, &e.js, &e.stream, &e.name).await;
    render(&e.metrics.registry)
}
