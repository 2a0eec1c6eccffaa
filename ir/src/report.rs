//! Model statistics for `pgc compile`'s report: parameters and bytes per storage class, FLOPs.
//!
//! Conventions:
//! - **Bytes** are those of the raw (uncompressed) artifact: per parameter
//!   [`StorageClass::raw_bytes`] (integer classes packed at `bits` per value,
//!   e.g. int4 two per byte, plus one f16 scale per row; f16 2 bytes; f32 4).
//!   `raw_artifact_bytes` is their sum (no container overhead, no compression).
//! - **FLOPs** count only matrix products, as multiply-adds times two:
//!   `Linear`/`MatMul` `x[M, K] w[N, K]` cost `2*M*N*K` (M = all leading axes);
//!   `OuterSum` likewise; `CausalAttention` of `q[B, H, T, d]` costs
//!   `QK^T + PV = 2 * (2*B*H*T*T*d)`, halved for the causal mask (exactly
//!   `T*T/2` pairs, not `T(T+1)/2`), i.e. `2*B*H*T*T*d`. Element-wise ops,
//!   reductions, gathers, softmax and rotary are not counted.
//! - **Per token** divides the total by the number of tokens: the element
//!   count of the `input_ids` input (B*T), or of the first i32 input.

use crate::graph::Graph;
use crate::op::Op;
use crate::types::DType;
use std::collections::BTreeMap;

/// Parameters and raw bytes of one storage class.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    pub tensors: u64,
    pub params: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub params: u64,
    /// Keyed by [`crate::StorageClass::label`] (`int4`, `int6`, `int8`, `f16`, `f32`).
    pub storage: BTreeMap<String, ClassStats>,
    pub raw_artifact_bytes: u64,
    /// u128: a large `--set` can exceed 2^64 and a count must stay exact.
    pub forward_flops: u128,
    pub tokens: u64,
    pub forward_flops_per_token: u128,
    pub constants: Vec<(String, f64)>,
}

/// FLOPs of one node under the convention above (0 for uncounted ops), in u128:
/// exact for every shape the frontend accepts (at most 2^40 elements a tensor).
pub fn node_flops(g: &Graph, i: usize) -> u128 {
    let n = &g.nodes[i];
    let arg = |k: usize| &g.nodes[n.args[k].index()].ty;
    match &n.op {
        Op::Linear | Op::MatMul => {
            let x = arg(0);
            let w = arg(1);
            let k = *x.shape.last().unwrap_or(&1) as u128;
            let m = (x.numel() as u128).checked_div(k).unwrap_or(0);
            let nn = if matches!(n.op, Op::Linear) { w.shape[0] } else { w.shape[1] } as u128;
            2 * m * nn * k
        }
        Op::OuterSum => {
            let dy = arg(0);
            let x = arg(1);
            let nn = *dy.shape.last().unwrap_or(&1) as u128;
            let m = (dy.numel() as u128).checked_div(nn).unwrap_or(0);
            2 * m * nn * *x.shape.last().unwrap_or(&1) as u128
        }
        Op::CausalAttention { .. } => {
            let q = arg(0);
            if q.rank() != 4 {
                return 0;
            }
            let (b, h, t, d) = (q.shape[0] as u128, q.shape[1] as u128, q.shape[2] as u128, q.shape[3] as u128);
            2 * b * h * t * t * d
        }
        _ => 0,
    }
}

impl Report {
    pub fn from_graph(g: &Graph) -> Report {
        let mut storage: BTreeMap<String, ClassStats> = BTreeMap::new();
        for p in &g.params {
            let s = storage.entry(p.quant.storage.label()).or_default();
            s.tensors += 1;
            s.params += p.numel() as u64;
            s.bytes += p.quant.storage.raw_bytes(&p.shape);
        }
        let forward_flops: u128 = (0..g.nodes.len()).map(|i| node_flops(g, i)).sum();
        let tokens = g
            .nodes
            .iter()
            .find(|n| matches!(&n.op, Op::Input { name, .. } if name == "input_ids"))
            .or_else(|| g.nodes.iter().find(|n| matches!(&n.op, Op::Input { ty, .. } if ty.dtype == DType::I32)))
            .map(|n| n.ty.numel() as u64)
            .unwrap_or(1)
            .max(1);
        Report {
            params: g.param_count(),
            raw_artifact_bytes: storage.values().map(|s| s.bytes).sum(),
            storage,
            forward_flops,
            tokens,
            forward_flops_per_token: forward_flops / tokens as u128,
            constants: g.constants.clone(),
        }
    }

    /// The report as JSON: `params`, `storage` (per class `tensors`, `params`,
    /// `bytes`), `raw_artifact_bytes`, `forward_flops_per_token`,
    /// `forward_flops`, `tokens`, `constants` (integral values as integers).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::{json, Map, Value};
        let mut st = Map::new();
        for (k, s) in &self.storage {
            st.insert(k.clone(), json!({"tensors": s.tensors, "params": s.params, "bytes": s.bytes}));
        }
        let mut cs = Map::new();
        for (k, v) in &self.constants {
            let val = if v.fract() == 0.0 && v.abs() < 9.0e15 { json!(*v as i64) } else { json!(v) };
            cs.insert(k.clone(), val);
        }
        json!({
            "params": self.params,
            "storage": Value::Object(st),
            "raw_artifact_bytes": self.raw_artifact_bytes,
            "forward_flops_per_token": count_json(self.forward_flops_per_token),
            "forward_flops": count_json(self.forward_flops),
            "tokens": self.tokens,
            "constants": Value::Object(cs),
        })
    }

    /// A short human summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!("parameters: {}\n", group(self.params)));
        s.push_str("storage:\n");
        for (k, c) in &self.storage {
            s.push_str(&format!(
                "  {:<6} {:>4} tensors {:>14} params {:>14} bytes\n",
                k,
                c.tensors,
                group(c.params),
                group(c.bytes)
            ));
        }
        s.push_str(&format!("raw artifact bytes (before compression): {}\n", group(self.raw_artifact_bytes)));
        s.push_str(&format!("forward FLOPs per token: {}\n", group(self.forward_flops_per_token)));
        s
    }
}

/// A count as a JSON number: exact up to 2^64, beyond as the nearest f64
/// (JSON readers hold no wider integers).
pub fn count_json(n: u128) -> serde_json::Value {
    match u64::try_from(n) {
        Ok(n) => serde_json::Value::from(n),
        Err(_) => serde_json::Value::from(n as f64),
    }
}

/// `27878489` -> `27,878,489`.
fn group(n: impl Into<u128>) -> String {
    let n: u128 = n.into();
    let d = n.to_string();
    let mut out = String::new();
    for (i, c) in d.chars().enumerate() {
        if i > 0 && (d.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Mode, ParamInfo};
    use crate::quant::{Init, Qat, QuantSpec, StorageClass};
    use crate::types::TensorType;

    #[test]
    fn counts_bytes_and_flops() {
        let mut g = Graph::new(Mode::Eval);
        let q = |storage| QuantSpec { storage, qat: Qat::None, prune: 0.0 };
        g.add_param(ParamInfo { name: "w".into(), shape: vec![6, 4], quant: q(StorageClass::Int { bits: 4, clip_percentile: None }), init: Init::Zeros, origin: None }).unwrap();
        g.add_param(ParamInfo { name: "s".into(), shape: vec![4], quant: q(StorageClass::F16), init: Init::Zeros, origin: None }).unwrap();
        let ids = g.push(Op::Input { name: "input_ids".into(), ty: TensorType::i32(vec![2, 3]) }, &[], None).unwrap();
        let _ = ids;
        let x = g.push(Op::Input { name: "x".into(), ty: TensorType::f32(vec![2, 3, 4]) }, &[], None).unwrap();
        let w = g.push(Op::Param { id: g.param_id("w").expect("declared parameter") }, &[], None).unwrap();
        g.push(Op::Linear, &[x, w], None).unwrap();
        let r = Report::from_graph(&g);
        assert_eq!(r.params, 28);
        assert_eq!(r.storage["int4"].bytes, 12 + 12);
        assert_eq!(r.storage["f16"].bytes, 8);
        assert_eq!(r.raw_artifact_bytes, 32);
        assert_eq!(r.forward_flops, 2 * 6 * 6 * 4);
        assert_eq!(r.forward_flops_per_token, 2 * 6 * 4);
        assert_eq!(group(27878489u64), "27,878,489");
    }
}
