//! BERT WordPiece tokenising, pure and allocation-free per text.
//!
//! This reads the bundle's Hugging Face `tokenizer.json` and reproduces what
//! the `tokenizers` crate does for the BERT configuration (the
//! `BertNormalizer`, `BertPreTokenizer`, `WordPiece` and the `[CLS] A [SEP]`
//! template), using the same Unicode tables (`unicode_categories`,
//! `unicode-normalization-alignments`). It is written out here so that
//! encoding a text writes into caller-owned buffers and allocates nothing,
//! and so the device binary does not link the whole `tokenizers` crate. The
//! tests check it token for token against `tokenizers` on every committed
//! text and on random Unicode (`tests/it/tokenizer.rs`).
//!
//! Any other tokenizer configuration is refused at load time with a clear
//! error, never silently tokenised differently.

use std::collections::HashMap;

use serde::Deserialize;
use unicode_categories::UnicodeCategories;
use unicode_normalization_alignments::UnicodeNormalization;

use crate::error::{Error, Result};

/// A text turned into model input ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids including the special tokens (`[CLS] … [SEP]`).
    pub ids: Vec<u32>,
    /// Segment ids (all 0 for a single text).
    pub type_ids: Vec<u32>,
    /// Whether the text was cut to fit `max_len`.
    pub truncated: bool,
}

/// `max_input_chars_per_word` supported (BERT's value).
const MAX_WORD_CHARS: usize = 100;

/// Reusable working memory for [`TextTokenizer::encode_into`]: the current
/// word and the WordPiece candidate. Sized once; a text never makes it grow.
#[derive(Debug)]
pub struct Scratch {
    word: String,
    word_chars: usize,
    candidate: String,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch::new()
    }
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            // A word of more than MAX_WORD_CHARS chars is [UNK] and is not
            // stored past that, so 4 bytes per char bounds both buffers.
            word: String::with_capacity(4 * MAX_WORD_CHARS + 8),
            word_chars: 0,
            candidate: String::with_capacity(4 * MAX_WORD_CHARS + 24),
        }
    }
}

/// The bundle's tokenizer, truncating at the model's maximum length and
/// never padding (the engine pads to its length bucket).
#[derive(Clone)]
pub struct TextTokenizer {
    vocab: HashMap<String, u32>,
    prefix: String,
    unk: u32,
    cls: u32,
    sep: u32,
    /// Added tokens matched verbatim in the raw text, longest first.
    specials: Vec<(String, u32)>,
    max_len: usize,
    /// BertNormalizer's `lowercase` (false: cased models).
    lowercase: bool,
    /// BertNormalizer's `strip_accents` (NFD, non-spacing marks dropped);
    /// when the file leaves it null it follows `lowercase`.
    strip_accents: bool,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab", &self.vocab.len())
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Json {
    added_tokens: Vec<AddedToken>,
    normalizer: Option<serde_json::Value>,
    pre_tokenizer: Option<serde_json::Value>,
    post_processor: Option<serde_json::Value>,
    model: ModelJson,
}

#[derive(Deserialize)]
struct AddedToken {
    id: u32,
    content: String,
    #[serde(default)]
    single_word: bool,
    #[serde(default)]
    lstrip: bool,
    #[serde(default)]
    rstrip: bool,
    #[serde(default)]
    normalized: bool,
}

#[derive(Deserialize)]
struct ModelJson {
    #[serde(rename = "type")]
    kind: String,
    unk_token: String,
    continuing_subword_prefix: String,
    max_input_chars_per_word: usize,
    vocab: HashMap<String, u32>,
}

fn unsupported(what: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!(
        "unsupported tokenizer.json: {what} (edge-bert supports BERT WordPiece tokenizers)"
    ))
}

fn is_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || c.is_whitespace()
}

fn is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && c.is_other()
}

fn is_chinese_char(c: char) -> bool {
    matches!(
        c as u32,
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B920..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || c.is_punctuation()
}

/// Up to three chars: a CJK char padded with spaces, or one char.
struct Padded {
    chars: [char; 3],
    next: usize,
    end: usize,
}

impl Iterator for Padded {
    type Item = char;
    fn next(&mut self) -> Option<char> {
        (self.next < self.end).then(|| {
            self.next += 1;
            self.chars[self.next - 1]
        })
    }
}

fn pad_chinese(c: char) -> Padded {
    if is_chinese_char(c) {
        Padded {
            chars: [' ', c, ' '],
            next: 0,
            end: 3,
        }
    } else {
        Padded {
            chars: [c, ' ', ' '],
            next: 0,
            end: 1,
        }
    }
}

impl TextTokenizer {
    /// Parses a `tokenizer.json` and sets truncation to `max_len` tokens
    /// (special tokens included).
    pub fn from_bytes(json: &[u8], max_len: usize) -> Result<TextTokenizer> {
        let j: Json = serde_json::from_slice(json).map_err(|e| {
            // Say what kind of tokenizer it is when that is why it failed.
            let kind = serde_json::from_slice::<serde_json::Value>(json)
                .ok()
                .and_then(|v| v["model"]["type"].as_str().map(String::from));
            match kind {
                Some(k) if k != "WordPiece" => unsupported(format!("a {k} model")),
                _ => Error::Tokenizer(format!("tokenizer.json: {e}")),
            }
        })?;
        let norm = j.normalizer.unwrap_or_default();
        let flag = |k: &str| norm.get(k).and_then(|v| v.as_bool());
        let strip = match norm.get("strip_accents") {
            None | Some(serde_json::Value::Null) => flag("lowercase"),
            Some(v) => v.as_bool(),
        };
        let (Some(lowercase), Some(strip_accents)) = (flag("lowercase"), strip) else {
            return Err(unsupported(format!("normalizer {norm}")));
        };
        if norm.get("type").and_then(|t| t.as_str()) != Some("BertNormalizer")
            || flag("clean_text") != Some(true)
            || flag("handle_chinese_chars") != Some(true)
        {
            return Err(unsupported(format!("normalizer {norm}")));
        }
        let pre = j.pre_tokenizer.unwrap_or_default();
        if pre.get("type").and_then(|t| t.as_str()) != Some("BertPreTokenizer") {
            return Err(unsupported(format!("pre_tokenizer {pre}")));
        }
        let m = j.model;
        if m.kind != "WordPiece" {
            return Err(unsupported(format!("a {} model", m.kind)));
        }
        if m.max_input_chars_per_word != MAX_WORD_CHARS {
            return Err(unsupported(format!(
                "model {} with max_input_chars_per_word {}",
                m.kind, m.max_input_chars_per_word
            )));
        }
        let unk = *m
            .vocab
            .get(&m.unk_token)
            .ok_or_else(|| unsupported(format!("unk token {:?} not in the vocab", m.unk_token)))?;
        // The template must be [CLS] A [SEP]; read the two ids from it.
        let post = j.post_processor.unwrap_or_default();
        let single = post.get("single").and_then(|s| s.as_array());
        let shape: Option<Vec<(&str, &str)>> = single.map(|items| {
            items
                .iter()
                .filter_map(|it| {
                    let (kind, body) = it.as_object()?.iter().next()?;
                    Some((kind.as_str(), body.get("id")?.as_str()?))
                })
                .collect()
        });
        let special_id = |name: &str| -> Option<u32> {
            let ids = post
                .get("special_tokens")?
                .get(name)?
                .get("ids")?
                .as_array()?;
            match ids.as_slice() {
                [id] => id.as_u64().map(|v| v as u32),
                _ => None,
            }
        };
        let (cls, sep) = match shape.as_deref() {
            Some([("SpecialToken", c), ("Sequence", "A"), ("SpecialToken", s)]) => {
                match (special_id(c), special_id(s)) {
                    (Some(c), Some(s)) => (c, s),
                    _ => return Err(unsupported("template special tokens")),
                }
            }
            _ => return Err(unsupported(format!("post_processor {post}"))),
        };
        let mut specials = Vec::new();
        for t in j.added_tokens {
            if t.normalized || t.single_word || t.lstrip || t.rstrip || t.content.is_empty() {
                return Err(unsupported(format!("added token {:?}", t.content)));
            }
            specials.push((t.content, t.id));
        }
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        if max_len < 2 {
            return Err(Error::InvalidArgument(format!(
                "max length {max_len} leaves no room for [CLS] and [SEP]"
            )));
        }
        Ok(TextTokenizer {
            vocab: m.vocab,
            prefix: m.continuing_subword_prefix,
            unk,
            cls,
            sep,
            specials,
            max_len,
            lowercase,
            strip_accents,
        })
    }

    /// The maximum number of tokens (special tokens included).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Number of entries in the vocabulary (added tokens included).
    pub fn vocab_size(&self) -> usize {
        let extra = self
            .specials
            .iter()
            .filter(|(s, _)| !self.vocab.contains_key(s))
            .count();
        self.vocab.len() + extra
    }

    /// The capacity `ids` needs so that [`encode_into`](Self::encode_into)
    /// never grows it: the maximum length plus one word's pieces.
    pub fn ids_capacity(&self) -> usize {
        self.max_len + MAX_WORD_CHARS + 2
    }

    /// Tokenises one text. An empty text gives just the special tokens.
    pub fn encode(&self, text: &str) -> Result<Encoded> {
        let mut ids = Vec::with_capacity(self.ids_capacity());
        let truncated = self.encode_into(text, &mut Scratch::new(), &mut ids);
        let type_ids = vec![0; ids.len()];
        Ok(Encoded {
            ids,
            type_ids,
            truncated,
        })
    }

    /// Tokenises one text into `ids` (cleared first; give it a capacity of
    /// [`ids_capacity`](Self::ids_capacity) and it never grows) and returns
    /// whether the text was truncated. Allocates nothing.
    pub fn encode_into(&self, text: &str, scratch: &mut Scratch, ids: &mut Vec<u32>) -> bool {
        ids.clear();
        ids.push(self.cls);
        // Room for tokens before [SEP]: ids.len() may reach this.
        let room = self.max_len - 1;
        let mut truncated = false;
        let mut rest = text;
        while !rest.is_empty() && !truncated {
            let (plain, special) = self.split_special(rest);
            truncated = self.encode_plain(&rest[..plain], scratch, ids, room);
            match special {
                Some((len, id)) if !truncated => {
                    ids.push(id);
                    truncated = ids.len() > room;
                    if truncated {
                        ids.truncate(room);
                    }
                    rest = &rest[plain + len..];
                }
                _ => rest = &rest[plain..],
            }
        }
        ids.push(self.sep);
        truncated
    }

    /// The length of the text before the first added token, and that
    /// token's length and id (leftmost, then longest match).
    fn split_special(&self, text: &str) -> (usize, Option<(usize, u32)>) {
        let bytes = text.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            if !text.is_char_boundary(i) {
                continue;
            }
            for (s, id) in &self.specials {
                if s.as_bytes()[0] == b && bytes[i..].starts_with(s.as_bytes()) {
                    return (i, Some((s.len(), *id)));
                }
            }
        }
        (text.len(), None)
    }

    /// Normalises, pre-tokenises and WordPiece-encodes a text with no added
    /// tokens in it, appending to `ids`. Returns true if tokens were left
    /// over past `room`.
    fn encode_plain(&self, text: &str, s: &mut Scratch, ids: &mut Vec<u32>, room: usize) -> bool {
        s.word.clear();
        s.word_chars = 0;
        // BertNormalizer: clean_text, handle_chinese_chars, strip_accents
        // (NFD, drop non-spacing marks), lowercase; in that order; the
        // last two as the file says (cased models do neither).
        let cleaned = text
            .chars()
            .filter(|&c| !(c == '\0' || c == '\u{fffd}' || is_control(c)))
            .map(|c| if is_whitespace(c) { ' ' } else { c })
            .flat_map(pad_chinese);
        let stripped = |it: std::iter::FlatMap<_, _, _>| {
            it.nfd()
                .map(|(c, _)| c)
                .filter(|c: &char| !c.is_mark_nonspacing())
        };
        match (self.strip_accents, self.lowercase) {
            (true, true) => {
                self.pre_tokenize(stripped(cleaned).flat_map(char::to_lowercase), s, ids, room)
            }
            (true, false) => self.pre_tokenize(stripped(cleaned), s, ids, room),
            (false, true) => self.pre_tokenize(cleaned.flat_map(char::to_lowercase), s, ids, room),
            (false, false) => self.pre_tokenize(cleaned, s, ids, room),
        }
    }

    /// BertPreTokenizer and WordPiece over normalised chars.
    fn pre_tokenize(
        &self,
        chars: impl Iterator<Item = char>,
        s: &mut Scratch,
        ids: &mut Vec<u32>,
        room: usize,
    ) -> bool {
        // BertPreTokenizer: split on white space (dropped) and punctuation
        // (kept, one char per word).
        for c in chars {
            if c.is_whitespace() {
                if self.flush_word(s, ids, room) {
                    return true;
                }
            } else if is_punctuation(c) {
                if self.flush_word(s, ids, room) {
                    return true;
                }
                s.word.push(c);
                s.word_chars = 1;
                if self.flush_word(s, ids, room) {
                    return true;
                }
            } else {
                if s.word_chars <= MAX_WORD_CHARS {
                    s.word.push(c);
                }
                s.word_chars += 1;
            }
        }
        self.flush_word(s, ids, room)
    }

    /// WordPiece on the word in `s.word`, then clears it. Returns true if
    /// the word's tokens did not all fit below `room`.
    fn flush_word(&self, s: &mut Scratch, ids: &mut Vec<u32>, room: usize) -> bool {
        if s.word_chars == 0 {
            return false;
        }
        let start_len = ids.len();
        if s.word_chars > MAX_WORD_CHARS {
            ids.push(self.unk);
        } else {
            let word = s.word.as_str();
            let mut start = 0;
            while start < word.len() {
                let mut end = word.len();
                let mut found = None;
                while start < end {
                    s.candidate.clear();
                    if start > 0 {
                        s.candidate.push_str(&self.prefix);
                    }
                    s.candidate.push_str(&word[start..end]);
                    if let Some(&id) = self.vocab.get(s.candidate.as_str()) {
                        found = Some(id);
                        break;
                    }
                    end -= word[..end].chars().next_back().map_or(1, char::len_utf8);
                }
                match found {
                    Some(id) => {
                        ids.push(id);
                        start = end;
                    }
                    None => {
                        // The whole word is one [UNK], as in `tokenizers`.
                        ids.truncate(start_len);
                        ids.push(self.unk);
                        break;
                    }
                }
            }
        }
        s.word.clear();
        s.word_chars = 0;
        if ids.len() > room {
            ids.truncate(room);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_json() -> Vec<u8> {
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/tiny/tokenizer.json"
        ))
        .unwrap()
    }

    fn tiny() -> TextTokenizer {
        TextTokenizer::from_bytes(&tiny_json(), 32).unwrap()
    }

    #[test]
    fn empty_text_is_just_the_special_tokens() {
        let t = tiny();
        let e = t.encode("").unwrap();
        assert_eq!(e.ids, vec![t.cls, t.sep]);
        assert!(!e.truncated);
        assert_eq!(t.encode(" \t\n").unwrap().ids, vec![t.cls, t.sep]);
    }

    #[test]
    fn truncates_at_max_len() {
        let t = tiny();
        let e = t.encode(&"a ".repeat(100)).unwrap();
        assert_eq!(e.ids.len(), 32);
        assert!(e.truncated);
        assert_eq!(*e.ids.last().unwrap(), t.sep);
        let e = t.encode(&"a ".repeat(30)).unwrap();
        assert_eq!(e.ids.len(), 32);
        assert!(!e.truncated);
    }

    #[test]
    fn encode_into_never_grows_its_buffers() {
        let t = tiny();
        let mut s = Scratch::new();
        let mut ids = Vec::with_capacity(t.ids_capacity());
        let (cap, wcap, ccap) = (ids.capacity(), s.word.capacity(), s.candidate.capacity());
        for text in [
            "x".repeat(5000),
            "é".repeat(99),
            "ab ".repeat(400),
            "東".repeat(300),
            "[SEP]".repeat(50),
        ] {
            t.encode_into(&text, &mut s, &mut ids);
            assert!(ids.len() <= t.max_len());
        }
        assert_eq!(
            (ids.capacity(), s.word.capacity(), s.candidate.capacity()),
            (cap, wcap, ccap)
        );
    }

    #[test]
    fn refuses_other_configurations() {
        let mut v: serde_json::Value = serde_json::from_slice(&tiny_json()).unwrap();
        v["normalizer"]["handle_chinese_chars"] = false.into();
        let err = TextTokenizer::from_bytes(v.to_string().as_bytes(), 32).unwrap_err();
        assert!(
            err.to_string().contains("unsupported tokenizer.json"),
            "{err}"
        );
        assert!(TextTokenizer::from_bytes(b"{}", 32).is_err());
        // BPE (RoBERTa) and Unigram (XLM-R) files are named as such.
        let bpe = r#"{"added_tokens":[],"normalizer":null,"pre_tokenizer":null,"post_processor":null,
            "model":{"type":"BPE","vocab":{"a":0},"merges":[]}}"#;
        let unigram =
            r#"{"added_tokens":[],"model":{"type":"Unigram","unk_id":0,"vocab":[["<unk>",0.0]]}}"#;
        for (json, kind) in [(bpe, "a BPE model"), (unigram, "a Unigram model")] {
            let err = TextTokenizer::from_bytes(json.as_bytes(), 32)
                .unwrap_err()
                .to_string();
            assert!(err.contains(kind) && err.contains("WordPiece"), "{err}");
        }
    }
}
