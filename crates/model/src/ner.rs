//! Named-entity recognition's post-processing, pure: a token-classification
//! model's per-token labels (BIO / IOB2 tags such as `O`, `B-PER`, `I-PER`)
//! merged into entities with byte spans in the original text.
//!
//! The merge is the `simple` aggregation of Hugging Face's token
//! classification pipeline: each token takes its most probable tag; `B-X`
//! starts an entity of type `X`; `I-X` continues an open `X` entity and
//! otherwise starts one (a lenient IOB2 reading, so a model that skips the
//! `B-` still yields its entity); `O` closes it. An entity spans from its
//! first token's start to its last token's end, and its score is the mean
//! of its tokens' tag probabilities.

use crate::tokenize::Span;

/// One tag of a BIO label set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// `O`: outside any entity.
    Outside,
    /// `B-X`: the first token of an entity of type `X` (index into
    /// [`TagSet::types`]).
    Begin(u16),
    /// `I-X`: a later token of an entity of type `X`.
    Inside(u16),
}

/// A model's labels read as BIO tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagSet {
    tags: Vec<Tag>,
    types: Vec<String>,
}

impl TagSet {
    /// Reads `labels` (in logit order) as BIO tags: `O`, and `B-X` / `I-X`
    /// for each entity type `X` (`B-` and `I-` both required).
    pub fn parse(labels: &[String]) -> Result<TagSet, String> {
        let mut types: Vec<String> = Vec::new();
        let mut tags = Vec::with_capacity(labels.len());
        let mut type_of = |name: &str| -> Result<u16, String> {
            if name.is_empty() {
                return Err("an entity tag needs a type after B- or I-".into());
            }
            let ix = match types.iter().position(|t| t == name) {
                Some(ix) => ix,
                None => {
                    types.push(name.to_string());
                    types.len() - 1
                }
            };
            u16::try_from(ix).map_err(|_| "too many entity types".to_string())
        };
        for l in labels {
            let tag = if l == "O" {
                Tag::Outside
            } else if let Some(t) = l.strip_prefix("B-") {
                Tag::Begin(type_of(t)?)
            } else if let Some(t) = l.strip_prefix("I-") {
                Tag::Inside(type_of(t)?)
            } else {
                return Err(format!(
                    "label {l:?} is not a BIO tag (O, B-TYPE or I-TYPE)"
                ));
            };
            if tags.contains(&tag) {
                return Err(format!("label {l:?} is given twice"));
            }
            tags.push(tag);
        }
        if !tags.contains(&Tag::Outside) {
            return Err("the labels have no O tag".into());
        }
        for (ix, name) in types.iter().enumerate() {
            let ix = ix as u16;
            if !tags.contains(&Tag::Begin(ix)) || !tags.contains(&Tag::Inside(ix)) {
                return Err(format!(
                    "entity type {name:?} needs both B-{name} and I-{name}"
                ));
            }
        }
        if types.is_empty() {
            return Err("the labels name no entity type (B-TYPE, I-TYPE)".into());
        }
        Ok(TagSet { tags, types })
    }

    /// The tag of label `i`.
    pub fn tag(&self, i: usize) -> Tag {
        self.tags[i]
    }

    /// How many labels (tags) there are.
    pub fn len(&self) -> usize {
        self.tags.len()
    }

    /// Whether there are no labels (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    /// The entity types, in the order their tags first appear.
    pub fn types(&self) -> &[String] {
        &self.types
    }
}

/// One entity found in a text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Entity {
    /// Its type: an index into [`TagSet::types`].
    pub kind: u16,
    /// Its byte span in the text.
    pub span: Span,
    /// The mean probability of its tokens' tags.
    pub score: f32,
    /// How many tokens it covers.
    pub tokens: u32,
}

/// Merges tokens, each `(label index, probability, span)` in text order
/// (special tokens left out), into `out` (cleared first). At most one
/// entity per token is written, so `out` with a capacity of the token count
/// never grows.
pub fn merge_into(
    tags: &TagSet,
    tokens: impl IntoIterator<Item = (usize, f32, Span)>,
    out: &mut Vec<Entity>,
) {
    out.clear();
    let mut open: Option<Entity> = None;
    for (label, prob, span) in tokens {
        let (start, kind) = match tags.tag(label) {
            Tag::Outside => (false, None),
            Tag::Begin(k) => (true, Some(k)),
            Tag::Inside(k) => (open.is_none_or(|e| e.kind != k), Some(k)),
        };
        if start || kind.is_none() {
            if let Some(mut e) = open.take() {
                e.score /= e.tokens as f32;
                out.push(e);
            }
        }
        match (kind, open.as_mut()) {
            (Some(k), None) => {
                open = Some(Entity {
                    kind: k,
                    span,
                    score: prob,
                    tokens: 1,
                })
            }
            (Some(_), Some(e)) => {
                e.span.1 = e.span.1.max(span.1);
                e.score += prob;
                e.tokens += 1;
            }
            (None, _) => {}
        }
    }
    if let Some(mut e) = open {
        e.score /= e.tokens as f32;
        out.push(e);
    }
}

/// The char (Unicode scalar) offsets of byte span `span` of `text`, for
/// clients that index text by chars. `span` must lie on char boundaries.
pub fn char_span(text: &str, span: Span) -> (usize, usize) {
    let (a, b) = (span.0 as usize, span.1 as usize);
    let start = text[..a].chars().count();
    (start, start + text[a..b].chars().count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set() -> TagSet {
        let labels: Vec<String> = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        TagSet::parse(&labels).unwrap()
    }

    fn labels(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_bio_labels_and_refuses_others() {
        let t = set();
        assert_eq!(t.types(), ["PER", "LOC"]);
        assert_eq!(t.tag(0), Tag::Outside);
        assert_eq!(t.tag(4), Tag::Inside(1));
        for (bad, why) in [
            (labels(&["O", "B-PER"]), "needs both"),
            (labels(&["O", "PER"]), "not a BIO tag"),
            (labels(&["B-PER", "I-PER"]), "no O tag"),
            (labels(&["O"]), "no entity type"),
            (labels(&["O", "B-", "I-"]), "needs a type"),
            (labels(&["O", "B-X", "I-X", "B-X"]), "twice"),
        ] {
            let err = TagSet::parse(&bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn merges_bio_runs() {
        // "Ada Lovelace visited Paris ." : B-PER I-PER O B-LOC O
        let tokens = [
            (1, 0.9, (0, 3)),
            (2, 0.7, (4, 12)),
            (0, 0.99, (13, 20)),
            (3, 0.8, (21, 26)),
            (0, 0.9, (27, 28)),
        ];
        let mut out = Vec::with_capacity(5);
        merge_into(&set(), tokens, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].kind, out[0].span, out[0].tokens), (0, (0, 12), 2));
        assert!((out[0].score - 0.8).abs() < 1e-6);
        assert_eq!((out[1].kind, out[1].span), (1, (21, 26)));
    }

    #[test]
    fn lenient_inside_and_type_changes() {
        // I-PER with nothing open starts PER; I-LOC after PER starts LOC;
        // B-PER after PER starts a second PER.
        let tokens = [
            (2, 0.5, (0, 1)),
            (4, 0.5, (2, 3)),
            (1, 0.5, (4, 5)),
            (1, 0.5, (6, 7)),
        ];
        let mut out = Vec::new();
        merge_into(&set(), tokens, &mut out);
        let kinds: Vec<_> = out.iter().map(|e| (e.kind, e.span)).collect();
        assert_eq!(kinds, [(0, (0, 1)), (1, (2, 3)), (0, (4, 5)), (0, (6, 7))]);
        merge_into(&set(), [(0, 1.0, (0, 1))], &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn char_spans_count_chars() {
        let text = "né à Zürich";
        let (a, b) = (text.find("Zürich").unwrap(), text.len());
        assert_eq!(char_span(text, (a as u32, b as u32)), (5, 11));
    }

    proptest! {
        /// Entities are in order, disjoint, inside the tokens' spans, one
        /// per token at most; every non-O token is in exactly one, and no
        /// O token is in any.
        #[test]
        fn merged_entities_cover_exactly_the_tagged_tokens(
            labels in proptest::collection::vec(0usize..5, 0..40),
            probs in proptest::collection::vec(0.0f32..=1.0, 40),
        ) {
            let tokens: Vec<(usize, f32, Span)> = labels
                .iter()
                .enumerate()
                .map(|(i, &l)| (l, probs[i], (2 * i as u32, 2 * i as u32 + 1)))
                .collect();
            let mut out = Vec::with_capacity(tokens.len());
            let cap = out.capacity();
            merge_into(&set(), tokens.iter().copied(), &mut out);
            prop_assert_eq!(out.capacity(), cap);
            let mut covered = 0;
            for w in out.windows(2) {
                prop_assert!(w[0].span.1 < w[1].span.0);
            }
            for e in &out {
                prop_assert!(e.score >= 0.0 && e.score <= 1.0);
                let inside: Vec<_> = tokens
                    .iter()
                    .filter(|t| t.2 .0 >= e.span.0 && t.2 .1 <= e.span.1)
                    .collect();
                prop_assert_eq!(inside.len() as u32, e.tokens);
                prop_assert!(inside.iter().all(|t| t.0 != 0));
                covered += inside.len();
            }
            prop_assert_eq!(covered, labels.iter().filter(|&&l| l != 0).count());
        }
    }
}
