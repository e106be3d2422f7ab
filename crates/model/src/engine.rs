//! The tract engine: one optimised, fixed-shape plan per length bucket,
//! each with a state that is spawned once and reused.
//!
//! [`Engine::load`] builds every bucket's plan at load time (what `serve`
//! needs: memory known at start-up). [`Engine::load_lazy`] builds a bucket's
//! plan the first time a text needs it, which is what a one-shot
//! `classify` wants: it answers after building one plan, not four.

use prost::Message;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::konst::Const;

use edge_bert_kernels as kernels;

use crate::error::{Error, Result};
use crate::manifest::{check_buckets, InputRole, Pooling};
use crate::rows::{FileRows, ModelFile};
use crate::weights::WeightPool;

/// How a model file is encoded, decided from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    Onnx,
}

impl ModelFormat {
    /// Picks the format from the model file's name.
    pub fn from_file_name(name: &str) -> Result<ModelFormat> {
        if name.ends_with(".onnx") {
            Ok(ModelFormat::Onnx)
        } else {
            Err(Error::Model(format!(
                "unsupported model file {name:?}: expected an .onnx file"
            )))
        }
    }
}

/// One matrix product of the model and the element types it multiplies.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MatmulInfo {
    pub node: String,
    pub op: String,
    pub input_types: Vec<String>,
}

/// Facts about the loaded graph, gathered once at load time.
#[derive(Debug, Clone, Default)]
pub struct ModelStats {
    /// Number of weight values (float and 8-bit constants of rank ≥ 1).
    pub parameters: usize,
    /// Every matrix product with its input element types.
    pub matmuls: Vec<MatmulInfo>,
    /// `DynamicQuantizeLinear` nodes run by [`kernels::dynquant`]'s kernels,
    /// on their own or inside a fused matmul.
    pub dynamic_quantize_ops: usize,
    /// Quantised linear layers run by [`kernels::qmatmul`]'s fused op.
    pub fused_matmuls: usize,
    /// Bytes of the weights packed for those layers (one copy, shared by
    /// every plan).
    pub fused_weight_bytes: usize,
    /// Bytes of weight buffers (packed matrices, large constants) the built
    /// plans hold, each counted once (`weights::WeightPool`).
    pub weight_bytes: usize,
    /// Bytes of duplicate weight buffers freed because a plan shares them
    /// with an earlier one.
    pub shared_weight_bytes: usize,
    /// Bytes of the word-embedding table read from the model file a row at
    /// a time instead of held in memory ([`crate::rows`]); 0 if it is held.
    pub table_in_file_bytes: usize,
}

/// What the model's one output holds, and what [`Engine::logits_into`]
/// makes of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// `[1, n]` logits, copied as they are.
    Logits(usize),
    /// `[1, len, dim]` token vectors, pooled over the real tokens into
    /// `dim` values (`postprocess::pool_into`; not normalised).
    Pooled { dim: usize, pooling: Pooling },
    /// `[1, len, labels]` logits per token; the real tokens' rows are
    /// copied, row after row, into room for `max_len` of them.
    Tokens { labels: usize, max_len: usize },
}

impl Output {
    /// How many values one text gives (at most, for `Tokens`).
    pub fn width(&self) -> usize {
        match *self {
            Output::Logits(n) => n,
            Output::Pooled { dim, .. } => dim,
            Output::Tokens { labels, max_len } => labels * max_len,
        }
    }
}

/// What the engine writes into one model input before each run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    /// Token ids, the attention mask or token types (`[1, len]` i64).
    Role(InputRole),
    /// The word-embedding rows of the token ids (`[1, len, width]`), read
    /// from the model file in place of the graph's own lookup.
    Rows,
}

/// The word-embedding table left in the model file.
#[derive(Debug)]
struct WordRows {
    rows: FileRows,
    dt: DatumType,
    /// Elements per row.
    width: usize,
}

struct BucketPlan {
    state: TypedSimpleState,
    /// One tensor per model input, allocated once and refilled for every
    /// text (tract drops its references after a run).
    inputs: Vec<Arc<Tensor>>,
    /// A second tensor per input, made the first time tract's state still
    /// holds an input after its run (some graphs keep `input_ids` until
    /// the next run); the two then take turns, so no text allocates.
    spares: Vec<Option<Arc<Tensor>>>,
}

/// A ready-to-run model: a plan and a reusable state per length bucket.
/// Whether [`Engine::load`] optimises the buckets' plans on parallel
/// threads: faster start-up (about 2x on 2 cores), higher peak memory while
/// loading. `serve` turns it off so its peak stays low.
static PARALLEL_BUILD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Sets whether plans are built in parallel (see [`Engine::load`]).
pub fn set_parallel_build(on: bool) {
    PARALLEL_BUILD.store(on, std::sync::atomic::Ordering::Relaxed);
}

pub struct Engine {
    /// Bucket lengths, smallest first.
    lens: Vec<usize>,
    /// One plan per bucket; `None` until built (lazy engines only).
    plans: Vec<Option<BucketPlan>>,
    /// Lazy engines: the decluttered model and its length symbol, kept
    /// until every bucket's plan is built.
    pending: Option<(TypedModel, Symbol, WeightPool)>,
    /// What each model input is filled with, in graph order.
    feeds: Vec<Feed>,
    /// Names of the inputs the manifest lists (all but the rows input).
    input_names: Vec<String>,
    word_rows: Option<WordRows>,
    output: Output,
    stats: ModelStats,
}

/// A model file decoded into its protobuf, not yet handed to tract.
///
/// Loading is split in two so the caller can free the file's bytes between
/// the steps: the bytes, the protobuf and tract's tensors are each a full
/// copy of the weights, and this way at most two are alive at once. (tract's
/// own `model_for_read` also first copies the file into a buffer of its own.)
pub enum DecodedModel {
    Onnx {
        proto: tract_onnx::pb::ModelProto,
        /// Where each initializer's raw bytes were in the file
        /// ([`crate::rows::initializer_ranges`]); `None` if not found.
        ranges: Option<Vec<(String, std::ops::Range<usize>)>>,
    },
}

impl DecodedModel {
    /// The names of the graph's outputs, in order.
    pub fn output_names(&self) -> Vec<&str> {
        let DecodedModel::Onnx { proto, .. } = self;
        proto
            .graph
            .iter()
            .flat_map(|g| g.output.iter().map(|o| o.name.as_str()))
            .collect()
    }

    /// Keeps only the output `name` (a model may give more than the task
    /// reads, e.g. token vectors and a pooled vector); the nodes only the
    /// others need are never built. Returns whether `name` is an output.
    pub fn keep_output(&mut self, name: &str) -> bool {
        let DecodedModel::Onnx { proto, .. } = self;
        let Some(graph) = proto.graph.as_mut() else {
            return false;
        };
        if !graph.output.iter().any(|o| o.name == name) {
            return false;
        }
        graph.output.retain(|o| o.name == name);
        true
    }
}

impl std::fmt::Debug for DecodedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DecodedModel::Onnx")
    }
}

/// Decodes a model file's bytes (first step of loading; see [`DecodedModel`]).
pub fn decode(model_bytes: &[u8], format: ModelFormat) -> Result<DecodedModel> {
    let ModelFormat::Onnx = format;
    let proto = tract_onnx::pb::ModelProto::decode(model_bytes)
        .map_err(|e| Error::Model(format!("decoding the ONNX protobuf: {e}")))?;
    Ok(DecodedModel::Onnx {
        proto,
        ranges: crate::rows::initializer_ranges(model_bytes),
    })
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("buckets", &self.buckets())
            .field("inputs", &self.input_names)
            .field("output", &self.output)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Loads a model, checks its inputs and builds one optimised plan per bucket.
    ///
    /// `n_labels` is the expected width of the single logits output.
    pub fn load(
        model_bytes: &[u8],
        format: ModelFormat,
        buckets: &[usize],
        n_labels: usize,
    ) -> Result<Engine> {
        Engine::from_decoded(decode(model_bytes, format)?, buckets, n_labels, false, None)
    }

    /// Like [`Engine::load`], but builds each bucket's plan on first use
    /// (on the calling thread) and keeps the decluttered model until all
    /// are built. Same results; less work before the first answer, and no
    /// memory bound known at load time.
    pub fn load_lazy(
        model_bytes: &[u8],
        format: ModelFormat,
        buckets: &[usize],
        n_labels: usize,
    ) -> Result<Engine> {
        Engine::from_decoded(decode(model_bytes, format)?, buckets, n_labels, true, None)
    }

    /// Builds an engine from a decoded model file (see [`decode`]); `lazy`
    /// as in [`Engine::load_lazy`]. The decoded protobuf is dropped as soon
    /// as tract has its own model.
    ///
    /// With `file`, the open file the model was decoded from, the
    /// word-embedding table is left in it and read a row per token
    /// ([`crate::rows`]) when it can be found there and matches the decoded
    /// one byte for byte; otherwise the table stays in the graph.
    pub fn from_decoded(
        decoded: DecodedModel,
        buckets: &[usize],
        n_labels: usize,
        lazy: bool,
        file: Option<&ModelFile>,
    ) -> Result<Engine> {
        Engine::from_decoded_for(decoded, buckets, Output::Logits(n_labels), lazy, file)
    }

    /// Like [`Engine::from_decoded`], for a model whose output is `output`
    /// (logits, or token vectors to pool).
    pub fn from_decoded_for(
        decoded: DecodedModel,
        buckets: &[usize],
        output: Output,
        lazy: bool,
        file: Option<&ModelFile>,
    ) -> Result<Engine> {
        let max = *buckets
            .last()
            .ok_or_else(|| Error::InvalidArgument("no length buckets given".into()))?;
        check_buckets(buckets, max).map_err(Error::InvalidArgument)?;
        let started = std::time::Instant::now();
        let DecodedModel::Onnx { mut proto, ranges } = decoded;
        let mut word_rows = None;
        if let (Some(file), Some(ranges), Some(graph)) = (file, ranges, proto.graph.as_mut()) {
            word_rows = split_word_table(graph, &ranges, file);
        }
        // Which attention blocks the fusion leaves alone: looked for only
        // when that can be said (info level, fusion on).
        let report_unfused = kernels::attention_enabled() && log::log_enabled!(log::Level::Info);
        let softmaxes = |p: &tract_onnx::pb::ModelProto| -> Vec<String> {
            p.graph
                .iter()
                .flat_map(|g| g.node.iter())
                .filter(|n| report_unfused && n.op_type == "Softmax")
                .map(|n| n.name.clone())
                .collect()
        };
        let blocks = softmaxes(&proto).len();
        let (onnx, mut installed) = edge_bert_kernels::install(&mut proto);
        log::debug!(
            "engine: {} attention blocks run by edge-bert's kernel",
            installed.attentions
        );
        let unfused = softmaxes(&proto);
        if !unfused.is_empty() {
            log::info!(
                "engine: {} of {blocks} attention blocks fused; the others run as tract's generic ops (same answers, slower: their graph pattern is not one the fusion matches): {}",
                installed.attentions,
                unfused.join(", ")
            );
        }
        let mut model = onnx.model_for_proto_model(&proto).map_err(Error::model)?;
        drop(proto);

        let seq = model.symbols.sym("S");
        let mut feeds = Vec::new();
        let mut input_names = Vec::new();
        let inputs = model.input_outlets().map_err(Error::model)?.to_vec();
        for (ix, outlet) in inputs.iter().enumerate() {
            let name = model.node(outlet.node).name.clone();
            let fact = match &word_rows {
                Some((w, rows_input)) if *rows_input == name => {
                    feeds.push(Feed::Rows);
                    InferenceFact::dt_shape(w.dt, [1.to_dim(), seq.to_dim(), w.width.to_dim()])
                }
                _ => {
                    let role = InputRole::from_name(&name).ok_or_else(|| {
                        Error::Model(format!(
                            "model input {name:?} is not one of input_ids, attention_mask, token_type_ids"
                        ))
                    })?;
                    feeds.push(Feed::Role(role));
                    input_names.push(name);
                    InferenceFact::dt_shape(i64::datum_type(), [1.to_dim(), seq.to_dim()])
                }
            };
            model.set_input_fact(ix, fact).map_err(Error::model)?;
        }
        let word_rows = word_rows.map(|(w, _)| w);
        if !feeds.contains(&Feed::Role(InputRole::Ids)) {
            return Err(Error::Model("model has no input_ids input".into()));
        }
        if model.output_outlets().map_err(Error::model)?.len() != 1 {
            return Err(Error::Model(
                "model must have exactly one output (logits or token vectors); `edge-bert-quantize import` keeps only the one a task needs".into(),
            ));
        }

        let mut typed = model
            .into_typed()
            .and_then(|m| m.into_decluttered())
            .map_err(Error::model)?;
        log::debug!("engine: parsed and decluttered in {:?}", started.elapsed());
        // Dynamic quantisation takes its range over the real tokens only
        // (see `dynquant::masked_range`), so it reads the attention mask.
        let mask = match feeds.iter().position(|f| *f == Feed::Role(InputRole::Mask)) {
            Some(ix) => typed
                .input_outlets()
                .map_err(Error::model)?
                .get(ix)
                .copied(),
            None => None,
        };
        installed.swap(&mut typed, mask).map_err(Error::model)?;
        if installed.dynquants > 0 {
            log::info!(
                "engine: {} DynamicQuantizeLinear ops run by edge-bert's kernel ({:?} path)",
                installed.dynquants,
                kernels::dynquant::path()
            );
        }
        log::debug!(
            "engine: {} softmax ops run by edge-bert's kernel",
            installed.softmaxes
        );
        log::debug!(
            "engine: {} GELU ops run by edge-bert's kernel",
            installed.gelus
        );
        if installed.qmatmuls > 0 {
            log::info!(
                "engine: {} quantised linear layers run by edge-bert's fused int8 matmul ({} path)",
                installed.qmatmuls,
                kernels::qmatmul::chosen().map_or("?", |p| p.name())
            );
        }
        let mut stats = describe(&typed);
        // The fused op quantises its input with the same kernel.
        stats.dynamic_quantize_ops = installed.dynquants + stats.fused_matmuls;
        if let Some(w) = &word_rows {
            stats.parameters += w.rows.rows() * w.width;
            stats.table_in_file_bytes = w.rows.rows() * w.rows.row_bytes();
        }
        if lazy {
            let engine = Engine {
                lens: buckets.to_vec(),
                plans: buckets.iter().map(|_| None).collect(),
                pending: Some((typed, seq, WeightPool::default())),
                feeds,
                input_names,
                word_rows,
                output,
                stats,
            };
            log::debug!("engine: lazy, ready after {:?}", started.elapsed());
            return Ok(engine);
        }
        // Optimising the plans is most of the load time. Built one after the
        // other, each plan gives its weights to the pool before the next
        // starts, so at most one duplicate copy exists at a time. Built on
        // parallel threads (faster on 2 cores), all duplicates exist until
        // the threads join and the pool frees them.
        let mut pool = WeightPool::default();
        let optimise = |len: usize| optimise_for(&typed, &seq, len);
        let plans = if !PARALLEL_BUILD.load(std::sync::atomic::Ordering::Relaxed) {
            buckets
                .iter()
                .map(|&len| {
                    finish_plan(optimise(len)?, len, &feeds, word_rows.as_ref(), &mut pool)
                        .map(Some)
                })
                .collect::<Result<Vec<_>>>()?
        } else {
            let optimised = std::thread::scope(|s| {
                let handles: Vec<_> = buckets
                    .iter()
                    .map(|&len| std::thread::Builder::new().spawn_scoped(s, move || optimise(len)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.map_err(|e| Error::io("plan builder thread", e))?
                            .join()
                            .map_err(|_| Error::Model("a plan builder panicked".into()))?
                    })
                    .collect::<Result<Vec<_>>>()
            })?;
            optimised
                .into_iter()
                .zip(buckets)
                .map(|(m, &len)| {
                    finish_plan(m, len, &feeds, word_rows.as_ref(), &mut pool).map(Some)
                })
                .collect::<Result<Vec<_>>>()?
        };
        log::debug!(
            "engine: weights held once: {} bytes; {} duplicate bytes freed",
            pool.held_bytes,
            pool.saved_bytes
        );
        stats.weight_bytes = pool.held_bytes + stats.fused_weight_bytes;
        stats.shared_weight_bytes = pool.saved_bytes;
        drop(pool);
        drop(typed);
        crate::memory::release_free_heap();
        log::debug!(
            "engine: {} plans built after {:?}",
            plans.len(),
            started.elapsed()
        );
        let mut engine = Engine {
            lens: buckets.to_vec(),
            plans,
            pending: None,
            feeds,
            input_names,
            word_rows,
            output,
            stats,
        };
        // Check the output width once, on the smallest bucket.
        engine.logits(&[0, 0])?;
        Ok(engine)
    }

    /// The bucket lengths, smallest first.
    pub fn buckets(&self) -> Vec<usize> {
        self.lens.clone()
    }

    /// How many buckets have their plan built (all, unless lazy).
    pub fn built_buckets(&self) -> usize {
        self.plans.iter().filter(|p| p.is_some()).count()
    }

    /// Names of the model inputs the engine fills from token ids, in graph
    /// order (the word-embedding rows input, if any, is not listed).
    pub fn input_names(&self) -> &[String] {
        &self.input_names
    }

    /// Load-time facts about the graph.
    pub fn stats(&self) -> &ModelStats {
        &self.stats
    }

    /// Index of the smallest bucket that holds `n` tokens.
    pub fn bucket_for(&self, n: usize) -> Option<usize> {
        pick_bucket(self.lens.iter().copied(), n)
    }

    /// Runs the model on one sequence of token ids (special tokens included)
    /// and returns its logits. The sequence is padded to its bucket with
    /// attention mask 0.
    pub fn logits(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.output.width()];
        self.logits_into(ids, &mut out)?;
        Ok(out)
    }

    /// Runs `ids` (special tokens included) through the smallest bucket
    /// that holds them and writes the logits into `out`, which must have
    /// one slot per label. Outside tract's own run this allocates nothing.
    pub fn logits_into(&mut self, ids: &[u32], out: &mut [f32]) -> Result<()> {
        let bucket = self.bucket_for(ids.len()).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{} tokens exceed the largest bucket {}",
                ids.len(),
                self.lens.last().copied().unwrap_or(0)
            ))
        })?;
        if self.plans[bucket].is_none() {
            self.build_bucket(bucket)?;
        }
        let len = self.lens[bucket];
        let plan = self.plans[bucket]
            .as_mut()
            .ok_or_else(|| Error::Model("bucket plan missing".into()))?;
        let mut inputs: TVec<TValue> = TVec::new();
        for ((slot, spare), feed) in plan
            .inputs
            .iter_mut()
            .zip(plan.spares.iter_mut())
            .zip(&self.feeds)
        {
            if Arc::get_mut(slot).is_none() {
                // Still shared (tract's state kept it): use the spare, and
                // keep this one as the next spare.
                if let Some(s) = spare.as_mut() {
                    std::mem::swap(slot, s);
                }
                if Arc::get_mut(slot).is_none() {
                    log::debug!("engine: input tensor still shared; a second one made");
                    let fresh = Arc::new(input_tensor(*feed, len, self.word_rows.as_ref())?);
                    *spare = Some(std::mem::replace(slot, fresh));
                }
            }
            let t = Arc::get_mut(slot).expect("tensor not shared");
            let mut view = t.try_as_plain_ram_mut().map_err(Error::model)?;
            let role = match feed {
                Feed::Role(role) => role,
                Feed::Rows => {
                    let w = self
                        .word_rows
                        .as_ref()
                        .ok_or_else(|| Error::Model("no embedding rows to read".into()))?;
                    // Padding positions get row 0, as the graph's own
                    // lookup gives them for id 0.
                    w.rows.fill(ids, 0, view.as_bytes_mut())?;
                    inputs.push(slot.clone().into_tvalue());
                    continue;
                }
            };
            let v = view.as_slice_mut::<i64>().map_err(Error::model)?;
            let n = ids.len();
            match role {
                InputRole::Ids => {
                    for (d, &s) in v.iter_mut().zip(ids) {
                        *d = s as i64;
                    }
                    v[n..].fill(0);
                }
                InputRole::Mask => {
                    v[..n].fill(1);
                    v[n..].fill(0);
                }
                InputRole::TypeIds => v.fill(0),
            }
            inputs.push(slot.clone().into_tvalue());
        }
        let state = &mut plan.state;
        let result = crate::alloc_probe::tract_run(|| state.run(inputs));
        let outputs = result.map_err(Error::model)?;
        let view = outputs[0].try_as_plain_ram().map_err(Error::model)?;
        let values = view.as_slice::<f32>().map_err(Error::model)?;
        match self.output {
            // A 1-logit (sigmoid) head with two labels: [0, z], whose
            // softmax is [1 - sigmoid(z), sigmoid(z)].
            Output::Logits(2) if values.len() == 1 && out.len() == 2 => {
                out[0] = 0.0;
                out[1] = values[0];
            }
            Output::Logits(n) => {
                if values.len() != n || out.len() != n {
                    return Err(Error::Model(format!(
                        "model gives {} logits but the manifest has {n} labels",
                        values.len(),
                    )));
                }
                out.copy_from_slice(values);
            }
            Output::Pooled { dim, pooling } => {
                if values.len() != len * dim || out.len() != dim {
                    return Err(Error::Model(format!(
                        "model gives {} values for {len} tokens, not {len} vectors of the manifest's dim {dim}",
                        values.len(),
                    )));
                }
                crate::postprocess::pool_into(values, ids.len().max(1), pooling, out);
            }
            Output::Tokens { labels, .. } => {
                let n = ids.len() * labels;
                if values.len() != len * labels || out.len() < n {
                    return Err(Error::Model(format!(
                        "model gives {} logits for {len} tokens, not {len} rows of the manifest's {labels} labels",
                        values.len(),
                    )));
                }
                out[..n].copy_from_slice(&values[..n]);
            }
        }
        Ok(())
    }
}

impl Engine {
    /// Builds a lazy engine's plan for bucket `ix`; drops the decluttered
    /// model once every bucket has its plan.
    fn build_bucket(&mut self, ix: usize) -> Result<()> {
        let (typed, seq, pool) = self
            .pending
            .as_mut()
            .ok_or_else(|| Error::Model("bucket plan missing and no model to build it".into()))?;
        let started = std::time::Instant::now();
        let len = self.lens[ix];
        let plan = finish_plan(
            optimise_for(typed, seq, len)?,
            len,
            &self.feeds,
            self.word_rows.as_ref(),
            pool,
        )?;
        log::debug!(
            "engine: built the plan for length {len} in {:?}",
            started.elapsed()
        );
        self.stats.weight_bytes = pool.held_bytes + self.stats.fused_weight_bytes;
        self.stats.shared_weight_bytes = pool.saved_bytes;
        self.plans[ix] = Some(plan);
        if self.plans.iter().all(Option::is_some) {
            self.pending = None;
        }
        Ok(())
    }
}

/// Optimises the decluttered model for one bucket length.
fn optimise_for(typed: &TypedModel, seq: &Symbol, len: usize) -> Result<TypedModel> {
    let mut subs = std::collections::HashMap::new();
    subs.insert(seq.clone(), (len as i64).to_dim());
    typed
        .set_symbols(&subs)
        .and_then(|m| m.into_optimized())
        .map_err(|e| Error::Model(format!("building the plan for length {len}: {e:?}")))
}

/// Shares the optimised model's weights through `pool`, then makes it
/// runnable and spawns its state.
fn finish_plan(
    mut optimised: TypedModel,
    len: usize,
    feeds: &[Feed],
    word_rows: Option<&WordRows>,
    pool: &mut WeightPool,
) -> Result<BucketPlan> {
    let shared = pool.share(&mut optimised);
    log::debug!(
        "engine: plan for length {len}: {} weight bytes shared with earlier plans, {} new",
        shared.shared_bytes,
        shared.new_bytes
    );
    let plan = optimised.into_runnable().map_err(Error::model)?;
    let state = plan.spawn().map_err(Error::model)?;
    let inputs = feeds
        .iter()
        .map(|&feed| input_tensor(feed, len, word_rows).map(Arc::new))
        .collect::<Result<Vec<_>>>()?;
    let spares = vec![None; inputs.len()];
    Ok(BucketPlan {
        state,
        inputs,
        spares,
    })
}

/// A zeroed tensor for one model input of a `len`-token bucket.
fn input_tensor(feed: Feed, len: usize, word_rows: Option<&WordRows>) -> Result<Tensor> {
    let t = match (feed, word_rows) {
        (Feed::Role(_), _) => Tensor::zero::<i64>(&[1, len]),
        (Feed::Rows, Some(w)) => Tensor::zero_dt(w.dt, &[1, len, w.width]),
        (Feed::Rows, None) => return Err(Error::Model("no embedding rows to read".into())),
    };
    t.map_err(Error::model)
}

/// Leaves the word-embedding table of `graph` in `file` (see
/// [`crate::rows`]): finds the lookup of `input_ids`, checks the file's
/// bytes against the decoded table, then cuts the lookup out of the graph.
/// Returns the rows and the name of the input that replaces the lookup, or
/// `None` (graph unchanged) if any step fails.
fn split_word_table(
    graph: &mut tract_onnx::pb::GraphProto,
    ranges: &[(String, std::ops::Range<usize>)],
    file: &ModelFile,
) -> Option<(WordRows, String)> {
    let found = crate::rows::find_word_gather(graph, "input_ids")?;
    let dt = crate::rows::table_type(found.elem_type)?;
    let width = found.row_bytes / dt.size_of();
    let (_, range) = ranges.iter().rev().find(|(name, _)| *name == found.table)?;
    let checked =
        FileRows::new(file, range.clone(), found.rows, found.row_bytes).and_then(|rows| {
            let table = graph
                .initializer
                .iter()
                .find(|t| t.name == found.table)
                .map(|t| t.raw_data.as_slice())
                .unwrap_or_default();
            rows.verify(table).map(|()| rows)
        });
    let rows = match checked {
        Ok(rows) => rows,
        Err(e) => {
            log::warn!("engine: the embedding table stays in memory: {e}");
            return None;
        }
    };
    drop(crate::rows::cut_word_gather(graph, &found));
    log::debug!(
        "engine: {} embedding rows of {} bytes read from the model file",
        found.rows,
        found.row_bytes
    );
    Some((WordRows { rows, dt, width }, found.output))
}

/// Index of the smallest bucket (sorted ascending) that holds `n` tokens.
pub fn pick_bucket(buckets: impl IntoIterator<Item = usize>, n: usize) -> Option<usize> {
    buckets.into_iter().position(|b| b >= n)
}

fn describe(model: &TypedModel) -> ModelStats {
    let mut stats = ModelStats::default();
    for node in model.nodes() {
        if let Some(k) = node.op_as::<Const>() {
            let t = k.val();
            let dt = t.datum_type();
            if t.rank() >= 1 && (dt.is_float() || dt == i8::datum_type() || dt == u8::datum_type())
            {
                stats.parameters += t.len();
            }
            continue;
        }
        if let Some(q) = node.op_as::<kernels::qmatmul::QMatMul>() {
            let (k, n) = (q.packed.k(), q.packed.n());
            stats.parameters += k * n + 2 * n;
            stats.fused_matmuls += 1;
            stats.fused_weight_bytes += q.packed.bytes();
            stats.matmuls.push(MatmulInfo {
                node: node.name.clone(),
                op: node.op.name().to_string(),
                input_types: vec!["F32".into(), "I8".into()],
            });
            continue;
        }
        let op = node.op.name().to_string();
        if op.contains("MatMul") || op.contains("EinSum") || op.contains("Gemm") {
            let input_types = node
                .inputs
                .iter()
                .map(|i| {
                    model
                        .outlet_fact(*i)
                        .map(|f| format!("{:?}", f.datum_type))
                        .unwrap_or_else(|_| "?".into())
                })
                .collect();
            stats.matmuls.push(MatmulInfo {
                node: node.name.clone(),
                op,
                input_types,
            });
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_smallest_bucket_that_fits() {
        let b = [16, 32, 64, 128];
        assert_eq!(pick_bucket(b, 0), Some(0));
        assert_eq!(pick_bucket(b, 16), Some(0));
        assert_eq!(pick_bucket(b, 17), Some(1));
        assert_eq!(pick_bucket(b, 128), Some(3));
        assert_eq!(pick_bucket(b, 129), None);
    }

    /// Plans that share weight buffers compute exactly what plans built
    /// alone (nothing shared) compute.
    #[test]
    fn shared_weights_give_the_same_logits_as_plans_built_alone() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/tiny/model.onnx");
        let bytes = std::fs::read(path).unwrap();
        let mut shared = Engine::load(&bytes, ModelFormat::Onnx, &[8, 16, 32], 2).unwrap();
        assert!(
            shared.stats().shared_weight_bytes > 0,
            "{:?}",
            shared.stats()
        );
        assert!(shared.stats().weight_bytes > 0);
        for (len, bucket) in [(5u32, 8), (12, 16), (30, 32)] {
            let mut alone = Engine::load(&bytes, ModelFormat::Onnx, &[bucket], 2).unwrap();
            assert_eq!(alone.stats().shared_weight_bytes, 0);
            let ids: Vec<u32> = (0..len).map(|i| (101 + i * 37) % 641).collect();
            let a = shared.logits(&ids).unwrap();
            let b = alone.logits(&ids).unwrap();
            assert_eq!(
                a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "length {len}"
            );
        }
    }

    /// The word-embedding rows read from the model file give bit for bit
    /// the logits of the graph's own lookup, on every bucket, eager or
    /// lazy; a file whose bytes differ leaves the lookup in the graph.
    #[test]
    fn rows_from_the_file_give_the_same_logits_as_the_graphs_lookup() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/tiny/model.onnx");
        let bytes = std::fs::read(path).unwrap();
        let file = std::sync::Arc::new(std::fs::File::open(path).unwrap());
        let at = |offset| ModelFile::new(file.clone(), path, offset);
        let build = |file: Option<&ModelFile>, lazy| {
            let decoded = decode(&bytes, ModelFormat::Onnx).unwrap();
            Engine::from_decoded(decoded, &[8, 16, 32], 2, lazy, file).unwrap()
        };
        let mut in_graph = build(None, false);
        assert_eq!(in_graph.stats().table_in_file_bytes, 0);
        let mut from_file = build(Some(&at(0)), false);
        let mut lazy = build(Some(&at(0)), true);
        // The tiny model's table: 641 rows of 32 f32.
        assert_eq!(from_file.stats().table_in_file_bytes, 641 * 32 * 4);
        assert_eq!(lazy.stats().table_in_file_bytes, 641 * 32 * 4);
        assert_eq!(in_graph.stats().parameters, from_file.stats().parameters);
        // One byte off: the check fails and the table stays in the graph.
        let mut shifted = build(Some(&at(1)), false);
        assert_eq!(shifted.stats().table_in_file_bytes, 0);
        for len in [1u32, 5, 8, 12, 16, 30, 32] {
            let ids: Vec<u32> = (0..len).map(|i| (101 + i * 37) % 641).collect();
            let bits = |e: &mut Engine| {
                e.logits(&ids)
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect::<Vec<_>>()
            };
            let expected = bits(&mut in_graph);
            assert_eq!(bits(&mut from_file), expected, "length {len}");
            assert_eq!(bits(&mut lazy), expected, "length {len}, lazy");
            assert_eq!(bits(&mut shifted), expected, "length {len}, shifted");
        }
        // An id past the table is an error, and the engine goes on.
        assert!(matches!(
            from_file.logits(&[101, 641, 102]),
            Err(Error::InvalidArgument(_))
        ));
        assert!(from_file.logits(&[101, 640, 102]).is_ok());
    }

    #[test]
    fn model_format_from_name() {
        assert_eq!(
            ModelFormat::from_file_name("model.onnx").unwrap(),
            ModelFormat::Onnx
        );
        assert!(ModelFormat::from_file_name("model.bin").is_err());
    }
}
