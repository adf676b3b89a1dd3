//! `GET /metrics`: the gateway's metrics in the Prometheus (OpenMetrics) text format.
//! Requests by route and status, what pushes wrote and where their answers came from,
//! how the log was written (atomic batches, group commit, events that went alone), and,
//! read at each scrape, the log's end, the projector's checkpoints and lag, and whether
//! the tail and the membership view follow the log.
//!
//! Labels take values from small fixed sets only (route templates, methods, status
//! codes): never an app, space, user or record id.

use std::time::Instant;

use axum::{
    extract::{MatchedPath, Request, State},
    http::Method,
    middleware::Next,
    response::Response,
};
use projector::metrics::{registered, render, seconds_histogram, set_position, size_histogram};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::{AppState, auth::MetricsScraper, routes::health::Status};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    /// The route's template (`/sync/{app_id}`), or `unmatched`.
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    /// `tail` (this gateway's memory of the log) or `postgres`.
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    /// `single` (a push of one change) or `resend` (a resend whose logged events could
    /// not all be told apart: each went alone, deduplicated).
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DependencyLabels {
    dependency: &'static str,
}

/// Where a push's answer was read from.
#[derive(Clone, Copy, Debug)]
pub enum AnswerSource {
    Tail,
    Postgres,
}

/// Why events went to the log one at a time rather than in an atomic batch.
#[derive(Clone, Copy, Debug)]
pub enum Alone {
    /// A push of a single change (atomic by itself).
    Single,
    /// Part of a resend the gateway could not tell apart from what is logged.
    Resend,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pushed_changes: Counter,
    push_answers: Family<SourceLabels, Counter>,
    batch_events: Histogram,
    batch_pushes: Histogram,
    resends: Counter,
    alone: Family<ReasonLabels, Counter>,
    log_end: Gauge,
    checkpoint: Family<StageLabels, Gauge>,
    lag: Family<StageLabels, Gauge>,
    up: Family<DependencyLabels, Gauge>,
    tail_live: Gauge,
    memberships_live: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let r = &mut Registry::default();
        Self {
            requests: registered(
                r,
                "sync_http_requests",
                "HTTP requests answered, by method, route and status",
                Family::default(),
            ),
            request_seconds: registered(
                r,
                "sync_http_request_seconds",
                "Time from a request's arrival to its answer's headers",
                Family::new_with_constructor(seconds_histogram as fn() -> Histogram),
            ),
            pushed_changes: registered(
                r,
                "sync_pushed_changes",
                "Changes of pushes answered 200 (each one durably in the log)",
                Counter::default(),
            ),
            push_answers: registered(
                r,
                "sync_push_answers",
                "Push answers, by where the changes they carry were read",
                Family::default(),
            ),
            batch_events: registered(
                r,
                "sync_log_atomic_batch_events",
                "Events per atomic batch JetStream committed",
                size_histogram(),
            ),
            batch_pushes: registered(
                r,
                "sync_log_group_pushes",
                "Pushes per group commit (published together as one atomic batch)",
                size_histogram(),
            ),
            resends: registered(
                r,
                "sync_log_resends",
                "Pushes JetStream refused whole as holding events already in the log (resends)",
                Counter::default(),
            ),
            alone: registered(
                r,
                "sync_log_events_alone",
                "Events published one at a time, each deduplicated, by why",
                Family::default(),
            ),
            log_end: registered(
                r,
                "sync_log_last_sequence",
                "The end of the log, from JetStream (read at scrape)",
                Gauge::default(),
            ),
            checkpoint: registered(
                r,
                "sync_projector_checkpoint",
                "The log position each projector stage has committed (read at scrape)",
                Family::default(),
            ),
            lag: registered(
                r,
                "sync_projector_lag_positions",
                "Log positions each projector stage is behind the log's end (read at scrape)",
                Family::default(),
            ),
            up: registered(
                r,
                "sync_dependency_up",
                "Whether NATS and PostgreSQL answered (1) or not (0) at scrape",
                Family::default(),
            ),
            tail_live: registered(
                r,
                "sync_tail_live",
                "Whether this gateway's tail follows the log (1), or push answers are read from PostgreSQL (0)",
                Gauge::default(),
            ),
            memberships_live: registered(
                r,
                "sync_membership_view_live",
                "Whether this gateway's membership view follows the log (1), or access is read from PostgreSQL (0)",
                Gauge::default(),
            ),
            registry: std::mem::take(r),
        }
    }
}

impl Metrics {
    pub fn pushed(&self, changes: usize, answer: AnswerSource) {
        self.pushed_changes.inc_by(changes as u64);
        let source = match answer {
            AnswerSource::Tail => "tail",
            AnswerSource::Postgres => "postgres",
        };
        self.push_answers
            .get_or_create(&SourceLabels { source })
            .inc();
    }

    /// An atomic batch of `events` committed.
    pub fn atomic_batch(&self, events: usize) {
        self.batch_events.observe(events as f64);
    }

    /// A group commit of `pushes` pushes committed.
    pub fn group(&self, pushes: usize) {
        self.batch_pushes.observe(pushes as f64);
    }

    pub fn resend(&self) {
        self.resends.inc();
    }

    pub fn alone(&self, events: usize, why: Alone) {
        let reason = match why {
            Alone::Single => "single",
            Alone::Resend => "resend",
        };
        self.alone
            .get_or_create(&ReasonLabels { reason })
            .inc_by(events as u64);
    }

    fn observe_status(&self, status: &Status) {
        if let Some(end) = status.last_seq {
            set_position(&self.log_end, end);
        }
        for (stage, at) in [("log", status.checkpoint), ("records", status.records)] {
            let Some(at) = at else { continue };
            set_position(&self.checkpoint.get_or_create(&StageLabels { stage }), at);
            if let Some(lag) = status.lag(Some(at)) {
                set_position(&self.lag.get_or_create(&StageLabels { stage }), lag);
            }
        }
        for (dependency, ok) in [("nats", status.nats_ok()), ("postgres", status.pg_ok())] {
            self.up
                .get_or_create(&DependencyLabels { dependency })
                .set(i64::from(ok));
        }
        self.tail_live.set(i64::from(status.tail.unwrap_or(false)));
        self.memberships_live
            .set(i64::from(status.memberships_live));
    }
}

/// Counts and times every request by its route's template.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let metrics = state.metrics();
    metrics
        .request_seconds
        .get_or_create(&RouteLabels {
            method,
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// The methods a label may name; any other is `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::OPTIONS => "OPTIONS",
        Method::HEAD => "HEAD",
        _ => "other",
    }
}

/// `GET /metrics`.
pub async fn scrape(State(state): State<AppState>, _scraper: MetricsScraper) -> Response {
    let status = Status::read(&state).await;
    let metrics = state.metrics();
    metrics.observe_status(&status);
    render(&metrics.registry)
}
