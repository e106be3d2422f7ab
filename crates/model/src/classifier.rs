//! Text in, label out: a bundle's tokenizer, engine and labels put together.

use serde::Serialize;

use std::path::PathBuf;

use crate::bundle::Bundle;
use crate::engine::{DecodedModel, Engine, ModelFormat, Output};
use crate::error::{Error, Result};
use crate::manifest::{check_buckets, Manifest, Task};
use crate::ner::{merge_into, Entity, TagSet};
use crate::postprocess::{argmax, l2_normalize, over_threshold, sigmoid_into, softmax_into};
use crate::tokenize::{Scratch, TextTokenizer};

/// Most labels a model may have (the fixed size of [`Outcome::probs`]).
pub const MAX_LABELS: usize = 256;

/// The result of classifying one text, in fixed-size memory: what the
/// serving loop passes around without allocating.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Index of the winning label (manifest order).
    pub best: usize,
    /// Probability of every label, in manifest order.
    pub probs: heapless::Vec<f32, MAX_LABELS>,
    /// Tokens the model saw, special tokens included.
    pub tokens: usize,
    /// Whether the text was cut to the model's maximum length.
    pub truncated: bool,
}

/// The result of classifying one text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Classification {
    /// The winning label.
    pub label: String,
    /// Its probability.
    pub score: f32,
    /// Probability of every label, in manifest order.
    pub scores: Vec<(String, f32)>,
    /// `multilabel` models: every label at or over the threshold, in
    /// manifest order (`label` is then the most likely one, given or not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// Raw logits, in manifest order.
    pub logits: Vec<f32>,
    /// Tokens the model saw, special tokens included.
    pub tokens: usize,
    /// Whether the text was cut to the model's maximum length.
    pub truncated: bool,
}

/// The embedding of one text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Embedding {
    /// `dim` values of unit L2 norm.
    pub vector: Vec<f32>,
    /// Tokens the model saw, special tokens included.
    pub tokens: usize,
    /// Whether the text was cut to the model's maximum length.
    pub truncated: bool,
}

/// The entities found in one text.
#[derive(Debug, Clone, PartialEq)]
pub struct Entities {
    /// In text order, with byte spans (see [`crate::ner::char_span`]).
    pub found: Vec<Entity>,
    /// Tokens the model saw, special tokens included.
    pub tokens: usize,
    /// Whether the text was cut to the model's maximum length.
    pub truncated: bool,
}

/// Decodes the bundle's model file, in the format its manifest names.
fn decode_model(bundle: &Bundle, bytes: &[u8]) -> Result<DecodedModel> {
    crate::engine::decode(bytes, ModelFormat::from_file_name(&bundle.manifest.model)?)
}

/// A loaded bundle, ready to classify texts.
#[derive(Debug)]
pub struct Classifier {
    manifest: Manifest,
    task: Task,
    source: crate::bundle::Source,
    tokenizer: TextTokenizer,
    engine: Engine,
    // Working buffers, sized at load time and reused for every text.
    scratch: Scratch,
    ids: Vec<u32>,
    logits: Vec<f32>,
    /// `ner` models: the labels read as tags, and one token's probabilities.
    tags: Option<TagSet>,
    row: Vec<f32>,
}

impl Classifier {
    /// Builds the tokenizer and every bucket's plan. `buckets` overrides the
    /// manifest's bucket list.
    pub fn new(bundle: &Bundle, buckets: Option<&[usize]>) -> Result<Classifier> {
        Classifier::new_with(
            bundle,
            decode_model(bundle, &bundle.model_bytes)?,
            buckets,
            false,
        )
    }

    /// Like [`Classifier::new`], but each bucket's plan is built when a text
    /// first needs it ([`Engine::load_lazy`]): for one-shot use, where the
    /// first answer matters more than a memory bound known at load time.
    pub fn new_lazy(bundle: &Bundle, buckets: Option<&[usize]>) -> Result<Classifier> {
        Classifier::new_with(
            bundle,
            decode_model(bundle, &bundle.model_bytes)?,
            buckets,
            true,
        )
    }

    /// Like [`Classifier::new`] (or [`Classifier::new_lazy`] when `lazy`),
    /// but takes the bundle, so the model file's bytes are freed as soon as
    /// they are decoded (for the embedded bundle, its pages are dropped from
    /// the resident set): a lower peak while loading.
    pub fn from_bundle(
        mut bundle: Bundle,
        buckets: Option<&[usize]>,
        lazy: bool,
    ) -> Result<Classifier> {
        let bytes = std::mem::take(&mut bundle.model_bytes);
        let decoded = decode_model(&bundle, &bytes)?;
        match bytes {
            // Bytes of this executable's image: drop their pages.
            std::borrow::Cow::Borrowed(image) => crate::memory::release_static_pages(image),
            std::borrow::Cow::Owned(heap) => drop(heap),
        }
        Classifier::new_with(&bundle, decoded, buckets, lazy)
    }

    /// Loads the bundle in `dir` (see [`Bundle::load_dir`]), freeing the
    /// model file's bytes once decoded, like [`Classifier::from_bundle`].
    ///
    /// When `lazy` (a one-shot classify, where time to the first answer is
    /// what counts), the model file's SHA-256 is computed on a second thread
    /// while this one decodes the model and builds the engine, and the bytes
    /// are kept until both are done. Otherwise the hash comes first and the
    /// bytes are freed before the engine is built (a lower peak, for a
    /// server). Either way a file that fails its check is an error, and no
    /// classifier is returned.
    pub fn load_dir(
        dir: impl AsRef<std::path::Path>,
        buckets: Option<&[usize]>,
        lazy: bool,
    ) -> Result<Classifier> {
        let (mut bundle, check) = Bundle::load_dir_deferred(dir)?;
        if !lazy {
            check.run(&bundle.model_bytes)?;
            return Classifier::from_bundle(bundle, buckets, lazy);
        }
        let bytes = std::mem::take(&mut bundle.model_bytes);
        std::thread::scope(|s| {
            let hashing = std::thread::Builder::new().spawn_scoped(s, || check.run(&bytes));
            let built = decode_model(&bundle, &bytes)
                .and_then(|decoded| Classifier::new_with(&bundle, decoded, buckets, lazy));
            let checked = match hashing {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err(Error::Model("the hashing thread panicked".into()))),
                // No second thread: hash here.
                Err(_) => check.run(&bytes),
            };
            // A file that fails its check is reported as such, whatever the
            // decoder made of it.
            checked.and(built)
        })
    }

    fn new_with(
        bundle: &Bundle,
        decoded: DecodedModel,
        buckets: Option<&[usize]>,
        lazy: bool,
    ) -> Result<Classifier> {
        let m = &bundle.manifest;
        let buckets = match buckets {
            Some(b) => {
                let mut b = b.to_vec();
                b.sort_unstable();
                b.dedup();
                check_buckets(&b, m.max_seq_len).map_err(Error::InvalidArgument)?;
                b
            }
            None => m.effective_buckets(),
        };
        let bad_manifest = |reason: String| Error::Manifest {
            path: PathBuf::from(bundle.source.to_string()).join("manifest.json"),
            reason,
        };
        let task = m.task_kind().map_err(bad_manifest)?;
        if m.labels.len() > MAX_LABELS {
            return Err(Error::InvalidArgument(format!(
                "{} labels; at most {MAX_LABELS} are supported",
                m.labels.len()
            )));
        }
        let tokenizer = TextTokenizer::from_bytes(&bundle.tokenizer_bytes, m.max_seq_len)?;
        let mut decoded = decoded;
        if !decoded.keep_output(&m.output) {
            return Err(bad_manifest(format!(
                "output {:?} is not an output of {} (it has: {})",
                m.output,
                m.model,
                decoded.output_names().join(", ")
            )));
        }
        let output = match task {
            Task::Classify | Task::Multilabel { .. } => Output::Logits(m.labels.len()),
            Task::Embed { dim, pooling } => Output::Pooled { dim, pooling },
            Task::Ner => Output::Tokens {
                labels: m.labels.len(),
                max_len: m.max_seq_len,
            },
        };
        let tags = match task {
            Task::Ner => Some(TagSet::parse(&m.labels).map_err(bad_manifest)?),
            _ => None,
        };
        let engine =
            Engine::from_decoded_for(decoded, &buckets, output, lazy, bundle.model_file.as_ref())?;
        for name in engine.input_names() {
            if !m.inputs.contains(name) {
                return Err(Error::Model(format!(
                    "model input {name:?} is not listed in the manifest's inputs"
                )));
            }
        }
        Ok(Classifier {
            manifest: m.clone(),
            task,
            source: bundle.source.clone(),
            ids: Vec::with_capacity(tokenizer.ids_capacity()),
            scratch: tokenizer.scratch(),
            row: vec![0.0; if tags.is_some() { m.labels.len() } else { 0 }],
            tags,
            tokenizer,
            engine,
            logits: vec![0.0; output.width()],
        })
    }

    /// Loads a bundle directory and builds it with the manifest's buckets
    /// (every plan at load; the bytes freed once decoded, see
    /// [`Classifier::load_dir`]).
    pub fn from_dir(dir: impl AsRef<std::path::Path>) -> Result<Classifier> {
        Classifier::load_dir(dir, None, false)
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// What the model does (the manifest's `task`).
    pub fn task(&self) -> Task {
        self.task
    }

    pub fn source(&self) -> &crate::bundle::Source {
        &self.source
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Runs the model once on a `len`-token input (warm-up).
    pub fn warm_up_bucket(&mut self, len: usize) -> Result<()> {
        let ids = vec![0u32; len];
        self.engine.logits(&ids).map(|_| ())
    }

    /// Logits for a text, with no check for emptiness.
    pub fn logits(&mut self, text: &str) -> Result<(Vec<f32>, usize, bool)> {
        let truncated = self.run(text)?;
        Ok((self.logits.clone(), self.ids.len(), truncated))
    }

    /// Tokenises `text` into `self.ids` and runs it into `self.logits`.
    fn run(&mut self, text: &str) -> Result<bool> {
        let truncated = self
            .tokenizer
            .encode_into(text, &mut self.scratch, &mut self.ids)?;
        self.engine.logits_into(&self.ids, &mut self.logits)?;
        Ok(truncated)
    }

    /// Classifies one text into fixed-size memory. Outside tract's own run
    /// this allocates nothing (the serving loop's path). An empty (or all
    /// white-space) text is an error.
    pub fn classify_outcome(&mut self, text: &str) -> Result<Outcome> {
        match self.task {
            Task::Embed { .. } => {
                return Err(Error::InvalidArgument(format!(
                    "{} is an embedding model (task {}): it gives vectors, not labels (`edge-bert embed`)",
                    self.manifest.name,
                    self.task.name()
                )))
            }
            Task::Ner => {
                return Err(Error::InvalidArgument(format!(
                    "{} is an NER model (task ner): it gives entities, not one label per text",
                    self.manifest.name
                )))
            }
            _ => {}
        }
        if text.trim().is_empty() {
            return Err(Error::EmptyText);
        }
        let truncated = self.run(text)?;
        let mut probs = heapless::Vec::new();
        probs
            .resize(self.logits.len(), 0.0)
            .map_err(|_| Error::Model("too many labels".into()))?;
        match self.task {
            Task::Multilabel { .. } => sigmoid_into(&self.logits, &mut probs),
            _ => softmax_into(&self.logits, &mut probs),
        }
        let best =
            argmax(&probs).ok_or_else(|| Error::Model("the model produced NaN logits".into()))?;
        Ok(Outcome {
            best,
            probs,
            tokens: self.ids.len(),
            truncated,
        })
    }

    /// Classifies one text. An empty (or all white-space) text is an error.
    pub fn classify(&mut self, text: &str) -> Result<Classification> {
        self.classify_at(text, None)
    }

    /// Classifies one text; a `multilabel` model gives the labels at or
    /// over `threshold` (its manifest's when `None`).
    pub fn classify_at(&mut self, text: &str, threshold: Option<f32>) -> Result<Classification> {
        let o = self.classify_outcome(text)?;
        let labels = match self.task {
            Task::Multilabel { threshold: own } => Some(
                over_threshold(&o.probs, threshold.unwrap_or(own))
                    .map(|i| self.manifest.labels[i].clone())
                    .collect(),
            ),
            _ => None,
        };
        Ok(Classification {
            label: self.manifest.labels[o.best].clone(),
            score: o.probs[o.best],
            scores: self
                .manifest
                .labels
                .iter()
                .cloned()
                .zip(o.probs.iter().copied())
                .collect(),
            labels,
            logits: self.logits.clone(),
            tokens: o.tokens,
            truncated: o.truncated,
        })
    }

    /// The labels a `multilabel` model gives a text at its own threshold
    /// (indices, manifest order), with the outcome they came from.
    pub fn given_labels(&mut self, text: &str) -> Result<(Vec<usize>, Outcome)> {
        let Task::Multilabel { threshold } = self.task else {
            return Err(Error::InvalidArgument(format!(
                "{} is a {} model, not a multi-label one",
                self.manifest.name,
                self.task.name()
            )));
        };
        let o = self.classify_outcome(text)?;
        Ok((over_threshold(&o.probs, threshold).collect(), o))
    }

    /// Embeds one text into `out` (`dim` values, unit L2 norm) and returns
    /// the tokens the model saw and whether the text was truncated. Outside
    /// tract's own run this allocates nothing. An empty text is an error,
    /// as is a bundle that is not an `embed` model.
    pub fn embed_into(&mut self, text: &str, out: &mut [f32]) -> Result<(usize, bool)> {
        let Task::Embed { dim, .. } = self.task else {
            return Err(Error::InvalidArgument(format!(
                "{} is a classifier (task {}): it gives labels, not vectors",
                self.manifest.name,
                self.task.name()
            )));
        };
        if out.len() != dim {
            return Err(Error::InvalidArgument(format!(
                "a buffer of {} values for vectors of {dim}",
                out.len()
            )));
        }
        if text.trim().is_empty() {
            return Err(Error::EmptyText);
        }
        let truncated = self.run(text)?;
        if self.logits.iter().any(|v| !v.is_finite()) {
            return Err(Error::Model(
                "the model produced NaN or infinite values".into(),
            ));
        }
        out.copy_from_slice(&self.logits);
        l2_normalize(out);
        Ok((self.ids.len(), truncated))
    }

    /// The labels of an `ner` model read as BIO tags (`None` for other
    /// tasks).
    pub fn tag_set(&self) -> Option<&TagSet> {
        self.tags.as_ref()
    }

    /// Finds the entities of one text into `out` (cleared first; with a
    /// capacity of the model's maximum length it never grows) and returns
    /// the tokens the model saw and whether the text was truncated. Each
    /// token takes its most probable tag (softmax over its logits); the
    /// tags are merged as [`crate::ner::merge_into`] says. Outside tract's
    /// own run this allocates nothing. An empty text is an error, as is a
    /// bundle that is not an `ner` model.
    pub fn entities_into(&mut self, text: &str, out: &mut Vec<Entity>) -> Result<(usize, bool)> {
        let Some(tags) = self.tags.as_ref() else {
            return Err(Error::InvalidArgument(format!(
                "{} is a {} model, not an NER one",
                self.manifest.name,
                self.task.name()
            )));
        };
        if text.trim().is_empty() {
            return Err(Error::EmptyText);
        }
        let truncated = self
            .tokenizer
            .encode_into(text, &mut self.scratch, &mut self.ids)?;
        self.engine.logits_into(&self.ids, &mut self.logits)?;
        let n = tags.len();
        let real = 1..self.ids.len() - 1;
        let spans = self.scratch.offsets();
        for i in real.clone() {
            let z = &self.logits[i * n..(i + 1) * n];
            if z.iter().any(|v| !v.is_finite()) {
                return Err(Error::Model(
                    "the model produced NaN or infinite values".into(),
                ));
            }
        }
        let (logits, row) = (&self.logits, &mut self.row);
        merge_into(
            tags,
            real.map(|i| {
                softmax_into(&logits[i * n..(i + 1) * n], row);
                let best = argmax(row).unwrap_or(0);
                (best, row[best], spans[i])
            }),
            out,
        );
        Ok((self.ids.len(), truncated))
    }

    /// Finds the entities of one text (see [`Classifier::entities_into`]).
    pub fn entities(&mut self, text: &str) -> Result<Entities> {
        let mut found = Vec::with_capacity(self.manifest.max_seq_len);
        let (tokens, truncated) = self.entities_into(text, &mut found)?;
        Ok(Entities {
            found,
            tokens,
            truncated,
        })
    }

    /// Embeds one text (see [`Classifier::embed_into`]).
    pub fn embed(&mut self, text: &str) -> Result<Embedding> {
        let mut vector = vec![0.0; self.logits.len()];
        let (tokens, truncated) = self.embed_into(text, &mut vector)?;
        Ok(Embedding {
            vector,
            tokens,
            truncated,
        })
    }
}
