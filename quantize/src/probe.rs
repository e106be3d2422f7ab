//! Running an ONNX model on texts while reading intermediate tensors by
//! name: activation ranges for static calibration, and per-layer error.

use edge_bert_model::tokenize::TextTokenizer;
use tract_onnx::prelude::*;

/// A model with extra outputs, runnable on any sequence length.
pub struct Probe {
    plan: Arc<TypedRunnableModel>,
    roles: Vec<edge_bert_model::manifest::InputRole>,
}

impl Probe {
    /// Loads `model_bytes` and exposes the tensors named in `outputs`.
    pub fn new(model_bytes: &[u8], outputs: &[String]) -> anyhow_like::Result<Probe> {
        let mut model = tract_onnx::onnx().model_for_read(&mut &*model_bytes)?;
        let seq = model.symbols.sym("S");
        let mut roles = Vec::new();
        for ix in 0..model.input_outlets()?.len() {
            let name = model.node(model.input_outlets()?[ix].node).name.clone();
            let role = edge_bert_model::manifest::InputRole::from_name(&name).ok_or_else(|| {
                tract_onnx::tract_core::internal::format_err!("unknown model input {name:?}")
            })?;
            roles.push(role);
            model.set_input_fact(
                ix,
                InferenceFact::dt_shape(i64::datum_type(), [1.to_dim(), seq.to_dim()]),
            )?;
        }
        let mut outlets = Vec::new();
        for name in outputs {
            outlets.push(model.find_outlet_label(name).ok_or_else(|| {
                tract_onnx::tract_core::internal::format_err!(
                    "no tensor named {name:?} in the model"
                )
            })?);
        }
        model.outputs = outlets;
        let plan = model.into_optimized()?.into_runnable()?;
        Ok(Probe { plan, roles })
    }

    /// Runs one tokenised text; returns each requested tensor, flattened.
    pub fn run(&self, ids: &[u32]) -> anyhow_like::Result<Vec<Vec<f32>>> {
        let n = ids.len();
        let mut inputs = TVec::new();
        for role in &self.roles {
            let v: Vec<i64> = match role {
                edge_bert_model::manifest::InputRole::Ids => {
                    ids.iter().map(|&i| i as i64).collect()
                }
                edge_bert_model::manifest::InputRole::Mask => vec![1; n],
                edge_bert_model::manifest::InputRole::TypeIds => vec![0; n],
            };
            inputs.push(Tensor::from_shape(&[1, n], &v)?.into_tvalue());
        }
        let out = self.plan.run(inputs)?;
        out.iter()
            .map(|t| {
                let t = t.cast_to::<f32>()?;
                let view = t.try_as_plain_ram()?;
                Ok(view.as_slice::<f32>()?.to_vec())
            })
            .collect()
    }
}

/// Tokenises with truncation at the bundle's length.
pub fn encode(tok: &TextTokenizer, text: &str) -> Result<Vec<u32>, edge_bert_model::Error> {
    Ok(tok.encode(text)?.ids)
}

/// tract's error type under a local name.
pub mod anyhow_like {
    pub type Result<T> = tract_onnx::prelude::TractResult<T>;
}
