//! Pull latency of full 1000-row pages at random positions of a large table, through
//! the gateway and, interleaved with it, the same page query run directly with sqlx.

use std::{collections::BTreeMap, sync::LazyLock, time::Duration};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng, rngs::StdRng};
use schemas::{Cursor, wire::PAGE_SIZE};
use sqlx::{Connection, PgConnection};
use tokio::time::Instant;

use crate::{
    cpu::{self, Usage},
    push::{self, histogram},
    stack::Stack,
    workload::{self, APP, Device, TABLE},
};

/// The user owning the pulled table, and the client id that pulls it.
const OWNER: &str = "reader";
const PULLER: &str = "puller";

/// The loaded table: the log positions of its rows, in order.
pub struct Dataset {
    token: String,
    seqs: Vec<i64>,
}

/// The page query of the gateway's store (one table, one space), so the baseline runs
/// exactly what the gateway runs.
static PAGE_SQL: LazyLock<String> = LazyLock::new(|| gateway::store::page_sql(true, 1));

/// Loads `rows` rows into one user's table through the gateway (`loaders` devices of
/// that user pushing batches of `per_batch` concurrently), and waits until projected.
pub async fn load(
    stack: &Stack,
    rows: usize,
    loaders: usize,
    per_batch: usize,
    limit: Duration,
) -> anyhow::Result<Dataset> {
    let token = workload::token(OWNER)?;
    let requests = rows.div_ceil(loaders * per_batch);
    let devices = (0..loaders)
        .map(|d| Device {
            user: OWNER.to_owned(),
            client_id: format!("loader{d}"),
            token: token.clone(),
            batches: workload::batches("pull", d, requests, per_batch, None),
            per_batch,
        })
        .collect();
    let run = push::gateway(stack, devices, true, limit).await?;
    anyhow::ensure!(
        run.complete && run.error_count() == 0,
        "loading the pull table failed: {} errors, complete: {}; first: {:?}",
        run.error_count(),
        run.complete,
        run.first_error
    );
    stack.wait_idle(limit).await?;
    let seqs: Vec<i64> = sqlx::query_scalar(
        "SELECT seq FROM change_log WHERE space_id = $1 AND app_id = $2 AND table_name = $3 \
         ORDER BY seq",
    )
    .bind(schemas::space::personal_space_id(OWNER))
    .bind(APP)
    .bind(TABLE)
    .fetch_all(&stack.db.pool)
    .await
    .context("reading the loaded positions")?;
    anyhow::ensure!(
        seqs.len() > PAGE_SIZE + 1,
        "the pull table has {} rows; full pages need more than {}",
        seqs.len(),
        PAGE_SIZE + 1
    );
    Ok(Dataset { token, seqs })
}

pub struct PullRun {
    pub gateway: Histogram<u64>,
    pub raw: Histogram<u64>,
    /// The same query as the gateway's caller: a transaction in the reader role with
    /// the caller set, under row-level security (`gateway::store::begin_as`).
    pub rls: Histogram<u64>,
    /// The gateway's pull with `Accept-Encoding: zstd`, and with `gzip`: send to last
    /// byte of the compressed answer (the client's decompression is not in it).
    pub zstd: Histogram<u64>,
    pub gzip: Histogram<u64>,
    /// Bytes of all pages received: plain, zstd, gzip.
    pub bytes: Bytes,
    pub errors: BTreeMap<String, u64>,
    pub first_error: Option<String>,
    /// Pages that were not full (1000 changes and `hasMore`).
    pub short_pages: u64,
    pub complete: bool,
    pub cpu: Usage,
}

#[derive(Default)]
pub struct Bytes {
    pub plain: u64,
    pub zstd: u64,
    pub gzip: u64,
}

/// `pulls` pulls at random positions, one client, one after the other; after each, the
/// same page straight from PostgreSQL.
pub async fn measure(
    stack: &Stack,
    data: &Dataset,
    pulls: usize,
    seed: u64,
    limit: Duration,
) -> anyhow::Result<PullRun> {
    let http = push::http_client()?;
    let mut pg = PgConnection::connect(&stack.db.url)
        .await
        .context("connecting for the raw page query")?;
    let reader = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&stack.db.url)
        .await
        .context("connecting for the page query under row-level security")?;
    let upto = stack.checkpoint().await?;
    let space = vec![schemas::space::personal_space_id(OWNER)];
    let owner = ingest::Access::with_roles(OWNER, Default::default());
    let mut rng = StdRng::seed_from_u64(seed);
    // A full page needs PAGE_SIZE rows after the cursor, plus one for `hasMore`.
    let last_start = data.seqs.len() - PAGE_SIZE - 1;
    let afters: Vec<u64> = (0..pulls)
        .map(|_| data.seqs[rng.gen_range(0..=last_start)] as u64)
        .collect();
    let url = |after: u64| {
        format!(
            "{}/sync/{APP}/pull?collection={TABLE}&since={}",
            stack.base,
            Cursor(after).encode()
        )
    };
    let pull_encoded = |after: u64, encoding: &'static str| {
        http.get(url(after))
            .bearer_auth(&data.token)
            .header("x-client-id", PULLER)
            .header("accept-encoding", encoding)
            .send()
    };
    let pull = |after: u64| pull_encoded(after, "identity");
    // Warm-up: connections, prepared statements, caches.
    for after in afters.iter().take(10) {
        let _ = pull(*after).await?.bytes().await?;
        let _ = pull_encoded(*after, "zstd").await?.bytes().await?;
        let _ = pull_encoded(*after, "gzip").await?.bytes().await?;
        raw_page(&mut pg, &space, *after, upto).await?;
        let mut tx = gateway::store::begin_as(&reader, &owner).await?;
        raw_page(&mut tx, &space, *after, upto).await?;
    }

    let mut run = PullRun {
        gateway: histogram(),
        raw: histogram(),
        rls: histogram(),
        zstd: histogram(),
        gzip: histogram(),
        bytes: Bytes::default(),
        errors: BTreeMap::new(),
        first_error: None,
        short_pages: 0,
        complete: true,
        cpu: Usage::default(),
    };
    let before = cpu::snapshot(stack.postmaster);
    let deadline = Instant::now() + limit;
    for after in afters {
        if Instant::now() >= deadline {
            run.complete = false;
            break;
        }
        let (elapsed, reply) = workload::timed_request(pull(after)).await;
        match reply {
            Ok((status, body)) if status.is_success() => {
                run.gateway.saturating_record(elapsed.as_micros() as u64);
                run.bytes.plain += body.len() as u64;
                let page: serde_json::Value = serde_json::from_slice(&body)?;
                let n = page["serverChanges"].as_array().map_or(0, Vec::len);
                if n != PAGE_SIZE || page["hasMore"] != true {
                    run.short_pages += 1;
                }
            }
            failed => count_failure(&mut run.errors, &mut run.first_error, "", failed),
        }

        for (encoding, latency, bytes) in [
            ("zstd", &mut run.zstd, &mut run.bytes.zstd),
            ("gzip", &mut run.gzip, &mut run.bytes.gzip),
        ] {
            let (elapsed, reply) = workload::timed_request(pull_encoded(after, encoding)).await;
            match reply {
                Ok((status, body)) if status.is_success() => {
                    latency.saturating_record(elapsed.as_micros() as u64);
                    *bytes += body.len() as u64;
                }
                failed => {
                    let prefix = format!("{encoding} ");
                    count_failure(&mut run.errors, &mut run.first_error, &prefix, failed);
                }
            }
        }

        let t0 = Instant::now();
        let rows = raw_page(&mut pg, &space, after, upto).await?;
        run.raw.saturating_record(t0.elapsed().as_micros() as u64);
        anyhow::ensure!(
            rows.len() == PAGE_SIZE + 1,
            "the raw page query returned {} rows",
            rows.len()
        );

        let t0 = Instant::now();
        let mut tx = gateway::store::begin_as(&reader, &owner).await?;
        let rows = raw_page(&mut tx, &space, after, upto).await?;
        drop(tx);
        run.rls.saturating_record(t0.elapsed().as_micros() as u64);
        anyhow::ensure!(
            rows.len() == PAGE_SIZE + 1,
            "the page query under row-level security returned {} rows",
            rows.len()
        );
    }
    run.cpu = before.usage_until(&cpu::snapshot(stack.postmaster));
    pg.close().await?;
    reader.close().await;
    Ok(run)
}

/// Counts a pull that failed (an error status or a transport error), under its kind with
/// `prefix` (e.g. the encoding asked for), and keeps the first one's details.
fn count_failure(
    errors: &mut BTreeMap<String, u64>,
    first_error: &mut Option<String>,
    prefix: &str,
    failed: reqwest::Result<(reqwest::StatusCode, bytes::Bytes)>,
) {
    let (kind, detail) = match failed {
        Ok((status, body)) => (
            status.as_str().to_owned(),
            format!("{prefix}{status}: {}", String::from_utf8_lossy(&body)),
        ),
        Err(e) => ("transport".to_owned(), e.to_string()),
    };
    *errors.entry(format!("{prefix}{kind}")).or_default() += 1;
    first_error.get_or_insert(detail);
}

/// The gateway's page query, straight to PostgreSQL.
async fn raw_page(
    pg: &mut PgConnection,
    spaces: &[String],
    after: u64,
    upto: u64,
) -> Result<Vec<sqlx::postgres::PgRow>, sqlx::Error> {
    sqlx::query(&PAGE_SQL)
        .bind(spaces)
        .bind(APP)
        .bind(after as i64)
        .bind(upto as i64)
        .bind((PAGE_SIZE + 1) as i64)
        .bind(TABLE)
        .bind(PULLER)
        .bind(OWNER)
        .fetch_all(pg)
        .await
}
