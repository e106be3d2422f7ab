//! `edge-bert-quantize` end to end: the tiny model for speed and bad input,
//! the real model for the figures and for the committed default bundle.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn models(name: &str) -> String {
    root().join("models").join(name).display().to_string()
}

fn quantize(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edge-bert-quantize"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("spawn edge-bert-quantize")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_fails(o: &Output, code: i32, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn same_files(a: &Path, b: &Path) {
    let mut names: Vec<_> = std::fs::read_dir(a)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    let mut other: Vec<_> = std::fs::read_dir(b)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    other.sort();
    assert_eq!(names, other);
    for n in names {
        let x = std::fs::read(a.join(&n)).unwrap();
        let y = std::fs::read(b.join(&n)).unwrap();
        assert!(
            x == y,
            "{n:?} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

#[test]
fn tiny_end_to_end_dynamic() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tiny-int8");
    let rep = tmp.path().join("report.json");
    let test = format!("{}/test.tsv", models("tiny"));
    let o = quantize(&[
        "--input",
        &models("tiny"),
        "--output",
        out.to_str().unwrap(),
        "--eval",
        &test,
        "--calibration",
        &test,
        "--report",
        rep.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = report(&rep);
    assert_eq!(r["quantized_matmuls"], 14);
    assert!(r["sizes"]["int8_model_bytes"].as_u64() < r["sizes"]["fp32_model_bytes"].as_u64());
    assert_eq!(r["layer_sqnr_db"].as_array().unwrap().len(), 14);
    assert!(r["eval"]["agreement"].as_f64().unwrap() > 80.0, "{r}");
    // The runtime loads it like any bundle, and it is an int8 graph.
    let mut clf = edge_bert_model::Classifier::from_dir(&out).unwrap();
    assert_eq!(clf.manifest().precision, "int8");
    let int8 = clf
        .engine()
        .stats()
        .matmuls
        .iter()
        .filter(|m| m.input_types.get(1).is_some_and(|t| t == "I8"))
        .count();
    assert_eq!(int8, 14);
    clf.classify("a fine film").unwrap();
    let model = std::fs::read(out.join("model.onnx")).unwrap();
    let g = edge_bert_quantize::graph::decode(&model).unwrap();
    let ops = edge_bert_quantize::graph::op_types(&g);
    assert!(ops.contains(&"DynamicQuantizeLinear"));
    assert_eq!(ops.iter().filter(|o| **o == "MatMulInteger").count(), 14);
    assert!(!ops.contains(&"Gemm"), "{ops:?}");
}

#[test]
fn tiny_static_mode_bakes_scales_in() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tiny-static");
    let rep = tmp.path().join("report.json");
    let test = format!("{}/test.tsv", models("tiny"));
    let o = quantize(&[
        "--input",
        &models("tiny"),
        "--output",
        out.to_str().unwrap(),
        "--mode",
        "static",
        "--calibration",
        &test,
        "--eval",
        &test,
        "--report",
        rep.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let model = std::fs::read(out.join("model.onnx")).unwrap();
    let g = edge_bert_quantize::graph::decode(&model).unwrap();
    let ops = edge_bert_quantize::graph::op_types(&g);
    assert!(!ops.contains(&"DynamicQuantizeLinear"), "{ops:?}");
    assert_eq!(ops.iter().filter(|o| **o == "QuantizeLinear").count(), 14);
    let r = report(&rep);
    assert!(r["eval"]["agreement"].as_f64().unwrap() > 70.0, "{r}");
    let q: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("quantization.json")).unwrap()).unwrap();
    assert_eq!(q["mode"], "static");
    assert_eq!(q["calibration_method"], "minmax");
}

#[test]
fn exclude_keeps_layers_in_fp32() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("t");
    let o = quantize(&[
        "--input",
        &models("tiny"),
        "--output",
        out.to_str().unwrap(),
        "--exclude",
        "classifier",
        "--exclude",
        "layer.0/output/dense",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let q: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("quantization.json")).unwrap()).unwrap();
    let kept: Vec<&str> = q["kept_fp32"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        kept,
        [
            "/bert/encoder/layer.0/output/dense/MatMul",
            "/classifier/Gemm"
        ]
    );
    assert_eq!(q["quantized"].as_array().unwrap().len(), 12);
    let o = quantize(&[
        "--input",
        &models("tiny"),
        "--output",
        tmp.path().join("u").to_str().unwrap(),
        "--exclude",
        "no-such-node",
    ]);
    assert_fails(&o, 2, "no-such-node");
}

#[test]
fn same_input_and_options_give_identical_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("sub-b");
    for out in [&a, &b] {
        let o = quantize(&[
            "--input",
            &models("tiny"),
            "--output",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    same_files(&a, &b);
}

#[test]
fn bad_input_gets_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let out_s = out.to_str().unwrap();
    // Missing input.
    let o = quantize(&["--input", "/nonexistent/bundle", "--output", out_s]);
    assert_fails(&o, 3, "/nonexistent/bundle");
    // Output over the input.
    let o = quantize(&["--input", &models("tiny"), "--output", &models("tiny")]);
    assert_fails(&o, 2, "overwrite the input");
    // Existing output without --force.
    std::fs::create_dir(&out).unwrap();
    let o = quantize(&["--input", &models("tiny"), "--output", out_s]);
    assert_fails(&o, 5, "exists");
    let o = quantize(&["--input", &models("tiny"), "--output", out_s, "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Unwritable output path.
    let o = quantize(&[
        "--input",
        &models("tiny"),
        "--output",
        "/proc/edge-bert-out",
    ]);
    assert!(matches!(o.status.code(), Some(5)), "{}", stderr(&o));
    let o = quantize(&["--input", &models("tiny"), "--output", "/nonexistent-dir/x"]);
    assert_fails(&o, 5, "/nonexistent-dir");
    // Empty and malformed calibration files.
    let cal = tmp.path().join("cal.tsv");
    std::fs::write(&cal, "").unwrap();
    let o2 = tmp.path().join("o2");
    let args = |c: &str| {
        quantize(&[
            "--input",
            &models("tiny"),
            "--output",
            o2.to_str().unwrap(),
            "--mode",
            "static",
            "--calibration",
            c,
        ])
    };
    assert_fails(&args(cal.to_str().unwrap()), 4, "no examples");
    std::fs::write(&cal, "POSITIVE\tok\nbroken line\n").unwrap();
    assert_fails(&args(cal.to_str().unwrap()), 4, "cal.tsv:2");
    assert!(!o2.exists(), "a failed run left an output behind");
    // No temporary directories are left behind either.
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn not_onnx_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("b");
    std::fs::create_dir(&bundle).unwrap();
    for f in ["tokenizer.json", "manifest.json"] {
        std::fs::copy(Path::new(&models("tiny")).join(f), bundle.join(f)).unwrap();
    }
    let garbage = b"\x08\x07 not an onnx model at all \xff\xff\xff".repeat(4);
    std::fs::write(bundle.join("model.onnx"), &garbage).unwrap();
    let mpath = bundle.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    for f in m["files"].as_array_mut().unwrap() {
        if f["path"] == "model.onnx" {
            f["sha256"] = edge_bert_model::manifest::sha256_hex(&garbage).into();
            f["bytes"] = garbage.len().into();
        }
    }
    m["files"]
        .as_array_mut()
        .unwrap()
        .retain(|f| f["path"] != "test.tsv" && f["path"] != "reference.jsonl");
    std::fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
    let o = quantize(&[
        "--input",
        bundle.to_str().unwrap(),
        "--output",
        tmp.path().join("o").to_str().unwrap(),
    ]);
    assert_fails(&o, 3, "not an ONNX model");
}

/// The committed default bundle is exactly what the tool makes with no flags.
#[test]
fn committed_int8_bundle_is_reproduced_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sentiment-int8");
    let o = quantize(&[
        "--input",
        &models("sentiment-fp32"),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    same_files(&out, &root().join("models/sentiment-int8"));
}

/// The figures of the quantize issue, on the real model and test split.
#[test]
fn real_model_meets_size_and_accuracy_figures() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("s8");
    let rep = tmp.path().join("report.json");
    let test = format!("{}/test.tsv", models("sentiment-fp32"));
    let o = quantize(&[
        "--input",
        &models("sentiment-fp32"),
        "--output",
        out.to_str().unwrap(),
        "--eval",
        &test,
        "--report",
        rep.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = report(&rep);
    eprintln!("{}", serde_json::to_string_pretty(&r["sizes"]).unwrap());
    eprintln!("{}", serde_json::to_string_pretty(&r["eval"]).unwrap());
    assert!(r["sizes"]["ratio"].as_f64().unwrap() <= 0.30, "{r}");
    let e = &r["eval"];
    assert_eq!(e["examples"], 2006);
    assert!(
        e["int8_accuracy"].as_f64().unwrap() >= e["fp32_accuracy"].as_f64().unwrap() - 0.5,
        "{e}"
    );
    assert!(e["agreement"].as_f64().unwrap() >= 98.0, "{e}");
}

/// The exclusion search keeps layers in fp32, worst SQNR first, until the
/// bound holds; an impossible bound (int8 one point *better* than fp32)
/// walks every layer and then fails cleanly.
#[test]
fn agreement_bound_search_walks_layers_and_fails_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let test = format!("{}/test.tsv", models("tiny"));
    let args = |pct: &'static str| {
        vec![
            "--input".to_string(),
            models("tiny"),
            "--output".into(),
            out.to_str().unwrap().into(),
            "--eval".into(),
            test.clone(),
            "--min-agreement".into(),
            pct.into(),
        ]
    };
    let a = args("100.5");
    let o = quantize(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_fails(&o, 1, "even with every layer in fp32");
    assert_eq!(stderr(&o).matches("keeping ").count(), 14, "{}", stderr(&o));
    assert!(!out.exists());
    let a = args("0");
    let o = quantize(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o).matches("keeping ").count(), 0);
}

#[test]
fn accuracy_bound_search_walks_layers_worst_first() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let test = format!("{}/test.tsv", models("tiny"));
    let o = quantize(&[
        "--input",
        &models("tiny"),
        "--output",
        out.to_str().unwrap(),
        "--eval",
        &test,
        "--max-accuracy-drop",
        "-1",
    ]);
    assert_fails(&o, 1, "even with every layer in fp32");
    assert_eq!(stderr(&o).matches("keeping ").count(), 14, "{}", stderr(&o));
    assert!(!out.exists());
    // A bound that holds at once keeps nothing in fp32.
    let rep = tmp.path().join("r.json");
    let o = quantize(&[
        "--input",
        &models("tiny"),
        "--output",
        out.to_str().unwrap(),
        "--eval",
        &test,
        "--max-accuracy-drop",
        "100",
        "--report",
        rep.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(report(&rep)["kept_fp32"], serde_json::json!([]));
}

#[path = "import/mod.rs"]
mod import;
