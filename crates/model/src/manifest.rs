//! The bundle manifest (`manifest.json`): pure parsing and validation.
//!
//! A bundle is a directory holding a model file, a `tokenizer.json` and this
//! manifest. The manifest records what the runtime needs to drive the model
//! (labels, input names, maximum length, length buckets) and the SHA-256 and
//! size of every file, so a damaged bundle is refused before it is used.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The manifest format this runtime understands.
pub const FORMAT_VERSION: u32 = 1;

/// One file of a bundle, with its size and hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

/// The parsed `manifest.json` of a bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub name: String,
    /// What the model does: absent, `classify` or `text-classification`
    /// (softmax over `labels`), `multilabel` (a sigmoid per label, see
    /// `threshold`), or `embed` (one vector per text, see `pooling` and
    /// `dim`). See [`Manifest::task_kind`].
    #[serde(default)]
    pub task: Option<String>,
    /// `embed` bundles: how the token vectors of `output` (`[1, len, dim]`)
    /// become one: `mean` over the real tokens (the default) or `cls` (the
    /// first token's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling: Option<String>,
    /// `embed` bundles: the width of the embedding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dim: Option<usize>,
    /// `multilabel` bundles: the probability at which a label is given
    /// (default [`DEFAULT_THRESHOLD`]); a request may set its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f32>,
    /// `fp32` or `int8`; informational, the graph is the truth.
    pub precision: String,
    /// Class names, in logit order.
    pub labels: Vec<String>,
    /// Longest token sequence the model is run on; longer texts are truncated.
    pub max_seq_len: usize,
    /// Fixed sequence lengths that get their own plan; the last one must be
    /// `max_seq_len`.
    #[serde(default)]
    pub buckets: Vec<usize>,
    /// Model input names, e.g. `input_ids`, `attention_mask`, `token_type_ids`.
    pub inputs: Vec<String>,
    /// Name of the logits output.
    pub output: String,
    /// File name of the model (ONNX).
    pub model: String,
    /// File name of the tokenizer (Hugging Face `tokenizer.json`).
    pub tokenizer: String,
    /// Every file of the bundle except the manifest itself.
    pub files: Vec<FileEntry>,
    /// Where the model and data came from; free-form.
    #[serde(default)]
    pub provenance: serde_json::Value,
    /// The bundle's release number, set when it is signed; a device that
    /// checks signatures never runs a lower one than it has run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// The id of the key the bundle is signed with (see `signing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

/// Most values an `embed` bundle's vector may have (its fixed buffers).
pub const MAX_DIM: usize = 4096;

/// How the token vectors of an `embed` model become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over the real tokens (special tokens included, padding not),
    /// as sentence-transformers' mean pooling.
    Mean,
    /// The first token's vector (`[CLS]`).
    Cls,
}

impl Pooling {
    /// The name written in manifests (`pooling`).
    pub fn name(&self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
        }
    }
}

/// The `threshold` of a `multilabel` bundle that does not set one.
pub const DEFAULT_THRESHOLD: f32 = 0.5;

/// Whether `t` may be a `multilabel` threshold: a probability strictly
/// between 0 and 1.
pub fn valid_threshold(t: f32) -> bool {
    t > 0.0 && t < 1.0
}

/// What a bundle's model does, from the manifest's `task`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Task {
    /// Logits over `labels`, answered with a softmax.
    Classify,
    /// Logits over `labels`, each answered with its own sigmoid; the labels
    /// at or over `threshold` are given.
    Multilabel { threshold: f32 },
    /// One L2-normalised vector of `dim` values per text.
    Embed { dim: usize, pooling: Pooling },
    /// Token classification: logits over `labels` (BIO tags, see
    /// [`crate::ner`]) for every token, merged into entities.
    Ner,
}

impl Task {
    /// The name written in manifests and shown to users.
    pub fn name(&self) -> &'static str {
        match self {
            Task::Classify => "classify",
            Task::Multilabel { .. } => "multilabel",
            Task::Embed { .. } => "embed",
            Task::Ner => "ner",
        }
    }

    /// The values in one vector: `dim` for `embed`, 0 otherwise.
    pub fn dim(&self) -> usize {
        match self {
            Task::Classify | Task::Multilabel { .. } | Task::Ner => 0,
            Task::Embed { dim, .. } => *dim,
        }
    }
}

/// The input roles the engine knows how to fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputRole {
    Ids,
    Mask,
    TypeIds,
}

impl InputRole {
    /// Maps a model input name to the role the engine fills it with.
    pub fn from_name(name: &str) -> Option<InputRole> {
        match name {
            "input_ids" => Some(InputRole::Ids),
            "attention_mask" => Some(InputRole::Mask),
            "token_type_ids" => Some(InputRole::TypeIds),
            _ => None,
        }
    }
}

impl Manifest {
    /// Parses and validates a manifest. `Err` is a human-readable reason.
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let m: Manifest = serde_json::from_str(text).map_err(|e| e.to_string())?;
        m.validate()?;
        Ok(m)
    }

    /// The task, from `task`, `pooling` and `dim`; `Err` says what is
    /// wrong or not supported.
    pub fn task_kind(&self) -> Result<Task, String> {
        match self.task.as_deref() {
            None | Some("classify" | "text-classification") => Ok(Task::Classify),
            Some("multilabel" | "multi-label") => {
                let threshold = self.threshold.unwrap_or(DEFAULT_THRESHOLD);
                if !valid_threshold(threshold) {
                    return Err(format!(
                        "threshold {threshold} is not a probability strictly between 0 and 1"
                    ));
                }
                Ok(Task::Multilabel { threshold })
            }
            Some("embed") => {
                let dim = self
                    .dim
                    .ok_or("an embed bundle needs \"dim\", the width of its vectors")?;
                if dim == 0 || dim > MAX_DIM {
                    return Err(format!("dim {dim} is not in 1..={MAX_DIM}"));
                }
                let pooling = match self.pooling.as_deref() {
                    None | Some("mean") => Pooling::Mean,
                    Some("cls") => Pooling::Cls,
                    Some(other) => {
                        return Err(format!("pooling {other:?} is not one of mean, cls"))
                    }
                };
                Ok(Task::Embed { dim, pooling })
            }
            Some("ner" | "token-classification") => Ok(Task::Ner),
            Some(other) => Err(format!(
                "task {other:?} is not supported by this runtime (it serves classify, multilabel, embed and ner)"
            )),
        }
    }

    /// Checks the manifest is self-consistent.
    pub fn validate(&self) -> Result<(), String> {
        if self.format_version != FORMAT_VERSION {
            return Err(format!(
                "format_version {} is not supported (this runtime reads {FORMAT_VERSION})",
                self.format_version
            ));
        }
        match self.task_kind()? {
            Task::Classify if self.labels.len() < 2 => {
                return Err("at least two labels are needed".into());
            }
            Task::Multilabel { .. } if self.labels.is_empty() => {
                return Err("a multilabel bundle needs at least one label".into());
            }
            Task::Embed { .. } if !self.labels.is_empty() => {
                return Err("an embed bundle has no labels".into());
            }
            Task::Ner => {
                crate::ner::TagSet::parse(&self.labels)
                    .map_err(|e| format!("an ner bundle's labels are BIO tags: {e}"))?;
            }
            _ => {}
        }
        if self.max_seq_len < 2 {
            return Err("max_seq_len must be at least 2 (room for [CLS] and [SEP])".into());
        }
        for name in &self.inputs {
            if InputRole::from_name(name).is_none() {
                return Err(format!("unknown model input {name:?}"));
            }
        }
        if !self.inputs.iter().any(|n| n == "input_ids") {
            return Err("inputs must include input_ids".into());
        }
        for needed in [&self.model, &self.tokenizer] {
            if self.file(needed).is_none() {
                return Err(format!("{needed} is not listed in files"));
            }
        }
        for f in &self.files {
            if f.path.contains('/') || f.path.contains('\\') || f.path.starts_with('.') {
                return Err(format!("file path {:?} must be a plain file name", f.path));
            }
            if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("sha256 of {} is not 64 hex digits", f.path));
            }
        }
        check_buckets(&self.buckets, self.max_seq_len)?;
        Ok(())
    }

    /// The entry for a file name, if listed.
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
    }

    /// The buckets to build: the manifest's, or a default ladder.
    pub fn effective_buckets(&self) -> Vec<usize> {
        if self.buckets.is_empty() {
            default_buckets(self.max_seq_len)
        } else {
            self.buckets.clone()
        }
    }
}

/// Checks a bucket list: strictly increasing, each ≥ 2, the last equal to `max_seq_len`.
pub fn check_buckets(buckets: &[usize], max_seq_len: usize) -> Result<(), String> {
    if buckets.is_empty() {
        return Ok(());
    }
    if buckets.iter().any(|&b| b < 2) {
        return Err("every bucket must be at least 2 tokens".into());
    }
    if buckets.windows(2).any(|w| w[0] >= w[1]) {
        return Err(format!("buckets {buckets:?} must be strictly increasing"));
    }
    if *buckets.last().unwrap() != max_seq_len {
        return Err(format!(
            "the largest bucket must equal max_seq_len {max_seq_len}, got {buckets:?}"
        ));
    }
    Ok(())
}

/// Powers of two from 16 up to `max_seq_len`, which is always included.
pub fn default_buckets(max_seq_len: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut b = 16;
    while b < max_seq_len {
        out.push(b);
        b *= 2;
    }
    out.push(max_seq_len);
    out
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in digest {
        use std::fmt::Write;
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format_version: 1,
            name: "t".into(),
            task: None,
            pooling: None,
            dim: None,
            threshold: None,
            precision: "fp32".into(),
            labels: vec!["NEGATIVE".into(), "POSITIVE".into()],
            max_seq_len: 32,
            buckets: vec![8, 16, 32],
            inputs: vec!["input_ids".into(), "attention_mask".into()],
            output: "logits".into(),
            model: "model.onnx".into(),
            tokenizer: "tokenizer.json".into(),
            files: vec![
                FileEntry {
                    path: "model.onnx".into(),
                    sha256: "a".repeat(64),
                    bytes: 1,
                },
                FileEntry {
                    path: "tokenizer.json".into(),
                    sha256: "b".repeat(64),
                    bytes: 1,
                },
            ],
            provenance: serde_json::Value::Null,
            version: None,
            key_id: None,
        }
    }

    #[test]
    fn round_trips_through_json() {
        let m = sample();
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(Manifest::parse(&text).unwrap(), m);
    }

    #[test]
    fn rejects_inconsistencies() {
        let mut m = sample();
        m.buckets = vec![16, 8, 32];
        assert!(m.validate().unwrap_err().contains("increasing"));
        let mut m = sample();
        m.buckets = vec![8, 16];
        assert!(m.validate().unwrap_err().contains("max_seq_len"));
        let mut m = sample();
        m.files.pop();
        assert!(m.validate().unwrap_err().contains("tokenizer.json"));
        let mut m = sample();
        m.inputs.push("pixel_values".into());
        assert!(m.validate().unwrap_err().contains("pixel_values"));
        let mut m = sample();
        m.files[0].path = "../etc/passwd".into();
        m.model = m.files[0].path.clone();
        assert!(m.validate().unwrap_err().contains("plain file name"));
        let mut m = sample();
        m.labels.truncate(1);
        assert!(m.validate().is_err());
        assert!(Manifest::parse("{not json").is_err());
    }

    #[test]
    fn embed_tasks() {
        let mut m = sample();
        m.task = Some("embed".into());
        assert!(m.validate().unwrap_err().contains("dim"));
        m.dim = Some(384);
        assert!(m.validate().unwrap_err().contains("no labels"));
        m.labels.clear();
        assert_eq!(
            m.task_kind(),
            Ok(Task::Embed {
                dim: 384,
                pooling: Pooling::Mean
            })
        );
        m.pooling = Some("cls".into());
        assert_eq!(
            m.task_kind(),
            Ok(Task::Embed {
                dim: 384,
                pooling: Pooling::Cls
            })
        );
        m.pooling = Some("max".into());
        assert!(m.validate().unwrap_err().contains("max"));
        m.pooling = None;
        m.dim = Some(MAX_DIM + 1);
        assert!(m.validate().is_err());
        let text = serde_json::to_string(&Manifest {
            dim: Some(384),
            ..m.clone()
        })
        .unwrap();
        assert_eq!(Manifest::parse(&text).unwrap().dim, Some(384));
        let mut m = sample();
        m.task = Some("question-answering".into());
        assert!(m.validate().unwrap_err().contains("not supported"));
        m.task = Some("text-classification".into());
        assert_eq!(m.task_kind(), Ok(Task::Classify));
    }

    #[test]
    fn ner_tasks_need_bio_labels() {
        let mut m = sample();
        m.task = Some("ner".into());
        // The sample's labels are not BIO tags.
        let err = m.validate().unwrap_err();
        assert!(err.contains("BIO"), "{err}");
        m.labels = ["O", "B-LOC", "I-LOC"].map(String::from).to_vec();
        m.validate().unwrap();
        assert_eq!(m.task_kind(), Ok(Task::Ner));
        m.task = Some("token-classification".into());
        assert_eq!(m.task_kind(), Ok(Task::Ner));
    }

    #[test]
    fn multilabel_tasks() {
        let mut m = sample();
        m.task = Some("multilabel".into());
        assert_eq!(
            m.task_kind(),
            Ok(Task::Multilabel {
                threshold: DEFAULT_THRESHOLD
            })
        );
        m.threshold = Some(0.3);
        assert_eq!(m.task_kind(), Ok(Task::Multilabel { threshold: 0.3 }));
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(Manifest::parse(&text).unwrap().threshold, Some(0.3));
        // One label is enough (a single yes/no tag); none is not.
        m.labels.truncate(1);
        assert!(m.validate().is_ok());
        m.labels.clear();
        assert!(m.validate().unwrap_err().contains("at least one label"));
        m.labels.push("a".into());
        for bad in [0.0, 1.0, -0.5, 2.0, f32::NAN] {
            m.threshold = Some(bad);
            assert!(
                m.validate().unwrap_err().contains("threshold"),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn default_bucket_ladder() {
        assert_eq!(default_buckets(128), vec![16, 32, 64, 128]);
        assert_eq!(default_buckets(100), vec![16, 32, 64, 100]);
        assert_eq!(default_buckets(8), vec![8]);
    }

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
