//! Every error code the server sends, as one enum.

/// Why a request was refused or failed: the `error.code` of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The line is not valid UTF-8.
    InvalidUtf8,
    /// The line is not valid JSON (or a text has an invalid escape).
    MalformedJson,
    /// The JSON is valid but not an object.
    NotAnObject,
    /// No `text` (and no `op`), or `text` is not a string.
    MissingText,
    /// `text` is empty or white space.
    EmptyText,
    /// `op` names no known operation.
    UnknownOp,
    /// The line is longer than the limit; it was discarded unread.
    TooLong,
    /// More than [`crate::MAX_TEXTS`] texts in one request.
    TooManyTexts,
    /// The server is at `--max-clients`; the connection is closed.
    TooManyClients,
    /// No request within `--idle-timeout`; the connection is closed.
    IdleTimeout,
    /// A serial frame failed its check (or had none on a checked link).
    Corrupt,
    /// The server is stopping.
    ShuttingDown,
    /// The request queue is full; try again.
    Busy,
    /// The model failed on this text.
    ModelError,
    /// The server failed internally.
    Internal,
    /// The request is not allowed on this transport (`reload` off the
    /// Unix socket).
    Forbidden,
    /// A model reload was refused or failed; the old model keeps serving.
    ReloadFailed,
    /// The request asks for what the served model does not do (`embed` on
    /// a classifier, a text to classify on an embedding model, a
    /// `threshold` for a model that is not multi-label).
    WrongTask,
    /// An `embed` request's `format` is not `"f32"` or `"int8"`.
    BadFormat,
    /// A request's `threshold` is not a number strictly between 0 and 1.
    BadThreshold,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: [ErrorCode; 20] = [
        ErrorCode::InvalidUtf8,
        ErrorCode::MalformedJson,
        ErrorCode::NotAnObject,
        ErrorCode::MissingText,
        ErrorCode::EmptyText,
        ErrorCode::UnknownOp,
        ErrorCode::TooLong,
        ErrorCode::TooManyTexts,
        ErrorCode::TooManyClients,
        ErrorCode::IdleTimeout,
        ErrorCode::Corrupt,
        ErrorCode::ShuttingDown,
        ErrorCode::Busy,
        ErrorCode::ModelError,
        ErrorCode::Internal,
        ErrorCode::Forbidden,
        ErrorCode::ReloadFailed,
        ErrorCode::WrongTask,
        ErrorCode::BadFormat,
        ErrorCode::BadThreshold,
    ];

    /// The code as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidUtf8 => "invalid_utf8",
            ErrorCode::MalformedJson => "malformed_json",
            ErrorCode::NotAnObject => "not_an_object",
            ErrorCode::MissingText => "missing_text",
            ErrorCode::EmptyText => "empty_text",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::TooLong => "too_long",
            ErrorCode::TooManyTexts => "too_many_texts",
            ErrorCode::TooManyClients => "too_many_clients",
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::Corrupt => "corrupt",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Busy => "busy",
            ErrorCode::ModelError => "model_error",
            ErrorCode::Internal => "internal",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::ReloadFailed => "reload_failed",
            ErrorCode::WrongTask => "wrong_task",
            ErrorCode::BadFormat => "bad_format",
            ErrorCode::BadThreshold => "bad_threshold",
        }
    }

    /// The code a wire string names, if any.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
        }
        let mut names: Vec<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
        assert_eq!(ErrorCode::parse("nope"), None);
    }
}
