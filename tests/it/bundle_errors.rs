//! A damaged bundle is refused with an error naming the file, never a panic.

use edge_bert_model::{Bundle, Error};

use crate::util::*;

fn damage(file: &str, f: impl FnOnce(&mut Vec<u8>)) -> (tempfile::TempDir, Error) {
    let tmp = copy_bundle(&tiny_dir());
    let path = tmp.path().join(file);
    let mut bytes = std::fs::read(&path).unwrap();
    f(&mut bytes);
    std::fs::write(&path, bytes).unwrap();
    let err = Bundle::load_dir(tmp.path()).unwrap_err();
    (tmp, err)
}

#[test]
fn intact_bundle_loads() {
    let b = Bundle::load_dir(tiny_dir()).unwrap();
    assert_eq!(b.manifest.name, "tiny");
}

#[test]
fn missing_dir() {
    let err = Bundle::load_dir("/nonexistent/edge-bert-model").unwrap_err();
    assert!(matches!(err, Error::MissingModelDir { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/edge-bert-model"));
}

#[test]
fn missing_file() {
    for file in ["model.onnx", "tokenizer.json", "manifest.json"] {
        let tmp = copy_bundle(&tiny_dir());
        std::fs::remove_file(tmp.path().join(file)).unwrap();
        let err = Bundle::load_dir(tmp.path()).unwrap_err();
        assert!(matches!(err, Error::MissingFile { .. }), "{err}");
        assert!(err.to_string().contains(file), "{err}");
    }
}

#[test]
fn truncated_file() {
    let (_tmp, err) = damage("model.onnx", |b| b.truncate(b.len() / 2));
    assert!(matches!(err, Error::SizeMismatch { .. }), "{err}");
    assert!(err.to_string().contains("model.onnx"), "{err}");
}

#[test]
fn corrupted_file() {
    for file in ["model.onnx", "tokenizer.json"] {
        let (_tmp, err) = damage(file, |b| {
            let mid = b.len() / 2;
            b[mid] ^= 0x55;
        });
        assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
        assert!(err.to_string().contains(file), "{err}");
    }
}

#[test]
fn malformed_manifest() {
    let (_tmp, err) = damage("manifest.json", |b| b.truncate(b.len() / 2));
    assert!(matches!(err, Error::Manifest { .. }), "{err}");
    assert!(err.to_string().contains("manifest.json"), "{err}");
}

#[test]
fn not_a_model_is_a_model_error() {
    // Replace the model by garbage and fix up the manifest so it passes the
    // checksum: tract must then refuse it with an error, not a panic.
    let tmp = copy_bundle(&tiny_dir());
    let garbage = b"this is not an onnx file".repeat(10);
    std::fs::write(tmp.path().join("model.onnx"), &garbage).unwrap();
    let mpath = tmp.path().join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    for f in m["files"].as_array_mut().unwrap() {
        if f["path"] == "model.onnx" {
            f["sha256"] = edge_bert_model::manifest::sha256_hex(&garbage).into();
            f["bytes"] = garbage.len().into();
        }
    }
    std::fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
    let err = edge_bert_model::Classifier::from_dir(tmp.path()).unwrap_err();
    assert!(matches!(err, Error::Model(_)), "{err}");
}

#[test]
fn load_dir_hashes_while_decoding_and_still_refuses_a_bad_model() {
    // Classifier::load_dir checks the model's SHA-256 on a second thread
    // while it decodes: a damaged file must still be refused as such,
    // whether or not the damage also breaks the protobuf.
    for at in [0.5, 0.999] {
        let tmp = copy_bundle(&tiny_dir());
        let path = tmp.path().join("model.onnx");
        let mut b = std::fs::read(&path).unwrap();
        let ix = ((b.len() as f64) * at) as usize;
        b[ix] ^= 0x55;
        std::fs::write(&path, &b).unwrap();
        for lazy in [false, true] {
            let err = edge_bert_model::Classifier::load_dir(tmp.path(), None, lazy).unwrap_err();
            assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
            assert!(err.to_string().contains("model.onnx"), "{err}");
        }
    }
    // An intact bundle loads the same way.
    let mut clf = edge_bert_model::Classifier::load_dir(tiny_dir(), None, false).unwrap();
    assert!(clf.classify("a fine film").is_ok());
}
