//! Replay and its proof (ARCHITECTURE, invariant 10): every projection rebuilt from the
//! log up to a position, and a checksum of the projections' content by which two
//! databases — the live one and a rebuild, or two rebuilds — are compared.

use std::collections::BTreeMap;

use futures::TryStreamExt as _;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use sqlx::PgPool;

use crate::{Config, Projector, apply::read_checkpoint, records};

/// Every projection of the log: the table, the key its rows are read in order of, and
/// the columns left out (set by the clock when written, not by the log).
const PROJECTIONS: &[(&str, &str, &[&str])] = &[
    ("change_log", "seq", &[]),
    ("records", "space_id, app_id, table_name, record_id", &[]),
    (
        "record_visibility",
        "space_id, app_id, table_name, record_id",
        &[],
    ),
    ("spaces", "space_id", &[]),
    ("space_members", "space_id, user_id", &[]),
    ("dead_letters", "seq", &["parked_at"]),
];

/// The content of a database's projections, at the positions its two stages reached.
/// Equal checksums at equal positions mean equal projections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Checksum {
    /// The log stage's checkpoint (change log, memberships, visibility, parked events).
    pub log_checkpoint: u64,
    /// The records stage's checkpoint (`records`).
    pub records_checkpoint: u64,
    /// Per table.
    pub tables: BTreeMap<String, TableChecksum>,
    /// SHA-256 over the tables' checksums.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableChecksum {
    pub rows: u64,
    /// SHA-256 over the rows as JSON (`jsonb` text: keys in a fixed order), in key order.
    pub sha256: String,
}

/// The checksum of the projections in `pool`'s database written by projector `name`,
/// read in one snapshot. The connection's role must see every row: one subject to
/// row-level security gets an error, not a checksum of what it may see.
pub async fn checksum(pool: &PgPool, name: &str) -> anyhow::Result<Checksum> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SET LOCAL row_security = off")
        .execute(&mut *tx)
        .await?;
    let log_checkpoint = read_checkpoint(&mut *tx, name).await?;
    let records_checkpoint = read_checkpoint(&mut *tx, &records::checkpoint_name(name)).await?;
    let mut tables = BTreeMap::new();
    let mut all = Sha256::new();
    for (table, key, left_out) in PROJECTIONS {
        let sql = format!("SELECT (to_jsonb(t) - $1::text[])::text FROM {table} t ORDER BY {key}");
        let mut rows = sqlx::query_scalar::<_, String>(&sql)
            .bind(left_out)
            .fetch(&mut *tx);
        let mut hash = Sha256::new();
        let mut count = 0u64;
        while let Some(row) = rows.try_next().await? {
            hash.update(row.as_bytes());
            hash.update(b"\n");
            count += 1;
        }
        let sum = TableChecksum {
            rows: count,
            sha256: hex::encode(hash.finalize()),
        };
        all.update(format!("{table} {} {}\n", sum.rows, sum.sha256));
        tables.insert((*table).to_owned(), sum);
    }
    Ok(Checksum {
        log_checkpoint,
        records_checkpoint,
        tables,
        sha256: hex::encode(all.finalize()),
    })
}

/// Rebuilds the projections in `config`'s database from the log, up to `until` (by
/// default the log's end when it starts), and returns their checksum. Best into an empty
/// database; one an interrupted rebuild left is resumed. The log is read through a
/// consumer of the rebuild's own, so the live projector (even of the same name, as a
/// rebuild meant to replace it has) is not disturbed. No metrics are served meanwhile.
pub async fn rebuild(mut config: Config, until: Option<u64>) -> anyhow::Result<Checksum> {
    config.metrics_listen = None;
    let name = config.name.clone();
    let projector = Projector::build(config).await?;
    let end = projector.log_end().await?;
    let until = match until {
        None => end,
        Some(until) if until <= end => until,
        Some(until) => anyhow::bail!("the log ends at {end}, before {until}"),
    };
    let pool = projector.pool().clone();
    let at = read_checkpoint(&pool, &name).await?;
    anyhow::ensure!(
        at <= until,
        "this database holds the log up to {at} already, past {until}: rebuild into an empty one"
    );
    tracing::info!(until, "rebuilding the projections from the log");
    projector.replay(until).await?;
    checksum(&pool, &name).await
}
