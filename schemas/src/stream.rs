//! The JetStream stream that is the log.

use std::time::Duration;

use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};

/// Default stream name; overridable so tests and deployments can run side by side.
pub const DEFAULT_STREAM: &str = "SYNC";

/// How long JetStream remembers `Nats-Msg-Id`s. Within it a resent change is dropped by
/// the server; beyond it the projector still drops it by its deterministic event id.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// Largest event accepted into the log (a whole push body is at most 10 MiB).
pub const MAX_EVENT_BYTES: i32 = 8 * 1024 * 1024;

/// The log: every subject of the scheme, file storage, kept forever (the log is the
/// source of truth; replay rebuilds projections from sequence 1).
pub fn stream_config(name: &str, replicas: usize) -> Config {
    Config {
        name: name.to_owned(),
        subjects: crate::subject::STREAM_SUBJECTS
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::New,
        duplicate_window: DUPLICATE_WINDOW,
        max_message_size: MAX_EVENT_BYTES,
        num_replicas: replicas,
        allow_direct: true,
        // A push is published as one atomic batch: all of its changes or none.
        allow_atomic_publish: true,
        ..Default::default()
    }
}
