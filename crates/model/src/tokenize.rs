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
//! Any other `tokenizer.json` (BPE, Unigram, WordPiece in another
//! configuration) goes to the `tokenizers` crate when the `hf-tokenizers`
//! feature is on (`crate::hf_tokenizer`, allocating per text), and is
//! otherwise refused at load time with a clear error, never silently
//! tokenised differently.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};

use serde::Deserialize;
use unicode_categories::UnicodeCategories;
use unicode_normalization_alignments::UnicodeNormalization;

use crate::error::{Error, Result};

/// A text turned into model input ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids including the special tokens (`[CLS] … [SEP]`).
    pub ids: Vec<u32>,
    /// Each token's byte span in the original text, as the `tokenizers`
    /// crate gives it: a word piece spans the original chars its normalised
    /// chars came from; `[CLS]` and `[SEP]` are `(0, 0)`.
    pub offsets: Vec<Span>,
    /// Segment ids (all 0 for a single text).
    pub type_ids: Vec<u32>,
    /// Whether the text was cut to fit `max_len`.
    pub truncated: bool,
}

/// `max_input_chars_per_word` supported (BERT's value).
const MAX_WORD_CHARS: usize = 100;

/// A byte range `start..end` in the original text.
pub type Span = (u32, u32);

/// Reusable working memory for [`TextTokenizer::encode_into`]: the current
/// word, the WordPiece candidate and the tokens' spans. Made by
/// [`TextTokenizer::scratch`], sized once; a text never makes it grow
/// (short of a run of more combining marks than `PENDING` in one place,
/// which the normaliser's own buffer also grows for).
#[derive(Debug)]
pub struct Scratch {
    w: Words,
    /// Spans of the chars handed to NFD whose first decomposed char has
    /// not come out yet.
    pending: RefCell<VecDeque<Span>>,
}

/// The part of [`Scratch`] the pre-tokenizer writes.
#[derive(Debug)]
struct Words {
    word: String,
    word_chars: usize,
    /// Per stored char of `word`: its byte offset in `word` and its span.
    chars: Vec<(u32, Span)>,
    /// The span of the word's last char (a word over MAX_WORD_CHARS chars
    /// is one `[UNK]` spanning all of them).
    last: Span,
    candidate: String,
    /// One span per id written by the last `encode_into`.
    spans: Vec<Span>,
}

/// Combining marks in a row that NFD reorders without growing `pending`.
const PENDING: usize = 32;

impl Default for Scratch {
    fn default() -> Self {
        Scratch::new()
    }
}

impl Scratch {
    /// Working memory for any tokenizer; [`TextTokenizer::scratch`] also
    /// sizes the span buffer for its maximum length.
    pub fn new() -> Scratch {
        Scratch {
            w: Words {
                // A word of more than MAX_WORD_CHARS chars is [UNK] and is
                // not stored past that, so 4 bytes per char bounds both.
                word: String::with_capacity(4 * MAX_WORD_CHARS + 8),
                word_chars: 0,
                chars: Vec::with_capacity(MAX_WORD_CHARS + 1),
                last: (0, 0),
                candidate: String::with_capacity(4 * MAX_WORD_CHARS + 24),
                spans: Vec::new(),
            },
            pending: RefCell::new(VecDeque::with_capacity(PENDING)),
        }
    }

    /// The byte span in the text of each id the last
    /// [`encode_into`](TextTokenizer::encode_into) wrote (`(0, 0)` for
    /// `[CLS]` and `[SEP]`).
    pub fn offsets(&self) -> &[Span] {
        &self.w.spans
    }
}

/// The bundle's tokenizer, truncating at the model's maximum length and
/// never padding (the engine pads to its length bucket): the own WordPiece
/// for the BERT files it reads, else (with the `hf-tokenizers` feature) the
/// `tokenizers` crate.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    imp: Imp,
}

#[derive(Debug, Clone)]
enum Imp {
    WordPiece(WordPiece),
    #[cfg(feature = "hf-tokenizers")]
    Hf(Box<crate::hf_tokenizer::HfTokenizer>),
}

/// The own BERT WordPiece: allocation-free per text.
#[derive(Clone)]
struct WordPiece {
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

impl std::fmt::Debug for WordPiece {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WordPiece")
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
    #[cfg(feature = "hf-tokenizers")]
    let reads = "its own tokenizer reads BERT WordPiece files";
    #[cfg(not(feature = "hf-tokenizers"))]
    let reads = "this build reads BERT WordPiece files only; build edge-bert with the \
        `hf-tokenizers` feature for BPE and Unigram files";
    Error::Tokenizer(format!("unsupported tokenizer.json: {what} ({reads})"))
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

/// A normalised char and the span of the original char it came from.
type Char = (char, Span);

/// Up to three chars: a CJK char padded with spaces (all three spanning
/// it, as in `tokenizers`), or one char.
struct Padded {
    chars: [char; 3],
    span: Span,
    next: usize,
    end: usize,
}

impl Iterator for Padded {
    type Item = Char;
    fn next(&mut self) -> Option<Char> {
        (self.next < self.end).then(|| {
            self.next += 1;
            (self.chars[self.next - 1], self.span)
        })
    }
}

fn pad_chinese((c, span): Char) -> Padded {
    if is_chinese_char(c) {
        Padded {
            chars: [' ', c, ' '],
            span,
            next: 0,
            end: 3,
        }
    } else {
        Padded {
            chars: [c, ' ', ' '],
            span,
            next: 0,
            end: 1,
        }
    }
}

/// Hands NFD its input chars, noting each one's span in `pending`.
struct Tap<'a, I> {
    chars: I,
    pending: &'a RefCell<VecDeque<Span>>,
}

impl<I: Iterator<Item = Char>> Iterator for Tap<'_, I> {
    type Item = char;
    fn next(&mut self) -> Option<char> {
        let (c, span) = self.chars.next()?;
        self.pending.borrow_mut().push_back(span);
        Some(c)
    }
}

/// NFD with spans, aligned as `tokenizers` aligns it: each output char
/// that replaces an input char takes the next pending span in order, and a
/// char the decomposition added takes the span before it.
struct Nfd<'a, I: Iterator<Item = Char>> {
    inner: unicode_normalization_alignments::Decompositions<Tap<'a, I>>,
    pending: &'a RefCell<VecDeque<Span>>,
    last: Span,
}

impl<I: Iterator<Item = Char>> Iterator for Nfd<'_, I> {
    type Item = Char;
    fn next(&mut self) -> Option<Char> {
        let (c, change) = self.inner.next()?;
        if change <= 0 {
            if let Some(span) = self.pending.borrow_mut().pop_front() {
                self.last = span;
            }
        }
        Some((c, self.last))
    }
}

fn nfd<'a, I: Iterator<Item = Char>>(chars: I, pending: &'a RefCell<VecDeque<Span>>) -> Nfd<'a, I> {
    pending.borrow_mut().clear();
    Nfd {
        inner: Tap { chars, pending }.nfd(),
        pending,
        last: (0, 0),
    }
}

impl TextTokenizer {
    /// Parses a `tokenizer.json` and sets truncation to `max_len` tokens
    /// (special tokens included). A BERT WordPiece file gets the own
    /// tokenizer; any other file, with the `hf-tokenizers` feature, the
    /// `tokenizers` crate (its post-processor must put one special token
    /// before the text and one after, as `[CLS] A [SEP]` or `<s> A </s>`).
    pub fn from_bytes(json: &[u8], max_len: usize) -> Result<TextTokenizer> {
        let own = match WordPiece::from_bytes(json, max_len) {
            Ok(w) => {
                return Ok(TextTokenizer {
                    imp: Imp::WordPiece(w),
                })
            }
            Err(Error::Tokenizer(why)) => why,
            Err(e) => return Err(e),
        };
        #[cfg(feature = "hf-tokenizers")]
        {
            match crate::hf_tokenizer::HfTokenizer::from_bytes(json, max_len) {
                Ok(h) => {
                    log::info!(
                        "tokenizer.json: {} model, read with the tokenizers crate ({own})",
                        h.kind()
                    );
                    Ok(TextTokenizer {
                        imp: Imp::Hf(Box::new(h)),
                    })
                }
                Err(e) => Err(Error::Tokenizer(format!(
                    "{own}; the tokenizers crate: {e}"
                ))),
            }
        }
        #[cfg(not(feature = "hf-tokenizers"))]
        Err(Error::Tokenizer(own))
    }

    /// The tokenizer's model and who runs it: `WordPiece` (own, allocation
    /// free), or e.g. `BPE (tokenizers crate)`.
    pub fn kind(&self) -> String {
        match &self.imp {
            Imp::WordPiece(_) => "WordPiece".into(),
            #[cfg(feature = "hf-tokenizers")]
            Imp::Hf(h) => format!("{} (tokenizers crate)", h.kind()),
        }
    }

    /// Whether encoding allocates nothing per text (the own WordPiece).
    pub fn allocation_free(&self) -> bool {
        matches!(self.imp, Imp::WordPiece(_))
    }

    /// The maximum number of tokens (special tokens included).
    pub fn max_len(&self) -> usize {
        match &self.imp {
            Imp::WordPiece(w) => w.max_len(),
            #[cfg(feature = "hf-tokenizers")]
            Imp::Hf(h) => h.max_len(),
        }
    }

    /// Number of entries in the vocabulary (added tokens included).
    pub fn vocab_size(&self) -> usize {
        match &self.imp {
            Imp::WordPiece(w) => w.vocab_size(),
            #[cfg(feature = "hf-tokenizers")]
            Imp::Hf(h) => h.vocab_size(),
        }
    }

    /// The capacity `ids` needs so that [`encode_into`](Self::encode_into)
    /// never grows it.
    pub fn ids_capacity(&self) -> usize {
        match &self.imp {
            Imp::WordPiece(w) => w.ids_capacity(),
            #[cfg(feature = "hf-tokenizers")]
            Imp::Hf(h) => h.max_len(),
        }
    }

    /// Working memory for [`encode_into`](Self::encode_into), sized so
    /// that no text makes it grow.
    pub fn scratch(&self) -> Scratch {
        let mut s = Scratch::new();
        s.w.spans.reserve_exact(self.ids_capacity());
        s
    }

    /// Tokenises one text. An empty text gives just the special tokens.
    pub fn encode(&self, text: &str) -> Result<Encoded> {
        let mut ids = Vec::with_capacity(self.ids_capacity());
        let mut scratch = self.scratch();
        let truncated = self.encode_into(text, &mut scratch, &mut ids)?;
        let type_ids = vec![0; ids.len()];
        Ok(Encoded {
            ids,
            offsets: scratch.w.spans,
            type_ids,
            truncated,
        })
    }

    /// Tokenises one text into `ids` (cleared first; give it a capacity of
    /// [`ids_capacity`](Self::ids_capacity) and it never grows) and returns
    /// whether the text was truncated; each id's span in `text` is then in
    /// [`Scratch::offsets`] (`(0, 0)` for the special tokens). The own
    /// WordPiece allocates nothing and never fails; the `tokenizers` crate
    /// allocates per text.
    pub fn encode_into(
        &self,
        text: &str,
        scratch: &mut Scratch,
        ids: &mut Vec<u32>,
    ) -> Result<bool> {
        match &self.imp {
            Imp::WordPiece(w) => Ok(w.encode_into(text, scratch, ids)),
            #[cfg(feature = "hf-tokenizers")]
            Imp::Hf(h) => h.encode_into(text, &mut scratch.w.spans, ids),
        }
    }
}

impl WordPiece {
    fn from_bytes(json: &[u8], max_len: usize) -> Result<WordPiece> {
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
        Ok(WordPiece {
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

    fn max_len(&self) -> usize {
        self.max_len
    }

    fn vocab_size(&self) -> usize {
        let extra = self
            .specials
            .iter()
            .filter(|(s, _)| !self.vocab.contains_key(s))
            .count();
        self.vocab.len() + extra
    }

    /// The maximum length plus one word's pieces.
    fn ids_capacity(&self) -> usize {
        self.max_len + MAX_WORD_CHARS + 2
    }

    /// Tokenises one text into `ids` (cleared first; give it a capacity of
    /// [`ids_capacity`](Self::ids_capacity) and it never grows) and returns
    /// whether the text was truncated; each id's span in `text` is then in
    /// [`Scratch::offsets`]. Allocates nothing.
    fn encode_into(&self, text: &str, scratch: &mut Scratch, ids: &mut Vec<u32>) -> bool {
        ids.clear();
        scratch.w.spans.clear();
        ids.push(self.cls);
        scratch.w.spans.push((0, 0));
        // Room for tokens before [SEP]: ids.len() may reach this.
        let room = self.max_len - 1;
        let mut truncated = false;
        let mut at = 0;
        while at < text.len() && !truncated {
            let rest = &text[at..];
            let (plain, special) = self.split_special(rest);
            truncated = self.encode_plain(&rest[..plain], at, scratch, ids, room);
            match special {
                Some((len, id)) if !truncated => {
                    ids.push(id);
                    let start = (at + plain) as u32;
                    scratch.w.spans.push((start, start + len as u32));
                    truncated = ids.len() > room;
                    if truncated {
                        ids.truncate(room);
                        scratch.w.spans.truncate(room);
                    }
                    at += plain + len;
                }
                _ => at += plain,
            }
        }
        ids.push(self.sep);
        scratch.w.spans.push((0, 0));
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
    /// tokens in it (starting at byte `base` of the whole text), appending
    /// to `ids`. Returns true if tokens were left over past `room`.
    fn encode_plain(
        &self,
        text: &str,
        base: usize,
        s: &mut Scratch,
        ids: &mut Vec<u32>,
        room: usize,
    ) -> bool {
        let w = &mut s.w;
        w.word.clear();
        w.chars.clear();
        w.word_chars = 0;
        // BertNormalizer: clean_text, handle_chinese_chars, strip_accents
        // (NFD, drop non-spacing marks), lowercase; in that order; the
        // last two as the file says (cased models do neither). Each char
        // carries the span of the original char it came from.
        let cleaned = text
            .char_indices()
            .map(|(i, c)| {
                let start = (base + i) as u32;
                (c, (start, start + c.len_utf8() as u32))
            })
            .filter(|&(c, _)| !(c == '\0' || c == '\u{fffd}' || is_control(c)))
            .map(|(c, span)| (if is_whitespace(c) { ' ' } else { c }, span))
            .flat_map(pad_chinese);
        let pending = &s.pending;
        let stripped = |it| nfd(it, pending).filter(|&(c, _)| !c.is_mark_nonspacing());
        let lower = |(c, span): Char| c.to_lowercase().map(move |l| (l, span));
        match (self.strip_accents, self.lowercase) {
            (true, true) => self.pre_tokenize(stripped(cleaned).flat_map(lower), w, ids, room),
            (true, false) => self.pre_tokenize(stripped(cleaned), w, ids, room),
            (false, true) => self.pre_tokenize(cleaned.flat_map(lower), w, ids, room),
            (false, false) => self.pre_tokenize(cleaned, w, ids, room),
        }
    }

    /// BertPreTokenizer and WordPiece over normalised chars.
    fn pre_tokenize(
        &self,
        chars: impl Iterator<Item = Char>,
        w: &mut Words,
        ids: &mut Vec<u32>,
        room: usize,
    ) -> bool {
        // BertPreTokenizer: split on white space (dropped) and punctuation
        // (kept, one char per word).
        for (c, span) in chars {
            if c.is_whitespace() {
                if self.flush_word(w, ids, room) {
                    return true;
                }
            } else if is_punctuation(c) {
                if self.flush_word(w, ids, room) {
                    return true;
                }
                w.push(c, span);
                if self.flush_word(w, ids, room) {
                    return true;
                }
            } else {
                w.push(c, span);
            }
        }
        self.flush_word(w, ids, room)
    }

    /// WordPiece on the word in `w.word`, then clears it. Returns true if
    /// the word's tokens did not all fit below `room`.
    fn flush_word(&self, w: &mut Words, ids: &mut Vec<u32>, room: usize) -> bool {
        if w.word_chars == 0 {
            return false;
        }
        let start_len = ids.len();
        let whole = (w.chars[0].1 .0, w.last.1);
        if w.word_chars > MAX_WORD_CHARS {
            ids.push(self.unk);
            w.spans.push(whole);
        } else {
            let word = w.word.as_str();
            let mut start = 0;
            while start < word.len() {
                let mut end = word.len();
                let mut found = None;
                while start < end {
                    w.candidate.clear();
                    if start > 0 {
                        w.candidate.push_str(&self.prefix);
                    }
                    w.candidate.push_str(&word[start..end]);
                    if let Some(&id) = self.vocab.get(w.candidate.as_str()) {
                        found = Some(id);
                        break;
                    }
                    end -= word[..end].chars().next_back().map_or(1, char::len_utf8);
                }
                match found {
                    Some(id) => {
                        ids.push(id);
                        w.spans.push(w.piece_span(start, end));
                        start = end;
                    }
                    None => {
                        // The whole word is one [UNK], as in `tokenizers`.
                        ids.truncate(start_len);
                        w.spans.truncate(start_len);
                        ids.push(self.unk);
                        w.spans.push(whole);
                        break;
                    }
                }
            }
        }
        w.word.clear();
        w.chars.clear();
        w.word_chars = 0;
        if ids.len() > room {
            ids.truncate(room);
            w.spans.truncate(room);
            true
        } else {
            false
        }
    }
}

impl Words {
    /// Adds a char to the current word (stored up to MAX_WORD_CHARS + 1,
    /// enough to know it is too long).
    fn push(&mut self, c: char, span: Span) {
        if self.word_chars <= MAX_WORD_CHARS {
            self.chars.push((self.word.len() as u32, span));
            self.word.push(c);
        }
        self.word_chars += 1;
        self.last = span;
    }

    /// The span of the word's bytes `start..end`: from its first char's
    /// original start to its last char's original end.
    fn piece_span(&self, start: usize, end: usize) -> Span {
        let first = self.chars.partition_point(|&(at, _)| (at as usize) < start);
        let last = self.chars.partition_point(|&(at, _)| (at as usize) < end) - 1;
        (self.chars[first].1 .0, self.chars[last].1 .1)
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

    /// The own tokenizer's `[CLS]` and `[SEP]` ids.
    fn cls_sep(t: &TextTokenizer) -> (u32, u32) {
        match &t.imp {
            Imp::WordPiece(w) => (w.cls, w.sep),
            #[cfg(feature = "hf-tokenizers")]
            Imp::Hf(_) => panic!("not the own WordPiece"),
        }
    }

    #[test]
    fn empty_text_is_just_the_special_tokens() {
        let t = tiny();
        let (cls, sep) = cls_sep(&t);
        let e = t.encode("").unwrap();
        assert_eq!(e.ids, vec![cls, sep]);
        assert!(!e.truncated);
        assert_eq!(t.encode(" \t\n").unwrap().ids, vec![cls, sep]);
    }

    #[test]
    fn truncates_at_max_len() {
        let t = tiny();
        let e = t.encode(&"a ".repeat(100)).unwrap();
        assert_eq!(e.ids.len(), 32);
        assert!(e.truncated);
        assert_eq!(*e.ids.last().unwrap(), cls_sep(&t).1);
        let e = t.encode(&"a ".repeat(30)).unwrap();
        assert_eq!(e.ids.len(), 32);
        assert!(!e.truncated);
    }

    #[test]
    fn encode_into_never_grows_its_buffers() {
        let t = tiny();
        let mut s = t.scratch();
        let mut ids = Vec::with_capacity(t.ids_capacity());
        let caps = |s: &Scratch| {
            (
                s.w.word.capacity(),
                s.w.candidate.capacity(),
                s.w.chars.capacity(),
                s.w.spans.capacity(),
                s.pending.borrow().capacity(),
            )
        };
        let (cap, scap) = (ids.capacity(), caps(&s));
        for text in [
            "x".repeat(5000),
            "é".repeat(99),
            "ab ".repeat(400),
            "東".repeat(300),
            "e\u{301}".repeat(300),
            "[SEP]".repeat(50),
        ] {
            t.encode_into(&text, &mut s, &mut ids).unwrap();
            assert!(ids.len() <= t.max_len());
            assert_eq!(s.offsets().len(), ids.len());
        }
        assert_eq!((ids.capacity(), caps(&s)), (cap, scap));
    }

    #[test]
    fn refuses_other_configurations() {
        let mut v: serde_json::Value = serde_json::from_slice(&tiny_json()).unwrap();
        v["normalizer"]["handle_chinese_chars"] = false.into();
        let other = TextTokenizer::from_bytes(v.to_string().as_bytes(), 32);
        // A WordPiece file the own tokenizer does not read: the tokenizers
        // crate reads it where the build has it, else it is refused.
        #[cfg(feature = "hf-tokenizers")]
        assert!(!other.unwrap().allocation_free());
        #[cfg(not(feature = "hf-tokenizers"))]
        {
            let err = other.unwrap_err();
            assert!(
                err.to_string().contains("unsupported tokenizer.json"),
                "{err}"
            );
        }
        assert!(TextTokenizer::from_bytes(&tiny_json(), 32)
            .unwrap()
            .allocation_free());
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
