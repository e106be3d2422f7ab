//! `edge-bert`: a firmware-style BERT text-classification runtime built on
//! [tract](https://github.com/sonos/tract), for small ARM boards.
//!
//! A *bundle* (a directory with `manifest.json`, a model and a
//! `tokenizer.json`) is verified against the SHA-256 sums in its manifest,
//! tokenised by the crate's own BERT WordPiece tokenizer (token for token
//! the same as Hugging Face `tokenizers`, but allocation-free), and run by
//! tract with one
//! optimised fixed-shape plan per length bucket. All plans and their states
//! are built once at load time and reused for every text, so memory is known
//! at start-up and short texts cost less compute than long ones
//! ([`Classifier::new_lazy`] instead builds each plan on first use, for
//! one-shot runs).
//!
//! ```no_run
//! let mut clf = edge_bert::Classifier::from_dir("models/sentiment-fp32")?;
//! let c = clf.classify("a warm, funny, beautifully acted film")?;
//! println!("{} {:.3}", c.label, c.score);
//! # Ok::<(), edge_bert::Error>(())
//! ```
//!
//! # Layout
//!
//! - [`manifest`]: the bundle manifest, parsed and validated (pure).
//! - [`bundle`]: reading a bundle from a directory or from the binary, with
//!   every file checked by size and SHA-256.
//! - [`embedded`]: the default model compiled in (`embedded-model` feature).
//! - [`tokenize`]: BERT WordPiece from the bundle's `tokenizer.json`,
//!   truncating at `max_seq_len`, writing into reused buffers (pure).
//! - [`engine`]: tract plans and states, one per length bucket.
//! - [`rows`]: the word-embedding table read a row per token from the
//!   model file instead of held in memory (a pure ONNX walk + `pread`).
//! - [`dynquant`]: a faster `DynamicQuantizeLinear` op for tract, with
//!   SIMD paths chosen at run time (pure kernels + the op).
//! - [`qmatmul`]: a fused int8 matmul op for tract (quantise, multiply,
//!   dequantise, add the bias), SIMD kernels chosen at run time.
//! - [`softmax`]: a faster softmax over the last axis for tract's f32
//!   attention (a vectorisable polynomial `exp`, same bits on every build).
//! - [`attention`]: BERT's self-attention (two matmuls per head around
//!   the softmax) as one tract op, fused into the ONNX graph.
//! - [`gelu`]: tract's exact GELU, its element-wise passes vectorised
//!   (same bits as tract's op).
//! - [`postprocess`]: softmax and arg-max over logits (pure).
//! - [`classifier`]: text in, [`Classification`] out.
//! - [`client`]: talking to a running `edge-bert serve`.
//! - [`eval`]: labelled TSV files and accuracy metrics (pure, but for
//!   `read_tsv`).
//! - [`protocol`]: the JSON-lines wire format: a bounded line reader and
//!   the request decoder, response encoders (pure).
//! - [`framing`]: the serial line's `*XXXXXXXX` CRC-32 suffix (pure).
//! - [`serial`]: a tty opened raw with a read timeout (thin I/O).
//! - [`server`]: `edge-bert serve`: Unix/TCP listeners and a serial port,
//!   one inference worker behind a bounded queue.
//! - [`memory`]: handing start-up memory back: the loader's code pages
//!   once a server is ready, the heap freed while loading.
//! - [`alloc_probe`]: thread markers that let a test's counting allocator
//!   tell the serving loop's allocations from tract's.
//! - [`error`]: the crate's [`Error`] type.
//!
//! The `edge-bert` binary (`src/main.rs`) is a thin command-line layer over
//! these modules.

pub mod alloc_probe;
pub mod attention;
pub mod bundle;
pub mod classifier;
pub mod client;
pub mod dynquant;
pub mod embedded;
pub mod engine;
pub mod error;
pub mod eval;
pub mod framing;
pub mod gelu;
pub mod manifest;
pub mod memory;
pub mod postprocess;
pub mod protocol;
pub mod qmatmul;
pub mod rows;
pub mod serial;
pub mod server;
pub mod softmax;
pub mod tokenize;
pub mod weights;

pub use bundle::Bundle;
pub use classifier::{Classification, Classifier, Outcome};
pub use error::{Error, Result};
pub use manifest::Manifest;
