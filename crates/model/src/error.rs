//! The library's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the `edge-bert` library.
///
/// Each variant names the thing at fault (a file, a line, a text) so that a
/// command-line user or a socket client gets a message they can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model directory itself does not exist or is not a directory.
    #[error("model directory {path} does not exist or is not a directory")]
    MissingModelDir { path: PathBuf },

    /// A file that the bundle needs is not there.
    #[error("bundle file {path} is missing")]
    MissingFile { path: PathBuf },

    /// A bundle file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The manifest is not valid JSON of the expected shape, or is inconsistent.
    #[error("invalid manifest {path}: {reason}")]
    Manifest { path: PathBuf, reason: String },

    /// A bundle file has another size than the manifest records.
    #[error("bundle file {path} is {actual} bytes but the manifest says {expected} (truncated or replaced?)")]
    SizeMismatch {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },

    /// A bundle file's SHA-256 differs from the manifest's.
    #[error("bundle file {path} is corrupted: sha256 is {actual}, the manifest says {expected}")]
    ChecksumMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },

    /// The tokenizer file could not be parsed, or tokenising failed.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),

    /// tract could not load, optimise or run the model.
    #[error("model error: {0}")]
    Model(String),

    /// The text to classify is empty (or only white space).
    #[error("empty text: nothing to classify")]
    EmptyText,

    /// A data file (TSV) has a malformed line.
    #[error("{path}:{line}: {reason}")]
    Data {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    /// The server answered with an error, or not at all.
    #[error("server error {code}: {message}")]
    Remote { code: String, message: String },

    /// A data file (TSV) holds no examples.
    #[error("{path}: no examples")]
    EmptyData { path: PathBuf },

    /// A bundle's signature is missing, damaged, by an untrusted key, or
    /// its version is older than one already run (see `signing`).
    #[error("bundle signature: {0}")]
    Signature(String),

    /// A request or option is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// Short alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Wraps a tract error, keeping its whole cause chain in the message.
    pub fn model(err: impl std::fmt::Debug) -> Self {
        // tract's anyhow errors print their context chain with `{:?}`.
        Error::Model(format!("{err:?}"))
    }
}
