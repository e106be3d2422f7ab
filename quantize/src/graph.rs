//! Rewriting an fp32 ONNX graph into tract's integer operator form (pure:
//! bytes in, bytes out).
//!
//! Every `MatMul` / `Gemm` whose weight is a constant initializer becomes
//!
//! ```text
//! X ──DynamicQuantizeLinear──► Xq(u8), Xs, Xzp        (dynamic mode)
//! X ──QuantizeLinear(Xs, Xzp)─► Xq(u8)                 (static mode, calibrated Xs, Xzp)
//! MatMulInteger(Xq, Wq(i8, [K,N]), Xzp) ─► i32 ─Cast─► f32 ─Mul(Xs·Ws[N])─► Y
//! ```
//!
//! which tract runs with its int8 kernels, keeping the node's output name so
//! the rest of the graph is untouched. Large float embedding tables read by
//! `Gather` become int8 rows with one scale per row:
//! `Gather(Eq) ─Cast─► f32 ─Mul(Gather(Es))─► Y`.

use std::collections::{BTreeMap, HashMap, HashSet};

use prost::Message;
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, AttributeProto, ModelProto, NodeProto,
    TensorProto,
};

use crate::qmath::{quantize_rows, QuantizedMatrix};

/// What can go wrong while rewriting a graph.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("not an ONNX model: {0}")]
    NotOnnx(String),
    #[error("the model has no MatMul/Gemm with a constant weight: nothing to quantise")]
    NothingToQuantize,
    #[error("node {node:?} ({op}): {reason}")]
    Unsupported {
        node: String,
        op: String,
        reason: String,
    },
    #[error("opset {0} is not supported (need 13 to 21)")]
    Opset(i64),
}

/// Calibrated activation range of a matmul input, for static mode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActRange {
    pub scale: f32,
    pub zero_point: u8,
}

/// Options of a rewrite.
#[derive(Debug, Clone, Default)]
pub struct RewriteOptions {
    pub per_channel: bool,
    /// Quantise float `Gather` tables with at least this many values (0: never).
    pub embedding_min_values: usize,
    /// Node names (exact) left in fp32.
    pub exclude: HashSet<String>,
    /// Static mode: the range of each quantised matmul's input, by node name.
    /// Empty means dynamic mode.
    pub act_ranges: HashMap<String, ActRange>,
}

/// One quantisable node of the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub node: String,
    pub op: String,
    /// Name of the float input (activation) tensor.
    pub input: String,
    /// Name of the output tensor.
    pub output: String,
    /// `[K, N]` of the weight, as multiplied.
    pub k: usize,
    pub n: usize,
}

/// What a rewrite did.
#[derive(Debug, Clone, Default)]
pub struct RewriteSummary {
    pub quantized: Vec<Candidate>,
    pub kept_fp32: Vec<Candidate>,
    pub embeddings: Vec<(String, usize, usize)>,
}

/// Parses ONNX bytes.
pub fn decode(bytes: &[u8]) -> Result<ModelProto, GraphError> {
    let m = ModelProto::decode(bytes).map_err(|e| GraphError::NotOnnx(e.to_string()))?;
    if m.graph.is_none() {
        return Err(GraphError::NotOnnx("no graph".into()));
    }
    let opset = m
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .unwrap_or(0);
    if !(13..=21).contains(&opset) {
        return Err(GraphError::Opset(opset));
    }
    Ok(m)
}

/// Serialises a model; deterministic for equal models.
pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

fn attr_i(node: &NodeProto, name: &str, default: i64) -> i64 {
    node.attribute
        .iter()
        .find(|a| a.name == name)
        .map_or(default, |a| a.i)
}

fn attr_f(node: &NodeProto, name: &str, default: f32) -> f32 {
    node.attribute
        .iter()
        .find(|a| a.name == name)
        .map_or(default, |a| a.f)
}

/// The float values and dims of an initializer.
pub fn float_values(t: &TensorProto) -> Option<(Vec<usize>, Vec<f32>)> {
    if t.data_type != DataType::Float as i32 {
        return None;
    }
    let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    let values = if !t.raw_data.is_empty() {
        t.raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        t.float_data.clone()
    };
    (values.len() == dims.iter().product::<usize>()).then_some((dims, values))
}

fn tensor_f32(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: DataType::Float as i32,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn tensor_i8(name: &str, dims: &[usize], values: &[i8]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: DataType::Int8 as i32,
        raw_data: values.iter().map(|&v| v as u8).collect(),
        ..Default::default()
    }
}

fn tensor_u8_scalar(name: &str, value: u8) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: vec![],
        data_type: DataType::Uint8 as i32,
        raw_data: vec![value],
        ..Default::default()
    }
}

fn node(op: &str, name: String, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name,
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn cast_to_float(name: String, input: &str, output: &str) -> NodeProto {
    let mut n = node("Cast", name, &[input], &[output]);
    n.attribute.push(AttributeProto {
        name: "to".into(),
        r#type: AttributeType::Int as i32,
        i: DataType::Float as i64,
        ..Default::default()
    });
    n
}

/// The op type of every node, in graph order.
pub fn op_types(model: &ModelProto) -> Vec<&str> {
    model
        .graph
        .iter()
        .flat_map(|g| g.node.iter().map(|n| n.op_type.as_str()))
        .collect()
}

/// Names every node that has no name (`{op}_{index}`, unique), and
/// refuses two nodes of one name: the rewrite, `--exclude` and the
/// per-layer report find nodes by name (a hand-built head has nameless
/// nodes). Returns how many nodes it named.
pub fn name_nodes(model: &mut ModelProto) -> Result<usize, GraphError> {
    let graph = model.graph.as_mut().expect("decoded");
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    for n in graph.node.iter().filter(|n| !n.name.is_empty()) {
        if !seen.insert(n.name.clone()) {
            return Err(GraphError::Unsupported {
                node: n.name.clone(),
                op: n.op_type.clone(),
                reason: "two nodes have this name; node names must be unique".into(),
            });
        }
    }
    let mut named = 0;
    for (i, n) in graph.node.iter_mut().enumerate() {
        if n.name.is_empty() {
            let mut name = format!("{}_{i}", n.op_type);
            while seen.contains(&name) {
                name.push('_');
            }
            seen.insert(name.clone());
            n.name = name;
            named += 1;
        }
    }
    Ok(named)
}

/// Finds every `MatMul`/`Gemm` with a constant float weight. Gemm must be
/// the plain `A·Bᵀ + C` or `A·B + C` form (alpha = beta = 1, no transA).
pub fn candidates(model: &ModelProto) -> Result<Vec<Candidate>, GraphError> {
    let graph = model.graph.as_ref().expect("decoded");
    let inits: HashMap<&str, &TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let mut out = Vec::new();
    for n in &graph.node {
        if n.op_type != "MatMul" && n.op_type != "Gemm" {
            continue;
        }
        let Some(w) = n.input.get(1).and_then(|w| inits.get(w.as_str())) else {
            continue;
        };
        let unsupported = |reason: &str| GraphError::Unsupported {
            node: n.name.clone(),
            op: n.op_type.clone(),
            reason: reason.into(),
        };
        if w.data_type != DataType::Float as i32 || w.dims.len() != 2 {
            return Err(unsupported("constant weight must be a 2-D float tensor"));
        }
        let (mut k, mut n_out) = (w.dims[0] as usize, w.dims[1] as usize);
        if n.op_type == "Gemm" {
            if attr_i(n, "transA", 0) != 0
                || attr_f(n, "alpha", 1.0) != 1.0
                || attr_f(n, "beta", 1.0) != 1.0
            {
                return Err(unsupported(
                    "only Gemm with alpha=1, beta=1, transA=0 is supported",
                ));
            }
            if attr_i(n, "transB", 0) != 0 {
                std::mem::swap(&mut k, &mut n_out);
            }
        }
        out.push(Candidate {
            node: n.name.clone(),
            op: n.op_type.clone(),
            input: n.input[0].clone(),
            output: n.output[0].clone(),
            k,
            n: n_out,
        });
    }
    if out.is_empty() {
        return Err(GraphError::NothingToQuantize);
    }
    Ok(out)
}

/// Rewrites `model` in place per `opts` and says what it did.
pub fn rewrite(
    model: &mut ModelProto,
    opts: &RewriteOptions,
) -> Result<RewriteSummary, GraphError> {
    let cands = candidates(model)?;
    for name in &opts.exclude {
        if !cands.iter().any(|c| &c.node == name) {
            return Err(GraphError::Unsupported {
                node: name.clone(),
                op: "?".into(),
                reason: "--exclude names no quantisable MatMul/Gemm".into(),
            });
        }
    }
    let graph = model.graph.as_mut().expect("decoded");
    let inits: BTreeMap<String, TensorProto> = graph
        .initializer
        .drain(..)
        .map(|t| (t.name.clone(), t))
        .collect();
    let mut new_inits: Vec<TensorProto> = Vec::new();
    let mut new_nodes: Vec<NodeProto> = Vec::with_capacity(graph.node.len() * 2);
    let mut summary = RewriteSummary::default();
    let by_node: HashMap<&str, &Candidate> = cands.iter().map(|c| (c.node.as_str(), c)).collect();

    for n in graph.node.drain(..) {
        if let Some(&c) = by_node.get(n.name.as_str()) {
            if opts.exclude.contains(&c.node) {
                summary.kept_fp32.push(c.clone());
                new_nodes.push(n);
                continue;
            }
            let w = &inits[&n.input[1]];
            let (_, mut values) = float_values(w).expect("checked in candidates");
            if n.op_type == "Gemm" && attr_i(&n, "transB", 0) != 0 {
                // Stored [N, K]: transpose to [K, N].
                let (rows, cols) = (c.n, c.k);
                let mut t = vec![0.0; values.len()];
                for r in 0..rows {
                    for col in 0..cols {
                        t[col * rows + r] = values[r * cols + col];
                    }
                }
                values = t;
            }
            let q = QuantizedMatrix::new(&values, c.k, c.n, opts.per_channel);
            let p = &c.node;
            let wq = format!("{p}.wq");
            let ws = format!("{p}.wscale");
            new_inits.push(tensor_i8(&wq, &[c.k, c.n], &q.values));
            new_inits.push(tensor_f32(&ws, &[q.scales.len()], &q.scales));
            let (xq, xs, xzp) = (format!("{p}.xq"), format!("{p}.xscale"), format!("{p}.xzp"));
            match opts.act_ranges.get(&c.node) {
                Some(r) => {
                    new_inits.push(tensor_f32(&xs, &[], &[r.scale]));
                    new_inits.push(tensor_u8_scalar(&xzp, r.zero_point));
                    new_nodes.push(node(
                        "QuantizeLinear",
                        format!("{p}.quantize"),
                        &[&c.input, &xs, &xzp],
                        &[&xq],
                    ));
                }
                None => new_nodes.push(node(
                    "DynamicQuantizeLinear",
                    format!("{p}.quantize"),
                    &[&c.input],
                    &[&xq, &xs, &xzp],
                )),
            }
            let acc = format!("{p}.acc");
            let accf = format!("{p}.accf");
            let scale = format!("{p}.scale");
            new_nodes.push(node(
                "MatMulInteger",
                format!("{p}.matmul"),
                &[&xq, &wq, &xzp],
                &[&acc],
            ));
            new_nodes.push(cast_to_float(format!("{p}.cast"), &acc, &accf));
            new_nodes.push(node("Mul", format!("{p}.scales"), &[&xs, &ws], &[&scale]));
            let bias = (n.op_type == "Gemm").then(|| n.input.get(2)).flatten();
            match bias {
                Some(b) if !b.is_empty() => {
                    let unbiased = format!("{p}.unbiased");
                    new_nodes.push(node(
                        "Mul",
                        format!("{p}.rescale"),
                        &[&accf, &scale],
                        &[&unbiased],
                    ));
                    new_nodes.push(node(
                        "Add",
                        format!("{p}.bias"),
                        &[&unbiased, b],
                        &[&c.output],
                    ));
                }
                _ => new_nodes.push(node(
                    "Mul",
                    format!("{p}.rescale"),
                    &[&accf, &scale],
                    &[&c.output],
                )),
            }
            summary.quantized.push(c.clone());
            continue;
        }
        if n.op_type == "Gather" && opts.embedding_min_values > 0 {
            if let Some((dims, values)) = inits.get(&n.input[0]).and_then(float_values) {
                if dims.len() == 2
                    && values.len() >= opts.embedding_min_values
                    && attr_i(&n, "axis", 0) == 0
                {
                    let (v, d) = (dims[0], dims[1]);
                    let (q, scales) = quantize_rows(&values, v, d);
                    let p = &n.name;
                    let (eq, es) = (format!("{p}.eq"), format!("{p}.escale"));
                    new_inits.push(tensor_i8(&eq, &[v, d], &q));
                    new_inits.push(tensor_f32(&es, &[v, 1], &scales));
                    let (rows, rowsf, rs) = (
                        format!("{p}.rows"),
                        format!("{p}.rowsf"),
                        format!("{p}.rowscale"),
                    );
                    let ids = &n.input[1];
                    new_nodes.push(node(
                        "Gather",
                        format!("{p}.gather_q"),
                        &[&eq, ids],
                        &[&rows],
                    ));
                    new_nodes.push(cast_to_float(format!("{p}.cast"), &rows, &rowsf));
                    new_nodes.push(node(
                        "Gather",
                        format!("{p}.gather_scale"),
                        &[&es, ids],
                        &[&rs],
                    ));
                    new_nodes.push(node(
                        "Mul",
                        format!("{p}.dequantize"),
                        &[&rowsf, &rs],
                        &[&n.output[0]],
                    ));
                    summary.embeddings.push((n.name.clone(), v, d));
                    continue;
                }
            }
        }
        new_nodes.push(n);
    }
    graph.node = new_nodes;

    // Keep the initializers still read by some node, in a stable order.
    let used: HashSet<&str> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .chain(graph.output.iter().map(|o| o.name.as_str()))
        .collect();
    let mut kept: Vec<TensorProto> = inits
        .into_values()
        .filter(|t| used.contains(t.name.as_str()))
        .collect();
    kept.extend(new_inits);
    graph.initializer = kept;
    // Shapes of value_info may no longer hold; tract infers them anyway.
    graph.value_info.clear();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::{OperatorSetIdProto, ValueInfoProto};
    use tract_onnx::prelude::*;

    fn value(name: &str) -> ValueInfoProto {
        use tract_onnx::pb::{type_proto, TypeProto};
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: DataType::Float as i32,
                    shape: None,
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// y = Gemm(MatMul(x, W1), W2ᵀ, b): one of each form the rewrite handles.
    fn toy_model(w1: &[f32], w2: &[f32], b: &[f32]) -> ModelProto {
        let mut gemm = node("Gemm", "gemm".into(), &["h", "w2", "b"], &["y"]);
        gemm.attribute.push(AttributeProto {
            name: "transB".into(),
            r#type: AttributeType::Int as i32,
            i: 1,
            ..Default::default()
        });
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(tract_onnx::pb::GraphProto {
                name: "toy".into(),
                node: vec![node("MatMul", "mm".into(), &["x", "w1"], &["h"]), gemm],
                initializer: vec![
                    tensor_f32("w1", &[4, 6], w1),
                    tensor_f32("w2", &[3, 6], w2),
                    tensor_f32("b", &[3], b),
                ],
                input: vec![value("x")],
                output: vec![value("y")],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn run(model: &ModelProto, x: &[f32]) -> Vec<f32> {
        let bytes = encode(model);
        let m = tract_onnx::onnx()
            .model_for_read(&mut &*bytes)
            .unwrap()
            .with_input_fact(0, f32::fact([2, 4]).into())
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap();
        let out = m
            .run(tvec![Tensor::from_shape(&[2, 4], x).unwrap().into_tvalue()])
            .unwrap();
        let view = out[0].try_as_plain_ram().unwrap();
        view.as_slice::<f32>().unwrap().to_vec()
    }

    fn wave(n: usize, k: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 + 1.0) * k).sin()).collect()
    }

    #[test]
    fn rewritten_graph_computes_the_same_function() {
        let (w1, w2, b) = (wave(24, 0.7), wave(18, 1.3), wave(3, 0.4));
        let x = wave(8, 2.1);
        let fp32 = toy_model(&w1, &w2, &b);
        let exact = run(&fp32, &x);
        for per_channel in [true, false] {
            for act in [false, true] {
                let mut q = fp32.clone();
                let mut opts = RewriteOptions {
                    per_channel,
                    ..Default::default()
                };
                if act {
                    // Static ranges covering x and h.
                    for n in ["mm", "gemm"] {
                        let (scale, zero_point) = crate::qmath::asymmetric_u8_params(-4.0, 4.0);
                        opts.act_ranges
                            .insert(n.into(), ActRange { scale, zero_point });
                    }
                }
                let s = rewrite(&mut q, &opts).unwrap();
                assert_eq!(s.quantized.len(), 2);
                let ops = op_types(&q);
                assert_eq!(
                    ops.iter().filter(|o| **o == "MatMulInteger").count(),
                    2,
                    "{ops:?}"
                );
                assert!(
                    !ops.contains(&"MatMul") && !ops.contains(&"Gemm"),
                    "{ops:?}"
                );
                let approx = run(&q, &x);
                let db = crate::qmath::sqnr_db(&exact, &approx);
                assert!(
                    db > 25.0,
                    "per_channel {per_channel} static {act}: {db} dB {exact:?} {approx:?}"
                );
            }
        }
    }

    #[test]
    fn nameless_nodes_are_named_and_quantised() {
        let (w1, w2, b) = (wave(24, 0.7), wave(18, 1.3), wave(3, 0.4));
        let x = wave(8, 2.1);
        let fp32 = toy_model(&w1, &w2, &b);
        let exact = run(&fp32, &x);
        let mut q = fp32.clone();
        for n in &mut q.graph.as_mut().unwrap().node {
            n.name.clear();
        }
        assert_eq!(name_nodes(&mut q).unwrap(), 2);
        let names: Vec<String> = q
            .graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .map(|n| n.name.clone())
            .collect();
        assert_eq!(names, ["MatMul_0", "Gemm_1"]);
        let s = rewrite(&mut q, &RewriteOptions::default()).unwrap();
        assert_eq!(s.quantized.len(), 2);
        assert!(crate::qmath::sqnr_db(&exact, &run(&q, &x)) > 25.0);
        // Two nodes of one name are refused, naming it.
        let mut d = fp32.clone();
        d.graph.as_mut().unwrap().node[1].name = "mm".into();
        let e = name_nodes(&mut d).unwrap_err().to_string();
        assert!(e.contains("\"mm\"") && e.contains("unique"), "{e}");
    }

    #[test]
    fn exclude_and_nothing_to_quantize() {
        let (w1, w2, b) = (wave(24, 0.7), wave(18, 1.3), wave(3, 0.4));
        let mut q = toy_model(&w1, &w2, &b);
        let opts = RewriteOptions {
            exclude: ["gemm".to_string()].into(),
            per_channel: true,
            ..Default::default()
        };
        let s = rewrite(&mut q, &opts).unwrap();
        assert_eq!(s.quantized.len(), 1);
        assert_eq!(s.kept_fp32[0].node, "gemm");
        // Both operands are graph inputs: nothing has a constant weight.
        let mut m = toy_model(&w1, &w2, &b);
        let g = m.graph.as_mut().unwrap();
        g.initializer.clear();
        assert!(matches!(candidates(&m), Err(GraphError::NothingToQuantize)));
    }

    #[test]
    fn refuses_bad_models_naming_the_node() {
        assert!(matches!(
            decode(b"definitely not protobuf \xff\xff"),
            Err(GraphError::NotOnnx(_))
        ));
        let (w1, w2, b) = (wave(24, 0.7), wave(18, 1.3), wave(3, 0.4));
        let mut m = toy_model(&w1, &w2, &b);
        m.opset_import[0].version = 9;
        assert!(matches!(decode(&encode(&m)), Err(GraphError::Opset(9))));
        let mut m = toy_model(&w1, &w2, &b);
        m.graph.as_mut().unwrap().node[1]
            .attribute
            .push(AttributeProto {
                name: "alpha".into(),
                r#type: AttributeType::Float as i32,
                f: 2.0,
                ..Default::default()
            });
        let e = candidates(&m).unwrap_err().to_string();
        assert!(e.contains("\"gemm\"") && e.contains("alpha"), "{e}");
    }
}
