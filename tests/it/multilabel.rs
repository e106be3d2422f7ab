//! The `multilabel` task on a real model made by the recipe
//! (`models/moral-multilabel/run.sh`): `models/moral-int8/`, which moral
//! foundations a sentence of a political speech appeals to. Checked against
//! ONNX Runtime's fp32 probabilities (`tests/fixtures/moral-reference.jsonl`),
//! in-process, by `eval`, and served over a real Unix socket.

use std::path::PathBuf;

use crate::util::{root, run, stderr, stdout};

pub fn bundle() -> PathBuf {
    root().join("models/moral-int8")
}

pub struct Reference {
    pub text: String,
    pub probs: Vec<f64>,
}

pub fn references() -> Vec<Reference> {
    let text =
        std::fs::read_to_string(root().join("tests/fixtures/moral-reference.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Reference {
                text: v["text"].as_str().unwrap().to_string(),
                probs: v["probs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_f64().unwrap())
                    .collect(),
            }
        })
        .collect()
}

fn manifest() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(bundle().join("manifest.json")).unwrap()).unwrap()
}

/// The labels over `t`, by index.
fn over(probs: &[f64], t: f64) -> Vec<usize> {
    (0..probs.len()).filter(|&i| probs[i] >= t).collect()
}

#[test]
fn the_int8_model_agrees_with_onnx_runtime_fp32() {
    let m = manifest();
    assert_eq!(m["task"], "multilabel");
    let labels: Vec<String> = m["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    let threshold = m["threshold"].as_f64().unwrap();
    let refs = references();
    assert!(refs.len() >= 90, "{} reference texts", refs.len());
    let input: String = refs.iter().map(|r| format!("{}\n", r.text)).collect();
    let o = run(
        &["classify", "--json", "--model", bundle().to_str().unwrap()],
        input.as_bytes(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (mut worst, mut sum, mut same, mut given) = (0f64, 0f64, 0, 0);
    for (line, r) in stdout(&o).lines().zip(&refs) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let probs: Vec<f64> = labels
            .iter()
            .map(|l| v["scores"][l].as_f64().unwrap())
            .collect();
        for (p, want) in probs.iter().zip(&r.probs) {
            worst = worst.max((p - want).abs());
            sum += (p - want).abs();
        }
        // The answer lists exactly the labels at or over the threshold.
        let listed: Vec<&str> = v["labels"]
            .as_array()
            .unwrap_or_else(|| panic!("no labels in {v}"))
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        let mine: Vec<&str> = over(&probs, threshold)
            .into_iter()
            .map(|i| labels[i].as_str())
            .collect();
        assert_eq!(listed, mine, "{v}");
        given += listed.len();
        same += (over(&probs, threshold) == over(&r.probs, threshold)) as usize;
    }
    let agreement = same as f64 / refs.len() as f64;
    let mean = sum / (refs.len() * labels.len()) as f64;
    eprintln!(
        "moral-int8 vs ORT fp32 on {} texts: probability difference max {worst:.4} mean {mean:.4}, \
         same label set {:.1}% (threshold {threshold}), {given} labels given",
        refs.len(),
        100.0 * agreement
    );
    // The model says something: labels are given, but not all of them to
    // every text.
    assert!(given > 0 && given < refs.len() * labels.len());
    // int8 moves a few probabilities a lot (the recipe's --eval saw 0.37
    // at most over the whole test split) but most very little.
    assert!(mean < 0.03, "mean probability difference {mean}");
    assert!(agreement >= 0.9, "same label set on {agreement}");
}

#[test]
fn eval_reports_per_label_and_micro_macro_f1() {
    let data = root().join("models/moral-multilabel/test.tsv");
    let o = run(
        &[
            "eval",
            "--json",
            "--limit",
            "300",
            "--model",
            bundle().to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ],
        b"",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["examples"], 300);
    let per_label = v["per_label"].as_array().unwrap();
    assert_eq!(per_label.len(), 5);
    let f1s: Vec<f64> = per_label
        .iter()
        .map(|l| l["f1"].as_f64().unwrap())
        .collect();
    let macro_f1 = f1s.iter().sum::<f64>() / f1s.len() as f64;
    assert!((v["macro_f1"].as_f64().unwrap() - macro_f1).abs() < 1e-9);
    eprintln!(
        "moral-int8 on 300 test sentences: micro F1 {:.3}, macro F1 {:.3}, exact set {:.3}",
        v["micro_f1"], v["macro_f1"], v["exact_match"]
    );
    // Better than giving no label at all (F1 0) by a margin.
    assert!(v["micro_f1"].as_f64().unwrap() > 0.4, "{v}");
}

#[test]
fn the_server_answers_multilabel_requests_with_labels_over_the_threshold() {
    use crate::serve::{code, Server};
    let refs = references();
    let server = Server::start(&["--model", bundle().to_str().unwrap()]);
    let mut conn = server.connect();
    let v = conn.ask(br#"{"id": 0, "op": "info"}"#);
    let info = &v["info"];
    assert_eq!(info["task"], "multilabel", "{v}");
    let threshold = info["threshold"].as_f64().unwrap();

    let v =
        conn.ask(&serde_json::to_vec(&serde_json::json!({"id": 1, "text": refs[0].text})).unwrap());
    assert_eq!(v["threshold"].as_f64().unwrap(), threshold, "{v}");
    let scores = v["scores"].as_object().unwrap();
    let listed: Vec<&str> = v["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    for (label, p) in scores {
        let p = p.as_f64().unwrap();
        assert_eq!(listed.contains(&label.as_str()), p >= threshold, "{v}");
    }

    // A request's own threshold, written back as sent: a very low one gives
    // every label, to each of several texts.
    let req =
        serde_json::json!({"id": 2, "texts": [refs[0].text, refs[1].text], "threshold": 0.0001});
    let v = conn.ask(&serde_json::to_vec(&req).unwrap());
    for r in v["results"].as_array().unwrap() {
        assert_eq!(r["labels"].as_array().unwrap().len(), 5, "{r}");
        assert_eq!(r["threshold"].as_f64().unwrap(), 0.0001);
    }
    let v = conn.ask(br#"{"id": 3, "text": "x", "threshold": 1.5}"#);
    assert_eq!(code(&v), "bad_threshold", "{v}");
    let v = conn.ask(br#"{"id": 4, "text": "x", "threshold": "0.5"}"#);
    assert_eq!(code(&v), "bad_threshold", "{v}");
    let v = conn.ask(br#"{"id": 5, "op": "embed", "text": "x"}"#);
    assert_eq!(code(&v), "wrong_task", "{v}");
    // Still serving.
    let v = conn.ask(br#"{"id": 6, "text": "We owe our veterans care and honor."}"#);
    assert!(v["labels"].is_array(), "{v}");
}

#[test]
fn a_threshold_for_a_single_label_classifier_is_wrong_task() {
    use crate::serve::{code, Server};
    let server = Server::start(&["--model", crate::util::tiny_dir().to_str().unwrap()]);
    let mut conn = server.connect();
    let v = conn.ask(br#"{"id": 1, "text": "fine", "threshold": 0.5}"#);
    assert_eq!(code(&v), "wrong_task", "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("multi-label"));
    let v = conn.ask(br#"{"id": 2, "text": "fine"}"#);
    assert!(v["labels"].is_null() && v["label"].is_string(), "{v}");
    // And on the command line, in-process: a usage error.
    let o = run(
        &[
            "classify",
            "--threshold",
            "0.5",
            "--model",
            crate::util::tiny_dir().to_str().unwrap(),
            "x",
        ],
        b"",
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = run(&["classify", "--threshold", "1", "x"], b"");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}
