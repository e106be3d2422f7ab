//! The tract engine: one optimised, fixed-shape plan per length bucket,
//! each with a state that is spawned once and reused.
//!
//! [`Engine::load`] builds every bucket's plan at load time (what `serve`
//! needs: memory known at start-up). [`Engine::load_lazy`] builds a bucket's
//! plan the first time a text needs it, which is what a one-shot
//! `classify` wants: it answers after building one plan, not four.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::konst::Const;

use crate::error::{Error, Result};
use crate::manifest::{check_buckets, InputRole};

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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// `DynamicQuantizeLinear` nodes run by [`crate::dynquant`]'s op.
    pub dynamic_quantize_ops: usize,
}

struct BucketPlan {
    state: TypedSimpleState,
    /// One `[1, len]` i64 tensor per model input, allocated once and
    /// refilled for every text (tract drops its references after a run).
    inputs: Vec<Arc<Tensor>>,
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
    pending: Option<(TypedModel, Symbol)>,
    roles: Vec<InputRole>,
    input_names: Vec<String>,
    n_outputs: usize,
    stats: ModelStats,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("buckets", &self.buckets())
            .field("inputs", &self.input_names)
            .field("n_outputs", &self.n_outputs)
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
        Engine::load_with(model_bytes, format, buckets, n_labels, false)
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
        Engine::load_with(model_bytes, format, buckets, n_labels, true)
    }

    fn load_with(
        model_bytes: &[u8],
        format: ModelFormat,
        buckets: &[usize],
        n_labels: usize,
        lazy: bool,
    ) -> Result<Engine> {
        let max = *buckets
            .last()
            .ok_or_else(|| Error::InvalidArgument("no length buckets given".into()))?;
        check_buckets(buckets, max).map_err(Error::InvalidArgument)?;
        let ModelFormat::Onnx = format;
        let started = std::time::Instant::now();
        let mut model = tract_onnx::onnx()
            .model_for_read(&mut &*model_bytes)
            .map_err(Error::model)?;

        let seq = model.symbols.sym("S");
        let mut roles = Vec::new();
        let mut input_names = Vec::new();
        let inputs = model.input_outlets().map_err(Error::model)?.to_vec();
        for (ix, outlet) in inputs.iter().enumerate() {
            let name = model.node(outlet.node).name.clone();
            let role = InputRole::from_name(&name).ok_or_else(|| {
                Error::Model(format!(
                    "model input {name:?} is not one of input_ids, attention_mask, token_type_ids"
                ))
            })?;
            let fact = InferenceFact::dt_shape(i64::datum_type(), [1.to_dim(), seq.to_dim()]);
            model.set_input_fact(ix, fact).map_err(Error::model)?;
            roles.push(role);
            input_names.push(name);
        }
        if !roles.contains(&InputRole::Ids) {
            return Err(Error::Model("model has no input_ids input".into()));
        }
        if model.output_outlets().map_err(Error::model)?.len() != 1 {
            return Err(Error::Model(
                "model must have exactly one output (logits)".into(),
            ));
        }

        let mut typed = model
            .into_typed()
            .and_then(|m| m.into_decluttered())
            .map_err(Error::model)?;
        log::debug!("engine: parsed and decluttered in {:?}", started.elapsed());
        let swapped = crate::dynquant::swap_in(&mut typed);
        if swapped > 0 {
            log::info!(
                "engine: {swapped} DynamicQuantizeLinear ops run by edge-bert's kernel ({:?} path)",
                crate::dynquant::path()
            );
        }
        let mut stats = describe(&typed);
        stats.dynamic_quantize_ops = swapped;

        let n_inputs = roles.len();
        if lazy {
            let engine = Engine {
                lens: buckets.to_vec(),
                plans: buckets.iter().map(|_| None).collect(),
                pending: Some((typed, seq)),
                roles,
                input_names,
                n_outputs: n_labels,
                stats,
            };
            log::debug!("engine: lazy, ready after {:?}", started.elapsed());
            return Ok(engine);
        }
        // Each bucket's plan is optimised on its own thread (this is most of
        // the load time, and the buckets are independent).
        let build = |len: usize| build_plan(&typed, &seq, len, n_inputs);
        let plans = if !PARALLEL_BUILD.load(std::sync::atomic::Ordering::Relaxed) {
            buckets
                .iter()
                .map(|&len| build(len).map(Some))
                .collect::<Result<Vec<_>>>()?
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = buckets
                    .iter()
                    .map(|&len| std::thread::Builder::new().spawn_scoped(s, move || build(len)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.map_err(|e| Error::io("plan builder thread", e))?
                            .join()
                            .map_err(|_| Error::Model("a plan builder panicked".into()))?
                            .map(Some)
                    })
                    .collect::<Result<Vec<_>>>()
            })?
        };
        log::debug!(
            "engine: {} plans built after {:?}",
            plans.len(),
            started.elapsed()
        );
        let mut engine = Engine {
            lens: buckets.to_vec(),
            plans,
            pending: None,
            roles,
            input_names,
            n_outputs: n_labels,
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

    /// Model input names in graph order.
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
        let mut out = vec![0.0; self.n_outputs];
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
        for (slot, role) in plan.inputs.iter_mut().zip(&self.roles) {
            if Arc::get_mut(slot).is_none() {
                // Still shared (tract kept a reference): start a new one.
                log::debug!("engine: input tensor still shared; reallocating");
                *slot = Arc::new(Tensor::zero::<i64>(&[1, len]).map_err(Error::model)?);
            }
            let t = Arc::get_mut(slot).expect("tensor not shared");
            let mut view = t.try_as_plain_ram_mut().map_err(Error::model)?;
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
        let logits = view.as_slice::<f32>().map_err(Error::model)?;
        if logits.len() != out.len() {
            return Err(Error::Model(format!(
                "model gives {} logits but the manifest has {} labels",
                logits.len(),
                out.len()
            )));
        }
        out.copy_from_slice(logits);
        Ok(())
    }
}

impl Engine {
    /// Builds a lazy engine's plan for bucket `ix`; drops the decluttered
    /// model once every bucket has its plan.
    fn build_bucket(&mut self, ix: usize) -> Result<()> {
        let (typed, seq) = self
            .pending
            .as_ref()
            .ok_or_else(|| Error::Model("bucket plan missing and no model to build it".into()))?;
        let started = std::time::Instant::now();
        let plan = build_plan(typed, seq, self.lens[ix], self.roles.len())?;
        log::debug!(
            "engine: built the plan for length {} in {:?}",
            self.lens[ix],
            started.elapsed()
        );
        self.plans[ix] = Some(plan);
        if self.plans.iter().all(Option::is_some) {
            self.pending = None;
        }
        Ok(())
    }
}

/// Optimises the decluttered model for one bucket length and spawns its state.
fn build_plan(typed: &TypedModel, seq: &Symbol, len: usize, n_inputs: usize) -> Result<BucketPlan> {
    let mut subs = std::collections::HashMap::new();
    subs.insert(seq.clone(), (len as i64).to_dim());
    let plan = typed
        .set_symbols(&subs)
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(|e| Error::Model(format!("building the plan for length {len}: {e:?}")))?;
    let state = plan.spawn().map_err(Error::model)?;
    let inputs = (0..n_inputs)
        .map(|_| Tensor::zero::<i64>(&[1, len]).map(Arc::new))
        .collect::<TractResult<Vec<_>>>()
        .map_err(Error::model)?;
    Ok(BucketPlan { state, inputs })
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

    #[test]
    fn model_format_from_name() {
        assert_eq!(
            ModelFormat::from_file_name("model.onnx").unwrap(),
            ModelFormat::Onnx
        );
        assert!(ModelFormat::from_file_name("model.bin").is_err());
    }
}
