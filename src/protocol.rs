//! The JSON-lines wire format, pure: a bounded line reader and the request
//! decoder. No sockets here; transports stay thin and call into this.
//!
//! A request is one JSON object per line, `{"id": <any>, "text": "..."}`, or
//! `{"op": "health" | "info" | "metrics"}`. Anything else is answered with
//! an error object carrying one of the [`ErrorCode`]s, and the connection
//! stays usable.

use std::io::Read;

/// Why a request line was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The line is not valid UTF-8.
    InvalidUtf8,
    /// The line is not valid JSON.
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
    /// More than [`MAX_TEXTS`] texts in one request.
    TooManyTexts,
}

impl ErrorCode {
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
        }
    }
}

/// A control operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Health,
    Info,
    Metrics,
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Classify {
        id: serde_json::Value,
        text: String,
    },
    /// `{"id": .., "texts": [..]}`: several texts, one response with `results`.
    ClassifyMany {
        id: serde_json::Value,
        texts: Vec<String>,
    },
    Op {
        id: serde_json::Value,
        op: Op,
    },
}

/// Most texts in one `texts` request.
pub const MAX_TEXTS: usize = 64;

/// A refused request: the code, a message, and the id if one could be read.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub id: serde_json::Value,
    pub code: ErrorCode,
    pub message: String,
}

fn refuse(id: serde_json::Value, code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal {
        id,
        code,
        message: message.into(),
    }
}

/// Decodes one request line (without its newline).
pub fn decode_request(line: &[u8]) -> Result<Request, Refusal> {
    use serde_json::Value;
    let text = std::str::from_utf8(line).map_err(|e| {
        refuse(
            Value::Null,
            ErrorCode::InvalidUtf8,
            format!("invalid UTF-8 at byte {}", e.valid_up_to()),
        )
    })?;
    let value: Value = serde_json::from_str(text)
        .map_err(|e| refuse(Value::Null, ErrorCode::MalformedJson, e.to_string()))?;
    let Value::Object(mut obj) = value else {
        return Err(refuse(
            Value::Null,
            ErrorCode::NotAnObject,
            "a request must be a JSON object",
        ));
    };
    let id = obj.remove("id").unwrap_or(Value::Null);
    if let Some(op) = obj.get("op") {
        let op = match op.as_str() {
            Some("health") => Op::Health,
            Some("info") => Op::Info,
            Some("metrics") => Op::Metrics,
            _ => {
                return Err(refuse(
                    id,
                    ErrorCode::UnknownOp,
                    format!("unknown op {op}; expected health, info or metrics"),
                ))
            }
        };
        return Ok(Request::Op { id, op });
    }
    if let Some(texts) = obj.remove("texts") {
        let Value::Array(items) = texts else {
            return Err(refuse(
                id,
                ErrorCode::MissingText,
                "texts must be an array of strings",
            ));
        };
        if items.is_empty() {
            return Err(refuse(id, ErrorCode::MissingText, "texts is empty"));
        }
        if items.len() > MAX_TEXTS {
            return Err(refuse(
                id,
                ErrorCode::TooManyTexts,
                format!("{} texts; at most {MAX_TEXTS} per request", items.len()),
            ));
        }
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            match item {
                Value::String(t) if t.trim().is_empty() => {
                    return Err(refuse(
                        id,
                        ErrorCode::EmptyText,
                        format!("texts[{i}] is empty"),
                    ))
                }
                Value::String(t) => out.push(t),
                _ => {
                    return Err(refuse(
                        id,
                        ErrorCode::MissingText,
                        format!("texts[{i}] is not a string"),
                    ))
                }
            }
        }
        return Ok(Request::ClassifyMany { id, texts: out });
    }
    match obj.remove("text") {
        Some(Value::String(t)) if t.trim().is_empty() => {
            Err(refuse(id, ErrorCode::EmptyText, "text is empty"))
        }
        Some(Value::String(text)) => Ok(Request::Classify { id, text }),
        Some(_) => Err(refuse(id, ErrorCode::MissingText, "text must be a string")),
        None => Err(refuse(id, ErrorCode::MissingText, "missing \"text\"")),
    }
}

/// The JSON fields of a classification: label, score, scores, tokens,
/// truncated (shared by the wire format and `classify --json`).
pub fn classification_fields(
    c: &crate::Classification,
) -> serde_json::Map<String, serde_json::Value> {
    let scores: serde_json::Map<String, serde_json::Value> = c
        .scores
        .iter()
        .map(|(l, p)| (l.clone(), serde_json::json!(p)))
        .collect();
    let mut m = serde_json::Map::new();
    m.insert("label".into(), c.label.clone().into());
    m.insert("score".into(), serde_json::json!(c.score));
    m.insert("scores".into(), scores.into());
    m.insert("tokens".into(), c.tokens.into());
    m.insert("truncated".into(), c.truncated.into());
    m
}

/// The response line for a classified text (no trailing newline).
pub fn encode_classification(id: &serde_json::Value, c: &crate::Classification) -> String {
    let mut m = classification_fields(c);
    m.insert("id".into(), id.clone());
    serde_json::Value::Object(m).to_string()
}

/// The response line for a `texts` request: `{"id": .., "results": [..]}`.
pub fn encode_results(id: &serde_json::Value, cs: &[crate::Classification]) -> String {
    let results: Vec<serde_json::Value> = cs
        .iter()
        .map(|c| serde_json::Value::Object(classification_fields(c)))
        .collect();
    serde_json::json!({ "id": id, "results": results }).to_string()
}

/// The response line for a refused or failed request (no trailing newline).
pub fn encode_error(id: &serde_json::Value, code: &str, message: &str) -> String {
    serde_json::json!({ "id": id, "error": { "code": code, "message": message } }).to_string()
}

/// One step of a [`LineReader`].
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A complete line, without its `\n` (and without a trailing `\r`).
    Full(&'a [u8]),
    /// A line longer than the limit; its bytes were discarded up to and
    /// including the next newline, never buffered.
    TooLong,
    /// The stream ended (a last unterminated line is returned as `Full` first).
    Eof,
}

/// Reads `\n`-terminated lines into a fixed buffer allocated once.
///
/// Memory never grows with input: a line longer than `max` bytes is
/// reported as [`Line::TooLong`] and skipped.
#[derive(Debug)]
pub struct LineReader<R> {
    inner: R,
    buf: Box<[u8]>,
    /// Bytes `start..end` of `buf` are read but not yet returned.
    start: usize,
    end: usize,
    max: usize,
    eof: bool,
    /// Inside an over-long line, dropping bytes until its newline.
    discarding: bool,
}

impl<R: Read> LineReader<R> {
    /// A reader for lines of at most `max` bytes (newline excluded).
    pub fn new(inner: R, max: usize) -> LineReader<R> {
        LineReader {
            inner,
            buf: vec![0; max + 1].into_boxed_slice(),
            start: 0,
            end: 0,
            max,
            eof: false,
            discarding: false,
        }
    }

    /// The next line. I/O errors (including time-outs) are passed through.
    ///
    /// After an error (such as a read time-out) the reader's state is intact
    /// and the call can be repeated.
    pub fn next_line(&mut self) -> std::io::Result<Line<'_>> {
        loop {
            // A newline among the unread bytes ends a line.
            if let Some(pos) = self.buf[self.start..self.end]
                .iter()
                .position(|&b| b == b'\n')
            {
                let (s, nl) = (self.start, self.start + pos);
                self.start = nl + 1;
                if self.discarding {
                    self.discarding = false;
                    return Ok(Line::TooLong);
                }
                let line = &self.buf[s..nl];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                return Ok(Line::Full(line));
            }
            if self.discarding {
                self.start = 0;
                self.end = 0;
            } else if self.end - self.start > self.max {
                // Over the limit with no newline: drop what we hold.
                self.discarding = true;
                self.start = 0;
                self.end = 0;
            } else if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.eof {
                if self.discarding {
                    self.discarding = false;
                    return Ok(Line::TooLong);
                }
                if self.end > self.start {
                    let (s, e) = (self.start, self.end);
                    self.start = self.end;
                    let line = &self.buf[s..e];
                    return Ok(Line::Full(line.strip_suffix(b"\r").unwrap_or(line)));
                }
                return Ok(Line::Eof);
            }
            let n = self.inner.read(&mut self.buf[self.end..])?;
            if n == 0 {
                self.eof = true;
            }
            self.end += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn decodes_requests_and_refusals() {
        assert_eq!(
            decode_request(br#"{"id": 7, "text": "great"}"#).unwrap(),
            Request::Classify {
                id: json!(7),
                text: "great".into()
            }
        );
        assert_eq!(
            decode_request(br#"{"op": "health"}"#).unwrap(),
            Request::Op {
                id: json!(null),
                op: Op::Health
            }
        );
        let code = |l: &[u8]| decode_request(l).unwrap_err().code;
        assert_eq!(code(b"\xff{}"), ErrorCode::InvalidUtf8);
        assert_eq!(code(b"{not json"), ErrorCode::MalformedJson);
        assert_eq!(code(b"[1,2]"), ErrorCode::NotAnObject);
        assert_eq!(code(br#"{"id": 1}"#), ErrorCode::MissingText);
        assert_eq!(code(br#"{"text": 3}"#), ErrorCode::MissingText);
        assert_eq!(code(br#"{"text": "  "}"#), ErrorCode::EmptyText);
        assert_eq!(code(br#"{"op": "reboot"}"#), ErrorCode::UnknownOp);
        assert_eq!(
            decode_request(br#"{"id": 1, "texts": ["a", "b"]}"#).unwrap(),
            Request::ClassifyMany {
                id: json!(1),
                texts: vec!["a".into(), "b".into()]
            }
        );
        assert_eq!(code(br#"{"texts": []}"#), ErrorCode::MissingText);
        assert_eq!(code(br#"{"texts": "a"}"#), ErrorCode::MissingText);
        assert_eq!(code(br#"{"texts": ["a", 1]}"#), ErrorCode::MissingText);
        assert_eq!(code(br#"{"texts": ["a", " "]}"#), ErrorCode::EmptyText);
        let many = serde_json::to_vec(&json!({ "texts": vec!["x"; MAX_TEXTS + 1] })).unwrap();
        assert_eq!(code(&many), ErrorCode::TooManyTexts);
        // The id is echoed even on a refusal.
        assert_eq!(
            decode_request(br#"{"id": "x", "text": ""}"#)
                .unwrap_err()
                .id,
            json!("x")
        );
    }

    /// Collects every step of a reader fed `input` in chunks of `chunk` bytes.
    /// Every other read fails with `WouldBlock` (as a socket read time-out
    /// does); the caller retries, and the result must not change.
    fn lines(input: &[u8], max: usize, chunk: usize) -> Vec<Option<Vec<u8>>> {
        struct Chunked<'a>(&'a [u8], usize, bool);
        impl Read for Chunked<'_> {
            fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
                self.2 = !self.2;
                if self.2 {
                    return Err(std::io::ErrorKind::WouldBlock.into());
                }
                let n = self.0.len().min(self.1).min(out.len());
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut r = LineReader::new(Chunked(input, chunk.max(1), false), max);
        let mut out = Vec::new();
        loop {
            let step = match r.next_line() {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                other => other.unwrap(),
            };
            match step {
                Line::Full(l) => out.push(Some(l.to_vec())),
                Line::TooLong => out.push(None),
                Line::Eof => return out,
            }
        }
    }

    #[test]
    fn long_lines_are_skipped_and_the_next_line_works() {
        let input = b"ok\nthis line is far too long\r\nfine\r\nlast";
        let want = vec![
            Some(b"ok".to_vec()),
            None,
            Some(b"fine".to_vec()),
            Some(b"last".to_vec()),
        ];
        for chunk in 1..8 {
            assert_eq!(lines(input, 8, chunk), want, "chunk {chunk}");
        }
        assert_eq!(lines(b"0123456789", 4, 3), vec![None]);
        assert_eq!(lines(b"", 4, 3), Vec::<Option<Vec<u8>>>::new());
        assert_eq!(lines(b"1234\n", 4, 2), vec![Some(b"1234".to_vec())]);
    }

    proptest! {
        /// Against a model: split on '\n', strip one '\r', lines over the
        /// limit become `None`; chunking must not matter.
        #[test]
        fn line_reader_matches_a_model(
            input in prop::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), any::<u8>()], 0..200),
            max in 1usize..20,
            chunk in 1usize..40,
        ) {
            let mut want: Vec<Option<Vec<u8>>> = Vec::new();
            let mut parts: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
            if input.last() == Some(&b'\n') || input.is_empty() {
                parts.pop();
            }
            for p in parts {
                if p.len() > max {
                    want.push(None);
                } else {
                    want.push(Some(p.strip_suffix(b"\r").unwrap_or(p).to_vec()));
                }
            }
            prop_assert_eq!(lines(&input, max, chunk), want);
        }

        #[test]
        fn decoder_never_panics(line in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_request(&line);
        }

        #[test]
        fn decoder_round_trips_texts(id in any::<i64>(), text in "\\PC*[a-z]\\PC*") {
            let line = serde_json::to_vec(&serde_json::json!({"id": id, "text": text})).unwrap();
            prop_assert_eq!(
                decode_request(&line).unwrap(),
                Request::Classify { id: serde_json::json!(id), text }
            );
        }
    }
}
