//! `edge-bert-quantize import`: an fp32 bundle from a Hugging Face
//! BERT-family ONNX export and its `tokenizer.json`.
//!
//! The graph work is pure ([`prepare`]): external data inlined, the graph
//! cut down to the one output the task reads (unused nodes and weights
//! dropped), `value_info` dropped (tract cannot unify a symbolic batch
//! there with the runtime's concrete one), non-int64 id/mask inputs cast
//! inside the graph. The command then writes the bundle, loads it as the
//! device does and runs it on sample texts before it exits 0.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use edge_bert_model::bundle::write::{manifest_for, write_dir};
use edge_bert_model::manifest::{sha256_hex, Manifest, Pooling as ManifestPooling, Task};
use edge_bert_model::tokenize::TextTokenizer;
use edge_bert_model::Classifier;
use serde_json::json;
use tract_onnx::pb::tensor_proto::{DataLocation, DataType};
use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};
use tract_onnx::pb::{
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, TensorShapeProto, ValueInfoProto,
};

use crate::graph;
use crate::Failure;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportTask {
    /// Softmax over label logits (a `[batch, labels]` output).
    Classify,
    /// A sigmoid per label logit (a `[batch, labels]` output); every label
    /// at or over the threshold is given.
    Multilabel,
    /// One L2-normalised vector per text, pooled from a `[batch, seq, dim]` output.
    Embed,
    /// Token classification: `[batch, seq, labels]` logits over BIO tags
    /// (O, B-TYPE, I-TYPE), merged into entities.
    Ner,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Pooling {
    /// Mean over the real tokens (sentence-transformers' default).
    Mean,
    /// The first token's vector ([CLS]).
    Cls,
}

#[derive(clap::Args)]
pub struct ImportArgs {
    /// The ONNX export (weights may sit in external data files next to it).
    #[arg(long, value_name = "FILE")]
    pub onnx: PathBuf,
    /// The model's Hugging Face tokenizer.json: BERT WordPiece (cased or
    /// uncased), or BPE / Unigram (RoBERTa, XLM-R, DeBERTa) through the
    /// `tokenizers` crate.
    #[arg(long, value_name = "FILE")]
    pub tokenizer: PathBuf,
    /// What the model does.
    #[arg(long, value_enum)]
    pub task: ImportTask,
    /// Class names in logit order, comma-separated (classify; default: the
    /// `id2label` of a config.json next to the model).
    #[arg(long, value_name = "A,B,...", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// How token vectors become one (embed).
    #[arg(long, value_enum, default_value_t = Pooling::Mean)]
    pub pooling: Pooling,
    /// The probability at which a label is given (multilabel; default 0.5).
    #[arg(long, value_name = "P")]
    pub threshold: Option<f32>,
    /// Which graph output to keep (default: `logits` / `last_hidden_state`,
    /// or the only output of the right shape).
    #[arg(long, value_name = "NAME")]
    pub output_name: Option<String>,
    /// Longest token sequence; longer texts are truncated.
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = clap::value_parser!(u32).range(8..=512))]
    pub max_len: u32,
    /// The bundle's name (default: the output directory's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Where to write the bundle (must not exist, unless --force).
    #[arg(long, value_name = "DIR")]
    pub output: PathBuf,
    /// Replace an existing output directory.
    #[arg(long)]
    pub force: bool,
}

/// Texts the written bundle is run on before the command succeeds.
const SAMPLES: [&str; 3] = [
    "a gorgeous, moving and beautifully acted film",
    "what a waste of two hours",
    "The quick brown fox jumps over the lazy dog near the riverbank at dawn.",
];

/// The graph inputs a bundle may have.
const INPUTS: [&str; 3] = ["input_ids", "attention_mask", "token_type_ids"];

/// What [`prepare`] did to the graph.
#[derive(Debug, Default, PartialEq)]
pub struct Prepared {
    /// The output kept.
    pub output: String,
    /// Its last dimension, when the export states it.
    pub width: Option<usize>,
    /// The model inputs, in graph order.
    pub inputs: Vec<String>,
    pub external_tensors: usize,
    pub nodes_dropped: usize,
    pub weights_dropped: usize,
    pub value_info_dropped: usize,
    /// Inputs that were not int64 and are now cast inside the graph.
    pub cast_inputs: Vec<String>,
    /// Rows of the position embedding table, when one is found by name.
    pub positions: Option<usize>,
}

fn bad(msg: impl Into<String>) -> Failure {
    Failure(3, msg.into())
}

fn tensor_type(v: &ValueInfoProto) -> Option<&type_proto::Tensor> {
    match v.r#type.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(t) => Some(t),
    }
}

fn dims(t: &type_proto::Tensor) -> Option<Vec<Option<i64>>> {
    let shape = t.shape.as_ref()?;
    Some(
        shape
            .dim
            .iter()
            .map(|d| match d.value {
                Some(dimension::Value::DimValue(v)) => Some(v),
                _ => None,
            })
            .collect(),
    )
}

fn describe(v: &ValueInfoProto) -> String {
    let Some(t) = tensor_type(v) else {
        return format!("{} (not a tensor)", v.name);
    };
    let dt = DataType::try_from(t.elem_type)
        .map(|d| format!("{d:?}").to_lowercase())
        .unwrap_or_else(|_| format!("type {}", t.elem_type));
    let shape = match dims(t) {
        Some(d) => d
            .iter()
            .map(|x| x.map_or("?".to_string(), |v| v.to_string()))
            .collect::<Vec<_>>()
            .join(","),
        None => "unknown".into(),
    };
    format!("{} ({dt} [{shape}])", v.name)
}

/// Reads the external data of every initializer that has some into
/// `raw_data`; `dir` is the model file's directory. Returns how many.
pub fn inline_external_data(model: &mut ModelProto, dir: &Path) -> Result<usize, String> {
    let Some(graph) = model.graph.as_mut() else {
        return Ok(0);
    };
    let mut n = 0;
    let mut files: std::collections::HashMap<String, Vec<u8>> = Default::default();
    for t in &mut graph.initializer {
        if t.data_location != Some(DataLocation::External as i32) {
            continue;
        }
        let get = |k: &str| {
            t.external_data
                .iter()
                .find(|e| e.key == k)
                .map(|e| e.value.clone())
        };
        let location = get("location")
            .ok_or_else(|| format!("initializer {:?}: external data without a location", t.name))?;
        let rel = Path::new(&location);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(format!(
                "initializer {:?}: external data location {location:?} is not a file beside the model",
                t.name
            ));
        }
        let num = |k: &str| -> Result<Option<usize>, String> {
            get(k)
                .map(|v| {
                    v.parse::<usize>().map_err(|_| {
                        format!(
                            "initializer {:?}: external data {k} {v:?} is not a number",
                            t.name
                        )
                    })
                })
                .transpose()
        };
        let offset = num("offset")?.unwrap_or(0);
        let length = num("length")?;
        if !files.contains_key(&location) {
            let path = dir.join(rel);
            let bytes = std::fs::read(&path).map_err(|e| {
                format!(
                    "initializer {:?}: cannot read its external data {}: {e}",
                    t.name,
                    path.display()
                )
            })?;
            files.insert(location.clone(), bytes);
        }
        let data = &files[&location];
        let end = match length {
            Some(l) => offset.checked_add(l),
            None => Some(data.len()),
        };
        let slice = end
            .filter(|&e| offset <= e && e <= data.len())
            .map(|e| &data[offset..e])
            .ok_or_else(|| {
                format!(
                    "initializer {:?}: external data {location} holds {} bytes, not offset {offset} + length {length:?}",
                    t.name,
                    data.len()
                )
            })?;
        t.raw_data = slice.to_vec();
        t.external_data.clear();
        t.data_location = None;
        n += 1;
    }
    Ok(n)
}

/// Chooses the output a task reads: `wanted` if given, else the
/// conventional name, else the only float output of the right rank.
fn choose_output(
    graph: &GraphProto,
    task: ImportTask,
    wanted: Option<&str>,
) -> Result<usize, String> {
    let all = || {
        graph
            .output
            .iter()
            .map(describe)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(w) = wanted {
        return graph
            .output
            .iter()
            .position(|o| o.name == w)
            .ok_or_else(|| {
                format!(
                    "--output-name {w:?} is not an output of the model (it has: {})",
                    all()
                )
            });
    }
    let (names, rank, what) = match task {
        ImportTask::Classify | ImportTask::Multilabel => {
            (&["logits"][..], 2, "[batch, labels] logits")
        }
        ImportTask::Embed => (
            &["last_hidden_state", "token_embeddings"][..],
            3,
            "[batch, tokens, dim] token vectors",
        ),
        ImportTask::Ner => (&["logits"][..], 3, "[batch, tokens, labels] logits"),
    };
    for n in names {
        if let Some(i) = graph.output.iter().position(|o| o.name == *n) {
            return Ok(i);
        }
    }
    let fits: Vec<usize> = graph
        .output
        .iter()
        .enumerate()
        .filter(|(_, o)| {
            tensor_type(o).is_some_and(|t| {
                t.elem_type == DataType::Float as i32 && dims(t).is_some_and(|d| d.len() == rank)
            })
        })
        .map(|(i, _)| i)
        .collect();
    match fits[..] {
        [one] => Ok(one),
        [] => Err(format!(
            "no output of the model looks like {what} (it has: {}); name one with --output-name",
            all()
        )),
        _ => Err(format!(
            "several outputs could be the {what} (it has: {}); name one with --output-name",
            all()
        )),
    }
}

/// Makes `model` servable for `task`: see the module doc. `dir` is where
/// external data files are looked up.
pub fn prepare(
    model: &mut ModelProto,
    dir: &Path,
    task: ImportTask,
    wanted_output: Option<&str>,
) -> Result<Prepared, String> {
    let mut done = Prepared {
        external_tensors: inline_external_data(model, dir)?,
        ..Default::default()
    };
    let graph = model.graph.as_mut().ok_or("the model has no graph")?;

    // Inputs: some exporters also list the weights as graph inputs.
    let weights: HashSet<String> = graph.initializer.iter().map(|t| t.name.clone()).collect();
    graph.input.retain(|i| !weights.contains(&i.name));
    for i in &graph.input {
        if !INPUTS.contains(&i.name.as_str()) {
            return Err(format!(
                "model input {} is not one of input_ids, attention_mask, token_type_ids (edge-bert feeds only those)",
                describe(i)
            ));
        }
    }
    if !graph.input.iter().any(|i| i.name == "input_ids") {
        return Err("the model has no input_ids input".into());
    }

    // Output.
    let keep = choose_output(graph, task, wanted_output)?;
    let out = graph.output[keep].clone();
    let t = tensor_type(&out).ok_or_else(|| format!("output {} is not a tensor", out.name))?;
    if t.elem_type != DataType::Float as i32 {
        return Err(format!("output {} is not float32", describe(&out)));
    }
    let rank = match task {
        ImportTask::Classify | ImportTask::Multilabel => 2,
        ImportTask::Embed | ImportTask::Ner => 3,
    };
    if let Some(d) = dims(t) {
        if d.len() != rank {
            return Err(format!(
                "output {} has rank {}, the {task:?} task reads rank {rank}",
                describe(&out),
                d.len()
            ));
        }
        done.width = d
            .last()
            .copied()
            .flatten()
            .and_then(|v| usize::try_from(v).ok());
    }
    done.output = out.name.clone();
    let mut kept = out;
    // Shapes are the runtime's to fix; a symbolic batch here fails to unify.
    if let Some(type_proto::Value::TensorType(t)) =
        kept.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.shape = None;
    }
    graph.output = vec![kept];
    done.value_info_dropped = graph.value_info.len();
    graph.value_info.clear();

    // Inputs that are not int64 (float or int32 masks, int32 ids): the
    // runtime feeds int64, so the graph casts them back.
    let mut casts = Vec::new();
    for input in &mut graph.input {
        let Some(type_proto::Value::TensorType(t)) =
            input.r#type.as_mut().and_then(|t| t.value.as_mut())
        else {
            continue;
        };
        let dt = t.elem_type;
        let known = [
            DataType::Int64,
            DataType::Int32,
            DataType::Float,
            DataType::Float16,
            DataType::Bool,
        ];
        if !known.iter().any(|k| *k as i32 == dt) {
            return Err(format!(
                "model input {} has a type edge-bert cannot feed",
                input.name
            ));
        }
        if dt != DataType::Int64 as i32 {
            casts.push((input.name.clone(), dt));
            t.elem_type = DataType::Int64 as i32;
        }
        t.shape = Some(TensorShapeProto {
            dim: ["batch", "sequence"]
                .iter()
                .map(|p| Dimension {
                    value: Some(dimension::Value::DimParam(p.to_string())),
                    ..Default::default()
                })
                .collect(),
        });
    }
    for (name, dt) in &casts {
        let cast_name = format!("{name}__edge_bert_cast");
        for node in &mut graph.node {
            for i in &mut node.input {
                if i == name {
                    *i = cast_name.clone();
                }
            }
        }
        graph.node.insert(
            0,
            NodeProto {
                name: cast_name.clone(),
                op_type: "Cast".into(),
                input: vec![name.clone()],
                output: vec![cast_name],
                attribute: vec![AttributeProto {
                    name: "to".into(),
                    r#type: tract_onnx::pb::attribute_proto::AttributeType::Int as i32,
                    i: *dt as i64,
                    ..Default::default()
                }],
                ..Default::default()
            },
        );
        done.cast_inputs.push(name.clone());
    }

    // Drop what the kept output does not need (nodes are in topological
    // order in a valid ONNX graph).
    let mut needed: HashSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    let mut keep_node = vec![false; graph.node.len()];
    for (ix, node) in graph.node.iter().enumerate().rev() {
        if node.output.iter().any(|o| needed.contains(o)) {
            keep_node[ix] = true;
            for i in &node.input {
                needed.insert(i.clone());
            }
            for a in &node.attribute {
                if let Some(g) = &a.g {
                    for n in &g.node {
                        needed.extend(n.input.iter().cloned());
                    }
                }
            }
        }
    }
    let before = graph.node.len();
    let mut it = keep_node.iter();
    graph.node.retain(|_| *it.next().unwrap_or(&true));
    done.nodes_dropped = before - graph.node.len();
    let before = graph.initializer.len();
    graph.initializer.retain(|t| needed.contains(&t.name));
    done.weights_dropped = before - graph.initializer.len();
    graph
        .input
        .retain(|i| needed.contains(&i.name) || i.name == "input_ids");
    done.inputs = graph.input.iter().map(|i| i.name.clone()).collect();
    done.positions = graph
        .initializer
        .iter()
        .find(|t| t.name.ends_with("position_embeddings.weight") && t.dims.len() == 2)
        .and_then(|t| usize::try_from(t.dims[0]).ok());
    Ok(done)
}

/// `config.json` beside the model, if any.
fn read_config(onnx: &Path) -> Option<serde_json::Value> {
    let dir = onnx.parent()?;
    let bytes = std::fs::read(dir.join("config.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn labels_from_config(config: &serde_json::Value) -> Option<Vec<String>> {
    let map = config.get("id2label")?.as_object()?;
    let mut pairs: Vec<(usize, String)> = map
        .iter()
        .map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_string())))
        .collect::<Option<_>>()?;
    pairs.sort();
    pairs
        .iter()
        .enumerate()
        .all(|(i, (k, _))| i == *k)
        .then(|| pairs.into_iter().map(|(_, v)| v).collect())
}

pub fn import(a: &ImportArgs) -> Result<(), Failure> {
    if a.threshold.is_some() && a.task != ImportTask::Multilabel {
        return Err(Failure(2, "--threshold is for --task multilabel".into()));
    }
    if let Some(t) = a
        .threshold
        .filter(|t| !edge_bert_model::manifest::valid_threshold(*t))
    {
        return Err(Failure(
            2,
            format!("--threshold {t} is not a probability strictly between 0 and 1"),
        ));
    }
    let out_name = a
        .output
        .file_name()
        .ok_or_else(|| {
            Failure(
                2,
                format!("--output {} has no directory name", a.output.display()),
            )
        })?
        .to_string_lossy()
        .into_owned();
    if a.output.exists() && !a.force {
        return Err(Failure(
            5,
            format!(
                "--output {} exists (use --force to replace it)",
                a.output.display()
            ),
        ));
    }
    let read = |p: &Path, what: &str| {
        let meta = std::fs::metadata(p).map_err(|e| bad(format!("{what} {}: {e}", p.display())))?;
        if !meta.is_file() {
            return Err(bad(format!("{what} {} is not a regular file", p.display())));
        }
        std::fs::read(p).map_err(|e| bad(format!("{what} {}: {e}", p.display())))
    };
    let onnx_bytes = read(&a.onnx, "--onnx")?;
    let source_sha = sha256_hex(&onnx_bytes);
    let tok_bytes = read(&a.tokenizer, "--tokenizer")?;
    let max_len = a.max_len as usize;
    TextTokenizer::from_bytes(&tok_bytes, max_len)
        .map_err(|e| bad(format!("--tokenizer {}: {e}", a.tokenizer.display())))?;
    let config = read_config(&a.onnx);
    if let Some(limit) = config
        .as_ref()
        .and_then(|c| c.get("max_position_embeddings"))
        .and_then(|v| v.as_u64())
    {
        if max_len as u64 > limit {
            return Err(Failure(
                2,
                format!("--max-len {max_len} is over the model's {limit} positions (config.json)"),
            ));
        }
    }

    // A Hugging Face export says how its head was trained: softmax over a
    // multi-label head gives wrong answers with no sign of it.
    let problem = config
        .as_ref()
        .and_then(|c| c.get("problem_type"))
        .and_then(|v| v.as_str());
    match (problem, a.task) {
        (Some("multi_label_classification"), ImportTask::Classify) => {
            return Err(Failure(
                2,
                "config.json says problem_type multi_label_classification: import it with --task multilabel (a softmax over its labels would answer wrong)".into(),
            ));
        }
        (Some("single_label_classification"), ImportTask::Multilabel) => {
            return Err(Failure(
                2,
                "config.json says problem_type single_label_classification: import it with --task classify (its labels are exclusive)".into(),
            ));
        }
        _ => {}
    }

    let mut model =
        graph::decode(&onnx_bytes).map_err(|e| bad(format!("--onnx {}: {e}", a.onnx.display())))?;
    drop(onnx_bytes);
    let dir = a
        .onnx
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let prepared = prepare(&mut model, dir, a.task, a.output_name.as_deref())
        .map_err(|e| bad(format!("--onnx {}: {e}", a.onnx.display())))?;
    log::info!("import: {prepared:?}");
    if let Some(p) = prepared.positions.filter(|p| max_len > *p) {
        return Err(Failure(
            2,
            format!("--max-len {max_len} is over the model's {p} positions (its position embedding table)"),
        ));
    }
    let model_bytes = graph::encode(&model);
    drop(model);

    // --labels, else the id2label of a config.json beside the model.
    let labels_given = || -> Result<Vec<String>, Failure> {
        if !a.labels.is_empty() {
            return Ok(a.labels.clone());
        }
        config.as_ref().and_then(labels_from_config).ok_or_else(|| {
            Failure(
                2,
                "no --labels given and no config.json with id2label beside the model".into(),
            )
        })
    };
    let (task, labels, dim, pooling) = match a.task {
        ImportTask::Multilabel => {
            let labels = labels_given()?;
            if let Some(w) = prepared.width.filter(|w| *w != labels.len()) {
                return Err(bad(format!(
                    "output {} gives {w} logits but {} labels were given",
                    prepared.output,
                    labels.len()
                )));
            }
            ("multilabel", labels, None, None)
        }
        ImportTask::Ner => {
            let labels = labels_given()?;
            edge_bert_model::ner::TagSet::parse(&labels)
                .map_err(|e| Failure(2, format!("--task ner reads the labels as BIO tags: {e}")))?;
            if let Some(w) = prepared.width.filter(|w| *w != labels.len()) {
                return Err(bad(format!(
                    "output {} gives {w} logits per token but {} labels were given",
                    prepared.output,
                    labels.len()
                )));
            }
            ("ner", labels, None, None)
        }
        ImportTask::Classify => {
            let labels = labels_given()?;
            if labels.len() < 2 {
                return Err(Failure(
                    2,
                    format!(
                        "{} label(s): the classify task needs at least 2; a 1-logit (sigmoid) head takes two, negative first: --labels NEG,POS",
                        labels.len()
                    ),
                ));
            }
            let sigmoid = prepared.width == Some(1) && labels.len() == 2;
            if let Some(w) = prepared.width.filter(|w| *w != labels.len() && !sigmoid) {
                return Err(bad(format!(
                    "output {} gives {w} logits but {} labels were given",
                    prepared.output,
                    labels.len()
                )));
            }
            ("classify", labels, None, None)
        }
        ImportTask::Embed => {
            if !a.labels.is_empty() {
                return Err(Failure(
                    2,
                    "--labels is for --task classify, multilabel and ner".into(),
                ));
            }
            let dim = prepared
                .width
                .or_else(|| {
                    config
                        .as_ref()
                        .and_then(|c| c.get("hidden_size"))
                        .and_then(|v| v.as_u64())
                        .map(|v| v as usize)
                })
                .ok_or_else(|| {
                    bad(format!(
                        "output {} does not state its width and there is no config.json with hidden_size",
                        prepared.output
                    ))
                })?;
            let pooling = match a.pooling {
                Pooling::Mean => ManifestPooling::Mean,
                Pooling::Cls => ManifestPooling::Cls,
            };
            (
                "embed",
                Vec::new(),
                Some(dim),
                Some(pooling.name().to_string()),
            )
        }
    };

    let base = Manifest {
        format_version: edge_bert_model::manifest::FORMAT_VERSION,
        name: a.name.clone().unwrap_or(out_name),
        task: Some(task.into()),
        pooling,
        dim,
        threshold: a.threshold,
        precision: "fp32".into(),
        labels,
        max_seq_len: max_len,
        buckets: Vec::new(),
        inputs: prepared.inputs.clone(),
        output: prepared.output.clone(),
        model: "model.onnx".into(),
        tokenizer: "tokenizer.json".into(),
        files: Vec::new(),
        provenance: json!({
            "imported_by": format!("edge-bert-quantize {} import", env!("CARGO_PKG_VERSION")),
            "source_model": a.onnx.file_name().map(|n| n.to_string_lossy().into_owned()),
            "source_model_sha256": source_sha,
            "source_tokenizer_sha256": sha256_hex(&tok_bytes),
            "output_kept": prepared.output,
            "external_tensors_inlined": prepared.external_tensors,
            "nodes_dropped": prepared.nodes_dropped,
            "weights_dropped": prepared.weights_dropped,
            "value_info_dropped": prepared.value_info_dropped,
            "inputs_cast_to_int64": prepared.cast_inputs,
        }),
        version: None,
        key_id: None,
    };
    let files: [(&str, &[u8]); 2] = [("model.onnx", &model_bytes), ("tokenizer.json", &tok_bytes)];
    let manifest = manifest_for(&base, &files);
    // Checked here so that a model the manifest cannot describe (say a
    // width over MAX_DIM) is exit 3, not write_dir's exit 5.
    manifest
        .task_kind()
        .map_err(|e| bad(format!("cannot describe this model: {e}")))?;
    write_dir(&a.output, &manifest, &files)
        .map_err(|e| Failure(5, format!("--output {}: {e}", a.output.display())))?;

    // Run what was written, as the device will.
    if let Err(e) = self_test(&a.output) {
        let _ = std::fs::remove_dir_all(&a.output);
        return Err(bad(format!(
            "the imported bundle does not run, so it was removed: {e}"
        )));
    }
    println!(
        "imported {} -> {} ({} task, output {}, {} MB, inputs {}{})",
        a.onnx.display(),
        a.output.display(),
        task,
        manifest.output,
        model_bytes.len() / 1_000_000,
        manifest.inputs.join(","),
        match manifest.dim {
            Some(d) => format!(", dim {d}"),
            None => format!(", labels {}", manifest.labels.join(",")),
        }
    );
    Ok(())
}

/// Loads the bundle in `dir` as the device does and runs it on sample
/// texts: finite scores, or unit vectors of the manifest's width.
pub(crate) fn self_test(dir: &Path) -> Result<(), String> {
    // Every length bucket is built, so a length the model cannot take fails here.
    let mut c = Classifier::load_dir(dir, None, false).map_err(|e| e.to_string())?;
    for text in SAMPLES {
        match c.task() {
            Task::Classify | Task::Multilabel { .. } => {
                let p = c.classify(text).map_err(|e| format!("{text:?}: {e}"))?;
                if !p.score.is_finite() {
                    return Err(format!("{text:?}: score {} is not finite", p.score));
                }
            }
            Task::Ner => {
                let e = c.entities(text).map_err(|e| format!("{text:?}: {e}"))?;
                if let Some(bad) = e.found.iter().find(|e| !e.score.is_finite()) {
                    return Err(format!(
                        "{text:?}: entity score {} is not finite",
                        bad.score
                    ));
                }
            }
            Task::Embed { dim, .. } => {
                let e = c.embed(text).map_err(|e| format!("{text:?}: {e}"))?;
                let norm: f32 = e.vector.iter().map(|v| v * v).sum::<f32>().sqrt();
                if e.vector.len() != dim || !(0.999..=1.001).contains(&norm) {
                    return Err(format!(
                        "{text:?}: a vector of {} values with norm {norm} (want {dim}, 1)",
                        e.vector.len()
                    ));
                }
            }
        }
    }
    Ok(())
}
