//! Errors raised while building a ring or parsing its configuration.

use crate::config::{MAX_VNODES, MAX_WEIGHT};

/// Why a [`crate::HashRing`] could not be built, or a
/// [`crate::HashAlgorithm`] name could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RingError {
    /// `RingConfig::vnodes` is outside `1..=MAX_VNODES`.
    #[error("vnodes must be between 1 and {max}, got {0}", max = MAX_VNODES)]
    InvalidVnodes(u32),
    /// A node has an empty id.
    #[error("node id is empty")]
    EmptyNodeId,
    /// Two nodes share the same id.
    #[error("duplicate node id \"{0}\"")]
    DuplicateNodeId(String),
    /// A node's weight is outside `1..=MAX_WEIGHT`.
    #[error("weight of node \"{id}\" must be 1..={max}, got {weight}", max = MAX_WEIGHT)]
    InvalidWeight {
        /// The offending node's id.
        id: String,
        /// The weight it was given.
        weight: u32,
    },
    /// A hash algorithm name is not one of the known ones.
    #[error("unknown hash algorithm \"{0}\", valid names: crc32, xxh3")]
    UnknownHashAlgorithm(String),
}
