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

/// A decoded request that borrows from its line: the id and texts are the
/// raw JSON tokens, so decoding copies and allocates nothing.
// The `texts` variant holds its 64 slots inline: boxing it would allocate on
// every request, which is what this type exists to avoid.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Req<'a> {
    Classify {
        id: Option<&'a RawValue>,
        /// A JSON string token (quotes and escapes included); see [`unescape`].
        text: &'a RawValue,
    },
    ClassifyMany {
        id: Option<&'a RawValue>,
        texts: heapless::Vec<&'a RawValue, MAX_TEXTS>,
    },
    Op {
        id: Option<&'a RawValue>,
        op: Op,
    },
}

pub use serde_json::value::RawValue;

#[derive(serde::Deserialize)]
struct WireRequest<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    op: Option<&'a RawValue>,
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    #[serde(borrow, default)]
    texts: Option<&'a RawValue>,
}

/// The id as an owned value, for error responses.
fn owned_id(id: Option<&RawValue>) -> serde_json::Value {
    id.and_then(|r| serde_json::from_str(r.get()).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// Decodes one request line (without its newline). Texts are checked
/// (strings, not empty, valid escapes) by unescaping them into `scratch`;
/// the successful path allocates nothing.
pub fn decode<'a>(line: &'a [u8], scratch: &mut String) -> Result<Req<'a>, Refusal> {
    use serde_json::Value;
    let text = std::str::from_utf8(line).map_err(|e| {
        refuse(
            Value::Null,
            ErrorCode::InvalidUtf8,
            format!("invalid UTF-8 at byte {}", e.valid_up_to()),
        )
    })?;
    // serde would also read a struct from an array: only objects pass.
    let is_object = text.trim_start().starts_with('{');
    let wire: WireRequest = match serde_json::from_str(text) {
        Ok(w) if is_object => w,
        // Slow path, errors only: say why.
        Ok(_) => {
            return Err(refuse(
                Value::Null,
                ErrorCode::NotAnObject,
                "a request must be a JSON object",
            ))
        }
        Err(e) => {
            return Err(match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(_)) => {
                    refuse(Value::Null, ErrorCode::MalformedJson, e.to_string())
                }
                Ok(_) => refuse(
                    Value::Null,
                    ErrorCode::NotAnObject,
                    "a request must be a JSON object",
                ),
                Err(e) => refuse(Value::Null, ErrorCode::MalformedJson, e.to_string()),
            })
        }
    };
    let id = wire.id;
    if let Some(op) = wire.op {
        let op = match op.get() {
            r#""health""# => Op::Health,
            r#""info""# => Op::Info,
            r#""metrics""# => Op::Metrics,
            other => {
                return Err(refuse(
                    owned_id(id),
                    ErrorCode::UnknownOp,
                    format!("unknown op {other}; expected health, info or metrics"),
                ))
            }
        };
        return Ok(Req::Op { id, op });
    }
    if let Some(texts) = wire.texts {
        let items: heapless::Vec<&RawValue, MAX_TEXTS> = match serde_json::from_str(texts.get()) {
            Ok(items) => items,
            Err(_) if texts.get().starts_with('[') => {
                let n = serde_json::from_str::<Vec<&RawValue>>(texts.get()).map_or(0, |v| v.len());
                return Err(refuse(
                    owned_id(id),
                    ErrorCode::TooManyTexts,
                    format!("{n} texts; at most {MAX_TEXTS} per request"),
                ));
            }
            Err(_) => {
                return Err(refuse(
                    owned_id(id),
                    ErrorCode::MissingText,
                    "texts must be an array of strings",
                ))
            }
        };
        if items.is_empty() {
            return Err(refuse(
                owned_id(id),
                ErrorCode::MissingText,
                "texts is empty",
            ));
        }
        for (i, item) in items.iter().enumerate() {
            check_text(item, scratch)
                .map_err(|(code, msg)| refuse(owned_id(id), code, format!("texts[{i}] {msg}")))?;
        }
        return Ok(Req::ClassifyMany { id, texts: items });
    }
    match wire.text {
        Some(t) => {
            check_text(t, scratch)
                .map_err(|(code, msg)| refuse(owned_id(id), code, format!("text {msg}")))?;
            Ok(Req::Classify { id, text: t })
        }
        None => Err(refuse(
            owned_id(id),
            ErrorCode::MissingText,
            "missing \"text\"",
        )),
    }
}

/// Unescapes a text into `scratch` and checks it is a non-blank string.
fn check_text(raw: &RawValue, scratch: &mut String) -> Result<(), (ErrorCode, &'static str)> {
    if !raw.get().starts_with('"') {
        return Err((ErrorCode::MissingText, "must be a string"));
    }
    unescape(raw, scratch).map_err(|_| (ErrorCode::MalformedJson, "has an invalid escape"))?;
    if scratch.trim().is_empty() {
        return Err((ErrorCode::EmptyText, "is empty"));
    }
    Ok(())
}

/// A JSON token that is not a valid string (see [`unescape`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidString;

/// Writes the value of a JSON string token into `out` (cleared first).
/// `out` grows only if its capacity is smaller than the token. `Err` for a
/// token that is not a valid JSON string (such as a lone surrogate escape).
pub fn unescape(raw: &RawValue, out: &mut String) -> Result<(), InvalidString> {
    out.clear();
    let s = raw.get();
    let body = s
        .strip_prefix('"')
        .and_then(|b| b.strip_suffix('"'))
        .ok_or(InvalidString)?;
    let mut rest = body;
    while let Some(pos) = rest.find('\\') {
        out.push_str(&rest[..pos]);
        let esc = &rest[pos + 1..];
        let mut chars = esc.chars();
        let c = chars.next().ok_or(InvalidString)?;
        let mut used = 1;
        let ch = match c {
            '"' => '"',
            '\\' => '\\',
            '/' => '/',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'u' => {
                let hex = |s: &str| -> Result<u32, InvalidString> {
                    let h = s.get(..4).ok_or(InvalidString)?;
                    if !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(InvalidString);
                    }
                    u32::from_str_radix(h, 16).map_err(|_| InvalidString)
                };
                let hi = hex(&esc[1..])?;
                used = 5;
                match hi {
                    0xD800..=0xDBFF => {
                        let tail = esc.get(5..).ok_or(InvalidString)?;
                        let lo = tail
                            .strip_prefix("\\u")
                            .ok_or(InvalidString)
                            .and_then(hex)?;
                        if !(0xDC00..=0xDFFF).contains(&lo) {
                            return Err(InvalidString);
                        }
                        used = 11;
                        char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
                            .ok_or(InvalidString)?
                    }
                    0xDC00..=0xDFFF => return Err(InvalidString),
                    _ => char::from_u32(hi).ok_or(InvalidString)?,
                }
            }
            _ => return Err(InvalidString),
        };
        out.push(ch);
        rest = &esc[used..];
    }
    out.push_str(rest);
    Ok(())
}

/// Decodes one request line into an owned [`Request`] (allocates; for
/// tools and tests, the server uses [`decode`]).
pub fn decode_request(line: &[u8]) -> Result<Request, Refusal> {
    let mut scratch = String::new();
    let owned = |r: &RawValue, scratch: &mut String| -> String {
        unescape(r, scratch).expect("checked by decode");
        scratch.clone()
    };
    Ok(match decode(line, &mut scratch)? {
        Req::Classify { id, text } => Request::Classify {
            id: owned_id(id),
            text: owned(text, &mut scratch),
        },
        Req::ClassifyMany { id, texts } => Request::ClassifyMany {
            id: owned_id(id),
            texts: texts.iter().map(|t| owned(t, &mut scratch)).collect(),
        },
        Req::Op { id, op } => Request::Op {
            id: owned_id(id),
            op,
        },
    })
}

/// Writes a raw id (or `null`).
fn write_id(out: &mut Vec<u8>, id: Option<&RawValue>) {
    out.extend_from_slice(id.map_or("null", |r| r.get()).as_bytes());
}

/// The labels as JSON string tokens, escaped once at start-up.
pub fn label_tokens(labels: &[String]) -> Vec<String> {
    labels
        .iter()
        .map(|l| serde_json::Value::from(l.as_str()).to_string())
        .collect()
}

/// Writes the fields of an outcome: `"label":..,"score":..,"scores":{..},
/// "tokens":..,"truncated":..` (no braces). `labels` come from
/// [`label_tokens`]. Allocates nothing once `out` has the capacity.
pub fn write_outcome(out: &mut Vec<u8>, o: &crate::Outcome, labels: &[String]) {
    use std::io::Write;
    out.extend_from_slice(b"\"label\":");
    out.extend_from_slice(labels[o.best].as_bytes());
    let _ = write!(out, ",\"score\":{},\"scores\":{{", o.probs[o.best]);
    for (i, (l, p)) in labels.iter().zip(&o.probs).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(l.as_bytes());
        let _ = write!(out, ":{p}");
    }
    let _ = write!(
        out,
        "}},\"tokens\":{},\"truncated\":{}",
        o.tokens, o.truncated
    );
}

/// Writes `{"id":..,` then the outcome's fields and `}`.
pub fn write_classification(
    out: &mut Vec<u8>,
    id: Option<&RawValue>,
    o: &crate::Outcome,
    labels: &[String],
) {
    out.extend_from_slice(b"{\"id\":");
    write_id(out, id);
    out.push(b',');
    write_outcome(out, o, labels);
    out.push(b'}');
}

/// Writes the opening of a `texts` response, `{"id":..,"results":[`; each
/// result is then `{fields}` (comma-separated) and the end is `]}`.
pub fn write_results_start(out: &mut Vec<u8>, id: Option<&RawValue>) {
    out.extend_from_slice(b"{\"id\":");
    write_id(out, id);
    out.extend_from_slice(b",\"results\":[");
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

    #[test]
    fn writes_classifications_as_json() {
        let labels = label_tokens(&["NEG".to_string(), "POS \"quoted\"".to_string()]);
        let mut probs = heapless::Vec::new();
        probs.extend_from_slice(&[0.25, 0.75]).unwrap();
        let o = crate::Outcome {
            best: 1,
            probs,
            tokens: 12,
            truncated: false,
        };
        let mut out = Vec::with_capacity(512);
        let mut scratch = String::new();
        let line = br#"{"id": {"a": [1, 2]}, "text": "x"}"#;
        let Req::Classify { id, .. } = decode(line, &mut scratch).unwrap() else {
            panic!()
        };
        write_classification(&mut out, id, &o, &labels);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            json!({"id": {"a": [1, 2]}, "label": "POS \"quoted\"", "score": 0.75,
            "scores": {"NEG": 0.25, "POS \"quoted\"": 0.75}, "tokens": 12, "truncated": false})
        );
        out.clear();
        write_results_start(&mut out, None);
        out.push(b'{');
        write_outcome(&mut out, &o, &labels);
        out.extend_from_slice(b"}]}");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], json!(null));
        assert_eq!(v["results"][0]["tokens"], 12);
    }

    #[test]
    fn escaped_texts_are_decoded() {
        assert_eq!(
            decode_request(br#"{"text": "caf\u00e9 \"ok\" \ud83c\udfac"}"#).unwrap(),
            Request::Classify {
                id: json!(null),
                text: "café \"ok\" 🎬".into()
            }
        );
        let code = |l: &[u8]| decode_request(l).unwrap_err().code;
        assert_eq!(code(br#"{"text": "\ud800"}"#), ErrorCode::MalformedJson);
        assert_eq!(code(br#"{"text": "\u0020\t"}"#), ErrorCode::EmptyText);
        assert_eq!(code(br#"{"op": 3}"#), ErrorCode::UnknownOp);
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

        /// Any string, escaped by serde_json, unescapes back to itself.
        #[test]
        fn unescape_round_trips(text in "\\PC*|[\\x00-\\x20\"\\\\/\u{80}-\u{10ffff}]*") {
            let raw = serde_json::value::to_raw_value(&text).unwrap();
            let mut out = String::new();
            unescape(&raw, &mut out).unwrap();
            prop_assert_eq!(out, text);
        }

        /// On any valid JSON string token, unescape agrees with serde_json
        /// (including refusing lone surrogates).
        #[test]
        fn unescape_agrees_with_serde_json(
            parts in prop::collection::vec(prop_oneof![
                "[a-z \u{e9}\u{1f600}]{0,3}",
                prop::sample::select(vec!["\\n", "\\\"", "\\\\", "\\/", "\\b", "\\u0041", "\\u00e9",
                    "\\ud83d\\ude00", "\\ud83d", "\\ude00", "\\uD800\\u0041", "\\u0000"]).prop_map(String::from),
            ], 0..8),
        ) {
            let token = format!("\"{}\"", parts.concat());
            let Ok(raw) = serde_json::from_str::<&RawValue>(&token) else { return Ok(()) };
            let mut out = String::new();
            match serde_json::from_str::<String>(&token) {
                Ok(want) => { unescape(raw, &mut out).unwrap(); prop_assert_eq!(out, want); }
                Err(_) => prop_assert!(unescape(raw, &mut out).is_err(), "{}", token),
            }
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
