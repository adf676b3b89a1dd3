//! Revocation latency across gateways: a member is removed through one gateway's
//! internal API; a second gateway is polled with that member's pulls of the space until
//! it refuses them. The time from sending the removal to the first refusal is an upper
//! bound on "removal in force on every gateway" (it includes the API call itself and
//! one pull's latency).

use std::time::Duration;

use anyhow::Context as _;
use reqwest::{Method, StatusCode};
use serde_json::json;
use sync_tests::{RunningGateway, SERVICE_KEY};
use tokio::time::Instant;

use crate::stack::{Runtimes, Stack};

const SPACE: &str = "revocation-bench";
const MEMBER: &str = "member";

pub async fn measure(
    rts: &Runtimes,
    rounds: usize,
    limit: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let stack = Stack::start(rts, None).await?;
    let second = rts
        .gateway
        .spawn(RunningGateway::start(sync_tests::gateway_config(
            &stack.nats,
            &stack.db,
        )))
        .await
        .context("starting the second gateway")?;
    let http = sync_tests::http_client();
    let internal = |method: Method, path: String, body: Option<serde_json::Value>| {
        let mut req = http
            .request(method, format!("{}{path}", stack.base))
            .bearer_auth(SERVICE_KEY);
        if let Some(body) = body {
            req = req.json(&body);
        }
        async move {
            let resp = req.send().await?;
            anyhow::ensure!(
                resp.status().is_success(),
                "internal API: {}",
                resp.status()
            );
            Ok(())
        }
    };
    internal(
        Method::POST,
        "/internal/spaces".into(),
        Some(json!({"spaceId": SPACE, "type": "team", "name": "bench", "ownerId": "owner"})),
    )
    .await?;
    let token = gateway::auth::mint_dev_token(sync_tests::SECRET, MEMBER, limit)?;
    let pull_status = || {
        let req = http
            .get(format!("{}/sync/bench/pull", second.base))
            .query(&[("spaceId", SPACE)])
            .bearer_auth(&token)
            .header("x-client-id", "bench");
        async move { anyhow::Ok(req.send().await?.status()) }
    };
    let wait_for = |status: StatusCode| async move {
        let deadline = Instant::now() + limit;
        loop {
            if pull_status().await? == status {
                return anyhow::Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "no {status} within {limit:?}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let mut latencies = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        internal(
            Method::POST,
            format!("/internal/spaces/{SPACE}/members"),
            Some(json!({"userId": MEMBER, "role": "member"})),
        )
        .await?;
        wait_for(StatusCode::OK).await?;
        let start = Instant::now();
        internal(
            Method::DELETE,
            format!("/internal/spaces/{SPACE}/members/{MEMBER}"),
            None,
        )
        .await?;
        wait_for(StatusCode::FORBIDDEN).await?;
        latencies.push(start.elapsed());
    }
    drop(second);
    stack.stop().await;
    latencies.sort();
    Ok(latencies)
}

/// A markdown line: p50, p99 and max of sorted latencies.
pub fn render(sorted: &[Duration]) -> String {
    let at = |q: f64| {
        let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
        sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    format!(
        "Revocation on a second gateway ({} removals; from sending `DELETE …/members/{{user}}` \
         to the first refused pull there): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target ≤ 100 ms)",
        sorted.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    )
}
