//! `GET /metrics` of the gateway and of the projector, scraped after real traffic: every
//! request counted by route and status, what pushes wrote and how the log was written,
//! both projector stages' progress and what they parked, and no tenant's name in any
//! of it.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use sync_tests::{TestApp, changes, eventually, send};

/// Ids that must not show up in a scrape.
const APP: &str = "metrics-app-7f3a";
const USER: &str = "metrics-user-c41d";
const RECORD: &str = "metrics-record-9e0b";

/// A scrape: its status, content type and body.
async fn scrape(app: &TestApp, url: &str, token: Option<&str>) -> (StatusCode, String, String) {
    let mut req = app.http.get(url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let answer = req.send().await.expect("scrape sent");
    let status = answer.status();
    let content_type = answer
        .headers()
        .get("content-type")
        .map(|v| v.to_str().expect("ASCII").to_owned())
        .unwrap_or_default();
    (status, content_type, answer.text().await.expect("body"))
}

/// The value of the sample `name` with exactly `labels`, if the scrape has it.
pub(crate) fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, found) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let mut found: Vec<(&str, &str)> = found
                .split(',')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').expect("label=value");
                    (k, v.trim_matches('"'))
                })
                .collect();
            let mut wanted = labels.to_vec();
            found.sort_unstable();
            wanted.sort_unstable();
            (found == wanted).then(|| value.parse().expect("a number"))
        })
}

fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(text, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in:\n{text}"))
}

fn insert(id: &str) -> serde_json::Value {
    json!({"table": "notes", "id": id, "op": "insert", "data": {"title": id}})
}

#[tokio::test]
async fn the_gateway_counts_requests_pushes_and_how_the_log_was_written() {
    let app = TestApp::spawn().await;
    let base = app.gateway.base.clone();
    let metrics = format!("{base}/metrics");
    app.wait_tail_live(&base).await;

    // Three changes in one push, then one alone; one bad push, one pull without a token,
    // one good pull, one unknown path.
    let three = changes(json!([insert(RECORD), insert("b"), insert("c")]));
    let reply = app.push(USER, "phone", APP, &three).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let one = changes(json!([insert("d")]));
    assert_eq!(
        app.push(USER, "phone", APP, &one).await.status,
        StatusCode::OK
    );
    // The push of three again, as a client that never saw the answer resends it.
    let resent = app.push(USER, "phone", APP, &three).await;
    assert_eq!(resent.status, StatusCode::OK, "{}", resent.body);
    let bad = app
        .push(USER, "phone", APP, &json!({"changes": "no"}))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let anonymous = send(app.http.get(format!("{base}/sync/{APP}/pull"))).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let pulled = app.pull(USER, "laptop", APP, "notes", "").await;
    assert_eq!(pulled.status, StatusCode::OK);
    let unknown = send(app.http.get(format!("{base}/no/such/path"))).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    // Read at scrape: the projector has caught up with the log.
    app.wait_projected().await;
    let last = app.stream_messages_last_seq().await as f64;
    let (status, content_type, text) = scrape(&app, &metrics, None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");

    let requests = |method, route, status| {
        value(
            &text,
            "sync_http_requests_total",
            &[("method", method), ("route", route), ("status", status)],
        )
    };
    assert_eq!(requests("POST", "/sync/{app_id}", "200"), 3.0);
    assert_eq!(requests("POST", "/sync/{app_id}", "400"), 1.0);
    assert_eq!(requests("GET", "/sync/{app_id}/pull", "401"), 1.0);
    assert_eq!(requests("GET", "/sync/{app_id}/pull", "200"), 1.0);
    assert_eq!(requests("GET", "unmatched", "404"), 1.0);
    let timed = [("method", "POST"), ("route", "/sync/{app_id}")];
    assert_eq!(value(&text, "sync_http_request_seconds_count", &timed), 4.0);
    assert!(value(&text, "sync_http_request_seconds_sum", &timed) > 0.0);

    assert_eq!(value(&text, "sync_pushed_changes_total", &[]), 7.0);
    let answers = sample(&text, "sync_push_answers_total", &[("source", "tail")]).unwrap_or(0.0)
        + sample(&text, "sync_push_answers_total", &[("source", "postgres")]).unwrap_or(0.0);
    assert_eq!(answers, 3.0);
    // The push of three went as one atomic batch (with the events creating the user's
    // personal space, logged in the same batch); the push of one went alone; the resend
    // was refused whole by JetStream and published nothing.
    assert_eq!(value(&text, "sync_log_resends_total", &[]), 1.0);
    assert_eq!(value(&text, "sync_log_atomic_batch_events_count", &[]), 1.0);
    let batched = value(&text, "sync_log_atomic_batch_events_sum", &[]);
    assert_eq!(batched + 1.0, last, "every logged event is counted once");
    assert_eq!(value(&text, "sync_log_group_pushes_count", &[]), 1.0);
    assert_eq!(
        value(
            &text,
            "sync_log_events_alone_total",
            &[("reason", "single")]
        ),
        1.0
    );

    assert_eq!(value(&text, "sync_log_last_sequence", &[]), last);
    for stage in ["log", "records"] {
        assert_eq!(
            value(&text, "sync_projector_checkpoint", &[("stage", stage)]),
            last
        );
        assert_eq!(
            value(&text, "sync_projector_lag_positions", &[("stage", stage)]),
            0.0
        );
    }
    for dependency in ["nats", "postgres"] {
        assert_eq!(
            value(&text, "sync_dependency_up", &[("dependency", dependency)]),
            1.0
        );
    }
    assert_eq!(value(&text, "sync_tail_live", &[]), 1.0);
    assert_eq!(value(&text, "sync_membership_view_live", &[]), 1.0);

    for id in [APP, USER, RECORD, "phone", "laptop"] {
        assert!(!text.contains(id), "{id} in a scrape:\n{text}");
    }
}

#[tokio::test]
async fn a_metrics_token_guards_the_gateways_endpoint() {
    let app = TestApp::spawn().await;
    let guarded = app
        .another_gateway_with(|c| {
            c.metrics_token = Some(gateway::config::Secret("scrape-key-1".into()));
        })
        .await;
    let url = format!("{}/metrics", guarded.base);

    for token in [None, Some("scrape-key-2"), Some("scrape-key-")] {
        let (status, _, body) = scrape(&app, &url, token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}: {body}");
        let error: serde_json::Value = serde_json::from_str(&body).expect("a JSON error");
        assert_eq!(error["error"], "unauthorized", "{body}");
    }
    let (status, _, text) = scrape(&app, &url, Some("scrape-key-1")).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text.contains("sync_http_requests_total"), "{text}");

    // Without a token configured, the endpoint is open.
    let (status, _, _) = scrape(&app, &format!("{}/metrics", app.gateway.base), None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_projector_reports_both_stages_and_what_it_parked() {
    let app = TestApp::spawn().await;
    let url = app
        .projector
        .as_ref()
        .and_then(|p| p.metrics.clone())
        .expect("the test projector serves metrics");

    let three = changes(json!([insert(RECORD), insert("b"), insert("c")]));
    assert_eq!(
        app.push(USER, "phone", APP, &three).await.status,
        StatusCode::OK
    );
    // Poison: not an event at all; parked, and the log moves on.
    let js = app.nats.jetstream().await;
    js.publish(format!("sync.x.{APP}.notes"), b"{not json".to_vec().into())
        .await
        .expect("published")
        .await
        .expect("stored");
    let one = changes(json!([insert("d")]));
    assert_eq!(
        app.push(USER, "phone", APP, &one).await.status,
        StatusCode::OK
    );
    let last = app.stream_messages_last_seq().await as f64;

    // Polled: the records stage follows the log stage. Nothing moves after that.
    let caught_up = |text: &str| {
        ["log", "records"].iter().all(|stage| {
            sample(text, "projector_checkpoint", &[("stage", stage)]) == Some(last)
                && sample(text, "projector_lag_positions", &[("stage", stage)]) == Some(0.0)
        })
    };
    eventually(Duration::from_secs(20), || async {
        let (status, _, text) = scrape(&app, &url, None).await;
        status == StatusCode::OK && caught_up(&text)
    })
    .await;
    let (_, _, text) = scrape(&app, &url, None).await;

    assert_eq!(value(&text, "projector_log_last_sequence", &[]), last);
    for stage in ["log", "records"] {
        let s = [("stage", stage)];
        assert_eq!(
            value(&text, "projector_positions_applied_total", &s),
            last,
            "{stage}: every position once"
        );
        let batches = value(&text, "projector_batch_positions_count", &s);
        assert!(batches >= 1.0, "{stage}: {batches}");
        assert_eq!(value(&text, "projector_batch_positions_sum", &s), last);
        assert_eq!(value(&text, "projector_batch_seconds_count", &s), batches);
    }
    assert_eq!(value(&text, "projector_parked_messages_total", &[]), 1.0);
    assert_eq!(value(&text, "projector_dead_letters", &[]), 1.0);
    for id in [APP, USER, RECORD] {
        assert!(!text.contains(id), "{id} in a scrape:\n{text}");
    }
}
