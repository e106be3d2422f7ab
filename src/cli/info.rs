//! `edge-bert info`: what a bundle is and how the engine runs it.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::{load, Failure};

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

fn info(model: Option<&Path>, json: bool) -> Result<(), Failure> {
    let clf = load(model, None)?;
    let m = clf.manifest();
    let stats = clf.engine().stats();
    let shapes: Vec<serde_json::Value> = clf
        .engine()
        .buckets()
        .iter()
        .map(|&b| {
            let inputs: serde_json::Map<String, serde_json::Value> = clf
                .engine()
                .input_names()
                .iter()
                .map(|n| (n.clone(), json!(format!("1x{b}xi64"))))
                .collect();
            json!({ "bucket": b, "inputs": inputs, "output": format!("1x{}xf32", m.labels.len()) })
        })
        .collect();
    let matmuls: Vec<serde_json::Value> = stats
        .matmuls
        .iter()
        .map(|mm| json!({ "node": mm.node, "op": mm.op, "input_types": mm.input_types }))
        .collect();
    if json {
        let report = json!({
            "source": clf.source().to_string(),
            "manifest": m,
            "buckets": clf.engine().buckets(),
            "shapes": shapes,
            "parameters": stats.parameters,
            "vocab_size": clf.tokenizer().vocab_size(),
            "matmuls": matmuls,
            "dynamic_quantize": {
                "ops": stats.dynamic_quantize_ops,
                "kernel": format!("{:?}", edge_bert_kernels::dynquant::path()),
            },
            "fused_matmul": {
                "ops": stats.fused_matmuls,
                "path": edge_bert_kernels::qmatmul::chosen().map(|p| p.name()),
                "packed_bytes": stats.fused_weight_bytes,
            },
            "weights": {
                "held_bytes": stats.weight_bytes,
                "shared_duplicate_bytes": stats.shared_weight_bytes,
                "table_in_file_bytes": stats.table_in_file_bytes,
            },
        });
        println!("{report}");
        return Ok(());
    }
    println!("name         {}", m.name);
    println!("source       {}", clf.source());
    println!("task         {}", m.task.as_deref().unwrap_or("-"));
    println!("precision    {}", m.precision);
    println!("labels       {}", m.labels.join(", "));
    println!("max length   {} tokens", m.max_seq_len);
    println!("buckets      {:?}", clf.engine().buckets());
    println!(
        "inputs       {} (each 1 x bucket, i64)",
        clf.engine().input_names().join(", ")
    );
    println!("output       {} (1 x {}, f32)", m.output, m.labels.len());
    println!("parameters   {}", stats.parameters);
    println!("vocabulary   {} tokens", clf.tokenizer().vocab_size());
    println!("files");
    for f in &m.files {
        println!(
            "  {:<20} {:>12} bytes  sha256 {}",
            f.path, f.bytes, f.sha256
        );
    }
    let mut kinds: Vec<(String, usize)> = Vec::new();
    for mm in &stats.matmuls {
        let key = format!("{} {}", mm.op, mm.input_types.join(" x "));
        match kinds.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => kinds.push((key, 1)),
        }
    }
    println!("matmuls      {} in all", stats.matmuls.len());
    for (k, n) in &kinds {
        println!("  {n:>3} x {k}");
    }
    if stats.dynamic_quantize_ops > 0 {
        println!(
            "quantize     {} DynamicQuantizeLinear ops on edge-bert's kernel ({:?} path)",
            stats.dynamic_quantize_ops,
            edge_bert_kernels::dynquant::path()
        );
    }
    if stats.fused_matmuls > 0 {
        println!(
            "fused int8   {} linear layers on edge-bert's fused matmul ({} path; EDGE_BERT_QMATMUL=off for tract's)",
            stats.fused_matmuls,
            edge_bert_kernels::qmatmul::chosen().map_or("?", |p| p.name())
        );
    }
    println!(
        "weights      {:.1} MiB held once by the {} plans ({:.1} MiB of duplicates shared)",
        stats.weight_bytes as f64 / (1 << 20) as f64,
        clf.engine().built_buckets(),
        stats.shared_weight_bytes as f64 / (1 << 20) as f64
    );
    if stats.table_in_file_bytes > 0 {
        println!(
            "embeddings   {:.1} MiB word table left in the model file, read a row per token",
            stats.table_in_file_bytes as f64 / (1 << 20) as f64
        );
    }
    for mm in &stats.matmuls {
        log::info!(
            "matmul {} {} {}",
            mm.node,
            mm.op,
            mm.input_types.join(" x ")
        );
    }
    Ok(())
}
