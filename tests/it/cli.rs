//! The `edge-bert` binary end to end: the embedded default model, the real
//! fp32 bundle's accuracy, and bad input from the command line and stdin.

use crate::util::*;

fn fp32() -> String {
    fp32_dir().display().to_string()
}

fn tiny() -> String {
    tiny_dir().display().to_string()
}

#[test]
fn classify_default_model_gets_clear_sentiment_right() {
    let o = run(
        &[
            "classify",
            "a gorgeous, moving and beautifully acted film",
            "a dull, tedious and lifeless mess",
        ],
        b"",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let fields: Vec<Vec<&str>> = lines.iter().map(|l| l.split('\t').collect()).collect();
    assert_eq!(fields[0][0], "POSITIVE", "{out}");
    assert_eq!(fields[1][0], "NEGATIVE", "{out}");
    for f in &fields {
        let score: f32 = f[1].parse().unwrap();
        assert!((0.5..=1.0).contains(&score), "{out}");
    }
    assert_eq!(fields[1][2], "a dull, tedious and lifeless mess");
}

#[test]
fn classify_json_from_stdin_matches_the_int8_bundle_dir() {
    let input = "I loved every minute of it\nworst film of the year\n";
    let embedded = run(&["classify", "--json"], input.as_bytes());
    let int8 = root().join("models/sentiment-int8").display().to_string();
    let dir = run(&["classify", "--json", "--model", &int8], input.as_bytes());
    assert!(embedded.status.success(), "{}", stderr(&embedded));
    assert!(dir.status.success(), "{}", stderr(&dir));
    assert_eq!(stdout(&embedded), stdout(&dir));
    let objs: Vec<serde_json::Value> = stdout(&dir)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objs.len(), 2);
    for o in &objs {
        let scores = o["scores"].as_object().unwrap();
        let sum: f64 = scores.values().map(|v| v.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-4);
        let label = o["label"].as_str().unwrap();
        assert_eq!(o["score"], scores[label]);
        assert_eq!(o["truncated"], false);
        assert!(o["tokens"].as_u64().unwrap() > 2);
    }
    assert_eq!(objs[0]["label"], "POSITIVE");
    assert_eq!(objs[1]["label"], "NEGATIVE");
}

#[test]
fn long_text_is_truncated_and_reported() {
    let long = "an astonishing film. ".repeat(100);
    let o = run(&["classify", "--json", "--model", &tiny(), &long], b"");
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["truncated"], true);
    assert_eq!(v["tokens"], 32);
    assert!(stderr(&o).contains("truncated"), "{}", stderr(&o));
}

#[test]
fn empty_text_is_an_error() {
    let o = run(&["classify", "--model", &tiny(), ""], b"");
    assert_fails(&o, 1, "empty text");
    // From stdin: the good lines are still answered.
    let o = run(&["classify", "--model", &tiny()], b"good\n   \nbad\n");
    assert_fails(&o, 1, "text 2: empty text");
    assert_eq!(stdout(&o).lines().count(), 2);
}

#[test]
fn invalid_utf8_on_stdin_is_an_error() {
    let o = run(
        &["classify", "--model", &tiny()],
        b"fine\n\xff\xfe bad bytes\nalso fine\n",
    );
    assert_fails(&o, 1, "line 2 is not valid UTF-8");
    assert_eq!(stdout(&o).lines().count(), 2);
}

#[test]
fn missing_model_dir_is_an_error() {
    let o = run(&["classify", "--model", "/nonexistent/model", "hi"], b"");
    assert_fails(&o, 3, "/nonexistent/model");
    let o = run(&["info", "--model", "/nonexistent/model"], b"");
    assert_fails(&o, 3, "does not exist");
}

#[test]
fn corrupted_bundle_is_an_error() {
    let tmp = copy_bundle(&tiny_dir());
    let path = tmp.path().join("model.onnx");
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let o = run(
        &["classify", "--model", tmp.path().to_str().unwrap(), "hi"],
        b"",
    );
    assert_fails(&o, 3, "model.onnx is corrupted");
}

#[test]
fn bad_buckets_are_a_usage_error() {
    let o = run(
        &["classify", "--model", &tiny(), "--buckets", "8,16", "hi"],
        b"",
    );
    assert_fails(&o, 2, "max_seq_len");
}

#[test]
fn eval_fp32_reaches_84_percent_on_the_test_split() {
    let data = fp32_dir().join("test.tsv");
    let o = run(
        &[
            "eval",
            "--model",
            &fp32(),
            "--data",
            data.to_str().unwrap(),
            "--json",
        ],
        b"",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let n = v["examples"].as_u64().unwrap();
    let lines = std::fs::read_to_string(&data).unwrap().lines().count() as u64;
    assert_eq!(n, lines);
    let acc = v["accuracy"].as_f64().unwrap();
    eprintln!("fp32 accuracy on {n} test texts: {acc:.4}");
    assert!(acc >= 0.84, "accuracy {acc}");
    assert!(v["tokens_per_second"].as_f64().unwrap() > 0.0);
    for c in v["per_class"].as_array().unwrap() {
        assert!(c["precision"].as_f64().unwrap() > 0.5);
        assert!(c["recall"].as_f64().unwrap() > 0.5);
    }
}

#[test]
fn eval_agreement_with_itself_is_total() {
    let data = tiny_dir().join("test.tsv");
    let o = run(
        &[
            "eval",
            "--model",
            &tiny(),
            "--reference",
            &tiny(),
            "--data",
            data.to_str().unwrap(),
            "--json",
        ],
        b"",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["agreement"], 1.0);
}

#[test]
fn eval_rejects_malformed_data() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("bad.tsv");
    std::fs::write(&data, "POSITIVE\tgood\nno tab here\n").unwrap();
    let o = run(
        &["eval", "--model", &tiny(), "--data", data.to_str().unwrap()],
        b"",
    );
    assert_fails(&o, 4, "bad.tsv:2: expected LABEL<TAB>text");
    std::fs::write(&data, b"POSITIVE\t\xff\n").unwrap();
    let o = run(
        &["eval", "--model", &tiny(), "--data", data.to_str().unwrap()],
        b"",
    );
    assert_fails(&o, 4, "not valid UTF-8");
    let o = run(
        &["eval", "--model", &tiny(), "--data", "/nonexistent.tsv"],
        b"",
    );
    assert_fails(&o, 4, "/nonexistent.tsv");
}

#[test]
fn embedded_default_is_the_int8_bundle() {
    let o = run(&["info", "--json"], b"");
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["source"], "<embedded>");
    assert_eq!(v["manifest"]["name"], "sentiment-int8");
    let mm = v["matmuls"].as_array().unwrap();
    let int8 = mm.iter().filter(|m| m["input_types"][1] == "I8").count();
    assert!(int8 >= 38, "only {int8} int8 matmuls: {mm:?}");
    // Each dynamically quantised matmul input runs on edge-bert's own op.
    let dq = &v["dynamic_quantize"];
    assert!(dq["ops"].as_u64().unwrap() >= 20, "{dq}");
    assert!(dq["kernel"].is_string(), "{dq}");
    // The four bucket plans hold one copy of the weights between them:
    // with the word-embedding table left in the file (read from this
    // executable, a row per token), about the model file's size, not four
    // times it.
    let w = &v["weights"];
    let in_file = w["table_in_file_bytes"].as_u64().unwrap();
    assert_eq!(in_file, 30522 * 384, "{w}");
    let model_file = v["manifest"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "model.onnx")
        .unwrap()["bytes"]
        .as_u64()
        .unwrap();
    let held = w["held_bytes"].as_u64().unwrap() + in_file;
    assert!(
        held > model_file / 2 && held < model_file * 11 / 10,
        "{w} vs {model_file}"
    );
    // Where the fused int8 matmul runs (VNNI or SDOT CPUs), its packed
    // weights are one copy shared by every plan from the start; otherwise
    // tract's plans each pack their own and the pool frees the duplicates.
    let fused = &v["fused_matmul"];
    if fused["path"].is_string() {
        assert_eq!(fused["ops"], 38, "{fused}");
        assert!(
            fused["packed_bytes"].as_u64().unwrap() > model_file / 3,
            "{fused}"
        );
    } else {
        assert_eq!(fused["ops"], 0, "{fused}");
        assert!(
            w["shared_duplicate_bytes"].as_u64().unwrap() > model_file,
            "{w}"
        );
    }
}

#[test]
fn info_describes_the_bundle() {
    let o = run(&["info", "--model", &tiny(), "--json"], b"");
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["manifest"]["name"], "tiny");
    assert_eq!(v["buckets"], serde_json::json!([8, 16, 32]));
    assert!(v["parameters"].as_u64().unwrap() > 1000);
    let mm = v["matmuls"].as_array().unwrap();
    assert!(!mm.is_empty());
    assert!(mm.iter().all(|m| m["input_types"][0] == "F32"), "{mm:?}");
    assert_eq!(v["dynamic_quantize"]["ops"], 0);
    // A bundle directory's word table (641 x 32 f32) is read from its file.
    assert_eq!(v["weights"]["table_in_file_bytes"], 641 * 32 * 4);
    let o = run(&["info", "--model", &tiny()], b"");
    assert!(stdout(&o).contains("parameters"));
    assert!(stdout(&o).contains("word table left in the model file"));
}

#[test]
fn help_has_examples() {
    let o = run(&["--help"], b"");
    assert!(o.status.success());
    assert!(stdout(&o).contains("Examples:"));
    let o = run(&["classify", "--nope"], b"");
    assert_eq!(o.status.code(), Some(2));
}

/// A report written to a full device (or a closed pipe) is an error, not a panic.
#[test]
fn a_report_that_cannot_be_written_is_an_error() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    for args in [&["info", "--json"][..], &["info"][..]] {
        let o = crate::util::edge_bert()
            .args(args)
            .args(["--model", crate::util::tiny_dir().to_str().unwrap()])
            .stdout(full.try_clone().unwrap())
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        assert_fails(&o, 1, "stdout: No space left on device");
    }
}

/// A model that cannot be loaded is refused before any input is read: a
/// megabyte on stdin still gets exit 3 and the directory named (the
/// harness does not mistake the closed pipe for the failure).
#[test]
fn a_missing_model_is_refused_whatever_waits_on_stdin() {
    let input = "a line of text\n".repeat(70_000);
    let o = run(
        &["classify", "--model", "/nonexistent/edge-bert-model"],
        input.as_bytes(),
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("/nonexistent/edge-bert-model"),
        "{}",
        stderr(&o)
    );
}

/// More input and output than a pipe holds, both ways at once: every line
/// of a large stdin is answered, in order (the harness feeds stdin while it
/// reads stdout, so neither side waits on the other for ever).
#[test]
fn a_large_stdin_is_answered_line_for_line() {
    let lines: Vec<String> = (0..10_000)
        .map(|i| format!("film number {i}, fine"))
        .collect();
    let input: String = lines.iter().map(|l| format!("{l}\n")).collect();
    assert!(input.len() > 3 * 65_536);
    let o = run(
        &[
            "classify",
            "--json",
            "--model",
            tiny_dir().to_str().unwrap(),
        ],
        input.as_bytes(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.len() > 65_536);
    let texts: Vec<String> = out
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["text"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(texts, lines);
}
