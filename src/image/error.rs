//! The errors of the image subsystem, each carrying what failed and on what
//! (a reference, a blob digest, a path, a tar entry).

use std::path::PathBuf;

/// Why a pull, an import or a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference does not parse or breaks the docker naming rules.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    /// No image answers to this reference, ID or ID prefix.
    #[error("image {0:?} not found")]
    NotFound(String),

    /// An ID prefix matches more than one image.
    #[error("image ID prefix {prefix:?} is ambiguous: it matches {count} images")]
    AmbiguousId { prefix: String, count: usize },

    /// The registry refused our credentials, or wants some we do not have.
    #[error("authentication to registry {registry} failed: {reason}")]
    Unauthorized { registry: String, reason: String },

    /// The registry knows us but denies access to the repository.
    #[error("registry {registry} denied access to {repository}: {reason}")]
    Forbidden {
        registry: String,
        repository: String,
        reason: String,
    },

    /// The registry has no such manifest or blob.
    #[error("{what} not found in registry {registry}")]
    RegistryNotFound { registry: String, what: String },

    /// The registry answered, but not as the distribution API says.
    #[error("registry {registry}: {message}")]
    Registry { registry: String, message: String },

    /// The registry could not be reached, or the transfer broke.
    #[error("cannot reach registry {registry}: {message}")]
    Network { registry: String, message: String },

    /// A blob whose content does not match its digest or size.
    #[error("{what} {digest} failed verification: {reason}")]
    Verification {
        what: &'static str,
        digest: String,
        reason: String,
    },

    /// A manifest, index or config larger than we accept.
    #[error("{what} {name} is larger than the limit of {limit} bytes")]
    TooLarge {
        what: &'static str,
        name: String,
        limit: u64,
    },

    /// Content we understand but refuse, or content we do not understand.
    #[error("unsupported {what}: {detail}")]
    Unsupported { what: &'static str, detail: String },

    /// A manifest, index or config that is not valid JSON of its schema.
    #[error("malformed {what} {name}: {reason}")]
    Malformed {
        what: &'static str,
        name: String,
        reason: String,
    },

    /// No manifest of an index is for this machine.
    #[error("no image for platform {platform} in {reference} (it has: {available})")]
    NoMatchingPlatform {
        reference: String,
        platform: String,
        available: String,
    },

    /// A layer refused before it could fill the disk: too large once
    /// unpacked, too compressed (a decompression bomb), or eating into the
    /// free space the root dir must keep (see `limits`).
    #[error("layer {digest} refused: {reason}")]
    LayerRefused { digest: String, reason: String },

    /// The disk or the quota is full (ENOSPC, EDQUOT).
    #[error("no space left for {what} in {} ({free} free): {cause}", path.display())]
    NoSpace {
        what: String,
        path: PathBuf,
        free: String,
        cause: String,
    },

    /// A layer could not be unpacked.
    #[error("layer {digest}: {source}")]
    Unpack {
        digest: String,
        #[source]
        source: UnpackError,
    },

    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// An image archive or layout to import is not one we can read.
    #[error("cannot import {path}: {reason}")]
    Import { path: PathBuf, reason: String },

    /// A caller's argument we cannot use (an unsafe container ID, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// Something that must not happen, such as a worker task that died.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<crate::store::AtomicWriteError> for ImageError {
    fn from(e: crate::store::AtomicWriteError) -> Self {
        ImageError::Io {
            op: e.op,
            path: e.path,
            source: e.source,
        }
    }
}

impl From<crate::task::TaskFailed> for ImageError {
    /// A worker that died is ketch's own trouble, like the other internal
    /// errors.
    fn from(e: crate::task::TaskFailed) -> Self {
        ImageError::Internal(e.to_string())
    }
}

impl ImageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ImageError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn nix(op: &'static str, path: impl Into<PathBuf>, errno: nix::Error) -> Self {
        Self::io(op, path, std::io::Error::from(errno))
    }
}

/// Why one tar stream could not become a layer directory.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// An entry that would write outside the layer, or is otherwise refused.
    #[error("refused tar entry {entry:?}: {reason}")]
    Refused { entry: String, reason: String },

    /// A filesystem operation on an entry failed.
    #[error("tar entry {entry:?}: {op}: {source}")]
    Entry {
        entry: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// The stream is not a tar archive, or it broke off.
    #[error("reading the layer stream: {0}")]
    Read(#[source] std::io::Error),
}
