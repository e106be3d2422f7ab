//! The second tokenizer path, behind the `hf-tokenizers` feature: any
//! `tokenizer.json` the own WordPiece ([`crate::tokenize`]) does not read,
//! run by the `tokenizers` crate. That covers BPE (RoBERTa, GPT-2's byte
//! level), Unigram (XLM-R, DeBERTa-v3) and WordPiece files in another
//! configuration. Unlike the own WordPiece it allocates on every text.
//!
//! The file's post-processor must put exactly one special token before the
//! text and one after it (`[CLS] A [SEP]`, `<s> A </s>`): the classifier
//! reads the first token's vector (CLS pooling) and NER leaves out the two
//! ends. Other layouts are refused at load with what the file gives.

use tokenizers::models::ModelWrapper;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{Error, Result};
use crate::tokenize::Span;

/// A `tokenizer.json` run by the `tokenizers` crate, truncating at the
/// model's maximum length and never padding.
#[derive(Clone)]
pub(crate) struct HfTokenizer {
    tok: Tokenizer,
    max_len: usize,
    /// The model's type as the file names it (`BPE`, `Unigram`, ...).
    kind: &'static str,
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfTokenizer")
            .field("kind", &self.kind)
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

fn error(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

impl HfTokenizer {
    pub(crate) fn from_bytes(json: &[u8], max_len: usize) -> Result<HfTokenizer> {
        if max_len < 2 {
            return Err(Error::InvalidArgument(format!(
                "max length {max_len} leaves no room for the two special tokens"
            )));
        }
        let mut tok = Tokenizer::from_bytes(json).map_err(error)?;
        let kind = match tok.get_model() {
            ModelWrapper::BPE(_) => "BPE",
            ModelWrapper::WordPiece(_) => "WordPiece",
            ModelWrapper::WordLevel(_) => "WordLevel",
            ModelWrapper::Unigram(_) => "Unigram",
        };
        tok.with_padding(None);
        tok.with_truncation(Some(TruncationParams {
            max_length: max_len,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: TruncationDirection::Right,
        }))
        .map_err(error)?;
        let probe = tok.encode("a b", true).map_err(error)?;
        let mask = probe.get_special_tokens_mask();
        let n = mask.len();
        let layout_ok =
            n >= 3 && mask[0] == 1 && mask[n - 1] == 1 && mask[1..n - 1].iter().all(|&m| m == 0);
        if !layout_ok {
            return Err(Error::Tokenizer(format!(
                "a {kind} tokenizer whose post_processor gives {:?} for \"a b\"; edge-bert needs one \
                 special token before the text and one after (as [CLS] A [SEP] or <s> A </s>)",
                probe.get_tokens()
            )));
        }
        Ok(HfTokenizer { tok, max_len, kind })
    }

    pub(crate) fn kind(&self) -> &str {
        self.kind
    }

    pub(crate) fn max_len(&self) -> usize {
        self.max_len
    }

    pub(crate) fn vocab_size(&self) -> usize {
        self.tok.get_vocab_size(true)
    }

    /// Encodes `text` into `ids` and each id's byte span into `spans`
    /// (`(0, 0)` for special tokens; a span is widened to the chars it
    /// touches, as a byte-level piece may end inside one); true when the
    /// text was cut at the maximum length.
    pub(crate) fn encode_into(
        &self,
        text: &str,
        spans: &mut Vec<Span>,
        ids: &mut Vec<u32>,
    ) -> Result<bool> {
        let enc = self.tok.encode(text, true).map_err(error)?;
        ids.clear();
        ids.extend_from_slice(enc.get_ids());
        spans.clear();
        spans.extend(
            enc.get_offsets()
                .iter()
                .zip(enc.get_special_tokens_mask())
                .map(|(&(a, b), &special)| {
                    if special == 1 {
                        (0, 0)
                    } else {
                        let (a, b) = (floor_char(text, a), ceil_char(text, b.max(a)));
                        (a as u32, b as u32)
                    }
                }),
        );
        Ok(!enc.get_overflowing().is_empty())
    }
}

/// The char boundary at or before byte `i` (clamped to the text).
fn floor_char(text: &str, mut i: usize) -> usize {
    i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The char boundary at or after byte `i` (clamped to the text).
fn ceil_char(text: &str, mut i: usize) -> usize {
    i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_snap_to_char_boundaries() {
        let t = "a東b";
        assert_eq!((floor_char(t, 2), ceil_char(t, 2)), (1, 4));
        assert_eq!((floor_char(t, 9), ceil_char(t, 9)), (5, 5));
        assert_eq!((floor_char(t, 0), ceil_char(t, 4)), (0, 4));
    }
}
