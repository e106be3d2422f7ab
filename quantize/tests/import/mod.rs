//! `edge-bert-quantize import`: a real foreign model (paraphrase-MiniLM-L3-v2
//! from its PyPI package) against ONNX Runtime, and the tiny model rewritten
//! the ways exporters write files (external data, float masks, extra
//! outputs, symbolic value_info) and broken the ways users break them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use edge_bert_model::tokenize::TextTokenizer;
use edge_bert_model::Classifier;
use prost::Message;
use tract_onnx::pb::tensor_proto::{DataLocation, DataType};
use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};
use tract_onnx::pb::{
    attribute_proto::AttributeType, type_proto, AttributeProto, ModelProto, NodeProto,
    StringStringEntryProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

use super::{assert_fails, models, quantize, report, root, stderr};

/// The model file, fetched (once) by models/paraphrase/fetch.sh.
fn paraphrase() -> PathBuf {
    let o = Command::new("bash")
        .arg(root().join("models/paraphrase/fetch.sh"))
        .output()
        .expect("run bash");
    assert!(
        o.status.success(),
        "models/paraphrase/fetch.sh failed (it downloads the model from PyPI): {}",
        stderr(&o)
    );
    PathBuf::from(String::from_utf8(o.stdout).unwrap().trim())
}

struct Reference {
    text: String,
    tokens: usize,
    truncated: bool,
    embedding: Vec<f32>,
}

/// ONNX Runtime's mean-pooled, normalised vectors (tests/fixtures/
/// make_embed_reference.py).
fn references() -> Vec<Reference> {
    let text =
        std::fs::read_to_string(root().join("tests/fixtures/embed-reference.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Reference {
                text: v["text"].as_str().unwrap().to_string(),
                tokens: v["tokens"].as_u64().unwrap() as usize,
                truncated: v["truncated"].as_bool().unwrap(),
                embedding: v["embedding"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect(),
            }
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Worst cosine of a bundle's vectors against ONNX Runtime's.
fn worst_cosine(dir: &Path, refs: &[Reference]) -> f64 {
    let mut clf = Classifier::from_dir(dir).unwrap();
    let mut worst = f64::INFINITY;
    for r in refs {
        let e = clf.embed(&r.text).unwrap();
        assert_eq!(e.tokens, r.tokens, "{:?}", r.text);
        assert_eq!(e.truncated, r.truncated, "{:?}", r.text);
        let norm: f64 = e
            .vector
            .iter()
            .map(|x| (*x as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
        worst = worst.min(cosine(&e.vector, &r.embedding));
    }
    worst
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn paraphrase_minilm_imports_in_one_command_and_matches_onnx_runtime() {
    let model = paraphrase();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("paraphrase-l3");
    let tokenizer = format!("{}/tokenizer.json", models("sentiment-fp32"));
    let o = quantize(&[
        "import",
        "--onnx",
        path(&model),
        "--tokenizer",
        &tokenizer,
        "--task",
        "embed",
        "--output",
        path(&out),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["task"], "embed");
    assert_eq!(m["dim"], 384);
    assert_eq!(m["pooling"], "mean");
    assert_eq!(
        m["inputs"],
        serde_json::json!(["input_ids", "attention_mask"])
    );
    // The export has four outputs; the token vectors are the one kept.
    assert_eq!(m["output"], "onnx::Shape_422");

    let refs = references();
    assert!(refs.len() >= 80 && refs.iter().any(|r| r.truncated));
    let fp32 = worst_cosine(&out, &refs);
    eprintln!(
        "fp32: worst cosine {fp32:.7} against ONNX Runtime on {} texts",
        refs.len()
    );
    assert!(fp32 >= 0.9999, "fp32 worst cosine {fp32}");

    // int8, by the quantiser; its report gives fp32-vs-int8 cosines.
    let q = tmp.path().join("paraphrase-l3-int8");
    let texts = tmp.path().join("texts.txt");
    let lines: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    std::fs::write(&texts, lines.join("\n")).unwrap();
    let rep = tmp.path().join("report.json");
    let o = quantize(&[
        "--input",
        path(&out),
        "--output",
        path(&q),
        "--eval",
        path(&texts),
        "--report",
        path(&rep),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&rep).unwrap()).unwrap();
    let reported = r["eval"]["cosine_min"].as_f64().unwrap();
    assert_eq!(r["eval"]["examples"], refs.len());
    assert!(reported >= 0.99, "{r}");
    let int8 = worst_cosine(&q, &refs);
    eprintln!("int8: worst cosine {int8:.5} against ONNX Runtime's fp32, {reported:.5} against edge-bert's fp32");
    assert!(int8 >= 0.99, "int8 worst cosine {int8}");
    assert!(int8 < fp32, "int8 is not expected to beat fp32");

    // An embedding bundle signs: its self-test holds vectors, and `sign`
    // loads the signed bundle (signature, sums, self-test) before exit 0.
    let keys = tmp.path().join("keys");
    let o = quantize(&["keygen", "--output", path(&keys.join("release"))]);
    assert!(o.status.success(), "{}", stderr(&o));
    let key = keys.join("release.key");
    let o = quantize(&["sign", "--key", path(&key), "--version", "3", path(&q)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cases = std::fs::read_to_string(q.join("selftest.jsonl")).unwrap();
    assert_eq!(cases.lines().count(), 6, "{cases}");
    for l in cases.lines() {
        let c: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(c["vector"].as_array().map(Vec::len), Some(384), "{l}");
        assert!(c.get("probs").is_none(), "{l}");
    }
}

fn tiny_proto() -> ModelProto {
    ModelProto::decode(&*std::fs::read(root().join("models/tiny/model.onnx")).unwrap()).unwrap()
}

fn write_model(dir: &Path, m: &ModelProto) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("model.onnx");
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    p
}

fn tiny_tokenizer() -> String {
    format!("{}/tokenizer.json", models("tiny"))
}

fn import(args: &[&str]) -> Output {
    let mut all = vec!["import"];
    all.extend_from_slice(args);
    quantize(&all)
}

fn dims(names: &[&str]) -> Option<TensorShapeProto> {
    Some(TensorShapeProto {
        dim: names
            .iter()
            .map(|n| Dimension {
                value: Some(match n.parse::<i64>() {
                    Ok(v) => dimension::Value::DimValue(v),
                    Err(_) => dimension::Value::DimParam(n.to_string()),
                }),
                ..Default::default()
            })
            .collect(),
    })
}

fn value(name: &str, dt: DataType, shape: &[&str]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: dt as i32,
                shape: dims(shape),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The tiny model as torch's default exporter writes big models: weights
/// in `model.onnx.data`, a float attention mask, a symbolic batch in
/// value_info, and a second output.
#[test]
fn import_inlines_external_data_casts_float_masks_and_keeps_one_output() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("export");
    std::fs::create_dir_all(&dir).unwrap();
    let mut m = tiny_proto();
    let g = m.graph.as_mut().unwrap();
    // External data.
    let mut data = Vec::new();
    let mut moved = 0;
    for t in &mut g.initializer {
        if t.raw_data.len() < 64 {
            continue;
        }
        while data.len() % 64 != 0 {
            data.push(0);
        }
        let offset = data.len();
        data.extend_from_slice(&t.raw_data);
        t.external_data = vec![
            StringStringEntryProto {
                key: "location".into(),
                value: "model.onnx.data".into(),
            },
            StringStringEntryProto {
                key: "offset".into(),
                value: offset.to_string(),
            },
            StringStringEntryProto {
                key: "length".into(),
                value: t.raw_data.len().to_string(),
            },
        ];
        t.raw_data.clear();
        t.data_location = Some(DataLocation::External as i32);
        moved += 1;
    }
    assert!(moved > 10);
    std::fs::write(dir.join("model.onnx.data"), &data).unwrap();
    // A float mask, cast back to int64 inside the graph (as an export of a
    // model that takes a float mask does in its own way).
    for node in &mut g.node {
        for i in &mut node.input {
            if i == "attention_mask" {
                *i = "mask_as_int".into();
            }
        }
    }
    g.node.insert(
        0,
        NodeProto {
            name: "mask_cast".into(),
            op_type: "Cast".into(),
            input: vec!["attention_mask".into()],
            output: vec!["mask_as_int".into()],
            attribute: vec![AttributeProto {
                name: "to".into(),
                r#type: AttributeType::Int as i32,
                i: DataType::Int64 as i64,
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    for i in &mut g.input {
        if i.name == "attention_mask" {
            *i = value("attention_mask", DataType::Float, &["batch", "sequence"]);
        }
    }
    // A second output, and value_info with a symbolic batch.
    g.output.push(value(
        "mask_as_int",
        DataType::Int64,
        &["batch", "sequence"],
    ));
    g.value_info
        .push(value("logits", DataType::Float, &["batch", "2"]));
    let onnx = write_model(&dir, &m);
    std::fs::write(
        dir.join("config.json"),
        r#"{"id2label": {"1": "POS", "0": "NEG"}, "max_position_embeddings": 512}"#,
    )
    .unwrap();

    let out = tmp.path().join("imported");
    let o = import(&[
        "--onnx",
        path(&onnx),
        "--tokenizer",
        &tiny_tokenizer(),
        "--task",
        "classify",
        "--max-len",
        "64",
        "--output",
        path(&out),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(mf["labels"], serde_json::json!(["NEG", "POS"]));
    assert_eq!(mf["output"], "logits");
    let p = &mf["provenance"];
    assert_eq!(p["external_tensors_inlined"], moved);
    assert_eq!(
        p["inputs_cast_to_int64"],
        serde_json::json!(["attention_mask"])
    );
    assert_eq!(p["value_info_dropped"], 1);
    let written = std::fs::read_dir(&out).unwrap().count();
    assert_eq!(written, 3, "manifest, model and tokenizer only");

    // Same logits as the tiny bundle it came from.
    let mut a = Classifier::from_dir(models("tiny")).unwrap();
    let mut b = Classifier::from_dir(&out).unwrap();
    for text in ["a fine film", "dull and long, far too long", "x"] {
        let (x, y) = (a.classify(text).unwrap(), b.classify(text).unwrap());
        for (p, q) in x.logits.iter().zip(&y.logits) {
            assert!(
                (p - q).abs() < 1e-5,
                "{text}: {:?} vs {:?}",
                x.logits,
                y.logits
            );
        }
    }

    // External data that points outside the model's directory is refused.
    let mut bad = ModelProto::decode(&*std::fs::read(&onnx).unwrap()).unwrap();
    let t = bad
        .graph
        .as_mut()
        .unwrap()
        .initializer
        .iter_mut()
        .find(|t| !t.external_data.is_empty())
        .unwrap();
    t.external_data[0].value = "../model.onnx.data".into();
    let bad_dir = tmp.path().join("bad");
    let onnx = write_model(&bad_dir, &bad);
    let o = import(&[
        "--onnx",
        path(&onnx),
        "--tokenizer",
        &tiny_tokenizer(),
        "--task",
        "classify",
        "--labels",
        "a,b",
        "--output",
        path(&tmp.path().join("never")),
    ]);
    assert_fails(&o, 3, "is not a file beside the model");
    assert!(!tmp.path().join("never").exists());
}

#[test]
fn import_refuses_what_it_cannot_serve() {
    let tmp = tempfile::tempdir().unwrap();
    let onnx = format!("{}/model.onnx", models("tiny"));
    let tok = tiny_tokenizer();
    let out = tmp.path().join("out");
    let o = path(&out);
    let run = |extra: &[&str], onnx: &str, tok: &str| {
        let mut a = vec!["--onnx", onnx, "--tokenizer", tok, "--output", o];
        if !extra.contains(&"--max-len") {
            a.extend_from_slice(&["--max-len", "64"]);
        }
        a.extend_from_slice(extra);
        import(&a)
    };
    assert_fails(
        &run(&["--task", "classify"], &onnx, &tok),
        2,
        "no --labels given and no config.json",
    );
    assert_fails(
        &run(&["--task", "classify", "--labels", "one"], &onnx, &tok),
        2,
        "at least 2",
    );
    assert_fails(
        &run(&["--task", "classify", "--labels", "a,b,c"], &onnx, &tok),
        3,
        "gives 2 logits but 3 labels",
    );
    assert_fails(
        &run(&["--task", "embed"], &onnx, &tok),
        3,
        "no output of the model looks like [batch, tokens, dim] token vectors",
    );
    assert_fails(
        &run(&["--task", "embed", "--output-name", "nope"], &onnx, &tok),
        3,
        "--output-name \"nope\" is not an output of the model (it has: logits",
    );
    assert_fails(
        &run(&["--task", "classify", "--labels", "a,b"], &tok, &tok),
        3,
        "not an ONNX model",
    );
    assert_fails(
        &run(&["--task", "classify", "--labels", "a,b"], &onnx, &onnx),
        3,
        "--tokenizer",
    );
    assert_fails(
        &run(
            &["--task", "classify", "--labels", "a,b"],
            "/nonexistent.onnx",
            &tok,
        ),
        3,
        "/nonexistent.onnx",
    );
    assert_fails(
        &run(
            &["--task", "classify", "--labels", "a,b", "--max-len", "4"],
            &onnx,
            &tok,
        ),
        2,
        "--max-len",
    );
    // An input edge-bert cannot feed.
    let mut m = tiny_proto();
    let g = m.graph.as_mut().unwrap();
    for i in &mut g.input {
        if i.name == "token_type_ids" {
            i.name = "pixel_values".into();
        }
    }
    for n in &mut g.node {
        for i in &mut n.input {
            if i == "token_type_ids" {
                *i = "pixel_values".into();
            }
        }
    }
    let odd = write_model(&tmp.path().join("odd"), &m);
    assert_fails(
        &run(&["--task", "classify", "--labels", "a,b"], path(&odd), &tok),
        3,
        "model input pixel_values (int64",
    );
    // Longer than the position table (64 rows in the tiny model).
    assert_fails(
        &run(
            &["--task", "classify", "--labels", "a,b", "--max-len", "128"],
            &onnx,
            &tok,
        ),
        2,
        "over the model's 64 positions",
    );
    assert!(!out.exists(), "nothing is written on failure");
    // An existing output is kept unless --force.
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep"), "x").unwrap();
    assert_fails(
        &run(&["--task", "classify", "--labels", "a,b"], &onnx, &tok),
        5,
        "exists (use --force",
    );
    assert!(out.join("keep").exists());
    let ok = run(
        &["--task", "classify", "--labels", "a,b", "--force"],
        &onnx,
        &tok,
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(!out.join("keep").exists());
}

fn ints(name: &str, v: &[i64]) -> tract_onnx::pb::TensorProto {
    tract_onnx::pb::TensorProto {
        name: name.into(),
        dims: vec![v.len() as i64],
        data_type: DataType::Int64 as i32,
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        name: output.into(),
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

/// A 1-logit (sigmoid) head: the tiny model's two logits turned into one,
/// z = l1 - l0, whose sigmoid is the tiny model's softmax for label 1. The
/// imported bundle must give the tiny bundle's probabilities.
#[test]
fn a_one_logit_sigmoid_head_gives_two_label_probabilities() {
    let tmp = tempfile::tempdir().unwrap();
    let mut m = tiny_proto();
    let g = m.graph.as_mut().unwrap();
    g.initializer.extend([
        ints("s0", &[0]),
        ints("s1", &[1]),
        ints("s2", &[2]),
        ints("ax", &[1]),
    ]);
    g.node
        .push(node("Slice", &["logits", "s0", "s1", "ax"], "l0"));
    g.node
        .push(node("Slice", &["logits", "s1", "s2", "ax"], "l1"));
    g.node.push(node("Sub", &["l1", "l0"], "score"));
    g.output = vec![value("score", DataType::Float, &["batch", "1"])];
    let onnx = write_model(&tmp.path().join("export"), &m);
    let out = tmp.path().join("sigmoid");
    let args = |labels: &'static str| {
        vec![
            "--onnx".to_string(),
            path(&onnx).to_string(),
            "--tokenizer".into(),
            tiny_tokenizer(),
            "--task".into(),
            "classify".into(),
            "--max-len".into(),
            "64".into(),
            "--labels".into(),
            labels.into(),
            "--output".into(),
            path(&out).to_string(),
        ]
    };
    let one: Vec<String> = args("POS");
    let o = import(&one.iter().map(String::as_str).collect::<Vec<_>>());
    assert_fails(&o, 2, "a 1-logit (sigmoid) head takes two, negative first");
    let two: Vec<String> = args("NEGATIVE,POSITIVE");
    let o = import(&two.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));

    let mut a = Classifier::from_dir(models("tiny")).unwrap();
    let mut b = Classifier::from_dir(&out).unwrap();
    for text in [
        "a fine film",
        "dull and long, far too long",
        "x",
        "what a waste",
    ] {
        let (x, y) = (a.classify(text).unwrap(), b.classify(text).unwrap());
        assert_eq!(x.label, y.label, "{text}");
        for ((_, p), (_, q)) in x.scores.iter().zip(&y.scores) {
            assert!(
                (p - q).abs() < 1e-5,
                "{text}: {:?} vs {:?}",
                x.scores,
                y.scores
            );
        }
        assert_eq!(y.logits[0], 0.0);
        let z = x.logits[1] - x.logits[0];
        assert!(
            (y.logits[1] - z).abs() < 1e-5,
            "{text}: {:?} vs {z}",
            y.logits
        );
    }
}

/// `--task multilabel`: the tiny model's two logits as two independent
/// labels, with its nodes' names cleared (a hand-built head has none); the
/// int8 quantiser names them, quantises, and reports F1s on a multi-label
/// file.
#[test]
fn a_multilabel_bundle_imports_quantises_and_reports_f1() {
    let tmp = tempfile::tempdir().unwrap();
    let mut m = tiny_proto();
    for n in &mut m.graph.as_mut().unwrap().node {
        n.name.clear();
    }
    let onnx = write_model(&tmp.path().join("export"), &m);
    let fp32 = tmp.path().join("ml");
    let base = [
        "--onnx",
        path(&onnx),
        "--tokenizer",
        &tiny_tokenizer(),
        "--max-len",
        "32",
        "--labels",
        "dull,fine",
        "--output",
        path(&fp32),
    ]
    .map(String::from)
    .to_vec();
    let with = |extra: &[&str]| {
        let mut v = base.clone();
        v.extend(extra.iter().map(|s| s.to_string()));
        import(&v.iter().map(String::as_str).collect::<Vec<_>>())
    };
    assert_fails(
        &with(&["--task", "multilabel", "--threshold", "1.5"]),
        2,
        "strictly between 0 and 1",
    );
    assert_fails(
        &with(&["--task", "classify", "--threshold", "0.4"]),
        2,
        "--threshold is for --task multilabel",
    );
    let o = with(&["--task", "multilabel", "--threshold", "0.4"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut c = Classifier::from_dir(&fp32).unwrap();
    let r = c.classify("a fine film").unwrap();
    // Independent sigmoids: the two probabilities need not sum to 1, and
    // `labels` holds those at or over 0.4.
    let given = r.labels.clone().unwrap();
    for (l, p) in &r.scores {
        assert_eq!(given.contains(l), *p >= 0.4, "{r:?}");
        assert!(*p > 0.0 && *p < 1.0);
    }
    let logits = &r.logits;
    let sigmoid = |z: f32| 1.0 / (1.0 + (-z).exp());
    assert!((r.scores[0].1 - sigmoid(logits[0])).abs() < 1e-6);

    let data = tmp.path().join("ml.tsv");
    std::fs::write(
        &data,
        "fine\ta fine film\n-\tx\ndull,fine\tdull and long\ndull\twhat a waste\n",
    )
    .unwrap();
    let int8 = tmp.path().join("ml-int8");
    let rep = tmp.path().join("r.json");
    let o = quantize(&[
        "--input",
        path(&fp32),
        "--output",
        path(&int8),
        "--eval",
        path(&data),
        "--report",
        path(&rep),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = &report(&rep)["eval"];
    assert_eq!(e["examples"], 4, "{e}");
    for k in [
        "fp32_micro_f1",
        "int8_micro_f1",
        "fp32_macro_f1",
        "agreement",
    ] {
        let v = e[k].as_f64().unwrap_or_else(|| panic!("{k} in {e}"));
        assert!((0.0..=100.0).contains(&v), "{k} {v}");
    }
    assert_eq!(e["int8_per_label"].as_array().unwrap().len(), 2);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(int8.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["task"], "multilabel");
    assert_eq!(m["threshold"].as_f64().unwrap() as f32, 0.4);
    // An export whose config.json names its problem type is imported as
    // that task only.
    let cfg = onnx.parent().unwrap().join("config.json");
    std::fs::write(&cfg, r#"{"problem_type": "multi_label_classification"}"#).unwrap();
    assert_fails(
        &with(&["--task", "classify", "--force"]),
        2,
        "--task multilabel",
    );
    std::fs::write(&cfg, r#"{"problem_type": "single_label_classification"}"#).unwrap();
    assert_fails(
        &with(&["--task", "multilabel", "--force"]),
        2,
        "--task classify",
    );
    std::fs::remove_file(&cfg).unwrap();
    // A classify file's single labels are fine too, an unknown one is not.
    std::fs::write(&data, "meh\tx\n").unwrap();
    let o = quantize(&[
        "--input",
        path(&fp32),
        "--output",
        path(&tmp.path().join("bad")),
        "--eval",
        path(&data),
    ]);
    assert_fails(&o, 4, "unknown label \"meh\"");
    // The accuracy bounds are for single-label classifiers.
    let o = quantize(&[
        "--input",
        path(&fp32),
        "--output",
        path(&tmp.path().join("bad2")),
        "--eval",
        path(&data),
        "--max-accuracy-drop",
        "1",
    ]);
    assert_fails(&o, 2, "multilabel");
}

/// ONNX Runtime's answers on the Python `tokenizers` ids, one object per
/// text (`tests/fixtures/make_bpe_tokenizers.py`).
fn bpe_references() -> Vec<serde_json::Value> {
    std::fs::read_to_string(root().join("tests/fixtures/bpe-reference.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A BPE (RoBERTa's layout) and a Unigram (XLM-R's) `tokenizer.json`,
/// imported with the tiny model's graph in one command each: the bundle
/// reads them through the `tokenizers` crate and answers with ONNX
/// Runtime's probabilities on the Python `tokenizers` ids
/// (`tests/fixtures/bpe-reference.jsonl`) within 1e-4, in-process and from
/// `edge-bert-quantize`'s own self-run.
#[test]
fn bpe_and_unigram_tokenizers_import_and_match_onnx_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let refs = bpe_references();
    for name in ["bpe", "unigram"] {
        let out = tmp.path().join(name);
        let tokenizer = root().join(format!("tests/fixtures/{name}-tokenizer.json"));
        let o = import(&[
            "--onnx",
            &format!("{}/model.onnx", models("tiny")),
            "--tokenizer",
            path(&tokenizer),
            "--task",
            "classify",
            "--max-len",
            "32",
            "--labels",
            "NEGATIVE,POSITIVE",
            "--output",
            path(&out),
        ]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let mut clf = Classifier::from_dir(&out).unwrap();
        let mut worst = 0f32;
        let mut n = 0;
        for r in refs.iter().filter(|r| r["tokenizer"] == name) {
            let text = r["text"].as_str().unwrap();
            let c = clf.classify(text).unwrap();
            assert_eq!(c.tokens, r["ids"].as_array().unwrap().len(), "{text:?}");
            assert_eq!(c.truncated, r["truncated"].as_bool().unwrap());
            for ((_, p), want) in c.scores.iter().zip(r["probs"].as_array().unwrap()) {
                worst = worst.max((p - want.as_f64().unwrap() as f32).abs());
            }
            n += 1;
        }
        println!("{name}: {n} texts, largest probability difference from ORT {worst:.2e}");
        assert!(n >= 20 && worst < 1e-4, "{name}: {worst}");
    }
}

/// BPE (RoBERTa's layout) and Unigram (XLM-R's) `tokenizer.json` files go
/// to the `tokenizers` crate path: the same ids, truncation and char
/// offsets as the Python `tokenizers` gave (`tests/fixtures/bpe-reference.jsonl`,
/// made by `make_bpe_tokenizers.py`), special tokens spanning nothing.
#[test]
fn bpe_and_unigram_files_tokenise_as_the_python_tokenizers_does() {
    let refs = bpe_references();
    let mut seen = std::collections::BTreeMap::new();
    for r in &refs {
        let name = r["tokenizer"].as_str().unwrap();
        let bytes =
            std::fs::read(root().join(format!("tests/fixtures/{name}-tokenizer.json"))).unwrap();
        let tok = TextTokenizer::from_bytes(&bytes, 32).unwrap();
        let kind = if name == "bpe" { "BPE" } else { "Unigram" };
        assert_eq!(tok.kind(), format!("{kind} (tokenizers crate)"));
        assert!(!tok.allocation_free());
        let text = r["text"].as_str().unwrap();
        let e = tok.encode(text).unwrap();
        let want: Vec<u32> = serde_json::from_value(r["ids"].clone()).unwrap();
        assert_eq!(e.ids, want, "{name}: {text:?}");
        assert_eq!(e.truncated, r["truncated"].as_bool().unwrap(), "{text:?}");
        assert!(e.ids.len() <= 32);
        let offsets: Vec<(usize, usize)> = serde_json::from_value(r["offsets"].clone()).unwrap();
        let chars: Vec<(usize, usize)> = e
            .offsets
            .iter()
            .map(|&s| edge_bert_model::ner::char_span(text, s))
            .collect();
        assert_eq!(chars, offsets, "{name}: {text:?}");
        assert_eq!((e.offsets[0], *e.offsets.last().unwrap()), ((0, 0), (0, 0)));
        *seen.entry(name).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.values().all(|&n| n >= 20), "{seen:?}");
}

/// A file whose post-processor does not put one special token at each end
/// of the text is refused at load, saying what it gives; so is a file
/// that is not a tokenizer at all.
#[test]
fn a_bpe_file_without_its_special_tokens_is_refused() {
    let bytes = std::fs::read(root().join("tests/fixtures/bpe-tokenizer.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["post_processor"] = serde_json::Value::Null;
    let err = TextTokenizer::from_bytes(v.to_string().as_bytes(), 32)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("a BPE model") && err.contains("one special token before the text"),
        "{err}"
    );
    let err = TextTokenizer::from_bytes(br#"{"model": {"type": "Nonesuch"}}"#, 32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("Nonesuch"), "{err}");
}
