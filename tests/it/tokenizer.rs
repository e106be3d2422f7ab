//! The WordPiece tokenizer against the Hugging Face `tokenizers` crate, the
//! reference it reproduces: token for token on every committed text, on
//! hand-picked edge cases and on random Unicode.

use std::path::Path;

use edge_bert_model::tokenize::TextTokenizer;
use proptest::prelude::*;
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

use crate::util::*;

fn pair(dir: &Path, max_len: usize) -> (TextTokenizer, Tokenizer) {
    let bytes = std::fs::read(dir.join("tokenizer.json")).unwrap();
    let ours = TextTokenizer::from_bytes(&bytes, max_len).unwrap();
    let mut hf = Tokenizer::from_bytes(&bytes).unwrap();
    hf.with_truncation(Some(TruncationParams {
        max_length: max_len,
        ..Default::default()
    }))
    .unwrap();
    hf.with_padding(None::<PaddingParams>);
    (ours, hf)
}

fn check(ours: &TextTokenizer, hf: &Tokenizer, text: &str) -> Result<(), String> {
    let want = hf.encode(text, true).unwrap();
    let got = ours.encode(text).unwrap();
    if got.ids != want.get_ids() {
        return Err(format!(
            "{text:?}:\n ours {:?}\n   hf {:?}",
            got.ids,
            want.get_ids()
        ));
    }
    let want_offsets: Vec<(u32, u32)> = want
        .get_offsets()
        .iter()
        .map(|&(a, b)| (a as u32, b as u32))
        .collect();
    if got.offsets != want_offsets {
        return Err(format!(
            "{text:?} offsets:\n ours {:?}\n   hf {:?}",
            got.offsets, want_offsets
        ));
    }
    let want_truncated = !want.get_overflowing().is_empty();
    if got.truncated != want_truncated {
        return Err(format!("{text:?}: truncated {}", got.truncated));
    }
    Ok(())
}

const EDGE_CASES: &[&str] = &[
    "",
    " ",
    "\t\n\r",
    "Hello, World!",
    "don't stop--ever...",
    "Café naïve résumé ÉCOLE",
    "東京タワーは高い",
    "中文字符和English混合",
    "مرحبا بالعالم",
    "Здравствуй, мир",
    "👩‍👩‍👧‍👦 family 🎬🍿 movie",
    "zero\u{200b}width\u{200d}joiner",
    "control\u{0007}chars\u{0000}and\u{fffd}replacement",
    "a [SEP] b [CLS][MASK]",
    "[UNK]x[PAD]",
    "ﬁne ligature and Ⅻ roman",
    "ǅungla İstanbul ΣΊΣΥΦΟΣ",
    "e\u{301}\u{327}\u{302} stacked accents",
    "supercalifragilisticexpialidociousandthensomemoreletterstomakeitlongerthanonehundredcharactersintotalxyz",
    "x\u{0300}\u{0301}\u{0302}\u{0303}\u{0304}\u{0305}\u{0306}\u{0307} many marks",
    "tabs\tand\u{00a0}nbsp\u{2003}em space",
];

#[test]
fn matches_hf_on_every_committed_text_and_edge_cases() {
    for (dir, max_len) in [(fp32_dir(), 128), (tiny_dir(), 32)] {
        let (ours, hf) = pair(&dir, max_len);
        let mut texts: Vec<String> = EDGE_CASES.iter().map(|s| s.to_string()).collect();
        for file in ["test.tsv", "calibration.tsv"] {
            let path = dir.join(file);
            if let Ok(data) = std::fs::read_to_string(&path) {
                texts.extend(
                    data.lines()
                        .filter_map(|l| l.split_once('\t').map(|(_, t)| t.to_string())),
                );
            }
        }
        texts.extend(references(&dir).into_iter().map(|r| r.text));
        let mut failures = Vec::new();
        for t in &texts {
            if let Err(e) = check(&ours, &hf, t) {
                failures.push(e);
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} texts differ for {}:\n{}",
            failures.len(),
            texts.len(),
            dir.display(),
            failures[..failures.len().min(5)].join("\n")
        );
        eprintln!(
            "tokenizer parity: {} texts on {}",
            texts.len(),
            dir.display()
        );
    }
}

/// The real tokenizer.json with BertNormalizer's `lowercase` and
/// `strip_accents` set, and every whole word of the vocabulary added again
/// capitalised and upper-cased (new ids), so that a cased configuration
/// meets cased words: parity is then checked on text that exercises it.
fn cased_pair(lowercase: bool, strip_accents: bool, max_len: usize) -> (TextTokenizer, Tokenizer) {
    let bytes = std::fs::read(fp32_dir().join("tokenizer.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["normalizer"]["lowercase"] = lowercase.into();
    v["normalizer"]["strip_accents"] = strip_accents.into();
    let vocab = v["model"]["vocab"].as_object_mut().unwrap();
    let mut next = vocab.len() as u64;
    let words: Vec<String> = vocab
        .keys()
        .filter(|w| !w.starts_with("##") && !w.starts_with('['))
        .cloned()
        .collect();
    for w in words {
        let mut cs = w.chars();
        let first = cs.next().unwrap();
        let capital: String = first.to_uppercase().chain(cs).collect();
        for form in [capital, w.to_uppercase()] {
            if !vocab.contains_key(&form) {
                vocab.insert(form, next.into());
                next += 1;
            }
        }
    }
    let bytes = v.to_string().into_bytes();
    let ours = TextTokenizer::from_bytes(&bytes, max_len).unwrap();
    let mut hf = Tokenizer::from_bytes(&bytes).unwrap();
    hf.with_truncation(Some(TruncationParams {
        max_length: max_len,
        ..Default::default()
    }))
    .unwrap();
    hf.with_padding(None::<PaddingParams>);
    (ours, hf)
}

/// Cased WordPiece (`lowercase: false`, as cased BERT and most NER
/// checkpoints) and the two mixed settings, against `tokenizers`.
#[test]
fn cased_configurations_match_hf() {
    let mut texts: Vec<String> = EDGE_CASES.iter().map(|s| s.to_string()).collect();
    texts.extend(references(&fp32_dir()).into_iter().map(|r| r.text));
    let data = std::fs::read_to_string(fp32_dir().join("test.tsv")).unwrap();
    texts.extend(
        data.lines()
            .take(400)
            .filter_map(|l| l.split_once('\t').map(|(_, t)| t.to_string())),
    );
    for (lowercase, strip) in [(false, false), (false, true), (true, false)] {
        let (ours, hf) = cased_pair(lowercase, strip, 128);
        let failures: Vec<String> = texts
            .iter()
            .filter_map(|t| check(&ours, &hf, t).err())
            .collect();
        assert!(
            failures.is_empty(),
            "lowercase {lowercase}, strip_accents {strip}: {} of {} texts differ:\n{}",
            failures.len(),
            texts.len(),
            failures[..failures.len().min(5)].join("\n")
        );
        // The setting changes the ids (so the test can fail).
        let (a, b) = (
            ours.encode("Café ÉCOLE Hello").unwrap(),
            real().0.encode("Café ÉCOLE Hello").unwrap(),
        );
        assert_ne!(a.ids, b.ids, "lowercase {lowercase}, strip_accents {strip}");
    }
}

fn cased() -> &'static (TextTokenizer, Tokenizer) {
    static P: std::sync::OnceLock<(TextTokenizer, Tokenizer)> = std::sync::OnceLock::new();
    P.get_or_init(|| cased_pair(false, false, 24))
}

fn real() -> &'static (TextTokenizer, Tokenizer) {
    static P: std::sync::OnceLock<(TextTokenizer, Tokenizer)> = std::sync::OnceLock::new();
    P.get_or_init(|| pair(&fp32_dir(), 24))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Random strings from every Unicode plane, with extra weight on the
    /// characters the normaliser treats specially.
    #[test]
    fn matches_hf_on_random_unicode(
        text in prop::collection::vec(prop_oneof![
            4 => any::<char>(),
            4 => prop::char::range('a', 'z'),
            2 => prop::sample::select(vec![' ', '\t', '\n', '\u{a0}', '\u{3000}', '.', ',', '!', '-', '\'', '#', '[', ']']),
            2 => prop::char::range('\u{300}', '\u{36f}'),
            1 => prop::char::range('\u{4e00}', '\u{4e40}'),
            1 => prop::char::range('\u{c0}', '\u{17f}'),
            1 => prop::char::range('\u{1f300}', '\u{1f6ff}'),
            1 => prop::sample::select(vec!['\u{0}', '\u{7}', '\u{fffd}', '\u{200b}', '\u{200d}', '\u{feff}']),
        ], 0..60)
        .prop_map(|cs| cs.into_iter().collect::<String>()),
    ) {
        let (ours, hf) = real();
        if let Err(e) = check(ours, hf, &text) {
            prop_assert!(false, "{}", e);
        }
        let (ours, hf) = cased();
        if let Err(e) = check(ours, hf, &text) {
            prop_assert!(false, "cased: {}", e);
        }
    }

    /// Random words glued with added tokens.
    #[test]
    fn matches_hf_around_added_tokens(
        parts in prop::collection::vec(prop_oneof![
            "[a-zA-Z ]{0,8}",
            prop::sample::select(vec!["[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]", "[SE", "P]"]).prop_map(String::from),
        ], 0..10),
    ) {
        let (ours, hf) = real();
        let text: String = parts.concat();
        if let Err(e) = check(ours, hf, &text) {
            prop_assert!(false, "{}", e);
        }
    }
}
