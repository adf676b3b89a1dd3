//! Turning a client changeset into canonical events, and the pure rules that give those
//! events meaning: validation, normalization, space resolution, authorization and the
//! field-level last-write-wins merge. No I/O; everything here is unit-tested.

pub mod access;
pub mod error;
pub mod lww;
pub mod membership;
pub mod prepare;
pub mod validate;

pub use access::Access;
pub use error::RejectedBatch;
pub use prepare::{PreparedEvent, PushContext, prepare_batch};
pub use validate::{ClientChange, PushRequest, parse_push_request, validate_id};
