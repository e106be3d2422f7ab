//! The `ner` task on a real model made by the recipe
//! (`models/ner-ja/run.sh`): `models/ner-ja-int8/`, entities in Japanese
//! news sentences. Checked against ONNX Runtime's fp32 tags and entities
//! (`tests/fixtures/ner-reference.jsonl`), in-process, by `classify` (char
//! offsets into the text) and by `eval` (entity-level F1 on the test split).

use std::path::PathBuf;

use edge_bert_model::Classifier;

use crate::util::{root, run, stderr, stdout};

pub fn bundle() -> PathBuf {
    root().join("models/ner-ja-int8")
}

pub fn references() -> Vec<serde_json::Value> {
    std::fs::read_to_string(root().join("tests/fixtures/ner-reference.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn triples(entities: &serde_json::Value) -> Vec<(String, u64, u64)> {
    entities
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["label"].as_str().unwrap().to_string(),
                e["start"].as_u64().unwrap(),
                e["end"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Per token, the int8 model's most likely tag against ONNX Runtime's fp32
/// one; per text, the same entities. Prints both figures.
#[test]
fn the_int8_model_agrees_with_onnx_runtime_fp32() {
    let refs = references();
    assert!(refs.len() >= 50, "{} reference texts", refs.len());
    let mut clf = Classifier::from_dir(bundle()).unwrap();
    let labels = clf.manifest().labels.clone();
    let n = labels.len();
    let (mut same_tags, mut tags) = (0usize, 0usize);
    for r in &refs {
        let text = r["text"].as_str().unwrap();
        let (logits, tokens, truncated) = clf.logits(text).unwrap();
        assert!(!truncated);
        let want: Vec<&str> = r["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        // The same tokens as the `tokenizers` crate, [CLS] and [SEP] aside.
        assert_eq!(tokens - 2, want.len(), "{text}");
        for (i, w) in want.iter().enumerate() {
            let row = &logits[(i + 1) * n..(i + 2) * n];
            let best = edge_bert_model::postprocess::argmax(row).unwrap();
            same_tags += (labels[best] == *w) as usize;
            tags += 1;
        }
    }
    let o = run(
        &["classify", "--json", "--model", bundle().to_str().unwrap()],
        refs.iter()
            .map(|r| format!("{}\n", r["text"].as_str().unwrap()))
            .collect::<String>()
            .as_bytes(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let mut same_entities = 0;
    for (line, r) in stdout(&o).lines().zip(&refs) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        same_entities += (triples(&v["entities"]) == triples(&r["entities"])) as usize;
    }
    let tag_agreement = same_tags as f64 / tags as f64;
    println!(
        "int8 vs ORT fp32: the same tag on {same_tags} of {tags} tokens ({:.2}%), the same entities in {same_entities} of {} texts",
        100.0 * tag_agreement,
        refs.len()
    );
    assert!(tag_agreement >= 0.95, "tag agreement {tag_agreement}");
}

/// `classify` gives each entity's type, char offsets into the text (the
/// text's chars at those offsets are its `text`) and score; an empty text
/// is refused and the rest still answered.
#[test]
fn classify_gives_entities_with_char_offsets() {
    let texts = "2005年7月14日、南アフリカ共和国ダーバンで開催中の第29回世界遺産会議で、日本の知床が登録された。\n \n東京タワーは高い。\n";
    let o = run(
        &["classify", "--json", "--model", bundle().to_str().unwrap()],
        texts.as_bytes(),
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("text 2"), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let mut found = 0;
    for v in &lines {
        let chars: Vec<char> = v["text"].as_str().unwrap().chars().collect();
        for e in v["entities"].as_array().unwrap() {
            let (a, b) = (
                e["start"].as_u64().unwrap() as usize,
                e["end"].as_u64().unwrap() as usize,
            );
            assert!(a < b && b <= chars.len(), "{e}");
            let surface: String = chars[a..b].iter().collect();
            assert_eq!(surface, e["text"].as_str().unwrap());
            let score = e["score"].as_f64().unwrap();
            assert!(score > 0.0 && score <= 1.0, "{e}");
            found += 1;
        }
    }
    assert!(found > 0, "no entity in {lines:?}");
    // The text form: `TYPE start..end "surface" score`, then the text.
    let o = run(
        &[
            "classify",
            "--model",
            bundle().to_str().unwrap(),
            "東京タワーは高い。",
        ],
        b"",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).ends_with("\t東京タワーは高い。\n"),
        "{}",
        stdout(&o)
    );
}

/// `eval` scores entities on the committed test split, per type, and
/// refuses a line whose entity is not a span of its text.
#[test]
fn eval_reports_entity_f1() {
    let data = root().join("models/ner-ja/test.jsonl");
    let o = run(
        &[
            "eval",
            "--json",
            "--model",
            bundle().to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ],
        b"",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    println!("int8 on the test split: {v}");
    assert_eq!(v["examples"], 50);
    let f1 = v["f1"].as_f64().unwrap();
    let (p, r) = (
        v["precision"].as_f64().unwrap(),
        v["recall"].as_f64().unwrap(),
    );
    assert!(f1 > 0.0 && (f1 - 2.0 * p * r / (p + r)).abs() < 1e-9, "{v}");
    let support: u64 = v["per_type"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["support"].as_u64().unwrap())
        .sum();
    let gold: usize = std::fs::read_to_string(&data)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["entities"].as_array().unwrap().len()
        })
        .sum();
    assert_eq!(support as usize, gold);

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"text\": \"日本\", \"entities\": [{\"label\": \"LOC\", \"start\": 0, \"end\": 9}]}\n",
    )
    .unwrap();
    let o = run(
        &[
            "eval",
            "--model",
            bundle().to_str().unwrap(),
            "--data",
            bad.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("bad.jsonl:1:") && stderr(&o).contains("not a span"),
        "{}",
        stderr(&o)
    );
}

/// The server answers a text sent to an NER model with its entities, the
/// same ones (offsets, types, scores) as `classify --model` in-process,
/// one text or several; `threshold` and `embed` are `wrong_task`, and a
/// client over the socket prints what the in-process one prints.
#[test]
fn the_server_answers_texts_with_entities() {
    use crate::serve::{code, Server};
    let refs = references();
    let texts: Vec<&str> = refs
        .iter()
        .take(8)
        .map(|r| r["text"].as_str().unwrap())
        .collect();
    let local = classify_json(&["--model", bundle().to_str().unwrap()], &texts);

    let server = Server::start(&["--model", bundle().to_str().unwrap()]);
    let mut conn = server.connect();
    let v = conn.ask(br#"{"id": 0, "op": "info"}"#);
    assert_eq!(v["info"]["task"], "ner", "{v}");
    assert!(
        v["info"]["entity_types"]
            .as_array()
            .unwrap()
            .contains(&"DAT".into()),
        "{v}"
    );
    let mut found = 0;
    for (i, (t, want)) in texts.iter().zip(&local).enumerate() {
        let v = conn.ask(&serde_json::to_vec(&serde_json::json!({"id": i, "text": t})).unwrap());
        assert_eq!(v["id"], i, "{v}");
        assert_eq!(as_f32(&v["entities"]), as_f32(&want["entities"]), "{t}");
        assert_eq!(v["tokens"], want["tokens"]);
        assert!(v["model"].is_string(), "{v}");
        found += v["entities"].as_array().unwrap().len();
    }
    assert!(found > 0, "no entity in {} texts", texts.len());
    let v = conn.ask(
        &serde_json::to_vec(&serde_json::json!({"id": "m", "texts": [texts[0], texts[1]]}))
            .unwrap(),
    );
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{v}");
    assert_eq!(
        as_f32(&results[1]["entities"]),
        as_f32(&local[1]["entities"])
    );

    let v = conn.ask(br#"{"id": 1, "text": "x", "threshold": 0.5}"#);
    assert_eq!(code(&v), "wrong_task", "{v}");
    let v = conn.ask(br#"{"id": 2, "op": "embed", "text": "x"}"#);
    assert_eq!(code(&v), "wrong_task", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("NER"),
        "{v}"
    );
    let v = conn.ask(br#"{"id": 3, "text": " "}"#);
    assert_eq!(code(&v), "empty_text", "{v}");
    // Still serving.
    let v = conn.ask(r#"{"id": 4, "text": "東京タワーは高い。"}"#.as_bytes());
    assert!(v["entities"].is_array(), "{v}");

    // The client over the socket prints the in-process lines.
    let remote = classify_json(&["--socket", server.socket.to_str().unwrap()], &texts);
    assert_eq!(remote, local);
}

/// `edge-bert classify --json` with `args` (the model or server) on
/// `texts`, one per stdin line: one answer object per text.
pub fn classify_json(args: &[&str], texts: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["classify", "--json"];
    all.extend_from_slice(args);
    let input: String = texts.iter().map(|t| format!("{t}\n")).collect();
    let o = run(&all, input.as_bytes());
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Entities with their scores read as f32 (the server writes an f32's
/// shortest form; `classify --json` writes the f64 it widens to).
pub fn as_f32(entities: &serde_json::Value) -> Vec<(String, u64, u64, String, f32)> {
    entities
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["label"].as_str().unwrap().to_string(),
                e["start"].as_u64().unwrap(),
                e["end"].as_u64().unwrap(),
                e["text"].as_str().unwrap().to_string(),
                e["score"].as_f64().unwrap() as f32,
            )
        })
        .collect()
}
