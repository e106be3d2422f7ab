//! A bundle's self-test: golden texts and the probabilities the bundle
//! must give for them, in `selftest.jsonl` (one `{"text", "probs"}` object
//! per line; for an `embed` bundle `{"text", "vector"}`, the vector it must
//! give within a cosine of [`MIN_COSINE`]; for an `ner` bundle
//! `{"text", "tokens"}`, every token's tag probabilities). The file is listed in the manifest like any other, so a
//! signed bundle's self-test is signed too. A server runs it before it
//! swaps a new model in: a bundle that does not answer as it did when it
//! was made is not served.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::manifest::Task;
use crate::Classifier;

/// The self-test's file name in a bundle.
pub const FILE: &str = "selftest.jsonl";

/// How far each probability may be from the golden one.
pub const TOLERANCE: f32 = 0.02;

/// How close (cosine) an embedding must be to the golden vector.
pub const MIN_COSINE: f32 = 0.999;

/// Texts [`make`] uses: short and long, plain and odd.
pub const SAMPLE_TEXTS: [&str; 6] = [
    "a gorgeous, moving and beautifully acted film",
    "what a waste of two hours",
    "ok",
    "éclairs, 東京 and 🎬: oddly watchable, if you are patient with its slow first act and forgive a clumsy, overlong ending that undoes some of the good work before it",
    "THE PLOT MAKES NO SENSE!!! but the music is lovely",
    "neither good nor bad; it simply exists, and then it is over",
];

/// One golden text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    pub text: String,
    /// The probability of every label, in manifest order (a classifier's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probs: Vec<f32>,
    /// The vector (an embedding model's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
    /// Each token's tag probabilities, in label order, special tokens
    /// included (an NER model's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Vec<Vec<f32>>>,
}

/// An NER model's tag probabilities for each token of `text`.
fn token_probs(clf: &mut Classifier, text: &str) -> Result<Vec<Vec<f32>>> {
    let n = clf.manifest().labels.len();
    let (logits, tokens, _) = clf.logits(text)?;
    Ok(logits
        .chunks_exact(n)
        .take(tokens)
        .map(|z| {
            let mut p = vec![0.0; n];
            crate::postprocess::softmax_into(z, &mut p);
            p
        })
        .collect())
}

/// Parses a `selftest.jsonl`.
pub fn parse(bytes: &[u8]) -> Result<Vec<Case>> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| Error::Model(format!("{FILE}: not UTF-8")))?;
    let cases: Vec<Case> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::Model(format!("{FILE}:{}: {e}", i + 1)))
        })
        .collect::<Result<_>>()?;
    if cases.is_empty() {
        return Err(Error::Model(format!("{FILE}: no cases")));
    }
    Ok(cases)
}

/// Runs every case; `Ok` is the largest difference seen (for an embedding
/// model, 1 − the lowest cosine), `Err` names the first text whose answer
/// is off by more than [`TOLERANCE`] (a cosine under [`MIN_COSINE`]).
pub fn run(clf: &mut Classifier, cases: &[Case]) -> Result<f32> {
    let mut worst = 0.0f32;
    for (i, case) in cases.iter().enumerate() {
        if matches!(clf.task(), Task::Embed { .. }) {
            let Some(want) = &case.vector else {
                return Err(Error::Model(format!(
                    "self-test case {}: no vector for an embedding model",
                    i + 1
                )));
            };
            let got = clf.embed(&case.text)?.vector;
            if got.len() != want.len() {
                return Err(Error::Model(format!(
                    "self-test case {}: the model gives {} values, the self-test {}",
                    i + 1,
                    got.len(),
                    want.len()
                )));
            }
            let cosine = crate::postprocess::cosine(&got, want);
            if cosine.is_nan() || cosine < MIN_COSINE {
                return Err(Error::Model(format!(
                    "self-test case {} ({:?}) failed: cosine {cosine:.5} to the golden vector (at least {MIN_COSINE})",
                    i + 1,
                    case.text
                )));
            }
            worst = worst.max(1.0 - cosine);
            continue;
        }
        if matches!(clf.task(), Task::Ner) {
            let Some(want) = &case.tokens else {
                return Err(Error::Model(format!(
                    "self-test case {}: no token probabilities for an NER model",
                    i + 1
                )));
            };
            let got = token_probs(clf, &case.text)?;
            let shape = |v: &[Vec<f32>]| v.iter().map(Vec::len).collect::<Vec<_>>();
            if shape(&got) != shape(want) {
                return Err(Error::Model(format!(
                    "self-test case {}: the model gives {} tokens of {} tags, the self-test {} of {}",
                    i + 1,
                    got.len(),
                    got.first().map_or(0, Vec::len),
                    want.len(),
                    want.first().map_or(0, Vec::len)
                )));
            }
            let labels = &clf.manifest().labels;
            for (t, (g, w)) in got.iter().zip(want).enumerate() {
                let d = within(i, case, g, w, |l| format!("token {t}'s {}", labels[l]))?;
                worst = worst.max(d);
            }
            continue;
        }
        let c = clf.classify(&case.text)?;
        if c.scores.len() != case.probs.len() {
            return Err(Error::Model(format!(
                "self-test case {}: the model gives {} labels, the self-test {}",
                i + 1,
                c.scores.len(),
                case.probs.len()
            )));
        }
        let probs: Vec<f32> = c.scores.iter().map(|(_, p)| *p).collect();
        let d = within(i, case, &probs, &case.probs, |l| c.scores[l].0.clone())?;
        worst = worst.max(d);
    }
    Ok(worst)
}

/// The largest difference between probabilities `got` and the golden
/// `want` of case `i`, or the error naming the first one (`what` of its
/// index) that is off by more than [`TOLERANCE`].
fn within(
    i: usize,
    case: &Case,
    got: &[f32],
    want: &[f32],
    what: impl Fn(usize) -> String,
) -> Result<f32> {
    let mut worst = 0.0f32;
    for (l, (p, q)) in got.iter().zip(want).enumerate() {
        let d = (p - q).abs();
        if d.is_nan() || d > TOLERANCE {
            return Err(Error::Model(format!(
                "self-test case {} ({:?}) failed: {} is {p:.4}, expected {q:.4} (tolerance {TOLERANCE})",
                i + 1,
                case.text,
                what(l)
            )));
        }
        worst = worst.max(d);
    }
    Ok(worst)
}

/// A self-test for a loaded bundle: its answers to `texts`, as JSON lines.
pub fn make(clf: &mut Classifier, texts: &[&str]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for text in texts {
        let mut case = Case {
            text: text.to_string(),
            probs: Vec::new(),
            vector: None,
            tokens: None,
        };
        match clf.task() {
            Task::Embed { .. } => case.vector = Some(clf.embed(text)?.vector),
            Task::Ner => case.tokens = Some(token_probs(clf, text)?),
            Task::Classify | Task::Multilabel { .. } => {
                let c = clf.classify(text)?;
                case.probs = c.scores.iter().map(|(_, p)| *p).collect();
            }
        }
        out.extend_from_slice(
            serde_json::to_string(&case)
                .map_err(|e| Error::Model(e.to_string()))?
                .as_bytes(),
        );
        out.push(b'\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let ok = b"{\"text\":\"a\",\"probs\":[0.25,0.75]}\n\n{\"text\":\"b\",\"probs\":[1,0]}\n";
        assert_eq!(parse(ok).unwrap().len(), 2);
        let v = parse(b"{\"text\":\"a\",\"vector\":[0.6,0.8]}").unwrap();
        assert_eq!(v[0].vector, Some(vec![0.6, 0.8]));
        assert!(v[0].probs.is_empty());
        assert!(parse(b"").is_err());
        assert!(parse(b"{\"text\":1}")
            .unwrap_err()
            .to_string()
            .contains(":1:"));
        assert!(parse(b"\xff").is_err());
        let t = parse(b"{\"text\":\"a\",\"tokens\":[[0.5,0.5],[1,0]]}").unwrap();
        assert_eq!(t[0].tokens.as_ref().unwrap().len(), 2);
    }
}
