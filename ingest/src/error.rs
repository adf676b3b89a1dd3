//! Why a batch was rejected. A batch is accepted or rejected whole.

/// A rejected batch: what is wrong and, when one change is at fault, which.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectedBatch {
    /// Malformed input (HTTP 400).
    #[error("{message}")]
    Invalid {
        index: Option<usize>,
        message: String,
    },
    /// Well-formed but not allowed for this caller (HTTP 403).
    #[error("{message}")]
    Forbidden {
        index: Option<usize>,
        message: String,
    },
    /// A single change too large to become one event (HTTP 413).
    #[error("{message}")]
    TooLarge {
        index: Option<usize>,
        message: String,
    },
}

impl RejectedBatch {
    pub fn invalid(index: impl Into<Option<usize>>, message: impl Into<String>) -> Self {
        Self::Invalid {
            index: index.into(),
            message: message.into(),
        }
    }

    pub fn forbidden(index: impl Into<Option<usize>>, message: impl Into<String>) -> Self {
        Self::Forbidden {
            index: index.into(),
            message: message.into(),
        }
    }

    pub fn index(&self) -> Option<usize> {
        match self {
            Self::Invalid { index, .. }
            | Self::Forbidden { index, .. }
            | Self::TooLarge { index, .. } => *index,
        }
    }
}
