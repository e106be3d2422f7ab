//! Request lines, pure: the decoder (borrowing, allocation-free on the
//! success path) and the one JSON-string unescaper. Each text is unescaped
//! once, into the caller's [`Texts`], and read from there by the server.

use crate::code::ErrorCode;

/// A control operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Health,
    Info,
    Metrics,
    /// Load the model again from its path (Unix socket only).
    Reload,
}

/// How an `embed` answer writes its vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VectorFormat {
    /// Floats (unit L2 norm).
    #[default]
    F32,
    /// `"format": "int8"`: integers in -127..=127 and a `scale`; value ≈
    /// integer × scale (4× smaller on the wire and to store).
    Int8,
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Classify {
        id: serde_json::Value,
        text: String,
        threshold: Option<f32>,
    },
    /// `{"id": .., "texts": [..]}`: several texts, one response with `results`.
    ClassifyMany {
        id: serde_json::Value,
        texts: Vec<String>,
        threshold: Option<f32>,
    },
    Op {
        id: serde_json::Value,
        op: Op,
    },
    /// `{"op": "embed", "text": ..}` or `"texts": [..]`: one vector per text.
    Embed {
        id: serde_json::Value,
        texts: Vec<String>,
        many: bool,
        format: VectorFormat,
    },
}

/// Most texts in one `texts` request.
pub const MAX_TEXTS: usize = 64;

/// A refused request: the code, a message, and the id if one could be
/// read, as the raw JSON token it was sent as (echoed byte for byte).
#[derive(Debug, Clone)]
pub struct Refusal {
    pub id: Option<Box<RawValue>>,
    pub code: ErrorCode,
    pub message: String,
}

fn refuse(id: Option<&RawValue>, code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal {
        id: id.map(RawValue::to_owned),
        code,
        message: message.into(),
    }
}

/// A decoded request that borrows its id from its line (the raw JSON
/// token, echoed as sent); its texts are in the [`Texts`] given to
/// [`decode`]. Decoding copies and allocates nothing.
#[derive(Debug, Clone, Copy)]
pub enum Req<'a> {
    /// `{"id": .., "text": ..}`: one text, [`Texts::get`]`(0)`. A
    /// `"threshold"` (multi-label models) replaces the model's own.
    Classify {
        id: Option<&'a RawValue>,
        threshold: Option<f32>,
    },
    /// `{"id": .., "texts": [..]}`: every text in [`Texts`].
    ClassifyMany {
        id: Option<&'a RawValue>,
        threshold: Option<f32>,
    },
    Op {
        id: Option<&'a RawValue>,
        op: Op,
    },
    /// `{"id": .., "op": "embed", "text": ..}` (`many` false) or
    /// `"texts": [..]` (`many` true, answered with `results`): the texts
    /// are in [`Texts`].
    Embed {
        id: Option<&'a RawValue>,
        many: bool,
        format: VectorFormat,
    },
}

impl Req<'_> {
    /// The request's id, as sent.
    pub fn id(&self) -> Option<&RawValue> {
        match *self {
            Req::Classify { id, .. }
            | Req::ClassifyMany { id, .. }
            | Req::Op { id, .. }
            | Req::Embed { id, .. } => id,
        }
    }
}

/// The texts of one request, unescaped once by [`decode`] into one buffer
/// that is reused from request to request (it grows only past its
/// capacity; a line's texts never take more bytes than the line).
#[derive(Debug, Default)]
pub struct Texts {
    buf: String,
    ends: heapless::Vec<usize, MAX_TEXTS>,
}

impl Texts {
    /// Room for `bytes` bytes of text without growing.
    pub fn with_capacity(bytes: usize) -> Texts {
        Texts {
            buf: String::with_capacity(bytes),
            ends: heapless::Vec::new(),
        }
    }

    /// How many texts the last decoded request had.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Text `i` (panics if `i >= len()`).
    pub fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.buf[start..self.ends[i]]
    }

    /// The texts in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.len()).map(|i| self.get(i))
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
    }

    /// Unescapes `raw` after the texts already held and checks it is a
    /// non-blank string.
    fn push(&mut self, raw: &RawValue) -> Result<(), (ErrorCode, &'static str)> {
        if !raw.get().starts_with('"') {
            return Err((ErrorCode::MissingText, "must be a string"));
        }
        let start = self.buf.len();
        let refused = match unescape_append(raw, &mut self.buf) {
            Err(InvalidString) => Some((ErrorCode::MalformedJson, "has an invalid escape")),
            Ok(()) if self.buf[start..].trim().is_empty() => {
                Some((ErrorCode::EmptyText, "is empty"))
            }
            Ok(()) => None,
        };
        if let Some(refusal) = refused {
            self.buf.truncate(start);
            return Err(refusal);
        }
        // At most MAX_TEXTS texts reach here (the array was read into a
        // MAX_TEXTS-slot vector first).
        self.ends
            .push(self.buf.len())
            .map_err(|_| (ErrorCode::TooManyTexts, "is one text too many"))
    }
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
    #[serde(borrow, default)]
    format: Option<&'a RawValue>,
    #[serde(borrow, default)]
    threshold: Option<&'a RawValue>,
}

/// The id as an owned value, for error responses.
pub fn owned_id(id: Option<&RawValue>) -> serde_json::Value {
    id.and_then(|r| serde_json::from_str(r.get()).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// Decodes one request line (without its newline). Texts are unescaped
/// into `texts` (cleared first), which checks them (strings, not empty,
/// valid escapes); the successful path allocates nothing.
pub fn decode<'a>(line: &'a [u8], texts: &mut Texts) -> Result<Req<'a>, Refusal> {
    texts.clear();
    use serde_json::Value;
    let text = std::str::from_utf8(line).map_err(|e| {
        refuse(
            None,
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
                None,
                ErrorCode::NotAnObject,
                "a request must be a JSON object",
            ))
        }
        Err(e) => {
            return Err(match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(_)) => refuse(None, ErrorCode::MalformedJson, e.to_string()),
                Ok(_) => refuse(
                    None,
                    ErrorCode::NotAnObject,
                    "a request must be a JSON object",
                ),
                Err(e) => refuse(None, ErrorCode::MalformedJson, e.to_string()),
            })
        }
    };
    let id = wire.id;
    // `op: "embed"` carries texts, as a classification does; every other
    // op is whole.
    if let Some(op) = wire.op {
        let op = match op.get() {
            r#""health""# => Op::Health,
            r#""info""# => Op::Info,
            r#""metrics""# => Op::Metrics,
            r#""reload""# => Op::Reload,
            r#""embed""# => {
                let format = vector_format(id, wire.format)?;
                return text_request(id, wire, texts, Some(format));
            }
            other => {
                return Err(refuse(
                    id,
                    ErrorCode::UnknownOp,
                    format!("unknown op {other}; expected embed, health, info, metrics or reload"),
                ))
            }
        };
        return Ok(Req::Op { id, op });
    }
    text_request(id, wire, texts, None)
}

/// A request with texts: to classify, or to embed (`embed` is its format).
fn text_request<'a>(
    id: Option<&'a RawValue>,
    wire: WireRequest<'a>,
    texts: &mut Texts,
    embed: Option<VectorFormat>,
) -> Result<Req<'a>, Refusal> {
    let many = read_texts(id, wire.texts, wire.text, texts)?;
    Ok(match embed {
        Some(format) => Req::Embed { id, many, format },
        None => {
            let threshold = wire.threshold.map(|t| threshold(id, t)).transpose()?;
            match many {
                true => Req::ClassifyMany { id, threshold },
                false => Req::Classify { id, threshold },
            }
        }
    })
}

/// A request's `threshold`: a JSON number strictly between 0 and 1.
fn threshold(id: Option<&RawValue>, raw: &RawValue) -> Result<f32, Refusal> {
    // A JSON number's text is one that Rust's float parser reads; a string
    // or `null` is not.
    match raw.get().parse::<f32>() {
        Ok(t) if t > 0.0 && t < 1.0 => Ok(t),
        _ => Err(refuse(
            id,
            ErrorCode::BadThreshold,
            format!(
                "threshold {} is not a number strictly between 0 and 1",
                raw.get()
            ),
        )),
    }
}

/// An `embed` request's `format`: absent or `"f32"`, or `"int8"`.
fn vector_format(
    id: Option<&RawValue>,
    format: Option<&RawValue>,
) -> Result<VectorFormat, Refusal> {
    match format.map(RawValue::get) {
        None | Some(r#""f32""#) => Ok(VectorFormat::F32),
        Some(r#""int8""#) => Ok(VectorFormat::Int8),
        Some(other) => Err(refuse(
            id,
            ErrorCode::BadFormat,
            format!("unknown format {other}; expected \"f32\" or \"int8\""),
        )),
    }
}

/// Reads a request's `texts` array (`Ok(true)`) or its `text` (`Ok(false)`)
/// into `texts`.
fn read_texts(
    id: Option<&RawValue>,
    list: Option<&RawValue>,
    text: Option<&RawValue>,
    texts: &mut Texts,
) -> Result<bool, Refusal> {
    if let Some(list) = list {
        let items: heapless::Vec<&RawValue, MAX_TEXTS> = match serde_json::from_str(list.get()) {
            Ok(items) => items,
            Err(_) if list.get().starts_with('[') => {
                let n = serde_json::from_str::<Vec<&RawValue>>(list.get()).map_or(0, |v| v.len());
                return Err(refuse(
                    id,
                    ErrorCode::TooManyTexts,
                    format!("{n} texts; at most {MAX_TEXTS} per request"),
                ));
            }
            Err(_) => {
                return Err(refuse(
                    id,
                    ErrorCode::MissingText,
                    "texts must be an array of strings",
                ))
            }
        };
        if items.is_empty() {
            return Err(refuse(id, ErrorCode::MissingText, "texts is empty"));
        }
        for (i, item) in items.iter().enumerate() {
            texts
                .push(item)
                .map_err(|(code, msg)| refuse(id, code, format!("texts[{i}] {msg}")))?;
        }
        return Ok(true);
    }
    match text {
        Some(t) => {
            texts
                .push(t)
                .map_err(|(code, msg)| refuse(id, code, format!("text {msg}")))?;
            Ok(false)
        }
        None => Err(refuse(id, ErrorCode::MissingText, "missing \"text\"")),
    }
}

/// A JSON token that is not a valid string (see [`unescape`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidString;

/// Writes the value of a JSON string token into `out` (cleared first).
/// `out` grows only if its capacity is smaller than the token. `Err` for a
/// token that is not a valid JSON string (such as a lone surrogate escape).
pub fn unescape(raw: &RawValue, out: &mut String) -> Result<(), InvalidString> {
    out.clear();
    unescape_append(raw, out)
}

/// [`unescape`], appending to `out`.
fn unescape_append(raw: &RawValue, out: &mut String) -> Result<(), InvalidString> {
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
    let mut texts = Texts::default();
    Ok(match decode(line, &mut texts)? {
        Req::Classify { id, threshold } => Request::Classify {
            id: owned_id(id),
            text: texts.get(0).to_string(),
            threshold,
        },
        Req::ClassifyMany { id, threshold } => Request::ClassifyMany {
            id: owned_id(id),
            texts: texts.iter().map(str::to_string).collect(),
            threshold,
        },
        Req::Op { id, op } => Request::Op {
            id: owned_id(id),
            op,
        },
        Req::Embed { id, many, format } => Request::Embed {
            id: owned_id(id),
            texts: texts.iter().map(str::to_string).collect(),
            many,
            format,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn thresholds() {
        assert_eq!(
            decode_request(br#"{"id": 1, "text": "a", "threshold": 0.25}"#).unwrap(),
            Request::Classify {
                id: json!(1),
                text: "a".into(),
                threshold: Some(0.25)
            }
        );
        assert_eq!(
            decode_request(br#"{"texts": ["a", "b"], "threshold": 5e-1}"#).unwrap(),
            Request::ClassifyMany {
                id: json!(null),
                texts: vec!["a".into(), "b".into()],
                threshold: Some(0.5)
            }
        );
        for bad in ["0", "1", "-0.1", "1.5", "\"0.5\"", "[0.5]", "{}", "true"] {
            let line = format!(r#"{{"id": 9, "text": "a", "threshold": {bad}}}"#);
            let r = decode_request(line.as_bytes()).unwrap_err();
            assert_eq!(r.code, ErrorCode::BadThreshold, "{bad}");
            assert_eq!(r.id.unwrap().get(), "9");
            assert!(r.message.contains(bad), "{}", r.message);
        }
        // null is no threshold (as for every optional field).
        let r = decode_request(br#"{"text": "a", "threshold": null}"#).unwrap();
        assert!(matches!(
            r,
            Request::Classify {
                threshold: None,
                ..
            }
        ));
        // NaN and infinity are not JSON: the line is malformed.
        let r = decode_request(br#"{"text": "a", "threshold": NaN}"#).unwrap_err();
        assert_eq!(r.code, ErrorCode::MalformedJson);
    }

    #[test]
    fn decodes_requests_and_refusals() {
        assert_eq!(
            decode_request(br#"{"id": 7, "text": "great"}"#).unwrap(),
            Request::Classify {
                id: json!(7),
                text: "great".into(),
                threshold: None
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
            decode_request(br#"{"id": 2, "op": "embed", "text": "a"}"#).unwrap(),
            Request::Embed {
                id: json!(2),
                texts: vec!["a".into()],
                many: false,
                format: VectorFormat::F32
            }
        );
        assert_eq!(
            decode_request(br#"{"op": "embed", "texts": ["a", "b"], "format": "int8"}"#).unwrap(),
            Request::Embed {
                id: json!(null),
                texts: vec!["a".into(), "b".into()],
                many: true,
                format: VectorFormat::Int8
            }
        );
        assert_eq!(code(br#"{"op": "embed"}"#), ErrorCode::MissingText);
        assert_eq!(
            code(br#"{"op": "embed", "text": " "}"#),
            ErrorCode::EmptyText
        );
        assert_eq!(
            code(br#"{"op": "embed", "text": "a", "format": "int4"}"#),
            ErrorCode::BadFormat
        );
        assert_eq!(
            decode_request(br#"{"id": 1, "texts": ["a", "b"]}"#).unwrap(),
            Request::ClassifyMany {
                id: json!(1),
                texts: vec!["a".into(), "b".into()],
                threshold: None
            }
        );
        assert_eq!(code(br#"{"texts": []}"#), ErrorCode::MissingText);
        assert_eq!(code(br#"{"texts": "a"}"#), ErrorCode::MissingText);
        assert_eq!(code(br#"{"texts": ["a", 1]}"#), ErrorCode::MissingText);
        assert_eq!(code(br#"{"texts": ["a", " "]}"#), ErrorCode::EmptyText);
        let many = serde_json::to_vec(&json!({ "texts": vec!["x"; MAX_TEXTS + 1] })).unwrap();
        assert_eq!(code(&many), ErrorCode::TooManyTexts);
        // The id is echoed even on a refusal, as the token it was sent as.
        for id in [
            r#""x""#,
            "1e400",
            "18446744073709551616",
            r#""\ud800""#,
            "[1, {}]",
        ] {
            let line = format!(r#"{{"id": {id}, "text": ""}}"#);
            let refused = decode_request(line.as_bytes()).unwrap_err();
            assert_eq!(refused.id.unwrap().get(), id);
        }
    }

    #[test]
    fn escaped_texts_are_decoded() {
        assert_eq!(
            decode_request(br#"{"text": "caf\u00e9 \"ok\" \ud83c\udfac"}"#).unwrap(),
            Request::Classify {
                id: json!(null),
                text: "café \"ok\" 🎬".into(),
                threshold: None
            }
        );
        let code = |l: &[u8]| decode_request(l).unwrap_err().code;
        assert_eq!(code(br#"{"text": "\ud800"}"#), ErrorCode::MalformedJson);
        assert_eq!(code(br#"{"text": "\u0020\t"}"#), ErrorCode::EmptyText);
        assert_eq!(code(br#"{"op": 3}"#), ErrorCode::UnknownOp);
    }

    proptest! {
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
                Request::Classify { id: serde_json::json!(id), text, threshold: None }
            );
        }
    }
}
