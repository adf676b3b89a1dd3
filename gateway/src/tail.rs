//! Each gateway's tail of the log: one ordered consumer of the whole stream, from the
//! projector's checkpoint on, keeping the most recent record changes in memory already
//! serialized the way clients receive them.
//!
//! A push's response (what else the caller may see after its cursor, up to the log
//! position when the push arrived) is served from the tail as soon as this gateway has
//! seen that position, milliseconds after JetStream's acknowledgement, instead of after
//! the projector has committed it to PostgreSQL. The tail is also what live streams
//! will fan out from: one consumer per gateway, not one per connection.
//!
//! It answers only what PostgreSQL would answer, or not at all:
//! - it holds the changes the projector puts in the change log: the same decoding (a
//!   message the projector parks is skipped), and a repeated event id within the
//!   window is skipped as the change log's unique index skips it;
//! - it filters as the read path does: the caller's readable spaces, the app, the
//!   table, the caller's own client left out;
//! - it declines (the caller reads PostgreSQL instead) when the cursor is older than
//!   the window, is a legacy timestamp, when the tail is not following the log, or when
//!   a change in the page belongs to a record that is private, or was made private
//!   since the snapshot, by anyone but the caller.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, RwLock},
    time::Duration,
};

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use futures::StreamExt as _;
use schemas::{Cursor, Event, RecordChanged, wire::ServerChangeView};
use serde::Serialize;
use serde_json::value::RawValue;
use sqlx::{PgPool, Row as _};
use tokio::sync::watch;
use uuid::Uuid;

use crate::follow::{Following, keep_following, snapshot_at_checkpoint};

/// Identifies a record: space, app, table, id.
type RecordKey = (String, String, String, String);

/// The visibility that hides a record from everyone but its author.
const PRIVATE: &str = "private";

#[derive(Clone)]
pub struct LogTail(Arc<Inner>);

struct Inner {
    window: RwLock<Window>,
    following: Following,
    max_events: usize,
    max_bytes: usize,
    pool: PgPool,
}

struct Window {
    /// Every change the change log holds with a position in `(start, end]` is in
    /// `entries`, in log order.
    start: u64,
    end: u64,
    entries: VecDeque<Arc<Entry>>,
    bytes: usize,
    event_ids: HashSet<Uuid>,
    /// Records private to someone (as of the snapshot), or made private since, with the
    /// user who made them so (`None` when more than one user tried).
    private: HashMap<RecordKey, Option<String>>,
}

/// One record change, as clients receive it.
struct Entry {
    seq: u64,
    event_id: Uuid,
    space_id: String,
    app_id: String,
    table: String,
    record_id: String,
    user_id: String,
    client_id: String,
    json: Box<RawValue>,
}

/// What a page of the tail is asked for: the same as a read of the change log.
pub struct TailQuery<'a> {
    pub app_id: &'a str,
    pub table: Option<&'a str>,
    pub spaces: &'a [String],
    pub after: u64,
    /// Leave out what this user pushed from this client (no echo).
    pub exclude: Option<(&'a str, &'a str)>,
    /// Who reads: their own private records are theirs to see.
    pub caller: &'a str,
    pub limit: usize,
}

/// A page served from the tail; serializes as a push or pull response.
pub struct TailPage {
    entries: Vec<Arc<Entry>>,
    synced_until: Cursor,
    has_more: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PageBody<'a> {
    server_changes: Vec<&'a RawValue>,
    conflicts: &'static [serde_json::Value],
    synced_until: String,
    has_more: bool,
}

impl Serialize for TailPage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        PageBody {
            server_changes: self.entries.iter().map(|e| &*e.json).collect(),
            conflicts: &[],
            synced_until: self.synced_until.encode(),
            has_more: self.has_more,
        }
        .serialize(s)
    }
}

impl LogTail {
    /// Starts following the log; keeps at most `max_events` changes (and about
    /// `max_bytes` of them).
    pub fn follow(
        js: jetstream::Context,
        stream: String,
        pool: PgPool,
        projector: String,
        disconnects: watch::Receiver<u64>,
        max_events: usize,
        max_bytes: usize,
    ) -> Self {
        let tail = Self(Arc::new(Inner {
            window: RwLock::new(Window::empty(0)),
            following: Following::new(),
            max_events,
            max_bytes,
            pool,
        }));
        let follower = tail.clone();
        tokio::spawn(async move {
            let live = follower.0.following.live().clone();
            keep_following("log tail", &live, disconnects, || {
                follower.follow_once(&js, &stream, &projector)
            })
            .await;
        });
        tail
    }

    /// Waits (at most `timeout`) until the tail has seen the log up to `seq`.
    pub async fn wait_for(&self, seq: u64, timeout: Duration) -> bool {
        self.0.following.wait_for(seq, timeout).await
    }

    /// A page of what `q` asks for, up to everything the tail has seen; `None` when the
    /// tail cannot answer exactly (see the module documentation).
    pub fn page(&self, q: &TailQuery<'_>) -> Option<TailPage> {
        if !self.0.following.is_live() {
            return None;
        }
        self.0
            .window
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .page(q)
    }

    /// Loads the private records as of the projector's checkpoint, then follows every
    /// message after it until the consumer fails.
    async fn follow_once(
        &self,
        js: &jetstream::Context,
        stream: &str,
        projector: &str,
    ) -> anyhow::Result<()> {
        let (private, checkpoint) = load_private(&self.0.pool, projector).await?;
        let stream = js.get_stream(stream).await?;
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: checkpoint + 1,
                },
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        {
            let mut window = self.write();
            *window = Window::empty(checkpoint);
            window.private = private;
        }
        self.0.following.reached(checkpoint);
        self.0.following.set_live(true);
        tracing::info!(checkpoint, "log tail following the log");
        while let Some(msg) = messages.next().await {
            let msg = msg?;
            let seq = msg
                .info()
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .stream_sequence;
            let entry = match projector::apply::decode(msg.subject.as_str(), &msg.payload) {
                Ok(env) => match &env.event {
                    Event::RecordChanged(rc) => Some((
                        Entry::new(seq, &env, rc)?,
                        rc.visibility().map(str::to_owned),
                    )),
                    _ => None,
                },
                // The projector parks it: it is in no read, so not here either.
                Err(_) => None,
            };
            let mut window = self.write();
            if let Some((entry, visibility)) = entry {
                window.push(entry, visibility.as_deref());
                window.evict(self.0.max_events, self.0.max_bytes);
            }
            window.end = seq;
            drop(window);
            self.0.following.reached(seq);
        }
        anyhow::bail!("the log tail's consumer ended")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Window> {
        self.0.window.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl Window {
    fn empty(at: u64) -> Self {
        Self {
            start: at,
            end: at,
            entries: VecDeque::new(),
            bytes: 0,
            event_ids: HashSet::new(),
            private: HashMap::new(),
        }
    }

    /// A page of what `q` asks for, up to `end`; `None` when the window cannot answer
    /// exactly.
    fn page(&self, q: &TailQuery<'_>) -> Option<TailPage> {
        if q.after < self.start {
            return None;
        }
        let upto = self.end;
        if q.after >= upto || q.spaces.is_empty() {
            return Some(TailPage {
                entries: Vec::new(),
                synced_until: Cursor(q.after.max(upto)),
                has_more: false,
            });
        }
        let spaces: HashSet<&str> = q.spaces.iter().map(String::as_str).collect();
        let (exclude_client, exclude_user) = q.exclude.unwrap_or(("", ""));
        let first = self.entries.partition_point(|e| e.seq <= q.after);
        let mut entries = Vec::new();
        for e in self.entries.range(first..) {
            let visible_here = e.app_id == q.app_id
                && q.table.is_none_or(|t| t == e.table)
                && spaces.contains(e.space_id.as_str())
                && !(e.client_id == exclude_client && e.user_id == exclude_user);
            if !visible_here {
                continue;
            }
            if !self.private.is_empty()
                && let Some(author) = self.private.get(&e.key())
                && author.as_deref() != Some(q.caller)
            {
                // Private to someone else, or may be: only PostgreSQL knows for sure.
                return None;
            }
            if entries.len() == q.limit {
                let last: &Arc<Entry> = entries.last()?;
                return Some(TailPage {
                    synced_until: Cursor(last.seq),
                    entries,
                    has_more: true,
                });
            }
            entries.push(e.clone());
        }
        Some(TailPage {
            entries,
            synced_until: Cursor(upto),
            has_more: false,
        })
    }

    fn push(&mut self, entry: Entry, visibility: Option<&str>) {
        if visibility == Some(PRIVATE) {
            self.private
                .entry(entry.key())
                .and_modify(|by| {
                    if by.as_deref() != Some(entry.user_id.as_str()) {
                        *by = None;
                    }
                })
                .or_insert_with(|| Some(entry.user_id.clone()));
        }
        if !self.event_ids.insert(entry.event_id) {
            // The change log keeps the first of two events with one id.
            return;
        }
        self.bytes += entry.size();
        self.entries.push_back(Arc::new(entry));
    }

    fn evict(&mut self, max_events: usize, max_bytes: usize) {
        while self.entries.len() > max_events || (self.bytes > max_bytes && self.entries.len() > 1)
        {
            let Some(old) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= old.size();
            self.event_ids.remove(&old.event_id);
            self.start = old.seq;
        }
    }
}

impl Entry {
    fn new(seq: u64, env: &schemas::Envelope, rc: &RecordChanged) -> anyhow::Result<Self> {
        let change = ServerChangeView::new(seq, env, rc);
        Ok(Self {
            seq,
            event_id: env.event_id,
            space_id: rc.space_id.clone(),
            app_id: rc.app_id.clone(),
            table: rc.table.clone(),
            record_id: rc.record_id.clone(),
            user_id: env.metadata.user_id.clone(),
            client_id: env.metadata.client_id.clone(),
            json: serde_json::value::to_raw_value(&change)?,
        })
    }

    fn key(&self) -> RecordKey {
        (
            self.space_id.clone(),
            self.app_id.clone(),
            self.table.clone(),
            self.record_id.clone(),
        )
    }

    /// Roughly what it holds in memory.
    fn size(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.json.get().len()
            + self.space_id.len()
            + self.app_id.len()
            + self.table.len()
            + self.record_id.len()
            + self.user_id.len()
            + self.client_id.len()
    }
}

/// Records private to someone as of the projector's checkpoint, read in one snapshot.
async fn load_private(
    pool: &PgPool,
    projector: &str,
) -> anyhow::Result<(HashMap<RecordKey, Option<String>>, u64)> {
    let (mut tx, checkpoint) = snapshot_at_checkpoint(pool, projector).await?;
    let rows = sqlx::query(
        "SELECT space_id, app_id, table_name, record_id, author_id FROM record_visibility \
         WHERE visibility = $1",
    )
    .bind(PRIVATE)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let private = rows
        .iter()
        .map(|r| {
            let key = (r.get(0), r.get(1), r.get(2), r.get(3));
            (key, Some(r.get::<String, _>(4)))
        })
        .collect();
    Ok((private, checkpoint))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, space: &str, user: &str, table: &str) -> Entry {
        Entry {
            seq,
            event_id: Uuid::new_v4(),
            space_id: space.to_owned(),
            app_id: "app".to_owned(),
            table: table.to_owned(),
            record_id: format!("r{seq}"),
            user_id: user.to_owned(),
            client_id: format!("{user}-phone"),
            json: RawValue::from_string(format!("{{\"seq\":{seq}}}")).expect("valid JSON"),
        }
    }

    fn query<'a>(spaces: &'a [String], after: u64, caller: &'a str) -> TailQuery<'a> {
        TailQuery {
            app_id: "app",
            table: None,
            spaces,
            after,
            exclude: None,
            caller,
            limit: 1000,
        }
    }

    fn seqs(page: &TailPage) -> Vec<u64> {
        page.entries.iter().map(|e| e.seq).collect()
    }

    /// Changes at 11..=20 alternating between spaces `a` and `b`, by users `u1`/`u2`.
    fn window() -> Window {
        let mut w = Window::empty(10);
        for seq in 11..=20 {
            let (space, user) = if seq % 2 == 0 {
                ("a", "u1")
            } else {
                ("b", "u2")
            };
            w.push(entry(seq, space, user, "tasks"), None);
            w.end = seq;
        }
        w
    }

    #[test]
    fn filters_like_the_change_log_read() {
        let w = window();
        let a = vec!["a".to_owned()];
        let page = w.page(&query(&a, 10, "u1")).expect("in the window");
        assert_eq!(seqs(&page), [12, 14, 16, 18, 20]);
        assert_eq!((page.synced_until, page.has_more), (Cursor(20), false));

        let mut q = query(&a, 14, "u1");
        q.exclude = Some(("u1-phone", "u1"));
        let page = w.page(&q).expect("in the window");
        assert!(page.entries.is_empty());
        assert_eq!(page.synced_until, Cursor(20));

        let both = vec!["a".to_owned(), "b".to_owned()];
        let mut q = query(&both, 15, "u1");
        q.table = Some("notes");
        assert!(w.page(&q).expect("in the window").entries.is_empty());
        q.table = Some("tasks");
        assert_eq!(
            seqs(&w.page(&q).expect("in the window")),
            [16, 17, 18, 19, 20]
        );
    }

    #[test]
    fn a_full_page_ends_at_its_last_change() {
        let w = window();
        let both = vec!["a".to_owned(), "b".to_owned()];
        let mut q = query(&both, 10, "u1");
        q.limit = 3;
        let page = w.page(&q).expect("in the window");
        assert_eq!(seqs(&page), [11, 12, 13]);
        assert_eq!((page.synced_until, page.has_more), (Cursor(13), true));
        // Exactly `limit` left: not more.
        q.after = 17;
        let page = w.page(&q).expect("in the window");
        assert_eq!((seqs(&page), page.has_more), (vec![18, 19, 20], false));
    }

    #[test]
    fn declines_cursors_before_the_window_and_keeps_the_cursor_past_its_end() {
        let mut w = window();
        let a = vec!["a".to_owned()];
        assert!(w.page(&query(&a, 9, "u1")).is_none());
        let page = w.page(&query(&a, 25, "u1")).expect("nothing to read");
        assert_eq!((page.entries.len(), page.synced_until), (0, Cursor(25)));

        w.evict(4, usize::MAX);
        assert_eq!((w.start, w.entries.len()), (16, 4));
        assert!(w.page(&query(&a, 15, "u1")).is_none());
        assert_eq!(seqs(&w.page(&query(&a, 16, "u1")).expect("kept")), [18, 20]);
        // The byte budget evicts too, keeping at least one change.
        w.evict(usize::MAX, 1);
        assert_eq!((w.start, w.entries.len()), (19, 1));
    }

    #[test]
    fn repeated_event_ids_are_kept_once() {
        let mut w = Window::empty(0);
        let first = entry(1, "a", "u1", "tasks");
        let mut again = entry(2, "a", "u1", "tasks");
        again.event_id = first.event_id;
        w.push(first, None);
        w.push(again, None);
        w.end = 2;
        let a = vec!["a".to_owned()];
        assert_eq!(
            seqs(&w.page(&query(&a, 0, "u2")).expect("in the window")),
            [1]
        );
    }

    #[test]
    fn private_records_of_others_send_the_read_to_postgres() {
        let mut w = window();
        let a = vec!["a".to_owned()];
        // u1 makes its record at 14 private (a later change of the same record).
        let mut private = entry(21, "a", "u1", "tasks");
        private.record_id = "r14".to_owned();
        w.push(private, Some(PRIVATE));
        w.end = 21;
        // Its author still reads from the tail; anyone else's page that holds a change
        // of that record, earlier ones included, goes to PostgreSQL.
        assert_eq!(
            seqs(&w.page(&query(&a, 10, "u1")).expect("the author's")),
            [12, 14, 16, 18, 20, 21]
        );
        assert!(w.page(&query(&a, 10, "u2")).is_none());
        // A page without that record is still the tail's.
        let b = vec!["b".to_owned()];
        assert_eq!(
            seqs(
                &w.page(&query(&b, 14, "u2"))
                    .expect("no private change in it")
            ),
            [15, 17, 19]
        );
        // A second user setting it private makes the author unknown: PostgreSQL for all.
        let mut other = entry(22, "a", "u2", "tasks");
        other.record_id = "r14".to_owned();
        w.push(other, Some(PRIVATE));
        w.end = 22;
        assert!(w.page(&query(&a, 10, "u1")).is_none());
    }
}
