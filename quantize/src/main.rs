//! `edge-bert-quantize`: turn an fp32 ONNX BERT classifier bundle into an
//! int8 bundle that the `edge-bert` runtime loads, and report what it cost.
//!
//! Exit codes: 0 ok; 1 quantisation failed or missed `--max-accuracy-drop`;
//! 2 usage; 3 the input bundle or model is unusable; 4 a data file is bad;
//! 5 the output cannot be written.
//!
//! The maths and the graph rewrite live in the library (`src/lib.rs`); this
//! file is the command line, calibration, evaluation and bundle writing.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use edge_bert_model::bundle::write::{manifest_for, write_dir};
use edge_bert_model::bundle::{Bundle, Source};
use edge_bert_model::eval::{read_multilabel_tsv, read_tsv, Example, LabelCounts, LabelSet};
use edge_bert_model::manifest::{sha256_hex, Manifest, Task};
use edge_bert_model::tokenize::TextTokenizer;
use edge_bert_model::Classifier;
use serde_json::json;

use edge_bert_quantize::graph::{self, ActRange, RewriteOptions};
use edge_bert_quantize::{probe, qmath};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Activations quantised per request (DynamicQuantizeLinear).
    Dynamic,
    /// Activation scales calibrated here and baked in (QuantizeLinear).
    Static,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum CalibrationMethod {
    Minmax,
    Percentile,
}

#[derive(Parser)]
#[command(
    name = "edge-bert-quantize",
    version,
    about = "Quantise an fp32 ONNX BERT classifier bundle to an int8 bundle for edge-bert",
    after_help = "Examples:\n  \
        edge-bert-quantize --input models/sentiment-fp32 --output models/sentiment-int8\n  \
        edge-bert-quantize --input models/sentiment-fp32 --output /tmp/int8 \\\n      \
            --eval models/sentiment-fp32/test.tsv --max-accuracy-drop 0.5 --report report.json\n  \
        edge-bert-quantize --input models/sentiment-fp32 --output /tmp/static --mode static\n\n\
        With no options the output is the shipped default bundle (dynamic, per-channel,\n\
        int8 embeddings); the same input and options always give byte-identical output.\n\
        Exit codes: 0 ok, 1 failed or accuracy bound missed, 2 usage, 3 bad input model,\n\
        4 bad data file, 5 output not writable.\n\n\
        Signed bundles (see `edge-bert-quantize keygen --help`, `edge-bert-quantize sign --help`):\n  \
        edge-bert-quantize keygen --output keys/release\n  \
        edge-bert-quantize sign --key keys/release.key --version 7 models/sentiment-int8"
)]
struct Cli {
    /// The fp32 bundle directory (manifest.json, model.onnx, tokenizer.json).
    #[arg(long, value_name = "DIR")]
    input: PathBuf,
    /// Where to write the int8 bundle (must not exist, unless --force).
    #[arg(long, value_name = "DIR")]
    output: PathBuf,
    /// Replace an existing output directory.
    #[arg(long)]
    force: bool,
    /// Activation quantisation.
    #[arg(long, value_enum, default_value_t = Mode::Dynamic)]
    mode: Mode,
    /// Per-channel weight scales (the default).
    #[arg(long, overrides_with = "per_tensor")]
    per_channel: bool,
    /// One scale per weight tensor instead of per channel.
    #[arg(long)]
    per_tensor: bool,
    /// Keep embedding tables in fp32.
    #[arg(long)]
    no_int8_embeddings: bool,
    /// Calibration texts (LABEL<TAB>text); default: the input's calibration.tsv.
    #[arg(long, value_name = "FILE.tsv")]
    calibration: Option<PathBuf>,
    /// How static mode picks activation ranges.
    #[arg(long, value_enum, default_value_t = CalibrationMethod::Minmax)]
    calibration_method: CalibrationMethod,
    /// Percentile of |x| for --calibration-method percentile.
    #[arg(long, default_value_t = 99.99)]
    percentile: f64,
    /// Labelled texts to measure fp32 and int8 accuracy and agreement on.
    #[arg(long, value_name = "FILE.tsv")]
    eval: Option<PathBuf>,
    /// With --eval: keep the worst layers in fp32 until the drop is within PTS points.
    #[arg(
        long,
        value_name = "PTS",
        requires = "eval",
        allow_hyphen_values = true
    )]
    max_accuracy_drop: Option<f64>,
    /// With --eval: keep the worst layers in fp32 until int8 agrees with fp32
    /// on at least PCT percent of the texts.
    #[arg(long, value_name = "PCT", requires = "eval")]
    min_agreement: Option<f64>,
    /// Keep this MatMul/Gemm node in fp32 (exact node name or a substring); repeatable.
    #[arg(long, value_name = "PATTERN")]
    exclude: Vec<String>,
    /// Name recorded in the output manifest (default: the input's, with fp32 -> int8).
    #[arg(long)]
    name: Option<String>,
    /// Write the report as JSON here.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

/// `keygen` and `sign`, the signing subcommands.
#[derive(Parser)]
#[command(name = "edge-bert-quantize", version)]
struct KeyCli {
    #[command(subcommand)]
    command: KeyCommand,
}

#[derive(clap::Subcommand)]
enum KeyCommand {
    /// Make an Ed25519 key pair for signing bundles.
    #[command(
        after_help = "Example:\n  edge-bert-quantize keygen --output keys/release\n\
        Writes keys/release.key (secret, 0600) and keys/release.pub (copy it to the\n\
        device's trusted-keys directory, e.g. /etc/edge-bert/keys/)."
    )]
    Keygen(keys::KeygenArgs),
    /// Sign a bundle in place: self-test made by running it, version and key id in
    /// the manifest, manifest.sig; then the signed bundle is loaded as a device would.
    #[command(
        after_help = "Example:\n  edge-bert-quantize sign --key keys/release.key --version 7 models/sentiment-int8\n\
        Exit codes: 0 signed and verified, 1 the signed bundle failed to load, 2 bad key,\n\
        3 the bundle does not load, 5 cannot write."
    )]
    Sign(keys::SignArgs),
    /// Make an fp32 bundle from a Hugging Face BERT-family ONNX export and its
    /// tokenizer.json; the bundle is loaded and run on sample texts before exit 0.
    #[command(after_help = "Examples:\n  \
        edge-bert-quantize import --onnx paraphrase-MiniLM-L3-v2.onnx \\\n      \
            --tokenizer tokenizer.json --task embed --output models/paraphrase-l3\n  \
        edge-bert-quantize import --onnx export/model.onnx --tokenizer export/tokenizer.json \\\n      \
            --task classify --output models/topics        # labels from export/config.json\n  \
        edge-bert-quantize import --onnx moral.onnx --tokenizer tokenizer.json --task multilabel \\\n      \
            --labels care,fairness,loyalty,authority,sanctity --threshold 0.3 --output models/moral\n\n\
        What import does to the graph: external data files inlined, value_info dropped,\n\
        only the output the task reads kept (and what it needs), float/int32 masks cast\n\
        to the int64 the runtime feeds. Quantise the result with\n\
        `edge-bert-quantize --input DIR --output DIR-int8`.\n\
        Exit codes: 0 written and run, 2 usage, 3 the model or tokenizer cannot be\n\
        served (the message says why), 5 cannot write.")]
    Import(import::ImportArgs),
}

mod import;
mod keys;

pub(crate) struct Failure(u8, String);

fn fail<E: std::fmt::Display>(code: u8) -> impl Fn(E) -> Failure {
    move |e| Failure(code, e.to_string())
}

fn main() -> ExitCode {
    let sub = std::env::args().nth(1);
    let result = if matches!(sub.as_deref(), Some("keygen" | "sign" | "import")) {
        let cli = KeyCli::parse();
        init_log();
        match &cli.command {
            KeyCommand::Keygen(a) => keys::keygen(a),
            KeyCommand::Sign(a) => keys::sign(a),
            KeyCommand::Import(a) => import::import(a),
        }
    } else {
        let cli = Cli::parse();
        init_log();
        run(&cli)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, msg)) => {
            eprintln!("edge-bert-quantize: {msg}");
            ExitCode::from(code)
        }
    }
}

fn init_log() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
}

/// Calibration or evaluation texts: labelled for a classifier; only the
/// texts for an embedding or a multi-label bundle (`texts_only`).
fn read_examples(
    path: &Path,
    labels: &[String],
    texts_only: bool,
) -> Result<Vec<Example>, Failure> {
    if labels.is_empty() || texts_only {
        return read_texts(path);
    }
    read_tsv(path, labels).map_err(fail(4))
}

/// Texts without their labels: each non-empty line's text
/// after its first tab, or the whole line (so a classify TSV serves too).
fn read_texts(path: &Path) -> Result<Vec<Example>, Failure> {
    let bytes = std::fs::read(path).map_err(|e| Failure(4, format!("{}: {e}", path.display())))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| Failure(4, format!("{}: not valid UTF-8", path.display())))?;
    let out: Vec<Example> = text
        .lines()
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .map(|l| l.split_once('\t').map_or(l, |(_, t)| t))
        .filter(|t| !t.trim().is_empty())
        .map(|t| Example {
            label: 0,
            text: t.to_string(),
        })
        .collect();
    if out.is_empty() {
        return Err(Failure(4, format!("{}: no texts", path.display())));
    }
    Ok(out)
}

/// fp32 against int8 vectors of an `embed` bundle: cosine per text.
fn cosines(fp32: &Bundle, int8: &Bundle, examples: &[Example]) -> Result<Vec<f64>, Failure> {
    let mut a = Classifier::new(fp32, None).map_err(fail(1))?;
    let mut b = Classifier::new(int8, None).map_err(fail(1))?;
    let bar = bar(examples.len(), "eval cosine");
    let mut out = Vec::with_capacity(examples.len());
    for ex in examples {
        let x = a.embed(&ex.text).map_err(fail(1))?.vector;
        let y = b.embed(&ex.text).map_err(fail(1))?.vector;
        out.push(edge_bert_model::postprocess::cosine(&x, &y) as f64);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(out)
}

fn bar(len: usize, what: &str) -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::new(len as u64);
    b.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} {what:<12} [{{bar:30}}] {{pos}}/{{len}} eta {{eta}}"
        ))
        .expect("static template")
        .progress_chars("=> "),
    );
    b
}

/// The labels a multi-label bundle gives one text, and its probabilities.
type Given = (Vec<usize>, Vec<f32>);

/// The label sets a multi-label bundle gives, and its probabilities.
fn given_sets(bundle: &Bundle, sets: &[LabelSet], what: &str) -> Result<Vec<Given>, Failure> {
    let mut clf = Classifier::new(bundle, None).map_err(fail(1))?;
    let b = bar(sets.len(), what);
    let mut out = Vec::with_capacity(sets.len());
    for ex in sets {
        let (given, o) = clf.given_labels(&ex.text).map_err(fail(1))?;
        out.push((given, o.probs.to_vec()));
        b.inc(1);
    }
    b.finish_and_clear();
    Ok(out)
}

/// Predictions and logits of a bundle on examples.
struct Outcome {
    predicted: Vec<usize>,
    logits: Vec<Vec<f32>>,
}

fn evaluate(bundle: &Bundle, examples: &[Example], what: &str) -> Result<Outcome, Failure> {
    let mut clf = Classifier::new(bundle, None).map_err(fail(1))?;
    let b = bar(examples.len(), what);
    let mut out = Outcome {
        predicted: Vec::new(),
        logits: Vec::new(),
    };
    for ex in examples {
        let c = clf.classify(&ex.text).map_err(fail(1))?;
        let idx = bundle
            .manifest
            .labels
            .iter()
            .position(|l| *l == c.label)
            .unwrap_or(0);
        out.predicted.push(idx);
        out.logits.push(c.logits);
        b.inc(1);
    }
    b.finish_and_clear();
    Ok(out)
}

fn accuracy(o: &Outcome, examples: &[Example]) -> f64 {
    let ok = o
        .predicted
        .iter()
        .zip(examples)
        .filter(|(p, e)| **p == e.label)
        .count();
    100.0 * ok as f64 / examples.len() as f64
}

/// Activation ranges of every candidate's input, over the calibration texts.
fn calibrate(
    bundle: &Bundle,
    tok: &TextTokenizer,
    cands: &[graph::Candidate],
    texts: &[Example],
    method: CalibrationMethod,
    percentile: f64,
) -> Result<HashMap<String, ActRange>, Failure> {
    let inputs: Vec<String> = cands.iter().map(|c| c.input.clone()).collect();
    let mut unique = inputs.clone();
    unique.sort();
    unique.dedup();
    let probe = probe::Probe::new(&bundle.model_bytes, &unique)
        .map_err(|e| Failure(3, format!("{e:?}")))?;
    let mut mins = vec![f32::INFINITY; unique.len()];
    let mut maxs = vec![f32::NEG_INFINITY; unique.len()];
    let mut samples: Vec<Vec<f32>> = vec![Vec::new(); unique.len()];
    let b = bar(texts.len(), "calibration");
    for ex in texts {
        let ids = probe::encode(tok, &ex.text).map_err(fail(1))?;
        let outs = probe.run(&ids).map_err(|e| Failure(1, format!("{e:?}")))?;
        for (i, o) in outs.iter().enumerate() {
            for &v in o {
                mins[i] = mins[i].min(v);
                maxs[i] = maxs[i].max(v);
            }
            if method == CalibrationMethod::Percentile {
                samples[i].extend_from_slice(o);
            }
        }
        b.inc(1);
    }
    b.finish_and_clear();
    let mut ranges = HashMap::new();
    for c in cands {
        let i = unique.binary_search(&c.input).expect("present");
        let (lo, hi) = match method {
            CalibrationMethod::Minmax => (mins[i], maxs[i]),
            CalibrationMethod::Percentile => {
                let a = qmath::abs_percentile(&samples[i], percentile);
                (mins[i].max(-a), maxs[i].min(a))
            }
        };
        let (scale, zero_point) = qmath::asymmetric_u8_params(lo, hi);
        ranges.insert(c.node.clone(), ActRange { scale, zero_point });
    }
    Ok(ranges)
}

/// SQNR (dB) of each quantised matmul's output, int8 against fp32.
fn layer_errors(
    fp32: &[u8],
    int8: &[u8],
    tok: &TextTokenizer,
    cands: &[graph::Candidate],
    texts: &[Example],
) -> Result<Vec<(String, f64)>, Failure> {
    let names: Vec<String> = cands.iter().map(|c| c.output.clone()).collect();
    let a = probe::Probe::new(fp32, &names).map_err(|e| Failure(3, format!("{e:?}")))?;
    let b = probe::Probe::new(int8, &names).map_err(|e| Failure(1, format!("{e:?}")))?;
    let mut signal = vec![0f64; names.len()];
    let mut noise = vec![0f64; names.len()];
    let pb = bar(texts.len(), "layer error");
    for ex in texts {
        let ids = probe::encode(tok, &ex.text).map_err(fail(1))?;
        let oa = a.run(&ids).map_err(|e| Failure(1, format!("{e:?}")))?;
        let ob = b.run(&ids).map_err(|e| Failure(1, format!("{e:?}")))?;
        for i in 0..names.len() {
            for (&x, &y) in oa[i].iter().zip(&ob[i]) {
                signal[i] += (x as f64).powi(2);
                noise[i] += (x as f64 - y as f64).powi(2);
            }
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(cands
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let db = if noise[i] == 0.0 {
                f64::INFINITY
            } else {
                10.0 * (signal[i] / noise[i]).log10()
            };
            (c.node.clone(), db)
        })
        .collect())
}

fn run(cli: &Cli) -> Result<(), Failure> {
    let started = Instant::now();
    let input = Bundle::load_dir(&cli.input).map_err(fail(3))?;
    let labels = input.manifest.labels.clone();
    let multilabel = matches!(input.manifest.task_kind(), Ok(Task::Multilabel { .. }));
    let ner = matches!(input.manifest.task_kind(), Ok(Task::Ner));
    if ner && cli.eval.is_some() {
        return Err(Failure(
            2,
            "--eval is for classify, multilabel and embed bundles; for an ner bundle measure entity F1 with `edge-bert eval --model DIR --data FILE.jsonl` (--calibration texts give the per-layer error)".into(),
        ));
    }
    if (labels.is_empty() || multilabel)
        && (cli.max_accuracy_drop.is_some() || cli.min_agreement.is_some())
    {
        return Err(Failure(
            2,
            "--max-accuracy-drop and --min-agreement are for classify bundles; an embed bundle's --eval reports cosines, a multilabel one's F1s".into(),
        ));
    }

    // The output must not be (or contain) the input.
    let in_canon = std::fs::canonicalize(&cli.input).map_err(fail(3))?;
    let out_parent = match cli.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let parent_canon = std::fs::canonicalize(&out_parent).map_err(|e| {
        Failure(
            5,
            format!("output parent {} is not usable: {e}", out_parent.display()),
        )
    })?;
    let out_name = cli.output.file_name().ok_or_else(|| {
        Failure(
            2,
            format!("--output {} has no directory name", cli.output.display()),
        )
    })?;
    let out_canon = parent_canon.join(out_name);
    if out_canon == in_canon || in_canon.starts_with(&out_canon) {
        return Err(Failure(
            2,
            format!(
                "--output {} would overwrite the input bundle",
                cli.output.display()
            ),
        ));
    }
    if out_canon.exists() && !cli.force {
        return Err(Failure(
            5,
            format!(
                "--output {} exists (use --force to replace it)",
                cli.output.display()
            ),
        ));
    }

    let tok = TextTokenizer::from_bytes(&input.tokenizer_bytes, input.manifest.max_seq_len)
        .map_err(fail(3))?;
    let mut model = graph::decode(&input.model_bytes).map_err(fail(3))?;
    let named = graph::name_nodes(&mut model).map_err(fail(3))?;
    if named > 0 {
        log::info!("{named} nameless nodes named for the rewrite");
    }
    let cands = graph::candidates(&model).map_err(fail(3))?;

    let mut exclude: HashSet<String> = HashSet::new();
    for pat in &cli.exclude {
        let hits: Vec<&graph::Candidate> = cands
            .iter()
            .filter(|c| c.node == *pat || c.node.contains(pat.as_str()))
            .collect();
        if hits.is_empty() {
            return Err(Failure(
                2,
                format!("--exclude {pat:?} matches no MatMul/Gemm node"),
            ));
        }
        exclude.extend(hits.iter().map(|c| c.node.clone()));
    }

    let calibration_path = cli.calibration.clone().or_else(|| {
        let p = cli.input.join("calibration.tsv");
        p.exists().then_some(p)
    });
    let calibration = match &calibration_path {
        Some(p) => Some(read_examples(p, &labels, multilabel || ner)?),
        None => None,
    };
    let act_ranges = match cli.mode {
        Mode::Dynamic => HashMap::new(),
        Mode::Static => {
            let texts = calibration.as_ref().ok_or_else(|| {
                Failure(
                    2,
                    "--mode static needs --calibration FILE.tsv (or calibration.tsv in the input)"
                        .into(),
                )
            })?;
            calibrate(
                &input,
                &tok,
                &cands,
                texts,
                cli.calibration_method,
                cli.percentile,
            )?
        }
    };
    let per_channel = !cli.per_tensor;
    let mut opts = RewriteOptions {
        per_channel,
        embedding_min_values: if cli.no_int8_embeddings { 0 } else { 65_536 },
        exclude,
        act_ranges,
    };
    let base_model = model.clone();
    let summary = graph::rewrite(&mut model, &opts).map_err(fail(3))?;
    let mut int8_bytes = graph::encode(&model);

    // The output manifest and bundle, in memory first.
    // The name comes from the input, not the output path, so that the same
    // input and options give byte-identical bundles wherever they are written.
    let name = cli
        .name
        .clone()
        .unwrap_or_else(|| int8_name(&input.manifest.name));
    // The source's identity, hashed once (the bound search rebuilds the
    // bundle several times).
    let source = json!({
        "name": input.manifest.name,
        "manifest_sha256": sha256_hex(&std::fs::read(cli.input.join("manifest.json")).unwrap_or_default()),
        "model_sha256": sha256_hex(&input.model_bytes),
    });
    let calibration_sha256 = calibration_path
        .as_ref()
        .filter(|_| cli.mode == Mode::Static)
        .and_then(|p| std::fs::read(p).ok())
        .map(|b| sha256_hex(&b));
    let make_bundle = |bytes: &[u8],
                       summary: &graph::RewriteSummary,
                       opts: &RewriteOptions|
     -> (Bundle, Vec<u8>) {
        let record = json!({
            "tool": "edge-bert-quantize",
            "version": env!("CARGO_PKG_VERSION"),
            "mode": format!("{:?}", cli.mode).to_lowercase(),
            "per_channel": opts.per_channel,
            "int8_embeddings": opts.embedding_min_values > 0,
            "calibration_method": (cli.mode == Mode::Static).then(|| format!("{:?}", cli.calibration_method).to_lowercase()),
            "calibration_sha256": calibration_sha256,
            "source": source,
            "quantized": summary.quantized.iter().map(|c| &c.node).collect::<Vec<_>>(),
            "kept_fp32": summary.kept_fp32.iter().map(|c| &c.node).collect::<Vec<_>>(),
            "int8_embeddings_tables": summary.embeddings.iter().map(|e| &e.0).collect::<Vec<_>>(),
        });
        let record_bytes =
            format!("{}\n", serde_json::to_string_pretty(&record).expect("json")).into_bytes();
        let base = Manifest {
            name: name.clone(),
            precision: "int8".into(),
            model: "model.onnx".into(),
            tokenizer: "tokenizer.json".into(),
            provenance: json!({
                "derived_from": input.manifest.name,
                "quantization": "see quantization.json",
                "source_provenance": input.manifest.provenance,
            }),
            ..input.manifest.clone()
        };
        let manifest = manifest_for(
            &base,
            &[
                ("model.onnx", bytes),
                ("quantization.json", &record_bytes),
                ("tokenizer.json", &input.tokenizer_bytes),
            ],
        );
        let bundle = Bundle {
            manifest,
            source: Source::Dir(cli.output.clone()),
            model_bytes: bytes.to_vec().into(),
            tokenizer_bytes: input.tokenizer_bytes.clone(),
            model_file: None,
        };
        (bundle, record_bytes)
    };
    let (mut out_bundle, mut record_bytes) = make_bundle(&int8_bytes, &summary, &opts);
    let mut summary = summary;

    // Per-layer error on (up to 200 of) the calibration texts, or the eval
    // texts when there is no calibration file.
    // A multi-label file is read (and checked) once: its label sets for
    // the eval below, its texts here.
    let eval_sets = match (&cli.eval, multilabel) {
        (Some(p), true) => Some(read_multilabel_tsv(p, &labels).map_err(fail(4))?),
        _ => None,
    };
    let eval_examples = match (&cli.eval, &eval_sets) {
        (_, Some(sets)) => Some(
            sets.iter()
                .map(|s| Example {
                    label: 0,
                    text: s.text.clone(),
                })
                .collect(),
        ),
        (Some(p), None) => Some(read_examples(p, &labels, false)?),
        (None, None) => None,
    };
    let layer_texts: Option<&[Example]> = calibration
        .as_deref()
        .or(eval_examples.as_deref())
        .map(|c| &c[..c.len().min(200)]);
    let mut layers = match layer_texts {
        Some(t) => layer_errors(&input.model_bytes, &int8_bytes, &tok, &summary.quantized, t)?,
        None => Vec::new(),
    };

    // Accuracy, and the search for layers to keep in fp32.
    let mut eval_report = serde_json::Value::Null;
    let embed = labels.is_empty();
    if let (Some(eval_path), Some(sets)) = (&cli.eval, &eval_sets) {
        let fp32 = given_sets(&input, sets, "eval fp32")?;
        let int8 = given_sets(&out_bundle, sets, "eval int8")?;
        let score = |given: &[Given]| {
            let mut c = LabelCounts::new(labels.len());
            for (ex, (g, _)) in sets.iter().zip(given) {
                c.add(&ex.labels, g);
            }
            c
        };
        let (c32, c8) = (score(&fp32), score(&int8));
        let same = fp32.iter().zip(&int8).filter(|(a, b)| a.0 == b.0).count();
        let diffs = fp32
            .iter()
            .zip(&int8)
            .flat_map(|(a, b)| a.1.iter().zip(&b.1).map(|(x, y)| (x - y).abs()));
        let max_prob_diff = diffs.fold(0f32, f32::max);
        eval_report = json!({
            "data": eval_path.display().to_string(),
            "examples": sets.len(),
            "fp32_micro_f1": 100.0 * c32.micro_f1(),
            "int8_micro_f1": 100.0 * c8.micro_f1(),
            "fp32_macro_f1": 100.0 * c32.macro_f1(),
            "int8_macro_f1": 100.0 * c8.macro_f1(),
            "fp32_exact_match": 100.0 * c32.exact_match(),
            "int8_exact_match": 100.0 * c8.exact_match(),
            "fp32_per_label": c32.per_label(&labels),
            "int8_per_label": c8.per_label(&labels),
            "agreement": 100.0 * same as f64 / sets.len() as f64,
            "max_prob_diff": max_prob_diff,
        });
    } else if let (true, Some(eval_path), Some(examples)) =
        (embed, &cli.eval, eval_examples.as_deref())
    {
        let c = cosines(&input, &out_bundle, examples)?;
        let mut sorted = c.clone();
        sorted.sort_by(f64::total_cmp);
        eval_report = json!({
            "data": eval_path.display().to_string(),
            "examples": c.len(),
            "cosine_min": sorted[0],
            "cosine_p01": sorted[sorted.len() / 100],
            "cosine_mean": c.iter().sum::<f64>() / c.len() as f64,
        });
    } else if let (Some(eval_path), Some(examples)) = (&cli.eval, eval_examples.as_deref()) {
        let fp32 = evaluate(&input, examples, "eval fp32")?;
        let acc32 = accuracy(&fp32, examples);
        let mut int8 = evaluate(&out_bundle, examples, "eval int8")?;
        let mut acc8 = accuracy(&int8, examples);
        if cli.max_accuracy_drop.is_some() || cli.min_agreement.is_some() {
            let bound = cli.max_accuracy_drop.unwrap_or(f64::INFINITY);
            let min_agree = cli.min_agreement.unwrap_or(0.0);
            let agreement = |a: &Outcome, b: &Outcome| {
                let same = a.predicted.iter().zip(&b.predicted).filter(|(x, y)| x == y);
                100.0 * same.count() as f64 / examples.len().max(1) as f64
            };
            let mut agree8 = agreement(&fp32, &int8);
            let mut ranked = layers.clone();
            ranked.sort_by(|a, b| a.1.total_cmp(&b.1));
            let mut next = 0;
            while (acc32 - acc8 > bound || agree8 < min_agree) && next < ranked.len() {
                opts.exclude.insert(ranked[next].0.clone());
                next += 1;
                eprintln!(
                    "accuracy drop {:.2} points, agreement {agree8:.2}%: keeping {} in fp32",
                    acc32 - acc8,
                    ranked[next - 1].0
                );
                let mut m = base_model.clone();
                summary = graph::rewrite(&mut m, &opts).map_err(fail(1))?;
                int8_bytes = graph::encode(&m);
                (out_bundle, record_bytes) = make_bundle(&int8_bytes, &summary, &opts);
                int8 = evaluate(&out_bundle, examples, "eval int8")?;
                acc8 = accuracy(&int8, examples);
                agree8 = agreement(&fp32, &int8);
            }
            if acc32 - acc8 > bound || agree8 < min_agree {
                return Err(Failure(
                    1,
                    format!(
                        "accuracy drop {:.2} points, agreement {agree8:.2}%: outside the bounds even with every layer in fp32",
                        acc32 - acc8
                    ),
                ));
            }
            layers.retain(|(n, _)| !opts.exclude.contains(n));
        }
        let agree = fp32
            .predicted
            .iter()
            .zip(&int8.predicted)
            .filter(|(a, b)| a == b)
            .count();
        let mut max_diff = 0f32;
        let mut sum_diff = 0f64;
        let mut count = 0usize;
        for (a, b) in fp32.logits.iter().zip(&int8.logits) {
            for (x, y) in a.iter().zip(b) {
                max_diff = max_diff.max((x - y).abs());
                sum_diff += (x - y).abs() as f64;
                count += 1;
            }
        }
        eval_report = json!({
            "data": eval_path.display().to_string(),
            "examples": examples.len(),
            "fp32_accuracy": acc32,
            "int8_accuracy": acc8,
            "accuracy_drop": acc32 - acc8,
            "agreement": 100.0 * agree as f64 / examples.len() as f64,
            "max_logit_diff": max_diff,
            "mean_logit_diff": sum_diff / count.max(1) as f64,
        });
    }

    // Written to a temporary sibling directory, then renamed into place.
    write_dir(
        &out_canon,
        &out_bundle.manifest,
        &[
            ("model.onnx", &int8_bytes),
            ("quantization.json", &record_bytes),
            ("tokenizer.json", &input.tokenizer_bytes),
        ],
    )
    .map_err(|e| Failure(5, format!("writing {}: {e}", cli.output.display())))?;
    // Check what was written loads like any other bundle, and runs.
    if let Err(e) = import::self_test(&out_canon) {
        let _ = std::fs::remove_dir_all(&out_canon);
        return Err(Failure(
            1,
            format!("the int8 bundle does not run, so it was removed: {e}"),
        ));
    }

    let size = |b: &Bundle| -> u64 {
        [&b.manifest.model, &b.manifest.tokenizer]
            .iter()
            .filter_map(|f| b.manifest.file(f))
            .map(|f| f.bytes)
            .sum()
    };
    let (s32, s8) = (size(&input), size(&out_bundle));
    let report = json!({
        "input": cli.input.display().to_string(),
        "output": cli.output.display().to_string(),
        "mode": format!("{:?}", cli.mode).to_lowercase(),
        "per_channel": per_channel,
        "sizes": {
            "fp32_model_bytes": input.model_bytes.len(),
            "int8_model_bytes": int8_bytes.len(),
            "fp32_bundle_bytes": s32,
            "int8_bundle_bytes": s8,
            "ratio": s8 as f64 / s32 as f64,
        },
        "quantized_matmuls": summary.quantized.len(),
        "kept_fp32": summary.kept_fp32.iter().map(|c| &c.node).collect::<Vec<_>>(),
        "int8_embeddings": summary.embeddings.iter().map(|e| json!({"node": e.0, "rows": e.1, "dim": e.2})).collect::<Vec<_>>(),
        "eval": eval_report,
        "layer_sqnr_db": layers.iter().map(|(n, db)| json!({"node": n, "sqnr_db": if db.is_finite() { json!(db) } else { json!("inf") }})).collect::<Vec<_>>(),
        "layer_error_texts": layer_texts.map_or(0, |t| t.len()),
        "seconds": started.elapsed().as_secs_f64(),
    });
    print_report(&report, &layers);
    if let Some(p) = &cli.report {
        std::fs::write(
            p,
            format!("{}\n", serde_json::to_string_pretty(&report).expect("json")),
        )
        .map_err(|e| Failure(5, format!("writing {}: {e}", p.display())))?;
    }
    Ok(())
}

/// `sentiment-fp32` -> `sentiment-int8`; otherwise `NAME-int8`.
fn int8_name(fp32: &str) -> String {
    if fp32.contains("fp32") {
        fp32.replace("fp32", "int8")
    } else {
        format!("{fp32}-int8")
    }
}

fn print_report(r: &serde_json::Value, layers: &[(String, f64)]) {
    let s = &r["sizes"];
    println!(
        "wrote {} ({} mode, per-channel {})",
        r["output"].as_str().unwrap_or(""),
        r["mode"].as_str().unwrap_or(""),
        r["per_channel"]
    );
    println!(
        "size       fp32 {} bytes -> int8 {} bytes ({:.1}% of fp32)",
        s["fp32_bundle_bytes"],
        s["int8_bundle_bytes"],
        100.0 * s["ratio"].as_f64().unwrap_or(0.0)
    );
    println!(
        "matmuls    {} quantised, kept in fp32: {}",
        r["quantized_matmuls"], r["kept_fp32"]
    );
    println!(
        "embeddings {} int8 tables",
        r["int8_embeddings"].as_array().map_or(0, |a| a.len())
    );
    let e = &r["eval"];
    if !e["cosine_min"].is_null() {
        println!(
            "cosine     int8 vs fp32 on {} texts: min {:.5}  1st percentile {:.5}  mean {:.5}",
            e["examples"],
            e["cosine_min"].as_f64().unwrap_or(0.0),
            e["cosine_p01"].as_f64().unwrap_or(0.0),
            e["cosine_mean"].as_f64().unwrap_or(0.0)
        );
    } else if !e["fp32_micro_f1"].is_null() {
        let f = |k: &str| e[k].as_f64().unwrap_or(0.0);
        println!(
            "micro F1   fp32 {:.2}%  int8 {:.2}%   macro F1 fp32 {:.2}%  int8 {:.2}%  on {} texts",
            f("fp32_micro_f1"),
            f("int8_micro_f1"),
            f("fp32_macro_f1"),
            f("int8_macro_f1"),
            e["examples"]
        );
        println!(
            "agreement  {:.2}% same label set   exact set fp32 {:.2}%  int8 {:.2}%   prob diff max {:.4}",
            f("agreement"),
            f("fp32_exact_match"),
            f("int8_exact_match"),
            f("max_prob_diff")
        );
    } else if !e.is_null() {
        println!(
            "accuracy   fp32 {:.2}%  int8 {:.2}%  (drop {:.2} points) on {} texts",
            e["fp32_accuracy"].as_f64().unwrap_or(0.0),
            e["int8_accuracy"].as_f64().unwrap_or(0.0),
            e["accuracy_drop"].as_f64().unwrap_or(0.0),
            e["examples"]
        );
        println!(
            "agreement  {:.2}%   logit diff max {:.4} mean {:.4}",
            e["agreement"].as_f64().unwrap_or(0.0),
            e["max_logit_diff"].as_f64().unwrap_or(0.0),
            e["mean_logit_diff"].as_f64().unwrap_or(0.0)
        );
    }
    if !layers.is_empty() {
        println!(
            "per-layer SQNR of int8 vs fp32 output ({} calibration texts), worst first:",
            r["layer_error_texts"]
        );
        let mut sorted = layers.to_vec();
        sorted.sort_by(|a, b| a.1.total_cmp(&b.1));
        for (n, db) in sorted {
            println!("  {db:>7.2} dB  {n}");
        }
    }
    println!("time       {:.1} s", r["seconds"].as_f64().unwrap_or(0.0));
}
