//! The hot path, per length bucket, with criterion: the engine's run of the
//! default (int8) model on a full bucket (as served, and with the word
//! table held in the graph, for comparison), reading a bucket's word
//! embedding rows from the model file, tokenising a text, and the fused
//! int8 matmul's kernels per path on the model's three matmul shapes.
//!
//!     cargo bench --bench hot_path
//!     EDGE_BERT_BENCH_MODEL=models/sentiment-fp32 cargo bench --bench hot_path

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use edge_bert_kernels::qmatmul::{self, Packed, Path};
use edge_bert_model::engine::{decode, Engine, ModelFormat};
use edge_bert_model::tokenize::TextTokenizer;
use edge_bert_model::Bundle;

fn bundle() -> Bundle {
    match std::env::var_os("EDGE_BERT_BENCH_MODEL") {
        Some(dir) => Bundle::load_dir(dir).expect("bundle"),
        None => edge_bert_model::embedded::bundle()
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
    for (what, file, fused) in [
        ("engine", b.model_file.as_ref(), qmatmul::chosen()),
        ("engine-table-in-graph", None, qmatmul::chosen()),
        ("engine-tract-int8-matmul", b.model_file.as_ref(), None),
    ] {
        let decoded = decode(&b.model_bytes, format).unwrap();
        let mut engine = qmatmul::with_choice(fused, || {
            Engine::from_decoded(decoded, &buckets, m.labels.len(), false, file).unwrap()
        });
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

/// Reading a full bucket's word-embedding rows from the model file (part
/// of the engine's run above): what leaving the table in the file costs.
fn rows(c: &mut Criterion) {
    let b = bundle();
    let Some(file) = b.model_file.as_ref() else {
        return;
    };
    let proto = <tract_onnx::pb::ModelProto as prost::Message>::decode(&*b.model_bytes).unwrap();
    let graph = proto.graph.unwrap();
    let found = edge_bert_model::rows::find_word_gather(&graph, "input_ids").unwrap();
    let ranges = edge_bert_model::rows::initializer_ranges(&b.model_bytes).unwrap();
    let (_, range) = ranges
        .iter()
        .rev()
        .find(|(n, _)| *n == found.table)
        .unwrap();
    let rows =
        edge_bert_model::rows::FileRows::new(file, range.clone(), found.rows, found.row_bytes)
            .unwrap();
    let len = *b.manifest.effective_buckets().last().unwrap();
    let ids: Vec<u32> = (0..len as u32).map(|i| 1000 + i * 211 % 28000).collect();
    let mut dst = vec![0u8; len * found.row_bytes];
    c.bench_function(&format!("rows/{}/{len}", b.manifest.name), |bench| {
        bench.iter(|| rows.fill(&ids, 0, &mut dst).unwrap())
    });
}

fn tokenizer(c: &mut Criterion) {
    let b = bundle();
    let tok = TextTokenizer::from_bytes(&b.tokenizer_bytes, b.manifest.max_seq_len).unwrap();
    let mut scratch = tok.scratch();
    let mut ids = Vec::with_capacity(tok.ids_capacity());
    let text = "an intelligent, moving and often very funny film about growing up, \
                with performances that feel lived-in rather than acted";
    c.bench_function("tokenize/review", |bench| {
        bench.iter(|| tok.encode_into(text, &mut scratch, &mut ids).unwrap())
    });
}

/// `qmatmul` on one 32-token bucket's three shapes (attention and output
/// projections 384 -> 384, FFN in 384 -> 1536, FFN out 1536 -> 384), per
/// path this CPU has. Throughput is in multiply-adds.
fn kernels(c: &mut Criterion) {
    let m = 32;
    for (k, n) in [(384, 384), (384, 1536), (1536, 384)] {
        let w: Vec<i8> = (0..k * n).map(|i| (i * 7919 % 255) as i8).collect();
        let packed = Packed::new(&w, k, n, &vec![0.01; n], &vec![0.5; n]).unwrap();
        let a: Vec<u8> = (0..m * packed.row_stride())
            .map(|i| (i * 31 % 256) as u8)
            .collect();
        let mut y = vec![0f32; m * n];
        let mut group = c.benchmark_group(format!("qmatmul/{m}x{k}x{n}"));
        group.throughput(criterion::Throughput::Elements((m * k * n) as u64));
        for path in Path::ALL.into_iter().filter(|p| p.available()) {
            group.bench_function(path.name(), |bench| {
                let mut a = a.clone();
                bench.iter(|| qmatmul::qmatmul(path, &mut a, m, 3, 0.02, &packed, &mut y))
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = engine, rows, tokenizer, kernels
}
criterion_main!(benches);
