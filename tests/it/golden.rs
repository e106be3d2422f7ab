//! Golden tests: the Rust engine against logits and token ids computed by
//! the recipe (ONNX Runtime and the Python tokenizer), for the tiny and the
//! real fp32 bundle.

use crate::util::*;

const TOLERANCE: f32 = 1e-4;

fn check_logits(dir: std::path::PathBuf) {
    let refs = references(&dir);
    assert!(!refs.is_empty());
    let mut clf = classifier(dir).lock().unwrap();
    let mut worst = 0.0f32;
    for r in &refs {
        let (logits, tokens, truncated) = clf.logits(&r.text).unwrap();
        assert_eq!(tokens, r.input_ids.len(), "token count for {:?}", r.text);
        assert_eq!(truncated, r.truncated, "truncation flag for {:?}", r.text);
        assert_eq!(logits.len(), r.logits.len());
        for (a, b) in logits.iter().zip(&r.logits) {
            let d = (a - b).abs();
            worst = worst.max(d);
            assert!(
                d <= TOLERANCE,
                "{:?}: rust {logits:?} vs reference {:?}",
                r.text,
                r.logits
            );
        }
    }
    eprintln!("{} references, worst |diff| {worst:e}", refs.len());
}

fn check_token_ids(dir: std::path::PathBuf) {
    let refs = references(&dir);
    let clf = classifier(dir).lock().unwrap();
    for r in &refs {
        let enc = clf.tokenizer().encode(&r.text).unwrap();
        assert_eq!(enc.ids, r.input_ids, "token ids for {:?}", r.text);
        assert_eq!(enc.truncated, r.truncated, "truncation for {:?}", r.text);
        assert!(enc.ids.len() <= clf.manifest().max_seq_len);
    }
}

/// The golden files must cover the awkward cases the tokenizer has to get right.
fn check_coverage(dir: std::path::PathBuf, min: usize) {
    let refs = references(&dir);
    assert!(refs.len() >= min, "only {} references", refs.len());
    assert!(refs.iter().any(|r| r.text.is_empty()), "no empty text");
    assert!(refs.iter().any(|r| r.truncated), "no over-long text");
    assert!(refs.iter().any(|r| !r.text.is_ascii()), "no non-ASCII text");
    assert!(
        refs.iter()
            .any(|r| r.text.chars().any(|c| c as u32 >= 0x1F300)),
        "no emoji"
    );
}

#[test]
fn tiny_logits_match_reference() {
    check_logits(tiny_dir());
}

#[test]
fn tiny_token_ids_match_reference() {
    check_token_ids(tiny_dir());
}

#[test]
fn tiny_reference_covers_edge_cases() {
    check_coverage(tiny_dir(), 15);
}

#[test]
fn tiny_outputs_depend_on_input() {
    let refs = references(&tiny_dir());
    let first = &refs[0].logits;
    assert!(refs.iter().any(|r| (r.logits[0] - first[0]).abs() > 1e-2));
}

#[test]
fn fp32_logits_match_reference() {
    check_logits(fp32_dir());
}

#[test]
fn fp32_token_ids_match_reference() {
    check_token_ids(fp32_dir());
}

#[test]
fn fp32_reference_covers_edge_cases() {
    check_coverage(fp32_dir(), 50);
}

#[test]
fn every_bucket_gives_the_same_logits() {
    // A short text padded to each bucket must give the same answer: padding
    // is masked out.
    let bundle = edge_bert::Bundle::load_dir(tiny_dir()).unwrap();
    let mut per_bucket = Vec::new();
    for b in bundle.manifest.effective_buckets() {
        let max = bundle.manifest.max_seq_len;
        let buckets = if b == max { vec![b] } else { vec![b, max] };
        let mut clf = edge_bert::Classifier::new(&bundle, Some(&buckets)).unwrap();
        assert_eq!(clf.engine().buckets()[0], b);
        per_bucket.push(clf.logits("a short one").unwrap().0);
    }
    for l in &per_bucket[1..] {
        for (a, b) in l.iter().zip(&per_bucket[0]) {
            assert!((a - b).abs() < 1e-4, "{per_bucket:?}");
        }
    }
}
