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
//! - it filters as the read path does: the caller's readable spaces (of those, only
//!   the ones the caller is still a member of as of the tail's end), the app, the
//!   table, the caller's own client left out;
//! - it declines (the caller reads PostgreSQL instead) when the cursor is older than
//!   the window, is a legacy timestamp, when the tail is not following the log, or when
//!   a change in the page belongs to a record that is, or may be, private to anyone
//!   but the caller (records private before the window are only known to be private,
//!   not by whom: their reads go to PostgreSQL, the author's too);
//! - it leaves out a change whose author may not write into its space at its position
//!   in the log, as the projector parks it (`projector::apply`, "refused writes"): the
//!   tail keeps the memberships as of its position (a snapshot at the checkpoint it
//!   starts from, then every membership event after it) and checks each change with
//!   the projector's rule, `Memberships::may_write`.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, HashSet, VecDeque},
    sync::{Arc, OnceLock, RwLock},
    time::Duration,
};

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use fastbloom::BloomFilter;
use futures::{StreamExt as _, TryStreamExt as _};
use ingest::membership::Memberships;
use schemas::{
    Cursor, Envelope, Event, RecordChanged, space::personal_space_id, subject::escape_token,
    wire::ServerChangeView,
};
use serde::{Deserialize, Serialize};
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
    /// The same entries by space (its subject token), each list in log order: a read
    /// visits the caller's spaces' changes, not everything the window holds.
    by_space: HashMap<String, VecDeque<Arc<Entry>>>,
    bytes: usize,
    /// The position of the entry holding each event id.
    event_ids: HashMap<Uuid, u64>,
    /// The window's other events (membership events) in log order, and the position
    /// of each id: a resend may repeat those too (the events creating a personal space
    /// on first use).
    other_events: VecDeque<(u64, Uuid)>,
    other_event_ids: HashMap<Uuid, u64>,
    /// Records that are, or may be, private to someone.
    private: PrivateRecords,
    /// Spaces and memberships as of `end`: who may write where at the next position.
    members: Memberships,
}

/// A message on a record-change subject. It is decoded when a read first needs it
/// (reads filter on the subject first), or at once when it may change a record's
/// visibility, its event id is not where the gateway writes it, or it writes into a
/// space other than its author's personal one (the membership check needs the space).
struct Entry {
    seq: u64,
    event_id: Uuid,
    /// `sync.<space>.<app>.<table>`, tokens escaped.
    subject: String,
    payload: bytes::Bytes,
    /// Who published it, read from the envelope's metadata alone (`None`: not a valid
    /// event, which no read returns).
    by: Option<By>,
    /// `None`: not an event the projector keeps (it parks it).
    change: OnceLock<Option<Change>>,
}

/// The user and client an event's metadata names.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct By {
    user_id: String,
    client_id: String,
}

/// A record change as clients receive it, and what reads filter it by.
struct Change {
    space_id: String,
    app_id: String,
    table: String,
    record_id: String,
    user_id: String,
    json: Box<RawValue>,
}

/// A message of the log as the tail takes it in, read (and decoded as far as taking it
/// in needs) before the window is locked.
enum Arrival {
    /// A message on a record-change subject; `shared`: its author writes into a space
    /// other than their personal one, so the window checks their membership (the
    /// change is decoded already).
    Change {
        entry: Entry,
        visibility: Option<String>,
        shared: bool,
    },
    /// Any other message: the membership event it is, if it is a valid one, and its id.
    Other {
        membership: Option<Envelope>,
        id: Option<Uuid>,
    },
}

impl Arrival {
    fn read(seq: u64, subject: &str, payload: &bytes::Bytes) -> Self {
        match Entry::read(seq, subject, payload) {
            Some((entry, visibility)) => {
                let shared = entry.writes_into_a_shared_space();
                Self::Change {
                    entry,
                    visibility,
                    shared,
                }
            }
            None => Self::Other {
                membership: projector::apply::decode(subject, payload)
                    .ok()
                    .filter(|env| env.event.membership().is_some()),
                id: leading_event_id(payload),
            },
        }
    }
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
            server_changes: self
                .entries
                .iter()
                .filter_map(|e| e.change())
                .map(|c| &*c.json)
                .collect(),
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

    /// A page of what `q` asks for, up to everything the tail has seen, which must reach
    /// `target`; `None` when the tail cannot answer exactly (see the module
    /// documentation). The window is checked again under its lock: one that restarted
    /// from the projector's checkpoint since the wait for `target` may end before it.
    pub fn page(&self, q: &TailQuery<'_>, target: u64) -> Option<TailPage> {
        if !self.0.following.is_live() {
            return None;
        }
        let window = self.0.window.read().unwrap_or_else(|e| e.into_inner());
        if window.end < target {
            return None;
        }
        window.page(q)
    }

    /// Whether it follows the log right now (it answers reads only then).
    pub fn is_live(&self) -> bool {
        self.0.following.is_live()
    }

    /// Which of `ids` are ids of events in the window: all of them are in the log.
    pub fn logged(&self, ids: &[Uuid]) -> HashSet<Uuid> {
        self.0
            .window
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .logged(ids)
    }

    /// Loads the private records as of the projector's checkpoint, then follows every
    /// message after it until the consumer fails.
    async fn follow_once(
        &self,
        js: &jetstream::Context,
        stream: &str,
        projector: &str,
    ) -> anyhow::Result<()> {
        let (private, members, checkpoint) = load_snapshot(&self.0.pool, projector).await?;
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
            window.members = members;
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
            let arrival = Arrival::read(seq, &msg.subject, &msg.payload);
            let mut window = self.write();
            window.follow(seq, arrival);
            window.evict(self.0.max_events, self.0.max_bytes);
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
            by_space: HashMap::new(),
            bytes: 0,
            event_ids: HashMap::new(),
            other_events: VecDeque::new(),
            other_event_ids: HashMap::new(),
            private: PrivateRecords::new(0),
            members: Memberships::default(),
        }
    }

    /// Takes in the message at `seq`, the next one of the log.
    fn follow(&mut self, seq: u64, arrival: Arrival) {
        match arrival {
            Arrival::Change {
                entry,
                visibility,
                shared,
            } if !shared || self.may_write(&entry) => self.push(entry, visibility.as_deref()),
            // Parked by the projector: in the log (a resend of it is a duplicate), not
            // in the change log.
            Arrival::Change { entry, .. } => self.push_other(seq, entry.event_id),
            Arrival::Other { membership, id } => {
                if let Some(event) = membership.as_ref().and_then(|env| env.event.membership()) {
                    self.members.apply(event);
                }
                if let Some(id) = id {
                    self.push_other(seq, id);
                }
            }
        }
        self.end = seq;
    }

    /// Whether the author of `entry` may write into its space here (the projector's
    /// rule). A message that is not a valid change passes: no read returns it.
    fn may_write(&self, entry: &Entry) -> bool {
        entry
            .change()
            .is_none_or(|c| self.members.may_write(&c.user_id, &c.space_id))
    }

    /// A page of what `q` asks for, up to `end`; `None` when the window cannot answer
    /// exactly.
    fn page(&self, q: &TailQuery<'_>) -> Option<TailPage> {
        if q.after < self.start {
            return None;
        }
        let upto = self.end;
        // Only spaces the caller is a member of as of `end`, which is at or past the
        // position the read asked for: a removal logged before it is in force, whatever
        // the membership view the caller's spaces came from had heard.
        let personal = personal_space_id(q.caller);
        let spaces: HashSet<String> = q
            .spaces
            .iter()
            .filter(|s| **s == personal || self.members.role(s, q.caller).is_some())
            .map(|s| escape_token(s))
            .collect();
        if q.after >= upto || spaces.is_empty() {
            return Some(TailPage {
                entries: Vec::new(),
                synced_until: Cursor(q.after.max(upto)),
                has_more: false,
            });
        }
        // Subject tokens are escaped injectively: comparing them compares the ids.
        let app = escape_token(q.app_id);
        let table = q.table.map(escape_token);
        let lists = spaces.iter().filter_map(|s| self.by_space.get(s));
        let mut entries = Vec::new();
        for e in merged_after(lists, q.after) {
            let Some((_, app_token, table_token)) = e.subject_tokens() else {
                continue;
            };
            if app_token != app || table.as_deref().is_some_and(|t| t != table_token) {
                continue;
            }
            if let Some((client, user)) = q.exclude
                && e.pushed_by(client, user)
            {
                continue;
            }
            let Some(c) = e.change() else {
                continue;
            };
            if self.private.hides(c, q.caller) {
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
        if visibility == Some(PRIVATE)
            && let Some(c) = entry.change()
        {
            self.private.made_private(c.key(), &c.user_id, entry.seq);
        }
        if let Some(&earlier) = self.event_ids.get(&entry.event_id)
            && self.entry_at(earlier).is_some_and(|e| e.change().is_some())
        {
            // The change log keeps the first valid event of two with one id.
            return;
        }
        self.event_ids.insert(entry.event_id, entry.seq);
        self.bytes += entry.size();
        let entry = Arc::new(entry);
        if let Some((space, _, _)) = entry.subject_tokens() {
            match self.by_space.get_mut(space) {
                Some(list) => list.push_back(Arc::clone(&entry)),
                None => {
                    let list = VecDeque::from([Arc::clone(&entry)]);
                    self.by_space.insert(space.to_owned(), list);
                }
            }
        }
        self.entries.push_back(entry);
    }

    /// Another event of the log (not a record change) at `seq`.
    fn push_other(&mut self, seq: u64, id: Uuid) {
        self.other_events.push_back((seq, id));
        self.other_event_ids.insert(id, seq);
    }

    fn logged(&self, ids: &[Uuid]) -> HashSet<Uuid> {
        ids.iter()
            .filter(|id| self.event_ids.contains_key(id) || self.other_event_ids.contains_key(id))
            .copied()
            .collect()
    }

    fn entry_at(&self, seq: u64) -> Option<&Arc<Entry>> {
        let i = self.entries.partition_point(|e| e.seq < seq);
        self.entries.get(i).filter(|e| e.seq == seq)
    }

    fn evict(&mut self, max_events: usize, max_bytes: usize) {
        while self.entries.len() > max_events || (self.bytes > max_bytes && self.entries.len() > 1)
        {
            let Some(old) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= old.size();
            // Evicted in log order: the oldest of its space too.
            if let Some((space, _, _)) = old.subject_tokens()
                && let Some(list) = self.by_space.get_mut(space)
            {
                list.pop_front();
                if list.is_empty() {
                    self.by_space.remove(space);
                }
            }
            if self.event_ids.get(&old.event_id) == Some(&old.seq) {
                self.event_ids.remove(&old.event_id);
            }
            self.start = old.seq;
        }
        self.private.window_starts_at(self.start);
        // Other events go with the changes before them, and are never more than
        // `max_events` either.
        while let Some(&(seq, id)) = self.other_events.front()
            && (seq <= self.start || self.other_events.len() > max_events)
        {
            self.other_events.pop_front();
            if self.other_event_ids.get(&id) == Some(&seq) {
                self.other_event_ids.remove(&id);
            }
        }
    }
}

/// Records that are, or may be, private to someone: a read holding a change of one
/// (other than the caller's own, when that is known for sure) is left to PostgreSQL.
struct PrivateRecords {
    /// Made private by a change still in the window, with who made them so (`None` when
    /// more than one user did) and the last position that did.
    recent: HashMap<RecordKey, (Option<String>, u64)>,
    /// Those changes in log order, to move their records to `earlier` as they leave.
    order: VecDeque<(u64, RecordKey)>,
    /// Every other record that is or was private: as of the snapshot, or made so by a
    /// change the window no longer holds. A Bloom filter, so each costs about two bytes
    /// instead of its key; a false positive only sends a read to PostgreSQL.
    earlier: BloomFilter,
    /// Records added to `earlier`.
    earlier_count: usize,
}

impl PrivateRecords {
    /// Room for `expected` records in the filter at a 0.1% false positive rate; more
    /// fit, at a higher rate.
    fn new(expected: usize) -> Self {
        let room = expected.saturating_add(expected / 2).max(65_536);
        Self {
            recent: HashMap::new(),
            order: VecDeque::new(),
            earlier: BloomFilter::with_false_pos(0.001).expected_items(room),
            earlier_count: 0,
        }
    }

    /// A record private as of the snapshot.
    fn private_before(&mut self, key: &RecordKey) {
        self.earlier.insert(key);
        self.earlier_count += 1;
    }

    /// `user` made the record private by the change at `seq`.
    fn made_private(&mut self, key: RecordKey, user: &str, seq: u64) {
        self.order.push_back((seq, key.clone()));
        self.recent
            .entry(key)
            .and_modify(|(by, at)| {
                if by.as_deref() != Some(user) {
                    *by = None;
                }
                *at = seq;
            })
            .or_insert_with(|| (Some(user.to_owned()), seq));
    }

    /// Whether `change`'s record is, or may be, private to someone other than `caller`.
    fn hides(&self, change: &Change, caller: &str) -> bool {
        // Hashes like the owned key (a `String` hashes as its `str`).
        let key = (
            change.space_id.as_str(),
            change.app_id.as_str(),
            change.table.as_str(),
            change.record_id.as_str(),
        );
        if self.earlier_count > 0 && self.earlier.contains(&key) {
            return true;
        }
        !self.recent.is_empty()
            && self
                .recent
                .get(&change.key())
                .is_some_and(|(by, _)| by.as_deref() != Some(caller))
    }

    /// The window now holds only what lies after `start`: records made private before
    /// it are kept in the filter only.
    fn window_starts_at(&mut self, start: u64) {
        while let Some((seq, _)) = self.order.front()
            && *seq <= start
        {
            let Some((seq, key)) = self.order.pop_front() else {
                break;
            };
            if self.recent.get(&key).is_some_and(|(_, at)| *at == seq) {
                self.recent.remove(&key);
                self.private_before(&key);
            }
        }
    }
}

/// The entries of `lists` (each in log order) after position `after`, merged in log
/// order.
fn merged_after<'w>(
    lists: impl Iterator<Item = &'w VecDeque<Arc<Entry>>>,
    after: u64,
) -> impl Iterator<Item = &'w Arc<Entry>> {
    let lists: Vec<&VecDeque<Arc<Entry>>> = lists.collect();
    // The next entry of each list, earliest first: (its position, list, index in list).
    let mut next: BinaryHeap<Reverse<(u64, usize, usize)>> = lists
        .iter()
        .enumerate()
        .filter_map(|(l, list)| {
            let i = list.partition_point(|e| e.seq <= after);
            list.get(i).map(|e| Reverse((e.seq, l, i)))
        })
        .collect();
    std::iter::from_fn(move || {
        let Reverse((_, l, i)) = next.pop()?;
        if let Some(e) = lists[l].get(i + 1) {
            next.push(Reverse((e.seq, l, i + 1)));
        }
        lists[l].get(i)
    })
}

impl Entry {
    /// The entry for a message, if it may be a record change the projector keeps, and
    /// the visibility it sets, when it was decoded at once to know that.
    fn read(seq: u64, subject: &str, payload: &bytes::Bytes) -> Option<(Self, Option<String>)> {
        // The projector keeps a record change only on its own `sync.` subject.
        if !subject.starts_with("sync.") {
            return None;
        }
        let mut entry = Self {
            seq,
            event_id: Uuid::nil(),
            subject: subject.to_owned(),
            payload: payload.clone(),
            by: By::read(payload),
            change: OnceLock::new(),
        };
        // Only a decode tells a key spelled with escapes, or a visibility, for sure.
        let now = memchr::memmem::find(payload, b"visibilit").is_some()
            || memchr::memmem::find(payload, b"\\u").is_some();
        match leading_event_id(payload) {
            Some(id) if !now => {
                entry.event_id = id;
                Some((entry, None))
            }
            _ => {
                let (event_id, change, visibility) = decode_change(seq, subject, payload)?;
                entry.event_id = event_id;
                let _ = entry.change.set(Some(change));
                Some((entry, visibility))
            }
        }
    }

    /// The change, decoded on first use; `None` when the projector parks the message.
    fn change(&self) -> Option<&Change> {
        self.change
            .get_or_init(|| {
                decode_change(self.seq, &self.subject, &self.payload).map(|(_, c, _)| c)
            })
            .as_ref()
    }

    /// Whether `user` pushed it from `client` (the caller's own changes are left out
    /// of what it reads), told from the envelope's metadata. A message that is not a
    /// valid event is not in any read, so either answer leaves it out.
    fn pushed_by(&self, client: &str, user: &str) -> bool {
        self.by
            .as_ref()
            .is_some_and(|by| by.client_id == client && by.user_id == user)
    }

    /// Whether its author writes into a space other than their personal one (told from
    /// the subject); if so, the change is decoded now, for the membership check. A
    /// message that is not a valid change is not: no read returns it.
    fn writes_into_a_shared_space(&self) -> bool {
        let (Some(by), Some((space, _, _))) = (&self.by, self.subject_tokens()) else {
            return false;
        };
        let shared = space != escape_token(&personal_space_id(&by.user_id));
        shared && self.change().is_some()
    }

    /// Space, app and table tokens of the subject (`None` if it has another shape, which
    /// no record change the projector keeps has).
    fn subject_tokens(&self) -> Option<(&str, &str, &str)> {
        let mut tokens = self.subject.strip_prefix("sync.")?.split('.');
        let found = (tokens.next()?, tokens.next()?, tokens.next()?);
        tokens.next().is_none().then_some(found)
    }

    /// Roughly what it holds in memory (a decoded change about doubles it).
    fn size(&self) -> usize {
        let by = self
            .by
            .as_ref()
            .map_or(0, |by| by.user_id.len() + by.client_id.len());
        std::mem::size_of::<Self>() + self.subject.len() + by + 2 * self.payload.len()
    }
}

impl By {
    /// The metadata of an envelope, without decoding the rest of it.
    fn read(payload: &[u8]) -> Option<Self> {
        #[derive(Deserialize)]
        struct Metadata {
            metadata: By,
        }
        serde_json::from_slice::<Metadata>(payload)
            .ok()
            .map(|m| m.metadata)
    }
}

/// The record change a message holds, decoded as the projector decodes it: its event
/// id, the change, and the visibility it sets. `None` when the projector parks it.
fn decode_change(
    seq: u64,
    subject: &str,
    payload: &[u8],
) -> Option<(Uuid, Change, Option<String>)> {
    let env = projector::apply::decode(subject, payload).ok()?;
    let Event::RecordChanged(rc) = &env.event else {
        return None;
    };
    let change = Change::new(seq, &env, rc)?;
    Some((env.event_id, change, rc.visibility().map(str::to_owned)))
}

/// The event id of an envelope as the gateway serializes it (`{"eventId":"<uuid>",…`),
/// without decoding the rest.
fn leading_event_id(payload: &[u8]) -> Option<Uuid> {
    let rest = payload.strip_prefix(br#"{"eventId":""#)?;
    let id = rest.get(..36)?;
    (rest.get(36) == Some(&b'"')).then_some(())?;
    Uuid::try_parse_ascii(id).ok()
}

impl Change {
    fn new(seq: u64, env: &schemas::Envelope, rc: &RecordChanged) -> Option<Self> {
        let json = serde_json::value::to_raw_value(&ServerChangeView::new(seq, env, rc)).ok()?;
        Some(Self {
            space_id: rc.space_id.clone(),
            app_id: rc.app_id.clone(),
            table: rc.table.clone(),
            record_id: rc.record_id.clone(),
            user_id: env.metadata.user_id.clone(),
            json,
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
}

/// Records private to someone (row by row, into the filter) and the memberships, as of
/// the projector's checkpoint, read in one snapshot.
async fn load_snapshot(
    pool: &PgPool,
    projector: &str,
) -> anyhow::Result<(PrivateRecords, Memberships, u64)> {
    let (mut tx, checkpoint) = snapshot_at_checkpoint(pool, projector).await?;
    let members = projector::memberships::load_all(&mut tx).await?;
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM record_visibility WHERE visibility = $1")
            .bind(PRIVATE)
            .fetch_one(&mut *tx)
            .await?;
    let mut private = PrivateRecords::new(usize::try_from(count).unwrap_or(0));
    {
        let mut rows = sqlx::query(
            "SELECT space_id, app_id, table_name, record_id FROM record_visibility \
             WHERE visibility = $1",
        )
        .bind(PRIVATE)
        .fetch(&mut *tx);
        while let Some(row) = rows.try_next().await? {
            private.private_before(&(row.get(0), row.get(1), row.get(2), row.get(3)));
        }
    }
    tx.commit().await?;
    Ok((private, members, checkpoint))
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::membership::MembershipEvent;

    fn entry(seq: u64, space: &str, user: &str, table: &str) -> Entry {
        record(seq, space, user, table, &format!("r{seq}"))
    }

    /// An entry already decoded (its payload is not looked at again).
    fn record(seq: u64, space: &str, user: &str, table: &str, record_id: &str) -> Entry {
        let change = Change {
            space_id: space.to_owned(),
            app_id: "app".to_owned(),
            table: table.to_owned(),
            record_id: record_id.to_owned(),
            user_id: user.to_owned(),
            json: RawValue::from_string(format!("{{\"seq\":{seq}}}")).expect("valid JSON"),
        };
        Entry {
            seq,
            event_id: Uuid::new_v4(),
            subject: schemas::subject::change_subject(space, "app", table),
            payload: bytes::Bytes::new(),
            by: Some(By {
                user_id: user.to_owned(),
                client_id: format!("{user}-phone"),
            }),
            change: OnceLock::from(Some(change)),
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

    /// An empty window ending at `at` in which users `u1` and `u2` are members of
    /// spaces `a` to `d`.
    fn member_window(at: u64) -> Window {
        let mut w = Window::empty(at);
        for space in ["a", "b", "c", "d"] {
            for user in ["u1", "u2"] {
                w.members.load_member(space, user, schemas::Role::Member);
            }
        }
        w
    }

    /// Changes at 11..=20 alternating between spaces `a` and `b`, by users `u1`/`u2`.
    fn window() -> Window {
        let mut w = member_window(10);
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
    fn reads_merge_the_callers_spaces_in_log_order_and_eviction_keeps_them_in_step() {
        let mut w = member_window(0);
        for seq in 1..=40u64 {
            // Space `b` only at first, then `a`, `c` and `d` unevenly interleaved.
            let space = if seq <= 5 {
                "b"
            } else {
                ["a", "c", "d"][(seq * 7 % 5 % 3) as usize]
            };
            w.push(entry(seq, space, "u1", "tasks"), None);
            w.end = seq;
        }
        let asked = ["a", "c", "d", "never"].map(str::to_owned);
        // What a scan of the whole window in log order finds.
        let scanned = |w: &Window, after: u64| -> Vec<u64> {
            w.entries
                .iter()
                .filter(|e| e.seq > after)
                .filter(|e| e.change().is_some_and(|c| c.space_id != "b"))
                .map(|e| e.seq)
                .collect()
        };
        for after in [0, 5, 17, 39] {
            let page = w.page(&query(&asked, after, "u1")).expect("in the window");
            assert_eq!(seqs(&page), scanned(&w, after), "after {after}");
        }
        assert_eq!(scanned(&w, 0).len(), 35);

        w.evict(10, usize::MAX);
        assert_eq!(w.start, 30);
        assert!(
            !w.by_space.contains_key("b"),
            "a space with nothing left is dropped"
        );
        let listed: Vec<u64> = {
            let mut all: Vec<u64> = w.by_space.values().flatten().map(|e| e.seq).collect();
            all.sort_unstable();
            all
        };
        assert_eq!(listed, (31..=40).collect::<Vec<_>>());
        let page = w.page(&query(&asked, 30, "u1")).expect("in the window");
        assert_eq!(seqs(&page), scanned(&w, 30));
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
    fn the_window_knows_the_ids_of_its_events_until_they_are_evicted() {
        let mut w = member_window(0);
        let change = entry(1, "a", "u1", "tasks");
        let change_id = change.event_id;
        w.push(change, None);
        let membership = Uuid::new_v4();
        w.push_other(2, membership);
        w.push(entry(3, "a", "u1", "tasks"), None);
        let never = Uuid::new_v4();
        let known = w.logged(&[change_id, membership, never]);
        assert_eq!(known, HashSet::from([change_id, membership]));
        // Evicting the first change leaves the membership event after it.
        w.evict(1, usize::MAX);
        assert_eq!(
            w.logged(&[change_id, membership]),
            HashSet::from([membership])
        );
        // Evicting the change after it passes it too.
        w.push(entry(4, "a", "u1", "tasks"), None);
        w.evict(1, usize::MAX);
        assert!(w.logged(&[membership]).is_empty());
    }

    #[test]
    fn repeated_event_ids_are_kept_once() {
        let mut w = member_window(0);
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

    /// A record change as the gateway publishes it: its subject and payload.
    fn published(id: u128, data: serde_json::Value) -> (String, bytes::Bytes) {
        published_change(id, "a", "u1", data)
    }

    /// A record change of `user` in `space`, as the gateway publishes it.
    fn published_change(
        id: u128,
        space: &str,
        user: &str,
        data: serde_json::Value,
    ) -> (String, bytes::Bytes) {
        published_event(
            id,
            user,
            Event::RecordChanged(RecordChanged {
                app_id: "app".into(),
                space_id: space.into(),
                table: "tasks".into(),
                record_id: format!("r{id}"),
                op: schemas::Op::Insert,
                at: None,
                data: data.as_object().cloned(),
                fields: None,
                client_schema_version: 1,
            }),
        )
    }

    /// Any event, published by `user` on its own subject.
    fn published_event(id: u128, user: &str, event: Event) -> (String, bytes::Bytes) {
        let at = "2026-01-01T00:00:00Z".parse().expect("instant");
        let env = schemas::Envelope {
            event_id: Uuid::from_u128(id),
            schema_version: 1,
            occurred_at: at,
            event,
            metadata: schemas::Metadata {
                user_id: user.into(),
                client_id: format!("{user}-phone"),
                actor: None,
                origin: None,
                received_at: at,
            },
        };
        (env.event.subject(), env.to_json().into())
    }

    #[test]
    fn a_change_its_author_may_no_longer_write_is_left_out_as_the_projector_parks_it() {
        use schemas::membership::{MemberAdded, MemberRemoved, SpaceCreated};
        let mut w = member_window(0);
        let follow = |w: &mut Window, seq: u64, (subject, payload): (String, bytes::Bytes)| {
            w.follow(seq, Arrival::read(seq, &subject, &payload));
        };
        // As of the snapshot: the space exists and b is a member.
        w.members
            .apply(MembershipEvent::SpaceCreated(&SpaceCreated {
                space_id: "fam".into(),
                space_type: schemas::SpaceType::Family,
                name: "Family".into(),
            }));
        let b_joins = MemberAdded {
            space_id: "fam".into(),
            user_id: "b".into(),
            role: schemas::Role::Member,
        };
        w.members.apply(MembershipEvent::MemberAdded(&b_joins));
        follow(
            &mut w,
            1,
            published_change(1, "fam", "b", serde_json::json!({})),
        );
        let removed = Event::MemberRemoved(MemberRemoved {
            space_id: "fam".into(),
            user_id: "b".into(),
        });
        follow(&mut w, 2, published_event(2, "service", removed));
        // Authorized by a gateway before the removal, logged after it.
        follow(
            &mut w,
            3,
            published_change(3, "fam", "b", serde_json::json!({})),
        );
        // b's own personal space needs no membership.
        let personal = personal_space_id("b");
        follow(
            &mut w,
            4,
            published_change(4, &personal, "b", serde_json::json!({})),
        );
        // Nor does anyone get in by writing before joining.
        follow(
            &mut w,
            5,
            published_change(5, "fam", "c", serde_json::json!({})),
        );
        let c_joins = Event::MemberAdded(MemberAdded {
            space_id: "fam".into(),
            user_id: "c".into(),
            role: schemas::Role::Member,
        });
        follow(&mut w, 6, published_event(6, "service", c_joins));
        follow(
            &mut w,
            7,
            published_change(7, "fam", "c", serde_json::json!({})),
        );
        assert_eq!(w.end, 7);

        w.members.load_member("fam", "a", schemas::Role::Member);
        let fam = vec!["fam".to_owned()];
        assert_eq!(
            seqs(&w.page(&query(&fam, 0, "a")).expect("in the window")),
            [1, 7]
        );
        let own = vec![personal];
        assert_eq!(
            seqs(&w.page(&query(&own, 0, "b")).expect("in the window")),
            [4]
        );
        // The parked changes are in the log all the same: a resend of one is a duplicate.
        let ids = [3, 5, 7].map(Uuid::from_u128);
        assert_eq!(w.logged(&ids).len(), 3);
    }

    #[test]
    fn messages_are_decoded_when_first_read_unless_they_may_set_a_visibility() {
        let (subject, payload) = published(1, serde_json::json!({"title": "x"}));
        let (lazy, visibility) = Entry::read(1, &subject, &payload).expect("a record change");
        assert_eq!((lazy.event_id, visibility), (Uuid::from_u128(1), None));
        assert!(lazy.change.get().is_none(), "not decoded yet");
        assert_eq!(lazy.change().expect("decodes").record_id, "r1");

        let (subject, payload) = published(2, serde_json::json!({"visibility": "private"}));
        let (eager, visibility) = Entry::read(2, &subject, &payload).expect("a record change");
        assert_eq!(visibility.as_deref(), Some(PRIVATE));
        assert!(eager.change.get().is_some(), "decoded at once");
        // An escaped key could spell `visibility`: decoded at once too.
        let (subject, payload) = published(3, serde_json::json!({"title": "\u{1}"}));
        assert!(
            Entry::read(3, &subject, &payload)
                .expect("a record change")
                .0
                .change
                .get()
                .is_some()
        );

        // Not on a record-change subject, or not an event at all: nothing kept, or
        // kept and found out on first read, as the projector parks it.
        assert!(Entry::read(4, "space.a.members", &payload).is_none());
        let broken = bytes::Bytes::from(format!(
            r#"{{"eventId":"{}","type":"nope"}}"#,
            Uuid::from_u128(5)
        ));
        let (entry, _) = Entry::read(5, &subject, &broken).expect("kept until read");
        assert!(entry.change().is_none());
        let on_wrong_subject = Entry::read(
            6,
            "sync.b.app.tasks",
            &published(6, serde_json::json!({})).1,
        );
        assert!(
            on_wrong_subject
                .expect("kept until read")
                .0
                .change()
                .is_none()
        );
    }

    #[test]
    fn the_callers_own_changes_are_left_out_without_decoding_them() {
        let mut w = member_window(0);
        let (subject, payload) = published(8, serde_json::json!({}));
        let (entry, _) = Entry::read(1, &subject, &payload).expect("kept");
        w.push(entry, None);
        w.end = 1;
        let a = vec!["a".to_owned()];
        let mut q = query(&a, 0, "u1");
        q.exclude = Some(("u1-phone", "u1"));
        assert!(w.page(&q).expect("in the window").entries.is_empty());
        assert!(w.entries[0].change.get().is_none(), "left out undecoded");
        // Another device of the same user gets it.
        q.exclude = Some(("u1-laptop", "u1"));
        assert_eq!(seqs(&w.page(&q).expect("in the window")), [1]);
    }

    #[test]
    fn an_event_id_first_seen_on_a_parked_message_is_kept_on_the_next() {
        let mut w = member_window(0);
        let (subject, payload) = published(7, serde_json::json!({}));
        let broken = bytes::Bytes::from(format!(
            r#"{{"eventId":"{}","type":"nope"}}"#,
            Uuid::from_u128(7)
        ));
        for (seq, payload) in [(1, broken), (2, payload.clone()), (3, payload)] {
            let (entry, _) = Entry::read(seq, &subject, &payload).expect("kept");
            w.push(entry, None);
            w.end = seq;
        }
        let a = vec!["a".to_owned()];
        // The parked one is skipped, the second is the change, the third its repeat.
        assert_eq!(
            seqs(&w.page(&query(&a, 0, "u2")).expect("in the window")),
            [2]
        );
    }

    #[test]
    fn records_made_private_are_remembered_after_their_change_leaves_the_window() {
        let mut w = window();
        let a = vec!["a".to_owned()];
        // u1 makes its record r12 private at 21.
        w.push(record(21, "a", "u1", "tasks", "r12"), Some(PRIVATE));
        w.end = 21;
        assert!(w.page(&query(&a, 10, "u1")).is_some(), "its author's read");
        assert!(w.page(&query(&a, 10, "u2")).is_none());
        // That change leaves the window; a later change of the record is in it.
        w.push(record(22, "a", "u1", "tasks", "r12"), None);
        w.end = 22;
        w.evict(1, usize::MAX);
        assert_eq!(w.start, 21);
        assert!(w.private.recent.is_empty() && w.private.order.is_empty());
        // Only the filter remembers the record, not who made it private: PostgreSQL
        // answers everyone whose page holds it.
        assert!(w.page(&query(&a, 21, "u2")).is_none());
        assert!(w.page(&query(&a, 21, "u1")).is_none());
        // Other records are still the tail's.
        w.push(record(23, "a", "u1", "tasks", "r23"), None);
        w.end = 23;
        assert_eq!(
            seqs(&w.page(&query(&a, 22, "u2")).expect("not private")),
            [23]
        );
    }

    #[test]
    fn records_private_as_of_the_snapshot_send_every_read_holding_them_to_postgres() {
        let mut w = window();
        let mut private = PrivateRecords::new(1);
        for n in 0..1000 {
            private.private_before(&("z".into(), "app".into(), "tasks".into(), format!("x{n}")));
        }
        private.private_before(&("a".into(), "app".into(), "tasks".into(), "r14".into()));
        w.private = private;
        let a = vec!["a".to_owned()];
        assert!(w.page(&query(&a, 10, "u1")).is_none());
        assert!(w.page(&query(&a, 10, "u2")).is_none());
        assert_eq!(
            seqs(&w.page(&query(&a, 14, "u2")).expect("r14 is not in it")),
            [16, 18, 20]
        );
    }

    #[test]
    fn private_records_of_others_send_the_read_to_postgres() {
        let mut w = window();
        let a = vec!["a".to_owned()];
        // u1 makes its record at 14 private (a later change of the same record).
        let private = record(21, "a", "u1", "tasks", "r14");
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
        let other = record(22, "a", "u2", "tasks", "r14");
        w.push(other, Some(PRIVATE));
        w.end = 22;
        assert!(w.page(&query(&a, 10, "u1")).is_none());
    }

    #[test]
    fn a_space_the_caller_was_removed_from_as_of_the_window_is_not_read() {
        let mut w = window();
        let both = vec!["a".to_owned(), "b".to_owned()];
        // The caller's spaces came from a membership view that has not heard of the
        // removal the window holds.
        w.members.apply(MembershipEvent::MemberRemoved(
            &schemas::membership::MemberRemoved {
                space_id: "b".into(),
                user_id: "u1".into(),
            },
        ));
        let page = w.page(&query(&both, 10, "u1")).expect("in the window");
        assert_eq!(seqs(&page), [12, 14, 16, 18, 20], "nothing of space b");
        assert_eq!(page.synced_until, Cursor(20));
        let b = vec!["b".to_owned()];
        let page = w.page(&query(&b, 10, "u1")).expect("in the window");
        assert!(page.entries.is_empty());
        assert_eq!(page.synced_until, Cursor(20));
        // Their personal space needs no membership.
        let personal = personal_space_id("u1");
        w.push(entry(21, &personal, "u1", "tasks"), None);
        w.end = 21;
        let own = vec![personal];
        assert_eq!(
            seqs(&w.page(&query(&own, 10, "u1")).expect("in the window")),
            [21]
        );
    }
}
