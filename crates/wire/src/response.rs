//! Response lines, pure: the server's encoders (a classification
//! allocates nothing once the buffer has its capacity) and the client's
//! decoder of the same lines.

use serde_json::value::RawValue;

use crate::code::ErrorCode;

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

/// Writes the fields of an outcome: `"label":..,"score":..,` then, for a
/// multi-label model (`threshold` given), `"labels":[..],"threshold":..,`,
/// then `"scores":{..},"tokens":..,"truncated":..` (no braces). `labels`
/// come from [`label_tokens`]. Allocates nothing once `out` has the
/// capacity.
pub fn write_outcome(out: &mut Vec<u8>, o: &Scored<'_>, labels: &[String]) {
    use std::io::Write;
    out.extend_from_slice(b"\"label\":");
    out.extend_from_slice(labels[o.best].as_bytes());
    let _ = write!(out, ",\"score\":{},", o.probs[o.best]);
    if let Some(t) = o.threshold {
        out.extend_from_slice(b"\"labels\":[");
        let mut first = true;
        for (l, &p) in labels.iter().zip(o.probs) {
            if p >= t {
                if !first {
                    out.push(b',');
                }
                first = false;
                out.extend_from_slice(l.as_bytes());
            }
        }
        let _ = write!(out, "],\"threshold\":{t},");
    }
    out.extend_from_slice(b"\"scores\":{");
    for (i, (l, p)) in labels.iter().zip(o.probs).enumerate() {
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
    if let Some(model) = o.model {
        out.extend_from_slice(b",\"model\":");
        out.extend_from_slice(model.as_bytes());
    }
}

/// Writes `{"id":..,` then the outcome's fields and `}`.
pub fn write_classification(
    out: &mut Vec<u8>,
    id: Option<&RawValue>,
    o: &Scored<'_>,
    labels: &[String],
) {
    write_answer_start(out, id);
    write_outcome(out, o, labels);
    out.push(b'}');
}

/// Writes `{"id":<raw id>,`: the opening of a one-text answer, whose
/// fields ([`write_outcome`], [`write_embedding_fields`]) and `}` follow.
pub fn write_answer_start(out: &mut Vec<u8>, id: Option<&RawValue>) {
    out.extend_from_slice(b"{\"id\":");
    write_id(out, id);
    out.push(b',');
}

/// Writes the opening of a `texts` response, `{"id":..,"results":[`; each
/// result is then `{fields}` (comma-separated) and the end is `]}`.
pub fn write_results_start(out: &mut Vec<u8>, id: Option<&RawValue>) {
    out.extend_from_slice(b"{\"id\":");
    write_id(out, id);
    out.extend_from_slice(b",\"results\":[");
}

/// Writes `{"id":<raw id>,` then the fields of `body` (a JSON object)
/// and `}`: an answer that echoes the id as the raw token it was sent as
/// (`null` when there was none), as classifications echo it. A body that
/// is not an object, or is empty, is written as `"result"`.
pub fn write_with_id(out: &mut Vec<u8>, id: Option<&RawValue>, body: &serde_json::Value) {
    out.extend_from_slice(b"{\"id\":");
    write_id(out, id);
    match body {
        serde_json::Value::Object(fields) if !fields.is_empty() => {
            // `{` + fields + `}`: the fields follow the id.
            out.push(b',');
            out.extend_from_slice(&body.to_string().as_bytes()[1..]);
        }
        other => {
            out.extend_from_slice(b",\"result\":");
            out.extend_from_slice(other.to_string().as_bytes());
            out.push(b'}');
        }
    }
}

/// The response line for a refused or failed request (no trailing
/// newline), its id echoed as sent (see [`write_with_id`]).
pub fn encode_error(id: Option<&RawValue>, code: ErrorCode, message: &str) -> String {
    let error = serde_json::json!({ "error": { "code": code.as_str(), "message": message } });
    let mut out = Vec::with_capacity(64 + message.len());
    write_with_id(&mut out, id, &error);
    // Both halves are UTF-8: the raw token was read from a str.
    String::from_utf8(out).unwrap_or_default()
}

/// One embedding as the encoders take it (borrowed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Embedded<'a> {
    /// The vector (unit L2 norm).
    pub vector: &'a [f32],
    /// Tokens the model saw, special tokens included.
    pub tokens: usize,
    /// Whether the text was cut to the model's maximum length.
    pub truncated: bool,
    /// The model that answered, as a JSON string token.
    pub model: Option<&'a str>,
}

/// The scale of a vector's int8 form: its largest magnitude over 127 (1
/// for a zero vector), so that every value is `round(v / scale)` in
/// -127..=127.
pub fn int8_scale(vector: &[f32]) -> f32 {
    let max = vector.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if max > 0.0 && max.is_finite() {
        max / 127.0
    } else {
        1.0
    }
}

/// One value in int8 form at `scale` (see [`int8_scale`]).
pub fn to_int8(v: f32, scale: f32) -> i8 {
    (v / scale).round().clamp(-127.0, 127.0) as i8
}

/// Writes the fields of an embedding: `"embedding":[..],"dim":..,
/// "tokens":..,"truncated":..` (no braces), the values as floats (finite:
/// [`Embedded::vector`] must hold no NaN), or with
/// `int8` as integers followed by `"scale"` (value ≈ integer × scale).
/// Allocates nothing once `out` has the capacity.
pub fn write_embedding_fields(out: &mut Vec<u8>, e: &Embedded<'_>, int8: bool) {
    use std::io::Write;
    out.extend_from_slice(b"\"embedding\":[");
    let scale = int8_scale(e.vector);
    for (i, v) in e.vector.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Display never writes an exponent: a tiny value would take up to
        // 47 digits, so those are written as 1.2345678e-5.
        let _ = if int8 {
            write!(out, "{}", to_int8(*v, scale))
        } else if *v != 0.0 && v.abs() < 1e-3 {
            write!(out, "{v:e}")
        } else {
            write!(out, "{v}")
        };
    }
    out.push(b']');
    if int8 {
        let _ = write!(out, ",\"scale\":{scale}");
    }
    let _ = write!(
        out,
        ",\"dim\":{},\"tokens\":{},\"truncated\":{}",
        e.vector.len(),
        e.tokens,
        e.truncated
    );
    if let Some(model) = e.model {
        out.extend_from_slice(b",\"model\":");
        out.extend_from_slice(model.as_bytes());
    }
}

/// Writes `{"id":..,` then the embedding's fields and `}`.
pub fn write_embedding(out: &mut Vec<u8>, id: Option<&RawValue>, e: &Embedded<'_>, int8: bool) {
    write_answer_start(out, id);
    write_embedding_fields(out, e, int8);
    out.push(b'}');
}

/// Reads the vector of one embedding answer (an element of `results`, or
/// a whole response), scaled back to floats when it came as int8.
pub fn decode_embedding(v: &serde_json::Value) -> Result<Vec<f32>, ReplyError> {
    if let Some(err) = v.get("error") {
        return Err(server_error(err));
    }
    let bad = |what: &str| ReplyError::Malformed(format!("{what} in {v}"));
    let scale = match v.get("scale") {
        Some(s) => s.as_f64().ok_or_else(|| bad("bad scale"))? as f32,
        None => 1.0,
    };
    v["embedding"]
        .as_array()
        .ok_or_else(|| bad("no embedding"))?
        .iter()
        .map(|x| Ok(x.as_f64().ok_or_else(|| bad("bad value"))? as f32 * scale))
        .collect()
}

/// One entity as the encoder takes it (borrowed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Found<'a> {
    /// Its type, as a JSON string token (see [`label_tokens`]).
    pub label: &'a str,
    /// Its byte span in the text.
    pub bytes: (usize, usize),
    /// Its score (the mean probability of its tokens' tags).
    pub score: f32,
}

/// The rest of an NER answer, as the encoder takes it (borrowed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tagged<'a> {
    /// The text the entities were found in.
    pub text: &'a str,
    /// Tokens the model saw, special tokens included.
    pub tokens: usize,
    /// Whether the text was cut to the model's maximum length.
    pub truncated: bool,
    /// The model that answered, as a JSON string token.
    pub model: Option<&'a str>,
}

/// Writes the fields of an NER answer: `"entities":[{"label":..,"start":..,
/// "end":..,"text":..,"score":..},..],"tokens":..,"truncated":..` (no
/// braces). `start` and `end` are char (Unicode scalar) offsets into the
/// text, `text` the entity's own text. `found` must be in text order and
/// disjoint, on char boundaries (as a tokenizer's spans are); an entity
/// that is not is left out rather than written wrong. Allocates nothing
/// once `out` has the capacity.
pub fn write_entities_fields<'a>(
    out: &mut Vec<u8>,
    t: &Tagged<'_>,
    found: impl IntoIterator<Item = Found<'a>>,
) {
    use std::io::Write;
    out.extend_from_slice(b"\"entities\":[");
    // Where the last entity ended, in bytes and in chars.
    let (mut byte, mut char) = (0usize, 0usize);
    let mut first = true;
    for f in found {
        let (a, b) = f.bytes;
        if a < byte || b < a {
            continue;
        }
        let (Some(gap), Some(surface)) = (t.text.get(byte..a), t.text.get(a..b)) else {
            continue;
        };
        let start = char + gap.chars().count();
        let end = start + surface.chars().count();
        (byte, char) = (b, end);
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(b"{\"label\":");
        out.extend_from_slice(f.label.as_bytes());
        let _ = write!(out, ",\"start\":{start},\"end\":{end},\"text\":");
        // serde_json escapes straight into `out` (at most 6 bytes a byte,
        // as `\u00XX`), allocating nothing.
        let _ = serde_json::to_writer(&mut *out, surface);
        let _ = write!(out, ",\"score\":{}}}", f.score);
    }
    let _ = write!(
        out,
        "],\"tokens\":{},\"truncated\":{}",
        t.tokens, t.truncated
    );
    if let Some(model) = t.model {
        out.extend_from_slice(b",\"model\":");
        out.extend_from_slice(model.as_bytes());
    }
}

/// One entity read back from an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedEntity {
    /// Its type (`PER`, `LOC`, ...).
    pub label: String,
    /// Its char offsets in the text, `start..end`.
    pub start: usize,
    pub end: usize,
    /// Its own text.
    pub text: String,
    pub score: f32,
}

/// An NER answer read back by a client.
#[derive(Debug, Clone, PartialEq)]
pub struct EntitiesAnswer {
    /// In text order.
    pub entities: Vec<NamedEntity>,
    pub tokens: usize,
    pub truncated: bool,
}

/// Reads an NER answer (an element of `results`, or a whole response).
pub fn decode_entities(v: &serde_json::Value) -> Result<EntitiesAnswer, ReplyError> {
    if let Some(err) = v.get("error") {
        return Err(server_error(err));
    }
    let bad = |what: &str| ReplyError::Malformed(format!("{what} in {v}"));
    let entities = v["entities"]
        .as_array()
        .ok_or_else(|| bad("no entities"))?
        .iter()
        .map(|e| {
            let offset = |k: &str| e[k].as_u64().map(|n| n as usize);
            let (Some(label), Some(start), Some(end), Some(text), Some(score)) = (
                e["label"].as_str(),
                offset("start"),
                offset("end"),
                e["text"].as_str(),
                e["score"].as_f64(),
            ) else {
                return Err(bad("a bad entity"));
            };
            if end < start {
                return Err(bad("an entity ending before it starts"));
            }
            Ok(NamedEntity {
                label: label.to_string(),
                start,
                end,
                text: text.to_string(),
                score: score as f32,
            })
        })
        .collect::<Result<Vec<_>, ReplyError>>()?;
    Ok(EntitiesAnswer {
        entities,
        tokens: v["tokens"].as_u64().ok_or_else(|| bad("no tokens"))? as usize,
        truncated: v["truncated"]
            .as_bool()
            .ok_or_else(|| bad("no truncated"))?,
    })
}

/// The error object of a response, as a [`ReplyError`].
fn server_error(err: &serde_json::Value) -> ReplyError {
    ReplyError::Server {
        code: err["code"].as_str().unwrap_or("unknown").to_string(),
        message: err["message"].as_str().unwrap_or("").to_string(),
    }
}

/// One classification as the encoders take it (borrowed, so the server's
/// path allocates nothing).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored<'a> {
    /// Index of the winning label.
    pub best: usize,
    /// Probability of every label, in label order.
    pub probs: &'a [f32],
    /// Tokens the model saw, special tokens included.
    pub tokens: usize,
    /// Whether the text was cut to the model's maximum length.
    pub truncated: bool,
    /// The model that answered, as a JSON string token (`"name@version"`),
    /// written as `"model"` when given.
    pub model: Option<&'a str>,
    /// A multi-label model's threshold: the labels at or over it are
    /// written as `"labels"`.
    pub threshold: Option<f32>,
}

/// A classification read back from a response line by a client.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub label: String,
    pub score: f32,
    /// Every label's probability, in the order the server sent them.
    pub scores: Vec<(String, f32)>,
    /// A multi-label model's answer: the labels at or over its threshold.
    pub labels: Option<Vec<String>>,
    pub tokens: usize,
    pub truncated: bool,
}

/// Why a response line is not the classification a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// The server answered with an error object. The code is kept as sent
    /// (a newer server may send one this build does not know;
    /// [`ErrorCode::parse`] tells).
    Server { code: String, message: String },
    /// The line is not a well-formed answer to this request.
    Malformed(String),
}

/// Reads a classification response (already parsed as JSON) to the request
/// with id `id`.
pub fn decode_answer(v: &serde_json::Value, id: u64) -> Result<Answer, ReplyError> {
    if let Some(err) = v.get("error") {
        return Err(server_error(err));
    }
    let bad = |what: &str| ReplyError::Malformed(format!("{what} in {v}"));
    if v["id"] != serde_json::json!(id) {
        return Err(bad("unexpected id"));
    }
    let scores = v["scores"]
        .as_object()
        .ok_or_else(|| bad("no scores"))?
        .iter()
        .map(|(k, p)| {
            Ok((
                k.clone(),
                p.as_f64().ok_or_else(|| bad("bad score"))? as f32,
            ))
        })
        .collect::<Result<Vec<_>, ReplyError>>()?;
    let labels = match v.get("labels") {
        None => None,
        Some(l) => Some(
            l.as_array()
                .ok_or_else(|| bad("labels not an array"))?
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad("bad labels"))
                })
                .collect::<Result<Vec<_>, ReplyError>>()?,
        ),
    };
    Ok(Answer {
        label: v["label"]
            .as_str()
            .ok_or_else(|| bad("no label"))?
            .to_string(),
        score: v["score"].as_f64().ok_or_else(|| bad("no score"))? as f32,
        scores,
        labels,
        tokens: v["tokens"].as_u64().ok_or_else(|| bad("no tokens"))? as usize,
        truncated: v["truncated"]
            .as_bool()
            .ok_or_else(|| bad("no truncated"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{decode, Req, Texts};
    use serde_json::json;

    #[test]
    fn writes_classifications_as_json() {
        let labels = label_tokens(&["NEG".to_string(), "POS \"quoted\"".to_string()]);
        let o = Scored {
            best: 1,
            probs: &[0.25, 0.75],
            tokens: 12,
            truncated: false,
            model: None,
            threshold: None,
        };
        let mut out = Vec::with_capacity(512);
        let mut texts = Texts::default();
        let line = br#"{"id": {"a": [1, 2]}, "text": "x"}"#;
        let Req::Classify { id, .. } = decode(line, &mut texts).unwrap() else {
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
        // The answering model, when given.
        out.clear();
        let named = Scored {
            model: Some(r#""sentiment@3""#),
            threshold: None,
            ..o
        };
        write_classification(&mut out, None, &named, &labels);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "sentiment@3");
    }

    #[test]
    fn multilabel_answers_list_the_labels_over_the_threshold() {
        let labels = label_tokens(&["care".into(), "fair\"ness".into(), "loyalty".into()]);
        let o = Scored {
            best: 2,
            probs: &[0.5, 0.1, 0.9],
            tokens: 5,
            truncated: false,
            model: None,
            threshold: Some(0.5),
        };
        let mut out = Vec::new();
        write_classification(&mut out, None, &o, &labels);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["labels"], json!(["care", "loyalty"]));
        assert_eq!(v["threshold"], json!(0.5));
        assert_eq!(v["label"], "loyalty");
        let mut out = Vec::new();
        let id = serde_json::from_str::<&RawValue>("3").unwrap();
        write_classification(
            &mut out,
            Some(id),
            &Scored {
                threshold: Some(0.95),
                ..o
            },
            &labels,
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["labels"], json!([]));
        let a = decode_answer(&v, 3).unwrap();
        assert_eq!(a.labels, Some(vec![]));
        let mut out = Vec::new();
        write_classification(
            &mut out,
            Some(id),
            &Scored {
                threshold: Some(0.05),
                ..o
            },
            &labels,
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            decode_answer(&v, 3).unwrap().labels.unwrap(),
            ["care", "fair\"ness", "loyalty"]
        );
    }

    #[test]
    fn answers_decode_back() {
        let labels = label_tokens(&["NEG".to_string(), "POS".to_string()]);
        let o = Scored {
            best: 0,
            probs: &[0.5, 0.5],
            tokens: 3,
            truncated: true,
            model: None,
            threshold: None,
        };
        let mut out = Vec::new();
        let id = serde_json::from_str::<&RawValue>("41").unwrap();
        write_classification(&mut out, Some(id), &o, &labels);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let a = decode_answer(&v, 41).unwrap();
        assert_eq!(a.label, "NEG");
        assert_eq!(a.labels, None);
        assert_eq!(a.scores, vec![("NEG".into(), 0.5), ("POS".into(), 0.5)]);
        assert!(a.truncated);
        assert!(matches!(
            decode_answer(&v, 42),
            Err(ReplyError::Malformed(_))
        ));
        let e: serde_json::Value =
            serde_json::from_str(&encode_error(Some(id), ErrorCode::Busy, "try again")).unwrap();
        assert_eq!(
            decode_answer(&e, 41),
            Err(ReplyError::Server {
                code: "busy".into(),
                message: "try again".into()
            })
        );
        let e = encode_error(None, ErrorCode::Corrupt, "bad \"frame\"\n");
        let v: serde_json::Value = serde_json::from_str(&e).unwrap();
        assert_eq!(v["id"], json!(null));
        assert_eq!(v["error"]["message"], "bad \"frame\"\n");
    }

    #[test]
    fn writes_embeddings_as_json() {
        let vector = [0.6f32, -0.8, 0.0];
        let e = Embedded {
            vector: &vector,
            tokens: 5,
            truncated: false,
            model: Some(r#""mini@2""#),
        };
        let mut out = Vec::with_capacity(256);
        let mut texts = Texts::default();
        let line = br#"{"id": "e1", "op": "embed", "text": "x"}"#;
        let Req::Embed {
            id, many: false, ..
        } = decode(line, &mut texts).unwrap()
        else {
            panic!()
        };
        write_embedding(&mut out, id, &e, false);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            json!({"id": "e1", "embedding": [0.6, -0.8, 0], "dim": 3, "tokens": 5,
                "truncated": false, "model": "mini@2"})
        );
        assert_eq!(decode_embedding(&v).unwrap(), vector);
        // Tiny values keep their digits, in few bytes.
        out.clear();
        let tiny = [1.0f32, -1.2345678e-30, 3e-4, f32::MIN_POSITIVE];
        write_embedding(&mut out, None, &Embedded { vector: &tiny, ..e }, false);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(decode_embedding(&v).unwrap(), tiny);
        assert!(out.len() < 180, "{}", String::from_utf8_lossy(&out));
        out.clear();
        write_embedding(&mut out, id, &e, true);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["embedding"], json!([95, -127, 0]));
        let back = decode_embedding(&v).unwrap();
        for (b, want) in back.iter().zip(vector) {
            assert!((b - want).abs() <= 0.8 / 127.0 / 2.0 + 1e-6, "{back:?}");
        }
        let e = encode_error(None, ErrorCode::WrongTask, "a classifier");
        let v: serde_json::Value = serde_json::from_str(&e).unwrap();
        assert!(matches!(
            decode_embedding(&v),
            Err(ReplyError::Server { code, .. }) if code == "wrong_task"
        ));
    }

    #[test]
    fn writes_entities_with_char_offsets() {
        let text = "Zoë met \"Ann\" in Paris\n";
        let kinds = label_tokens(&["PER".into(), "LOC\"x".into()]);
        let found = [
            Found {
                label: &kinds[0],
                bytes: (0, 4), // "Zoë": 4 bytes, 3 chars
                score: 0.5,
            },
            Found {
                label: &kinds[0],
                bytes: (10, 14), // "Ann\""
                score: 0.25,
            },
            Found {
                label: &kinds[1],
                bytes: (18, 24), // "Paris\n"
                score: 0.75,
            },
        ];
        let t = Tagged {
            text,
            tokens: 9,
            truncated: false,
            model: Some(r#""ner@1""#),
        };
        let mut out = Vec::with_capacity(512);
        write_answer_start(&mut out, None);
        write_entities_fields(&mut out, &t, found);
        out.push(b'}');
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            json!({"id": null, "entities": [
                {"label": "PER", "start": 0, "end": 3, "text": "Zoë", "score": 0.5},
                {"label": "PER", "start": 9, "end": 13, "text": "Ann\"", "score": 0.25},
                {"label": "LOC\"x", "start": 17, "end": 23, "text": "Paris\n", "score": 0.75},
            ], "tokens": 9, "truncated": false, "model": "ner@1"})
        );
        let a = decode_entities(&v).unwrap();
        assert_eq!(a.entities.len(), 3);
        assert_eq!(a.entities[2].text, "Paris\n");
        assert_eq!((a.tokens, a.truncated), (9, false));
        // Out of order, overlapping, backwards or off a char boundary:
        // left out, never written wrong.
        let odd = [
            found[1],
            found[0],
            Found {
                bytes: (3, 4),
                ..found[0]
            }, // inside "ë"
            Found {
                bytes: (16, 15),
                ..found[0]
            },
            Found {
                bytes: (19, 99),
                ..found[0]
            },
            found[2],
        ];
        out.clear();
        write_answer_start(&mut out, None);
        write_entities_fields(&mut out, &t, odd);
        out.push(b'}');
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let texts: Vec<_> = decode_entities(&v)
            .unwrap()
            .entities
            .into_iter()
            .map(|e| e.text)
            .collect();
        assert_eq!(texts, ["Ann\"", "Paris\n"]);
        // No entities; an error; a malformed entity.
        out.clear();
        write_answer_start(&mut out, None);
        write_entities_fields(&mut out, &t, []);
        out.push(b'}');
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(decode_entities(&v).unwrap().entities, []);
        let e: serde_json::Value =
            serde_json::from_str(&encode_error(None, ErrorCode::WrongTask, "no")).unwrap();
        assert!(matches!(
            decode_entities(&e),
            Err(ReplyError::Server { .. })
        ));
        let bad = json!({"entities": [{"label": "X", "start": 3, "end": 1, "text": "", "score": 1}],
            "tokens": 1, "truncated": false});
        assert!(matches!(
            decode_entities(&bad),
            Err(ReplyError::Malformed(_))
        ));
    }

    proptest::proptest! {
        /// The int8 form of any vector is within half a step of each value,
        /// and the largest magnitude maps to ±127.
        #[test]
        fn int8_vectors_round_within_half_a_step(
            v in proptest::collection::vec(-1.0f32..1.0, 1..64),
        ) {
            let scale = int8_scale(&v);
            let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            for x in &v {
                let q = to_int8(*x, scale);
                proptest::prop_assert!((q as f32 * scale - x).abs() <= scale * 0.5 + 1e-6);
                if x.abs() == max && max > 0.0 {
                    proptest::prop_assert_eq!(q.unsigned_abs(), 127);
                }
            }
        }

        /// Any string written as JSON (as an entity's text is) reads back
        /// as itself, within the 6 bytes a byte the server's response
        /// capacity counts.
        #[test]
        fn json_strings_read_back(s in "\\PC*|[\\x00-\\x1f\"\\\\a-z]*") {
            let mut out = Vec::new();
            serde_json::to_writer(&mut out, &s).unwrap();
            proptest::prop_assert!(out.len() <= 6 * s.len() + 2);
            let back: String = serde_json::from_slice(&out).unwrap();
            proptest::prop_assert_eq!(back, s);
        }

        /// Entities at any char-aligned, ordered, disjoint spans of any
        /// text read back with char offsets that index their own text.
        #[test]
        fn entity_offsets_index_the_text(
            text in "\\PC{0,40}",
            cuts in proptest::collection::vec(0usize..200, 0..12),
        ) {
            let mut bounds: Vec<usize> = cuts
                .iter()
                .map(|c| c % (text.len() + 1))
                .filter(|&b| text.is_char_boundary(b))
                .collect();
            bounds.sort_unstable();
            bounds.dedup();
            let kinds = label_tokens(&["T".into()]);
            let found: Vec<Found> = bounds
                .chunks_exact(2)
                .map(|p| Found { label: &kinds[0], bytes: (p[0], p[1]), score: 0.5 })
                .collect();
            let mut out = Vec::new();
            let t = Tagged { text: &text, tokens: 1, truncated: false, model: None };
            write_answer_start(&mut out, None);
            write_entities_fields(&mut out, &t, found.iter().copied());
            out.push(b'}');
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            let a = decode_entities(&v).unwrap();
            proptest::prop_assert_eq!(a.entities.len(), found.len());
            let chars: Vec<char> = text.chars().collect();
            for (e, f) in a.entities.iter().zip(&found) {
                let by_chars: String = chars[e.start..e.end].iter().collect();
                proptest::prop_assert_eq!(&by_chars, &e.text);
                proptest::prop_assert_eq!(&text[f.bytes.0..f.bytes.1], e.text.as_str());
            }
        }

        /// An error echoes any id token byte for byte, and stays one valid
        /// JSON line.
        #[test]
        fn errors_echo_the_raw_id(id in proptest::prop_oneof![
            "-?[1-9][0-9]{0,29}(\\.[0-9]{1,5})?([eE][+-]?[0-9]{1,4})?",
            "\"([a-z ]|\\\\u[dD][89abAB][0-9a-f]{2}|\\\\n)*\"",
            proptest::strategy::Just("[1, {\"a\": null}]".to_string()),
        ], message in "\\PC*") {
            let raw = serde_json::from_str::<&RawValue>(&id).unwrap();
            let line = encode_error(Some(raw), ErrorCode::Internal, &message);
            proptest::prop_assert!(!line.contains('\n'));
            let prefix = format!("{{\"id\":{id},\"error\":");
            proptest::prop_assert!(line.starts_with(&prefix), "{}", line);
            let tail: serde_json::Value = serde_json::from_str(&line[prefix.len()..line.len() - 1]).unwrap();
            proptest::prop_assert_eq!(&tail["message"], &json!(message));
        }
    }
}
