//! Contracts between the projector and the readers of its PostgreSQL projections.

/// PostgreSQL notification channel on which the projector announces every committed
/// checkpoint, as `<projector name>:<sequence>`.
pub const CHECKPOINT_CHANNEL: &str = "projector_checkpoint";

/// Name of the projector (and its checkpoint row) when none is configured.
pub const DEFAULT_PROJECTOR: &str = "projector";
