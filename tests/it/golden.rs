//! Golden tests: the Rust engine against logits and token ids computed by
//! the recipe (ONNX Runtime and the Python tokenizer), for the tiny and the
//! real fp32 bundle, and against ONNX Runtime running the committed int8
//! bundle (`tests/fixtures/int8-reference.jsonl`).

use std::path::{Path, PathBuf};

use crate::util::*;

const TOLERANCE: f32 = 1e-4;

/// Int8 logits may differ between engines and kernels. The reference runs
/// each text unpadded, and edge-bert's dynamic quantisation takes an
/// activation's range over the real tokens only, so both quantise with the
/// same scales; yet a value near a rounding step can still land on the
/// other side of it when the f32 parts (exp, tanh, sums) differ in the last
/// bits, as they do between ONNX Runtime and tract, and between tract's
/// x86, aarch64 and armv7 kernels. Measured worst |diff| over the 80 texts:
/// x86 0.065, median 2.4e-7. (Against the earlier, padded reference:
/// aarch64 under qemu 0.074, armv7 0.179.)
const INT8_TOLERANCE: f32 = 0.25;

fn check_logits(dir: PathBuf) {
    let refs = references(&dir);
    check_logits_against(dir, &refs, TOLERANCE);
}

fn check_logits_against(dir: PathBuf, refs: &[Reference], tolerance: f32) {
    assert!(!refs.is_empty());
    let mut diffs = Vec::new();
    let mut bad = Vec::new();
    {
        let mut clf = classifier(dir).lock().unwrap();
        for r in refs {
            let (logits, tokens, truncated) = clf.logits(&r.text).unwrap();
            assert_eq!(tokens, r.input_ids.len(), "token count for {:?}", r.text);
            assert_eq!(truncated, r.truncated, "truncation flag for {:?}", r.text);
            assert_eq!(logits.len(), r.logits.len());
            let d = logits
                .iter()
                .zip(&r.logits)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            diffs.push(d);
            if d > tolerance {
                bad.push(format!(
                    "{:?}: rust {logits:?} vs reference {:?}",
                    r.text, r.logits
                ));
            }
        }
    }
    diffs.sort_by(f32::total_cmp);
    eprintln!(
        "{} references, |diff| median {:e}, 95th {:e}, worst {:e} (tolerance {tolerance:e})",
        refs.len(),
        diffs[diffs.len() / 2],
        diffs[diffs.len() * 95 / 100],
        diffs[diffs.len() - 1]
    );
    assert!(
        bad.is_empty(),
        "{} over tolerance:\n{}",
        bad.len(),
        bad.join("\n")
    );
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

fn int8_reference() -> Vec<Reference> {
    references_file(Path::new(
        &root().join("tests/fixtures/int8-reference.jsonl"),
    ))
}

/// The int8 bundle on this machine's kernels against ONNX Runtime on the
/// same file. Besides the tolerance, the predicted label must agree wherever
/// ONNX Runtime's margin is clear of it.
#[test]
fn int8_logits_match_reference() {
    let refs = int8_reference();
    assert_eq!(refs.len(), references(&fp32_dir()).len());
    check_logits_against(int8_dir(), &refs, INT8_TOLERANCE);
    let mut clf = classifier(int8_dir()).lock().unwrap();
    for r in &refs {
        let (logits, _, _) = clf.logits(&r.text).unwrap();
        let margin = r.logits[1] - r.logits[0];
        if margin.abs() > 2.0 * INT8_TOLERANCE {
            assert_eq!(
                logits[1] > logits[0],
                margin > 0.0,
                "{:?}: {logits:?} vs {:?}",
                r.text,
                r.logits
            );
        }
    }
}

#[test]
fn int8_token_ids_match_reference() {
    let refs = int8_reference();
    let clf = classifier(int8_dir()).lock().unwrap();
    for r in &refs {
        let enc = clf.tokenizer().encode(&r.text).unwrap();
        assert_eq!(enc.ids, r.input_ids, "token ids for {:?}", r.text);
    }
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
    let bundle = edge_bert_model::Bundle::load_dir(tiny_dir()).unwrap();
    let mut per_bucket = Vec::new();
    for b in bundle.manifest.effective_buckets() {
        let max = bundle.manifest.max_seq_len;
        let buckets = if b == max { vec![b] } else { vec![b, max] };
        let mut clf = edge_bert_model::Classifier::new(&bundle, Some(&buckets)).unwrap();
        assert_eq!(clf.engine().buckets()[0], b);
        per_bucket.push(clf.logits("a short one").unwrap().0);
    }
    for l in &per_bucket[1..] {
        for (a, b) in l.iter().zip(&per_bucket[0]) {
            assert!((a - b).abs() < 1e-4, "{per_bucket:?}");
        }
    }
}

#[test]
fn lazy_engine_builds_on_first_use_and_matches_eager() {
    // A lazy classifier (what a one-shot `classify` uses) builds a bucket's
    // plan only when a text needs it, and answers exactly as the eager one.
    let bundle = edge_bert_model::Bundle::load_dir(tiny_dir()).unwrap();
    let mut eager = edge_bert_model::Classifier::new(&bundle, None).unwrap();
    let mut lazy = edge_bert_model::Classifier::new_lazy(&bundle, None).unwrap();
    let n = eager.engine().buckets().len();
    assert!(n >= 2);
    assert_eq!(eager.engine().built_buckets(), n);
    assert_eq!(lazy.engine().built_buckets(), 0);
    assert_eq!(lazy.engine().buckets(), eager.engine().buckets());
    let long = "a long text about a film that goes on and on ".repeat(8);
    let texts = ["short", long.as_str(), "short again", ""];
    for (i, t) in texts.iter().enumerate() {
        let a = eager.logits(t).unwrap().0;
        let b = lazy.logits(t).unwrap().0;
        assert_eq!(a, b, "{t:?}");
        if i == 0 {
            assert_eq!(lazy.engine().built_buckets(), 1);
        }
    }
    assert_eq!(
        lazy.engine().built_buckets(),
        2,
        "only the buckets used are built"
    );
}

/// edge-bert's fused int8 matmul (`qmatmul`) against tract's own int8
/// matmuls on the real int8 bundle: every path this CPU has gives tract's
/// logits bit for bit, on every fourth reference text (20 texts, every
/// bucket; all 80 take minutes under qemu).
#[test]
fn int8_fused_matmul_gives_tracts_logits_bit_for_bit() {
    use edge_bert_kernels::qmatmul::{with_choice, Path};
    use edge_bert_model::engine::{Engine, ModelFormat};
    let bytes = std::fs::read(int8_dir().join("model.onnx")).unwrap();
    let load = |choice: Option<Path>| {
        with_choice(choice, || {
            Engine::load_lazy(&bytes, ModelFormat::Onnx, &[16, 32, 64, 128], 2).unwrap()
        })
    };
    let refs: Vec<Reference> = int8_reference().into_iter().step_by(4).collect();
    let mut plain = load(None);
    assert_eq!(plain.stats().fused_matmuls, 0);
    let want: Vec<Vec<f32>> = refs
        .iter()
        .map(|r| plain.logits(&r.input_ids).unwrap())
        .collect();
    drop(plain);
    for path in Path::ALL.into_iter().filter(|p| p.available()) {
        let mut fused = load(Some(path));
        assert_eq!(fused.stats().fused_matmuls, 38, "{path:?}");
        for (r, want) in refs.iter().zip(&want) {
            let got = fused.logits(&r.input_ids).unwrap();
            let same = got
                .iter()
                .zip(want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{path:?} {:?}: {got:?} vs {want:?}", r.text);
        }
    }
}

/// Padding is masked out of the int8 model's answer, dynamic quantisation
/// included (its range is taken over the real tokens only): a text gives
/// the same logits in every bucket that holds it, on the real int8 bundle,
/// with tract's int8 matmuls and with the fused one.
#[test]
fn int8_logits_do_not_depend_on_the_bucket() {
    use edge_bert_kernels::qmatmul::{with_choice, Path};
    use edge_bert_model::engine::{Engine, ModelFormat};
    let bytes = std::fs::read(int8_dir().join("model.onnx")).unwrap();
    // Few texts and two buckets: this also runs under qemu, where the
    // portable fused path (armv7) is slow.
    let refs: Vec<Reference> = int8_reference()
        .into_iter()
        .filter(|r| r.input_ids.len() <= 32)
        .step_by(8)
        .collect();
    assert!(refs.len() >= 5, "{}", refs.len());
    let mut worst = 0.0f32;
    for choice in [None, Some(Path::best())] {
        let mut per_bucket: Vec<Engine> = [32, 64]
            .into_iter()
            .map(|b| {
                with_choice(choice, || {
                    Engine::load_lazy(&bytes, ModelFormat::Onnx, &[b], 2).unwrap()
                })
            })
            .collect();
        for r in &refs {
            let first = per_bucket[0].logits(&r.input_ids).unwrap();
            for e in &mut per_bucket[1..] {
                let got = e.logits(&r.input_ids).unwrap();
                for (a, b) in got.iter().zip(&first) {
                    worst = worst.max((a - b).abs());
                }
            }
        }
    }
    eprintln!("worst |diff| between buckets: {worst:e}");
    assert!(worst < 1e-2, "worst |diff| between buckets {worst}");
}
