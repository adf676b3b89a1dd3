//! Wire types, the event envelope, subject names and cursor encoding shared by every
//! part of the sync backend. Nothing here performs I/O.

pub mod cursor;
pub mod event;
pub mod json_schema;
pub mod membership;
pub mod projection;
pub mod space;
pub mod stream;
pub mod subject;
pub mod time;
pub mod wire;

pub use cursor::{Cursor, CursorError, Since};
pub use event::{Envelope, Event, FieldValue, Metadata, Op, RecordChanged};
pub use membership::{Role, SpaceType};
