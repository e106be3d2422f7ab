//! `edge-bert bench`: speed and memory figures (texts/s with tokenising,
//! latency, cold start, peak and serving RSS).

use std::path::{Path, PathBuf};
use std::time::Instant;

use edge_bert::serve as server;
use edge_bert_model::{Bundle, Classifier};
use serde::Serialize;

use super::{emit, load_bundle, Failure, EXIT_DATA, EXIT_MODEL, EXIT_USAGE, START};

/// The committed test split, the default texts for `bench`.
const BENCH_TEXTS: &str = include_str!("../../models/sentiment-fp32/test.tsv");

#[derive(clap::Args)]
pub struct Args {
    /// Model bundle directory (default: the embedded model).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Texts to run: LABEL<TAB>text or one text per line.
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// Only the first N texts.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Also measure N workers, each with its own plans, sharing the texts.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub threads: usize,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<(), Failure> {
    bench(
        a.model.as_deref(),
        a.data.as_deref(),
        a.limit,
        a.threads,
        a.json,
    )
}

/// Value at quantile `q` of sorted samples.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((q * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1)]
}

/// Texts per second with `workers` threads, each with its own classifier.
fn bench_workers(bundle: &Bundle, texts: &[String], workers: usize) -> Result<f64, Failure> {
    let classifiers = (0..workers)
        .map(|_| {
            let mut c = Classifier::new(bundle, None)
                .map_err(|e| Failure::new(EXIT_MODEL, e.to_string()))?;
            server::warm_up(&mut c).map_err(|e| Failure::new(EXIT_MODEL, e.to_string()))?;
            Ok(c)
        })
        .collect::<Result<Vec<_>, Failure>>()?;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let started = Instant::now();
    let failures = std::thread::scope(|s| {
        let handles: Vec<_> = classifiers
            .into_iter()
            .map(|mut c| {
                let next = &next;
                s.spawn(move || {
                    let mut failures = 0usize;
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(t) = texts.get(i) else { break };
                        failures += c.classify_outcome(t).is_err() as usize;
                    }
                    failures
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(usize::MAX))
            .sum::<usize>()
    });
    let secs = started.elapsed().as_secs_f64();
    if failures > 0 {
        return Err(Failure::new(1, format!("{failures} texts failed")));
    }
    Ok(texts.len() as f64 / secs)
}

fn bench(
    model: Option<&Path>,
    data: Option<&Path>,
    limit: Option<usize>,
    threads: usize,
    json: bool,
) -> Result<(), Failure> {
    let raw = match data {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| Failure::new(EXIT_DATA, format!("{}: {e}", p.display())))?,
        None => BENCH_TEXTS.to_string(),
    };
    let mut texts: Vec<String> = raw
        .lines()
        .map(|l| l.split_once('\t').map_or(l, |(_, t)| t))
        .filter(|t| !t.trim().is_empty())
        .map(str::to_string)
        .collect();
    if let Some(n) = limit {
        texts.truncate(n);
    }
    if texts.is_empty() {
        return Err(Failure::new(EXIT_DATA, "no texts to run"));
    }
    if threads == 0 {
        return Err(Failure::new(EXIT_USAGE, "--threads must be at least 1"));
    }
    // Loaded the way `serve` loads: plans built one after the other, the
    // model file's bytes freed once decoded.
    edge_bert_model::engine::set_parallel_build(false);
    let bundle = load_bundle(model)?;
    let bundle_bytes = bundle.model_bytes.len() + bundle.tokenizer_bytes.len();
    let manifest = bundle.manifest.clone();
    let mut clf = Classifier::from_bundle(bundle, None, false)
        .map_err(|e| Failure::new(EXIT_MODEL, e.to_string()))?;
    // Cold start: from main() to the first answer, with no warm-up.
    clf.classify_outcome(&texts[0])
        .map_err(|e| Failure::new(1, e.to_string()))?;
    let cold = START.get().map_or(0.0, |s| s.elapsed().as_secs_f64());
    server::warm_up(&mut clf).map_err(|e| Failure::new(EXIT_MODEL, e.to_string()))?;
    // From here on is the serving phase: its own high-water mark. Start-up
    // memory is handed back first, as `serve` does.
    let load_peak = server::peak_rss_kib();
    edge_bert_model::memory::release_startup_pages();
    let serving_hwm = server::reset_peak_rss();

    // One thread: per-text latency, tokenising included.
    let mut lat = Vec::with_capacity(texts.len());
    let mut tokens = 0usize;
    let started = Instant::now();
    for t in &texts {
        let s = Instant::now();
        let o = clf
            .classify_outcome(t)
            .map_err(|e| Failure::new(1, format!("classifying {t:?}: {e}")))?;
        lat.push(s.elapsed().as_secs_f64() * 1000.0);
        tokens += o.tokens;
    }
    let secs = started.elapsed().as_secs_f64();
    let one = texts.len() as f64 / secs;
    lat.sort_by(|a, b| a.total_cmp(b));
    let serving_peak = if serving_hwm {
        server::peak_rss_kib()
    } else {
        None
    };
    let peak_one = load_peak.max(server::peak_rss_kib());
    drop(clf);
    let multi = if threads > 1 {
        let bundle = load_bundle(model)?;
        Some(bench_workers(&bundle, &texts, threads)?)
    } else {
        None
    };
    let peak = server::peak_rss_kib().max(peak_one);
    let report = BenchReport {
        model: manifest.name,
        precision: manifest.precision,
        texts: texts.len(),
        tokens,
        cold_start_ms: cold * 1000.0,
        texts_per_second: one,
        tokens_per_second: tokens as f64 / secs,
        latency_ms_p50: quantile(&lat, 0.5),
        latency_ms_p99: quantile(&lat, 0.99),
        threads,
        texts_per_second_threads: multi,
        scaling: multi.map(|t| t / one),
        peak_rss_kib_one_thread: peak_one,
        load_peak_rss_kib: load_peak,
        serving_peak_rss_kib: serving_peak,
        peak_rss_kib: peak,
        bundle_bytes,
        arch: std::env::consts::ARCH,
    };
    emit(&report, json)
}

/// What `bench` reports; its `--json` line and its text both come from it.
#[derive(Serialize)]
struct BenchReport {
    model: String,
    precision: String,
    texts: usize,
    tokens: usize,
    cold_start_ms: f64,
    texts_per_second: f64,
    tokens_per_second: f64,
    latency_ms_p50: f64,
    latency_ms_p99: f64,
    threads: usize,
    texts_per_second_threads: Option<f64>,
    scaling: Option<f64>,
    peak_rss_kib_one_thread: Option<u64>,
    load_peak_rss_kib: Option<u64>,
    serving_peak_rss_kib: Option<u64>,
    peak_rss_kib: Option<u64>,
    bundle_bytes: usize,
    arch: &'static str,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "model       {} ({}), {} texts, {} tokens, {}",
            self.model, self.precision, self.texts, self.tokens, self.arch
        )?;
        writeln!(
            f,
            "cold start  {:.0} ms (process start to first answer)",
            self.cold_start_ms
        )?;
        writeln!(
            f,
            "1 thread    {:.1} texts/s, {:.0} tokens/s, latency p50 {:.2} ms, p99 {:.2} ms",
            self.texts_per_second, self.tokens_per_second, self.latency_ms_p50, self.latency_ms_p99
        )?;
        if let (Some(t), Some(scaling)) = (self.texts_per_second_threads, self.scaling) {
            writeln!(
                f,
                "{} threads   {t:.1} texts/s ({scaling:.2}x)",
                self.threads
            )?;
        }
        let ratio = |kib: u64| kib as f64 * 1024.0 / self.bundle_bytes as f64;
        if let Some(kib) = self.peak_rss_kib_one_thread {
            writeln!(
                f,
                "peak RSS    {:.1} MiB with one worker, loading included ({:.2}x the {:.1} MiB bundle)",
                kib as f64 / 1024.0,
                ratio(kib),
                self.bundle_bytes as f64 / (1 << 20) as f64
            )?;
        }
        if let Some(kib) = self.serving_peak_rss_kib {
            writeln!(
                f,
                "serving     peak RSS {:.1} MiB after warm-up, over the run ({:.2}x the bundle)",
                kib as f64 / 1024.0,
                ratio(kib)
            )?;
        }
        Ok(())
    }
}
