//! Reads of the change log for pull and push responses: "what the caller may see after
//! cursor C, up to the projector's committed position", in log order.

use axum::{
    http::header,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use ingest::Access;
use std::{borrow::Cow, collections::BTreeMap};

use schemas::Cursor;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction, postgres::PgRow};
use uuid::Uuid;

/// The database role reads go through: no BYPASSRLS, SELECT on tenant tables only.
pub const READER_ROLE: &str = "sync_reader";

/// Opens a transaction that reads as `access`'s caller: in the reader role, with the
/// caller's id and readable spaces set for the row-level security policies. Whatever
/// a query in it selects, rows of spaces the caller is not a member of, and private
/// records of other authors, are not there.
///
/// One round trip: the settings travel with `BEGIN` as literals (quoted here; ids with
/// NUL are refused). The transaction only reads: dropping it instead of committing
/// sends its `ROLLBACK` along with the connection's next use.
pub async fn begin_as(
    pool: &PgPool,
    access: &Access,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let spaces = access.readable_spaces();
    let array = format!(
        "{{{}}}",
        spaces
            .iter()
            .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect::<Vec<_>>()
            .join(",")
    );
    let (Some(user), Some(spaces)) = (literal(access.user_id()), literal(&array)) else {
        return Err(sqlx::Error::InvalidArgument("an id contains NUL".into()));
    };
    pool.begin_with(format!(
        "BEGIN READ ONLY; SELECT set_config('role', '{READER_ROLE}', true), \
         set_config('sync.user_id', {user}, true), set_config('sync.spaces', {spaces}, true)"
    ))
    .await
}

/// A PostgreSQL string literal (standard-conforming: only `'` needs doubling).
fn literal(raw: &str) -> Option<String> {
    (!raw.contains('\0')).then(|| format!("'{}'", raw.replace('\'', "''")))
}

/// What to read.
pub struct ChangeQuery<'a> {
    pub app_id: &'a str,
    /// One table, or every table of the app.
    pub table: Option<&'a str>,
    /// Spaces the caller may read.
    pub spaces: &'a [String],
    pub after: u64,
    /// The projector's committed position: nothing beyond it is read, so a cursor never
    /// passes an event that is not yet in PostgreSQL.
    pub upto: u64,
    /// Leave out what this user pushed from this client (no echo).
    pub exclude: Option<(&'a str, &'a str)>,
    pub limit: usize,
}

/// A page of changes and the cursor to resume from: the rows as PostgreSQL returned
/// them, serialized straight from their bytes ([`Page::to_json`]).
pub struct Page {
    rows: Vec<PgRow>,
    pub synced_until: Cursor,
    pub has_more: bool,
}

/// A change as the change log holds it, serialized as the `ServerChange` clients
/// receive, borrowed from its row: payloads pass through as the JSON text PostgreSQL
/// returns, never parsed into a tree; only each field's `at` is repeated as `updatedAt`
/// for older clients.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct StoredChange<'r> {
    event_id: Uuid,
    cursor: Cursor,
    table: &'r str,
    id: &'r str,
    op: &'r str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'r RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fields: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted_at: Option<String>,
    space_id: &'r str,
    author_id: &'r str,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<&'r RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<&'r RawValue>,
    schema_version: u32,
}

impl StoredChange<'_> {
    /// Bytes of payload text it carries, to size the answer's buffer.
    fn payload_len(&self) -> usize {
        [self.data, self.fields.as_deref(), self.actor, self.origin]
            .iter()
            .flatten()
            .map(|raw| raw.get().len())
            .sum()
    }
}

/// A pull or push response read from PostgreSQL.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PageBody<'r> {
    server_changes: Vec<StoredChange<'r>>,
    conflicts: [(); 0],
    synced_until: Cursor,
    has_more: bool,
}

/// Bytes of a change's JSON besides its payloads (names, ids, cursor), on the generous
/// side: the answer's buffer is sized once instead of growing by copies.
const CHANGE_OVERHEAD: usize = 320;

/// A page's JSON body, sent as written.
pub struct PageJson(pub Vec<u8>);

impl IntoResponse for PageJson {
    fn into_response(self) -> Response {
        ([(header::CONTENT_TYPE, "application/json")], self.0).into_response()
    }
}

impl Page {
    /// The page as the JSON body of a pull or push response.
    pub fn to_json(&self) -> Result<Vec<u8>, sqlx::Error> {
        let changes = self
            .rows
            .iter()
            .map(to_change)
            .collect::<Result<Vec<_>, _>>()?;
        let size = changes
            .iter()
            .map(|c| c.payload_len() + CHANGE_OVERHEAD)
            .sum::<usize>()
            + 128;
        let mut body = Vec::with_capacity(size);
        let page = PageBody {
            server_changes: changes,
            conflicts: [],
            synced_until: self.synced_until,
            has_more: self.has_more,
        };
        serde_json::to_writer(&mut body, &page).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        Ok(body)
    }
}

/// The columns of a page. Rows are read by position (by name, each read would look its
/// column up in a map: 13 lookups per change), at indexes found here when compiling.
const COLUMNS: [&str; 13] = [
    "seq",
    "event_id",
    "table_name",
    "record_id",
    "op",
    "at",
    "data",
    "fields",
    "space_id",
    "user_id",
    "actor",
    "origin",
    "schema_version",
];

/// The index of `name` in [`COLUMNS`]; a name not there fails the build.
const fn column(name: &str) -> usize {
    let mut i = 0;
    while i < COLUMNS.len() {
        let candidate = COLUMNS[i].as_bytes();
        let wanted = name.as_bytes();
        if candidate.len() == wanted.len() {
            let mut j = 0;
            while j < wanted.len() && candidate[j] == wanted[j] {
                j += 1;
            }
            if j == wanted.len() {
                return i;
            }
        }
        i += 1;
    }
    panic!("not a page column")
}

const SEQ: usize = column("seq");
const EVENT_ID: usize = column("event_id");
const TABLE_NAME: usize = column("table_name");
const RECORD_ID: usize = column("record_id");
const OP: usize = column("op");
const AT: usize = column("at");
const DATA: usize = column("data");
const FIELDS: usize = column("fields");
const SPACE_ID: usize = column("space_id");
const USER_ID: usize = column("user_id");
const ACTOR: usize = column("actor");
const ORIGIN: usize = column("origin");
const SCHEMA_VERSION: usize = column("schema_version");

/// Callers in up to this many spaces read a page as one ordered range scan per space,
/// merged (see [`page_sql`]); callers in more get the lateral form.
pub const MERGED_SPACES: usize = 8;

/// The page query for a caller in `spaces` spaces: `$1` the spaces, `$2` app, `$3`/`$4`
/// after/up to, `$5` limit, `$6` table (or `NULL` for every table), `$7`/`$8` the client
/// and user left out. Each space is an index range scan of its scope (`space, app[,
/// table], seq`), so the cost follows the caller's data, not the table's size.
///
/// Up to [`MERGED_SPACES`] spaces, the scans are one `UNION ALL` ordered by sequence:
/// PostgreSQL merges them (Merge Append) and reads from each only as far as the page
/// needs, sorting nothing. Beyond that, one lateral scan per space of the array reads up
/// to a page from every space, and the rows are sorted (a statement per number of
/// spaces would crowd the connections' statement caches).
///
/// That holds for the plan PostgreSQL settles on for the prepared statement too: run as
/// the caller, the row-level security policy's `space_id = ANY (…)` keeps even the
/// generic plan on those indexes (tested in `tests/e2e/plans.rs`). Without it, measured
/// on PostgreSQL 15, the generic plan of the every-table read walks the primary key from
/// the cursor through every tenant's changes.
pub fn page_sql(one_table: bool, spaces: usize) -> String {
    let table_filter = if one_table {
        "AND table_name = $6"
    } else {
        "AND $6::text IS NULL"
    };
    let columns = COLUMNS.join(", ");
    let scan = |space: &str| {
        format!(
            "SELECT {columns} FROM change_log \
             WHERE space_id = {space} AND app_id = $2 {table_filter} AND seq > $3 AND seq <= $4 \
               AND NOT (client_id = $7 AND user_id = $8) \
             ORDER BY seq LIMIT $5"
        )
    };
    match spaces {
        1 => scan("($1::text[])[1]"),
        2..=MERGED_SPACES => {
            let scans: Vec<String> = (1..=spaces)
                .map(|i| format!("({})", scan(&format!("($1::text[])[{i}]"))))
                .collect();
            format!("{} ORDER BY seq LIMIT $5", scans.join(" UNION ALL "))
        }
        _ => format!(
            "SELECT c.* FROM unnest($1::text[]) AS s(space_id) \
             CROSS JOIN LATERAL ({}) c ORDER BY c.seq LIMIT $5",
            scan("s.space_id")
        ),
    }
}

/// Reads one page ([`page_sql`]).
pub async fn changes_since(
    conn: &mut PgConnection,
    q: &ChangeQuery<'_>,
) -> Result<Page, sqlx::Error> {
    if q.after >= q.upto || q.spaces.is_empty() {
        // Nothing to read: the cursor stays, or moves to the committed position.
        return Ok(Page {
            rows: Vec::new(),
            synced_until: Cursor(q.after.max(q.upto)),
            has_more: false,
        });
    }
    let sql = page_sql(q.table.is_some(), q.spaces.len());
    let (client, user) = q.exclude.unwrap_or(("", ""));
    let mut rows = sqlx::query(&sql)
        .bind(q.spaces)
        .bind(q.app_id)
        .bind(q.after as i64)
        .bind(q.upto as i64)
        .bind((q.limit + 1) as i64)
        .bind(q.table)
        .bind(client)
        .bind(user)
        .fetch_all(conn)
        .await?;
    let has_more = rows.len() > q.limit;
    rows.truncate(q.limit);
    let synced_until = match rows.last() {
        Some(last) if has_more => Cursor(seq_of(last)?),
        _ => Cursor(q.upto),
    };
    Ok(Page {
        rows,
        synced_until,
        has_more,
    })
}

/// The position just before the first event of the read (the caller's spaces, the app,
/// the table when one) logged at or after `t`: where a legacy timestamp cursor starts.
/// The earliest position, not the earliest time: should the log's clock ever step back,
/// events logged before `t` may follow it and are then sent again, but none logged at
/// or after `t` is skipped. Each space's scope index is walked from its start to its
/// first such event (at once for the usual `1970-01-01T00:00:00.000Z`).
pub async fn position_at(
    conn: &mut PgConnection,
    q: &ChangeQuery<'_>,
    t: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let table_filter = if q.table.is_some() {
        "AND table_name = $4"
    } else {
        "AND $4::text IS NULL"
    };
    let seq: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT min(c.seq) FROM unnest($1::text[]) AS s(space_id) \
         CROSS JOIN LATERAL ( \
            SELECT seq FROM change_log \
            WHERE space_id = s.space_id AND app_id = $2 {table_filter} AND logged_at >= $3 \
            ORDER BY seq LIMIT 1 \
         ) c"
    ))
    .bind(q.spaces)
    .bind(q.app_id)
    .bind(t)
    .bind(q.table)
    .fetch_one(conn)
    .await?;
    Ok(seq.map_or(q.upto, |s| (s as u64).saturating_sub(1)))
}

fn seq_of(row: &PgRow) -> Result<u64, sqlx::Error> {
    Ok(row.try_get::<i64, _>(SEQ)? as u64)
}

fn to_change(row: &PgRow) -> Result<StoredChange<'_>, sqlx::Error> {
    let op: &str = row.try_get(OP)?;
    let json = |column: usize| -> Result<Option<&RawValue>, sqlx::Error> {
        let value: Option<Json<&RawValue>> = row.try_get(column)?;
        Ok(value.map(|Json(raw)| raw).filter(|raw| raw.get() != "null"))
    };
    let fields = json(FIELDS)?
        .map(with_legacy_updated_at)
        .transpose()
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    let deleted_at = if op == "delete" {
        row.try_get::<Option<DateTime<Utc>>, _>(AT)?
            .map(schemas::time::canonical)
    } else {
        None
    };
    Ok(StoredChange {
        event_id: row.try_get::<Uuid, _>(EVENT_ID)?,
        cursor: Cursor(seq_of(row)?),
        table: row.try_get(TABLE_NAME)?,
        id: row.try_get(RECORD_ID)?,
        deleted_at,
        op,
        data: json(DATA)?.filter(|raw| raw.get().starts_with('{')),
        fields,
        space_id: row.try_get(SPACE_ID)?,
        author_id: row.try_get(USER_ID)?,
        actor: json(ACTOR)?,
        origin: json(ORIGIN)?,
        schema_version: row.try_get::<i32, _>(SCHEMA_VERSION)? as u32,
    })
}

/// `{field: {value, at}}` as stored, with `updatedAt` beside each `at` (older clients
/// read that), values passed through unparsed.
fn with_legacy_updated_at(stored: &RawValue) -> Result<Box<RawValue>, serde_json::Error> {
    #[derive(Deserialize, Serialize)]
    struct Field<'a> {
        #[serde(borrow)]
        value: &'a RawValue,
        #[serde(borrow)]
        at: Cow<'a, str>,
        #[serde(rename = "updatedAt", default, skip_deserializing)]
        updated_at: Cow<'a, str>,
    }
    let mut fields: BTreeMap<Cow<'_, str>, Field<'_>> = serde_json::from_str(stored.get())?;
    for field in fields.values_mut() {
        field.updated_at = field.at.clone();
    }
    serde_json::value::to_raw_value(&fields)
}
