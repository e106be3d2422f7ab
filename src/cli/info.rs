//! `edge-bert info`: what a bundle is and how the engine runs it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use edge_bert_model::engine::MatmulInfo;
use edge_bert_model::manifest::Task;
use edge_bert_model::Manifest;
use serde::Serialize;

use super::{emit, load, Failure};

#[derive(clap::Args)]
pub struct Args {
    /// Model bundle directory (default: the embedded model).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<(), Failure> {
    info(a.model.as_deref(), a.json)
}

/// What `info` reports; its `--json` line and its text both come from it.
#[derive(Serialize)]
struct InfoReport<'a> {
    source: String,
    manifest: &'a Manifest,
    buckets: Vec<usize>,
    shapes: Vec<Shape>,
    parameters: usize,
    vocab_size: usize,
    /// `WordPiece` (own, allocation-free) or e.g. `BPE (tokenizers crate)`.
    tokenizer: String,
    matmuls: &'a [MatmulInfo],
    dynamic_quantize: DynamicQuantize,
    fused_matmul: FusedMatmul,
    weights: Weights,
    /// Text only: the model's input names and how many plans are built.
    #[serde(skip)]
    input_names: &'a [String],
    #[serde(skip)]
    built_buckets: usize,
}

#[derive(Serialize)]
struct Shape {
    bucket: usize,
    inputs: BTreeMap<String, String>,
    output: String,
}

#[derive(Serialize)]
struct DynamicQuantize {
    ops: usize,
    kernel: String,
}

#[derive(Serialize)]
struct FusedMatmul {
    ops: usize,
    path: Option<&'static str>,
    packed_bytes: usize,
}

#[derive(Serialize)]
struct Weights {
    held_bytes: usize,
    shared_duplicate_bytes: usize,
    table_in_file_bytes: usize,
}

fn info(model: Option<&Path>, json: bool) -> Result<(), Failure> {
    let clf = load(model, None)?;
    let m = clf.manifest();
    let stats = clf.engine().stats();
    let input_names = clf.engine().input_names();
    let shapes = clf
        .engine()
        .buckets()
        .into_iter()
        .map(|bucket| Shape {
            bucket,
            inputs: input_names
                .iter()
                .map(|n| (n.clone(), format!("1x{bucket}xi64")))
                .collect(),
            output: match clf.task() {
                Task::Embed { dim, .. } => format!("1x{bucket}x{dim}xf32"),
                Task::Ner => format!("1x{bucket}x{}xf32", m.labels.len()),
                Task::Classify | Task::Multilabel { .. } => format!("1x{}xf32", m.labels.len()),
            },
        })
        .collect();
    let report = InfoReport {
        source: clf.source().to_string(),
        manifest: m,
        buckets: clf.engine().buckets(),
        shapes,
        parameters: stats.parameters,
        vocab_size: clf.tokenizer().vocab_size(),
        tokenizer: clf.tokenizer().kind(),
        matmuls: &stats.matmuls,
        dynamic_quantize: DynamicQuantize {
            ops: stats.dynamic_quantize_ops,
            kernel: format!("{:?}", edge_bert_kernels::dynquant::path()),
        },
        fused_matmul: FusedMatmul {
            ops: stats.fused_matmuls,
            path: edge_bert_kernels::qmatmul::chosen().map(|p| p.name()),
            packed_bytes: stats.fused_weight_bytes,
        },
        weights: Weights {
            held_bytes: stats.weight_bytes,
            shared_duplicate_bytes: stats.shared_weight_bytes,
            table_in_file_bytes: stats.table_in_file_bytes,
        },
        input_names,
        built_buckets: clf.engine().built_buckets(),
    };
    for mm in &stats.matmuls {
        log::info!(
            "matmul {} {} {}",
            mm.node,
            mm.op,
            mm.input_types.join(" x ")
        );
    }
    emit(&report, json)
}

impl std::fmt::Display for InfoReport<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.manifest;
        writeln!(f, "name         {}", m.name)?;
        writeln!(f, "source       {}", self.source)?;
        writeln!(f, "task         {}", m.task.as_deref().unwrap_or("-"))?;
        writeln!(f, "precision    {}", m.precision)?;
        writeln!(f, "labels       {}", m.labels.join(", "))?;
        writeln!(f, "max length   {} tokens", m.max_seq_len)?;
        writeln!(f, "buckets      {:?}", self.buckets)?;
        writeln!(
            f,
            "inputs       {} (each 1 x bucket, i64)",
            self.input_names.join(", ")
        )?;
        match m.task_kind() {
            Ok(Task::Embed { dim, pooling }) => writeln!(
                f,
                "output       {} (1 x bucket x {dim}, f32; {} pooling, L2-normalised)",
                m.output,
                pooling.name()
            )?,
            Ok(Task::Multilabel { threshold }) => writeln!(
                f,
                "output       {} (1 x {}, f32; a sigmoid per label, given at >= {threshold})",
                m.output,
                m.labels.len()
            )?,
            Ok(Task::Ner) => writeln!(
                f,
                "output       {} (1 x bucket x {}, f32; BIO tags per token, merged into entities)",
                m.output,
                m.labels.len()
            )?,
            _ => writeln!(f, "output       {} (1 x {}, f32)", m.output, m.labels.len())?,
        }
        writeln!(f, "parameters   {}", self.parameters)?;
        writeln!(
            f,
            "vocabulary   {} tokens ({})",
            self.vocab_size, self.tokenizer
        )?;
        writeln!(f, "files")?;
        for file in &m.files {
            writeln!(
                f,
                "  {:<20} {:>12} bytes  sha256 {}",
                file.path, file.bytes, file.sha256
            )?;
        }
        let mut kinds: Vec<(String, usize)> = Vec::new();
        for mm in self.matmuls {
            let key = format!("{} {}", mm.op, mm.input_types.join(" x "));
            match kinds.iter_mut().find(|(k, _)| *k == key) {
                Some((_, n)) => *n += 1,
                None => kinds.push((key, 1)),
            }
        }
        writeln!(f, "matmuls      {} in all", self.matmuls.len())?;
        for (k, n) in &kinds {
            writeln!(f, "  {n:>3} x {k}")?;
        }
        let dq = &self.dynamic_quantize;
        if dq.ops > 0 {
            writeln!(
                f,
                "quantize     {} DynamicQuantizeLinear ops on edge-bert's kernel ({} path)",
                dq.ops, dq.kernel
            )?;
        }
        let fm = &self.fused_matmul;
        if fm.ops > 0 {
            writeln!(
                f,
                "fused int8   {} linear layers on edge-bert's fused matmul ({} path; EDGE_BERT_QMATMUL=off for tract's)",
                fm.ops,
                fm.path.unwrap_or("?")
            )?;
        }
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        writeln!(
            f,
            "weights      {:.1} MiB held once by the {} plans ({:.1} MiB of duplicates shared)",
            mib(self.weights.held_bytes),
            self.built_buckets,
            mib(self.weights.shared_duplicate_bytes)
        )?;
        if self.weights.table_in_file_bytes > 0 {
            writeln!(
                f,
                "embeddings   {:.1} MiB word table left in the model file, read a row per token",
                mib(self.weights.table_in_file_bytes)
            )?;
        }
        Ok(())
    }
}
