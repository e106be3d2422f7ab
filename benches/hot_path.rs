//! The hot path, per length bucket, with criterion: the engine's run of the
//! default (int8) model on a full bucket (as served, and with the word
//! table held in the graph, for comparison), and tokenising a text.
//!
//!     cargo bench --bench hot_path
//!     EDGE_BERT_BENCH_MODEL=models/sentiment-fp32 cargo bench --bench hot_path

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use edge_bert::engine::{decode, Engine, ModelFormat};
use edge_bert::tokenize::{Scratch, TextTokenizer};
use edge_bert::Bundle;

fn bundle() -> Bundle {
    match std::env::var_os("EDGE_BERT_BENCH_MODEL") {
        Some(dir) => Bundle::load_dir(dir).expect("bundle"),
        None => Bundle::embedded()
            .expect("built without the embedded model: set EDGE_BERT_BENCH_MODEL")
            .expect("embedded bundle"),
    }
}

/// Per bucket: the engine as `serve` runs it (word-embedding rows read
/// from the model file), and with the table held in the graph instead.
fn engine(c: &mut Criterion) {
    let b = bundle();
    let m = &b.manifest;
    let buckets = m.effective_buckets();
    let format = ModelFormat::from_file_name(&m.model).unwrap();
    for (what, file) in [
        ("engine", b.model_file.as_ref()),
        ("engine-table-in-graph", None),
    ] {
        let decoded = decode(&b.model_bytes, format).unwrap();
        let mut engine =
            Engine::from_decoded(decoded, &buckets, m.labels.len(), false, file).unwrap();
        let mut out = vec![0.0; m.labels.len()];
        let mut group = c.benchmark_group(format!("{what}/{}", m.name));
        for &len in &buckets {
            let ids: Vec<u32> = (0..len as u32).map(|i| 1000 + i % 2000).collect();
            group.bench_with_input(BenchmarkId::from_parameter(len), &ids, |bench, ids| {
                bench.iter(|| engine.logits_into(ids, &mut out).unwrap())
            });
        }
        group.finish();
    }
}

fn tokenizer(c: &mut Criterion) {
    let b = bundle();
    let tok = TextTokenizer::from_bytes(&b.tokenizer_bytes, b.manifest.max_seq_len).unwrap();
    let mut scratch = Scratch::new();
    let mut ids = Vec::with_capacity(tok.ids_capacity());
    let text = "an intelligent, moving and often very funny film about growing up, \
                with performances that feel lived-in rather than acted";
    c.bench_function("tokenize/review", |bench| {
        bench.iter(|| tok.encode_into(text, &mut scratch, &mut ids))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = engine, tokenizer
}
criterion_main!(benches);
