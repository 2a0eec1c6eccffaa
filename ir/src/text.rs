//! The readable text form of a graph: printed and parsed back.
//!
//! ```text
//! graph train {
//!   const dim = 32.0
//!   param tok_emb.weight : f32[64,32] storage=f16 qat=none prune=0.0 init=normal(0.005) @12:3
//!   %0 = input name="input_ids" : i32[2,16]
//!   %1 = param name="tok_emb.weight" : f32[64,32]
//!   %2 = gather %1, %0 : f32[2,16,32] @40:7/blocks.0.attn
//!   %3 = mean axis=2 keepdim=true %2 : f32[2,16,1]
//!   output loss = %9
//! }
//! ```
//!
//! A node line is `%ID = MNEMONIC [key=value]... [%arg, ...] : TYPE [@LINE:COL[/SCOPE]]`.
//! Attribute values are JSON scalars or arrays; they are the op's serde fields,
//! so every op prints and parses through one generic path (no per-op code
//! except the mnemonics of unary, binary and reduce functions).

use crate::graph::{Graph, Mode, Node, Origin, ParamInfo, ValueId};
use crate::op::{Op, UnaryFn};
use crate::quant::{Init, Qat, QuantSpec, StorageClass};
use crate::types::{DType, TensorType};
use serde_json::{Map, Value};
use std::fmt::Write;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// Print a graph in the text form.
pub fn print(g: &Graph) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "graph {} {{", g.mode.name());
    for (name, v) in &g.constants {
        let _ = writeln!(s, "  const {name} = {v:?}");
    }
    for p in &g.params {
        let _ = write!(
            s,
            "  param {} : {} storage={} qat={} prune={:?} init={}",
            p.name,
            TensorType::f32(p.shape.clone()),
            p.quant.storage,
            p.quant.qat,
            p.quant.prune,
            p.init
        );
        write_origin(&mut s, &p.origin);
        s.push('\n');
    }
    for i in 0..g.nodes.len() {
        let _ = writeln!(s, "  {}", print_node(g, i));
    }
    for (name, v) in &g.outputs {
        let _ = writeln!(s, "  output {name} = {v}");
    }
    s.push_str("}\n");
    s
}

/// One node line, `%ID = MNEMONIC [key=value]... [%arg, ...] : TYPE [@LINE:COL[/SCOPE]]`
/// (no indent, no newline); the plan's text form lists kernel ops with it.
pub fn print_node(g: &Graph, i: usize) -> String {
    let n = &g.nodes[i];
    let mut s = format!("%{i} = {}", n.op.name());
    for (k, v) in attributes(g, &n.op) {
        let _ = write!(s, " {k}={v}");
    }
    for (j, a) in n.args.iter().enumerate() {
        let _ = write!(s, "{}{a}", if j == 0 { " " } else { ", " });
    }
    let _ = write!(s, " : {}", n.ty);
    write_origin(&mut s, &n.origin);
    s
}

fn write_origin(s: &mut String, o: &Option<Origin>) {
    if let Some(o) = o {
        let _ = write!(s, " @{}:{}", o.line, o.col);
        if !o.scope.is_empty() {
            let _ = write!(s, "/{}", o.scope);
        }
    }
}

/// Ops whose mnemonic selects a function (`neg`, `maximum`, `mean`) carry it in
/// the serde field `f`; every other field is an attribute. A parameter is
/// written by name (`name="w"`), not by its index in the graph.
fn attributes(g: &Graph, op: &Op) -> Vec<(String, String)> {
    if let Op::Param { id } = op {
        return match g.params.get(id.index()) {
            Some(p) => vec![("name".into(), Value::String(p.name.clone()).to_string())],
            None => vec![("id".into(), id.0.to_string())],
        };
    }
    let Ok(Value::Object(map)) = serde_json::to_value(op) else { return Vec::new() };
    map.into_iter()
        .filter(|(k, _)| k != "op" && k != "f" && !(k == "ty" && matches!(op, Op::Input { .. })))
        .map(|(k, v)| (k, v.to_string()))
        .collect()
}

/// Serde tag and function field for a mnemonic.
fn decode_mnemonic(m: &str) -> Option<(&'static str, Option<&'static str>)> {
    const BINARY: [(&str, &str); 7] =
        [("add", "add"), ("sub", "sub"), ("mul", "mul"), ("div", "div"), ("maximum", "max"), ("minimum", "min"), ("eq", "eq")];
    const REDUCE: [&str; 3] = ["sum", "mean", "max"];
    const PLAIN: [&str; 23] = [
        "input", "param", "scalar", "leaky_relu", "leaky_step", "reshape", "permute", "broadcast", "sum_to", "index",
        "unindex", "linear", "outer_sum", "gather", "scatter_add", "bigram_hash", "shift", "rope",
        "causal_attention", "causal_attention_grad", "fake_quant", "cross_entropy", "cross_entropy_grad",
    ];
    // A unary function's serde name is its mnemonic.
    if let Some(u) = UnaryFn::from_name(m) {
        return Some(("unary", Some(u.name())));
    }
    if let Some((_, f)) = BINARY.iter().find(|(b, _)| *b == m) {
        return Some(("binary", Some(f)));
    }
    if let Some(r) = REDUCE.iter().find(|r| **r == m) {
        return Some(("reduce", Some(r)));
    }
    // The serde tag of MatMul is `mat_mul`; its mnemonic is `matmul`.
    if m == "matmul" {
        return Some(("mat_mul", None));
    }
    PLAIN.iter().find(|p| **p == m).map(|p| (*p, None))
}

/// Parse the text form back into a graph. The result is not verified; call
/// [`crate::verify`] on it.
pub fn parse(text: &str) -> Result<Graph, ParseError> {
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())).filter(|(_, l)| !l.is_empty() && !l.starts_with("//"));
    let (ln, header) = lines.next().ok_or(ParseError { line: 1, message: "empty input: expected `graph train {`".into() })?;
    let mode = match header.strip_prefix("graph").map(str::trim).and_then(|r| r.strip_suffix('{')).map(str::trim) {
        Some("train") => Mode::Train,
        Some("eval") => Mode::Eval,
        _ => return Err(ParseError { line: ln, message: format!("expected `graph train {{` or `graph eval {{`, got `{header}`") }),
    };
    let mut g = Graph::new(mode);
    let mut closed = false;
    for (ln, line) in lines {
        let e = |m: String| ParseError { line: ln, message: m };
        if closed {
            return Err(e(format!("text after the closing `}}`: `{line}`")));
        }
        if line == "}" {
            closed = true;
        } else if let Some(rest) = line.strip_prefix("const ") {
            let (name, v) = rest.split_once('=').ok_or_else(|| e("expected `const NAME = VALUE`".into()))?;
            let v: f64 = v.trim().parse().map_err(|_| e(format!("bad constant value `{}`", v.trim())))?;
            g.constants.push((name.trim().to_string(), v));
        } else if let Some(rest) = line.strip_prefix("param ") {
            g.params.push(parse_param(rest).map_err(e)?);
        } else if let Some(rest) = line.strip_prefix("output ") {
            let (name, v) = rest.split_once('=').ok_or_else(|| e("expected `output NAME = %ID`".into()))?;
            g.outputs.push((name.trim().to_string(), parse_value_id(v.trim()).map_err(e)?));
        } else if line.starts_with('%') {
            let (id, node) = parse_node(line, &g.params).map_err(e)?;
            if id != g.nodes.len() {
                return Err(e(format!("node %{id} out of order: expected %{}", g.nodes.len())));
            }
            g.nodes.push(node);
        } else {
            return Err(e(format!("unexpected line `{line}`")));
        }
    }
    if !closed {
        return Err(ParseError { line: text.lines().count(), message: "missing closing `}`".into() });
    }
    Ok(g)
}

/// Split at whitespace outside brackets and string literals.
fn words(s: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let (mut depth, mut in_str, mut escaped, mut start) = (0i32, false, false, None);
    for (i, c) in s.char_indices() {
        if in_str {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '[' | '(' | '{' => depth += 1,
            ']' | ')' | '}' => depth -= 1,
            _ => {}
        }
        if c.is_whitespace() && depth == 0 {
            if let Some(st) = start.take() {
                out.push(&s[st..i]);
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if in_str || depth != 0 {
        return Err(format!("unbalanced brackets or quotes in `{s}`"));
    }
    if let Some(st) = start {
        out.push(&s[st..]);
    }
    Ok(out)
}

fn parse_value_id(s: &str) -> Result<ValueId, String> {
    s.strip_prefix('%').and_then(|n| n.parse::<u32>().ok()).map(ValueId).ok_or_else(|| format!("expected a value like `%3`, got `{s}`"))
}

fn parse_type(s: &str) -> Result<TensorType, String> {
    let bad = || format!("expected a type like `f32[2,16]`, got `{s}`");
    let (dt, rest) = s.split_once('[').ok_or_else(bad)?;
    let dtype = DType::parse(dt).ok_or_else(bad)?;
    let dims = rest.strip_suffix(']').ok_or_else(bad)?;
    let shape = if dims.trim().is_empty() {
        Vec::new()
    } else {
        dims.split(',').map(|d| d.trim().parse::<usize>().map_err(|_| bad())).collect::<Result<_, _>>()?
    };
    Ok(TensorType::new(dtype, shape))
}

fn parse_origin(s: &str) -> Result<Origin, String> {
    let bad = || format!("expected a location like `@3:5` or `@3:5/blocks.0`, got `{s}`");
    let body = s.strip_prefix('@').ok_or_else(bad)?;
    let (pos, scope) = body.split_once('/').unwrap_or((body, ""));
    let (l, c) = pos.split_once(':').ok_or_else(bad)?;
    Ok(Origin { line: l.parse().map_err(|_| bad())?, col: c.parse().map_err(|_| bad())?, scope: scope.to_string() })
}

fn parse_node(line: &str, params: &[ParamInfo]) -> Result<(usize, Node), String> {
    let w = words(line)?;
    if w.len() < 5 || w[1] != "=" {
        return Err(format!("expected `%ID = OP ... : TYPE`, got `{line}`"));
    }
    let id = parse_value_id(w[0])?.index();
    let (tag, f) = decode_mnemonic(w[2]).ok_or_else(|| format!("unknown op `{}`", w[2]))?;
    let colon = w.iter().position(|x| *x == ":").ok_or_else(|| "missing `: TYPE`".to_string())?;
    let mut fields = Map::new();
    fields.insert("op".into(), Value::String(tag.into()));
    if let Some(f) = f {
        fields.insert("f".into(), Value::String(f.into()));
    }
    let mut args = Vec::new();
    for item in &w[3..colon] {
        if item.starts_with('%') {
            args.push(parse_value_id(item.trim_end_matches(','))?);
        } else if let Some((k, v)) = item.split_once('=') {
            let v: Value = serde_json::from_str(v).map_err(|e| format!("attribute `{k}`: {e}"))?;
            fields.insert(k.to_string(), v);
        } else {
            return Err(format!("expected `key=value` or `%ID`, got `{item}`"));
        }
    }
    let ty = parse_type(w.get(colon + 1).ok_or("missing type after `:`")?)?;
    if tag == "input" {
        fields.insert("ty".into(), serde_json::to_value(&ty).map_err(|e| e.to_string())?);
    }
    if tag == "param" {
        // By name, resolved against the `param` lines above (`id=N`, the
        // index itself, is accepted too: the printer writes it for an id out
        // of range, which the verifier reports).
        if let Some(name) = fields.remove("name") {
            let name = name.as_str().ok_or("param: `name` must be a string")?;
            let i = params.iter().position(|p| p.name == name).ok_or_else(|| format!("param: no parameter `{name}` declared above"))?;
            fields.insert("id".into(), Value::from(i as u32));
        }
    }
    let op: Op = serde_json::from_value(Value::Object(fields)).map_err(|e| format!("op `{}`: {e}", w[2]))?;
    let origin = match w.get(colon + 2) {
        Some(o) => Some(parse_origin(o)?),
        None => None,
    };
    if let Some(extra) = w.get(colon + 3) {
        return Err(format!("unexpected `{extra}` after the type and location"));
    }
    Ok((id, Node { op, args, ty, origin }))
}

fn parse_param(rest: &str) -> Result<ParamInfo, String> {
    let w = words(rest)?;
    if w.len() < 3 || w[1] != ":" {
        return Err(format!("expected `param NAME : TYPE key=value...`, got `param {rest}`"));
    }
    let ty = parse_type(w[2])?;
    let mut p = ParamInfo { name: w[0].to_string(), shape: ty.shape, quant: QuantSpec::default(), init: Init::Zeros, origin: None };
    for item in &w[3..] {
        if item.starts_with('@') {
            p.origin = Some(parse_origin(item)?);
            continue;
        }
        let (k, v) = item.split_once('=').ok_or_else(|| format!("expected `key=value`, got `{item}`"))?;
        match k {
            "storage" => p.quant.storage = parse_storage(v)?,
            "qat" => p.quant.qat = parse_qat(v)?,
            "prune" => p.quant.prune = v.parse().map_err(|_| format!("bad prune fraction `{v}`"))?,
            "init" => p.init = parse_init(v)?,
            _ => return Err(format!("unknown parameter attribute `{k}`")),
        }
    }
    Ok(p)
}

fn parse_storage(v: &str) -> Result<StorageClass, String> {
    match v {
        "f16" => return Ok(StorageClass::F16),
        "f32" => return Ok(StorageClass::F32),
        _ => {}
    }
    let bad = || format!("bad storage class `{v}` (expected f16, f32, intN or intN(clip=P))");
    let body = v.strip_prefix("int").ok_or_else(bad)?;
    let (bits, clip) = match body.split_once('(') {
        Some((b, c)) => {
            let c = c.strip_prefix("clip=").and_then(|c| c.strip_suffix(')')).ok_or_else(bad)?;
            (b, Some(c.parse::<f64>().map_err(|_| bad())?))
        }
        None => (body, None),
    };
    Ok(StorageClass::Int { bits: bits.parse().map_err(|_| bad())?, clip_percentile: clip })
}

fn parse_qat(v: &str) -> Result<Qat, String> {
    if v == "none" {
        return Ok(Qat::None);
    }
    v.strip_prefix("ste").and_then(|b| b.parse().ok()).map(|bits| Qat::Ste { bits }).ok_or_else(|| format!("bad qat `{v}` (expected none or steN)"))
}

fn parse_init(v: &str) -> Result<Init, String> {
    if v == "zeros" {
        return Ok(Init::Zeros);
    }
    let bad = || format!("bad init `{v}` (expected zeros, const(v), rows(a,b,..), normal(std) or orthogonal(gain))");
    let (kind, args) = v.split_once('(').ok_or_else(bad)?;
    let args = args.strip_suffix(')').ok_or_else(bad)?;
    let nums: Vec<f64> = args.split(',').map(|a| a.trim().parse::<f64>().map_err(|_| bad())).collect::<Result<_, _>>()?;
    let one = || if nums.len() == 1 { Ok(nums[0]) } else { Err(bad()) };
    Ok(match kind {
        "const" => Init::Constant { value: one()? },
        "rows" => Init::Rows { values: nums.clone() },
        "normal" => Init::Normal { std: one()? },
        "orthogonal" => Init::Orthogonal { gain: one()? },
        "uniform" => Init::Uniform { bound: one()? },
        _ => return Err(bad()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::{BinaryFn, ReduceFn, UnaryFn};

    fn sample() -> Graph {
        let mut g = Graph::new(Mode::Train);
        g.constants.push(("norm_eps".into(), 1.1920928955078125e-07));
        let pid = g.add_param(ParamInfo {
            name: "tok_emb.weight".into(),
            shape: vec![8, 4],
            quant: QuantSpec { storage: StorageClass::Int { bits: 8, clip_percentile: Some(99.99984) }, qat: Qat::Ste { bits: 4 }, prune: 0.05 },
            init: Init::Rows { values: vec![1.0, 0.0] },
            origin: Some(Origin { line: 3, col: 1, scope: "blocks.0".into() }),
        })
        .unwrap();
        let at = |l| Some(Origin { line: l, col: 2, scope: String::new() });
        let ids = g.push(Op::Input { name: "input_ids".into(), ty: TensorType::i32(vec![2, 3]) }, &[], None).unwrap();
        let w = g.push(Op::Param { id: pid }, &[], at(4)).unwrap();
        let wq = g.push(Op::FakeQuant { bits: 4 }, &[w], at(4)).unwrap();
        let x = g.push(Op::Gather, &[wq, ids], at(5)).unwrap();
        let s = g.push(Op::Scalar { value: 0.1 }, &[], None).unwrap();
        let y = g.push(Op::Binary { f: BinaryFn::Max }, &[x, s], None).unwrap();
        let r = g.push(Op::Reduce { f: ReduceFn::Max, axis: 2, keepdim: true }, &[y], None).unwrap();
        let t = g.push(Op::Unary { f: UnaryFn::Rsqrt }, &[r], None).unwrap();
        let p = g.push(Op::Reshape { shape: vec![6, 1] }, &[t], None).unwrap();
        g.outputs.push(("out".into(), p));
        g
    }

    #[test]
    fn round_trips() {
        let g = sample();
        crate::verify(&g).unwrap();
        let text = print(&g);
        let back = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, g, "{text}");
        assert_eq!(print(&back), text);
    }

    /// Every op's mnemonic decodes to its own serde tag and function (the
    /// text form of a backward graph once failed to parse on `matmul`).
    #[test]
    fn mnemonics_decode_to_their_ops() {
        use crate::op::AttnPart;
        let mut ops = vec![
            Op::Input { name: "x".into(), ty: TensorType::f32(vec![1]) },
            Op::Param { id: crate::op::ParamId(0) },
            Op::Scalar { value: 1.0 },
            Op::LeakyRelu { slope: 0.5 },
            Op::LeakyStep { slope: 0.5 },
            Op::Reshape { shape: vec![1] },
            Op::Permute { perm: vec![0] },
            Op::Broadcast { shape: vec![1] },
            Op::SumTo { shape: vec![1] },
            Op::Index { axis: 0, index: 0 },
            Op::Unindex { axis: 0, index: 0, size: 1 },
            Op::Linear,
            Op::MatMul,
            Op::OuterSum,
            Op::Gather,
            Op::ScatterAdd { rows: 1 },
            Op::BigramHash { buckets: 2 },
            Op::Shift { axis: 0, offset: 1 },
            Op::Rope { base: 1e4, inverse: false },
            Op::CausalAttention { scale: 1.0 },
            Op::CausalAttentionGrad { scale: 1.0, wrt: AttnPart::K },
            Op::FakeQuant { bits: 4 },
            Op::CrossEntropy,
            Op::CrossEntropyGrad,
        ];
        use UnaryFn::*;
        ops.extend([Neg, Abs, Relu, Step, Square, Sqrt, Rsqrt, Recip, Sigmoid, Tanh, Exp, Log].map(|f| Op::Unary { f }));
        use BinaryFn::*;
        ops.extend([Add, Sub, Mul, Div, Max, Min, Eq].map(|f| Op::Binary { f }));
        ops.extend([ReduceFn::Sum, ReduceFn::Mean, ReduceFn::Max].map(|f| Op::Reduce { f, axis: 0, keepdim: false }));
        for op in ops {
            let Value::Object(fields) = serde_json::to_value(&op).unwrap() else { panic!("{op:?}") };
            let (tag, f) = decode_mnemonic(op.name()).unwrap_or_else(|| panic!("`{}` does not decode", op.name()));
            assert_eq!(Some(&Value::String(tag.into())), fields.get("op"), "{op:?}");
            assert_eq!(f.map(|f| Value::String(f.into())).as_ref(), fields.get("f"), "{op:?}");
        }
    }

    #[test]
    fn reports_bad_lines() {
        let text = print(&sample());
        let broken = text.replace("reshape", "reshap");
        let e = parse(&broken).unwrap_err();
        assert!(e.message.contains("unknown op `reshap`"), "{e}");
        assert_eq!(e.line, broken.lines().position(|l| l.contains("reshap")).unwrap() + 1);
        assert!(parse("graph train {\n").is_err());
        assert!(parse("graph x {\n}").is_err());
        assert!(parse(&text.replace("%4 =", "%9 =")).unwrap_err().message.contains("out of order"));
    }
}
