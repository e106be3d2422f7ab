//! `edge-bert-model`: a BERT text classifier from a model bundle, on
//! [tract](https://github.com/sonos/tract). No sockets, no command line.
//!
//! A *bundle* (a directory with `manifest.json`, a model and a
//! `tokenizer.json`) is verified against the SHA-256 sums in its manifest,
//! tokenised by the crate's own BERT WordPiece tokenizer (token for token
//! the same as Hugging Face `tokenizers`, but allocation-free), and run by
//! tract with one optimised fixed-shape plan per length bucket, with
//! edge-bert's own kernels swapped in (`edge-bert-kernels`). All plans and
//! their states are built once at load time and reused for every text, so
//! memory is known at start-up and short texts cost less compute than long
//! ones ([`Classifier::new_lazy`] instead builds each plan on first use,
//! for one-shot runs).
//!
//! ```no_run
//! let mut clf = edge_bert_model::Classifier::from_dir("models/sentiment-fp32")?;
//! let c = clf.classify("a warm, funny, beautifully acted film")?;
//! println!("{} {:.3}", c.label, c.score);
//! # Ok::<(), edge_bert_model::Error>(())
//! ```
//!
//! # Layout
//!
//! From the bottom up:
//!
//! - `error`: the crate's [`Error`] type.
//! - [`manifest`]: the bundle manifest, parsed and validated (pure).
//! - [`memory`]: `/proc` maps parsing and handing start-up memory back
//!   (loader pages, freed heap, a static model's pages).
//! - [`alloc_probe`]: thread markers that let a test's counting allocator
//!   tell the serving loop's allocations from tract's.
//! - [`rows`]: the word-embedding table read a row per token from the
//!   model file instead of held in memory (a pure ONNX walk + `pread`).
//! - [`bundle`]: reading a bundle from a directory or from memory, with
//!   every file checked by size and SHA-256; writing one (`write`
//!   feature, host tools only).
//! - [`signing`]: Ed25519 signatures over `manifest.json`, trusted keys
//!   (pure; signing itself behind the `write` feature).
//! - [`selftest`]: a bundle's golden texts and the answers it must give.
//! - [`embedded`]: the default model compiled in (`embedded-model`
//!   feature).
//! - [`tokenize`]: BERT WordPiece from the bundle's `tokenizer.json`,
//!   truncating at `max_seq_len`, writing into reused buffers, with each
//!   token's span in the text (pure).
//! - `hf_tokenizer` (`hf-tokenizers` feature): any other `tokenizer.json`
//!   (BPE, Unigram) through the `tokenizers` crate, allocating per text.
//! - `weights`: one copy of each weight across the bucket plans.
//! - [`engine`]: tract plans and states, one per length bucket, with the
//!   kernels installed.
//! - [`postprocess`]: softmax, per-label sigmoid and arg-max over logits,
//!   pooling and normalising token vectors, cosine (pure).
//! - [`ner`]: BIO token labels merged into entities with spans in the
//!   text (pure).
//! - `classifier`: text in, [`Classification`] (for a `multilabel`
//!   bundle with the labels over its threshold; for an `embed` bundle,
//!   [`Embedding`]; for an `ner` bundle, [`Entities`]) out.
//! - [`eval`]: labelled TSV files (one label, or a set of them) and their
//!   metrics: accuracy, per-label F1, micro and macro F1 (pure, but for
//!   the `read_*` functions).

pub mod alloc_probe;
pub mod bundle;
mod classifier;
pub mod embedded;
pub mod engine;
mod error;
pub mod eval;
#[cfg(feature = "hf-tokenizers")]
mod hf_tokenizer;
pub mod manifest;
pub mod memory;
pub mod ner;
pub mod postprocess;
pub mod rows;
pub mod selftest;
pub mod signing;
pub mod tokenize;
mod weights;

pub use bundle::Bundle;
pub use classifier::{Classification, Classifier, Embedding, Entities, Outcome};
pub use error::{Error, Result};
pub use manifest::Manifest;
