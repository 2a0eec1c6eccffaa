//! Lowering: evaluate the program at compile time and build the IR graph.
//!
//! Constants, loops, conditionals, lists and function calls are evaluated
//! here (functions are inlined, loops unrolled); every tensor operation
//! becomes a node of the graph with the `Origin` of its source expression.
//! Resource limits keep any input from running away: loop trip counts,
//! evaluation steps, call depth, node count and tensor sizes are capped.

use crate::ast::*;
use crate::diag::{line_col, Diagnostic, Span};
use pgc_ir::{
    BinaryFn, DType, Graph, Init, Mode, Op, Origin, ParamInfo, Qat, QuantSpec, ReduceFn, StorageClass, TensorType,
    UnaryFn, ValueId,
};
use std::collections::HashMap;

/// Caps that turn runaway programs into errors.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Trip count of one `for` loop.
    pub max_loop: i64,
    /// Expression evaluations in total.
    pub max_steps: u64,
    /// Nested function calls.
    pub max_calls: usize,
    /// Nodes in the graph.
    pub max_nodes: usize,
    /// Declared parameters.
    pub max_params: usize,
    /// Elements of one tensor.
    pub max_numel: u64,
    /// Rank of one tensor.
    pub max_rank: usize,
    /// Elements of one compile-time list.
    pub max_list: usize,
    /// Nesting of evaluation (expressions inside calls inside expressions...).
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_loop: 100_000,
            max_steps: 5_000_000,
            max_calls: 64,
            max_nodes: 1_000_000,
            max_params: 10_000,
            max_numel: 1 << 40,
            max_rank: 8,
            max_list: 100_000,
            max_depth: 2_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Tensor(ValueId),
    List(Vec<Value>),
    Storage(StorageClass),
    Qat(Qat),
    Init(Init),
    Unit,
}

type R<T> = Result<T, Diagnostic>;

/// Names that stand for values without being declared.
const BUILTIN_VALUES: &[&str] = &["f16", "f32", "int2", "int3", "int4", "int5", "int6", "int7", "int8", "none", "zeros", "training", "pi"];

/// Builtin functions other than the unary element-wise ones (those are
/// `UnaryFn::ALL` by name, see [`builtin_functions`]).
const OTHER_BUILTINS: &[&str] = &[
    "bigram_hash", "broadcast", "causal_attention", "ceil", "const", "cross_entropy", "embedding", "fake_quant",
    "floor", "index", "int", "leaky_relu", "len", "linear", "max", "maximum", "mean", "merge_heads", "min", "minimum",
    "normal", "numel", "orthogonal", "permute", "rank", "reshape", "rope", "rows", "shape", "shift", "split_heads",
    "ste", "sum", "to_float", "to_int", "uniform",
];

/// The DSL's unary builtin `name` (every `UnaryFn` by its mnemonic; `step` is
/// the autodiff's own, relu's derivative).
fn unary_builtin(name: &str) -> Option<UnaryFn> {
    UnaryFn::from_name(name).filter(|u| *u != UnaryFn::Step)
}

/// Every builtin function, sorted (for "did you mean").
pub fn builtin_functions() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = OTHER_BUILTINS.to_vec();
    v.extend(UnaryFn::ALL.iter().filter(|u| unary_builtin(u.name()).is_some()).map(|u| u.name()));
    v.sort_unstable();
    v
}

pub struct Lower<'a> {
    src: &'a str,
    prog: &'a Program,
    mode: Mode,
    limits: Limits,
    sets: &'a [(String, String)],
    pub g: Graph,
    fns: HashMap<&'a str, &'a FnDef>,
    consts: HashMap<String, Span>,
    /// Block frames; frame 0 holds the globals. A call hides the caller's frames.
    frames: Vec<Vec<(String, Value)>>,
    scope: Vec<String>,
    scope_str: String,
    line_starts: Vec<usize>,
    /// Source span of each origin (line, col), to locate verifier errors.
    pub origin_spans: HashMap<(u32, u32), Span>,
    param_spans: HashMap<String, Span>,
    inputs: HashMap<String, Span>,
    output_spans: HashMap<String, Span>,
    steps: u64,
    depth: usize,
    calls: usize,
    /// Things that compile but are probably not what was meant (e.g. a loop
    /// over a constant that is 0).
    pub warnings: Vec<Diagnostic>,
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Int(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Bool(_) => "a bool",
        Value::Str(_) => "a string",
        Value::Tensor(_) => "a tensor",
        Value::List(_) => "a list",
        Value::Storage(_) => "a storage class",
        Value::Qat(_) => "a QAT mode",
        Value::Init(_) => "an initialiser",
        Value::Unit => "nothing (a statement)",
    }
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    if a.len() > 64 || b.len() > 64 {
        return usize::MAX;
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let c = if a[i - 1] == b[j - 1] { 0 } else { 1 };
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + c);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest candidate to `name`, if close enough to be a likely typo.
pub fn suggest<'s>(name: &str, candidates: impl Iterator<Item = &'s str>) -> Option<&'s str> {
    let max = (name.chars().count() / 3).max(1);
    candidates
        .filter(|c| *c != name)
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, _)| *d <= max)
        .min()
        .map(|(_, c)| c)
}

struct Arg2 {
    name: Option<Ident>,
    value: Value,
    span: Span,
}

impl<'a> Lower<'a> {
    pub fn new(src: &'a str, prog: &'a Program, sets: &'a [(String, String)], mode: Mode, limits: Limits) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        Lower {
            src,
            prog,
            mode,
            limits,
            sets,
            g: Graph::new(mode),
            fns: HashMap::new(),
            consts: HashMap::new(),
            frames: vec![Vec::new()],
            scope: Vec::new(),
            scope_str: String::new(),
            line_starts,
            origin_spans: HashMap::new(),
            param_spans: HashMap::new(),
            inputs: HashMap::new(),
            output_spans: HashMap::new(),
            steps: 0,
            depth: 0,
            calls: 0,
            warnings: Vec::new(),
        }
    }

    fn line_col(&self, pos: usize) -> (u32, u32) {
        let line = self.line_starts.partition_point(|&s| s <= pos).max(1);
        let start = self.line_starts[line - 1];
        if pos > self.src.len() || !self.src.is_char_boundary(pos) {
            return line_col(self.src, pos);
        }
        let col = self.src[start..pos].chars().count() + 1;
        (line as u32, col as u32)
    }

    fn origin(&mut self, span: Span) -> Origin {
        let (line, col) = self.line_col(span.start);
        self.origin_spans.entry((line, col)).or_insert(span);
        Origin { line, col, scope: self.scope_str.clone() }
    }

    // ----- graph building -----

    fn push(&mut self, op: Op, args: &[ValueId], span: Span) -> R<ValueId> {
        if self.g.nodes.len() >= self.limits.max_nodes {
            return Err(Diagnostic::error(
                format!("the graph would exceed {} nodes", self.limits.max_nodes),
                span,
            )
            .label("while lowering this"));
        }
        let origin = self.origin(span);
        let id = match self.g.push(op, args, Some(origin)) {
            Ok(id) => id,
            Err(e) => return Err(Diagnostic::error(e.message, span).label("in this expression")),
        };
        let ty = self.g.ty(id);
        self.check_size(&ty.shape, span)?;
        if ty.shape.contains(&0) {
            let shape = ty.shape.clone();
            return Err(self.zero_sized(format!("this gives a zero-sized tensor (shape {shape:?})"), span));
        }
        Ok(id)
    }

    /// A zero-sized tensor is refused where it is computed (or declared as an
    /// input): the kernels index modulo and divide by its sizes. The note names
    /// the constants that are 0, the usual cause (`--set seq=0`).
    fn zero_sized(&self, message: String, span: Span) -> Diagnostic {
        let zeros: Vec<&str> = self.g.constants.iter().filter(|(_, v)| *v == 0.0).map(|(n, _)| n.as_str()).collect();
        let mut d = Diagnostic::error(message, span).label("zero-sized");
        if zeros.is_empty() {
            d = d.note("every dimension must be at least 1");
        } else {
            let set: Vec<&str> = zeros.iter().copied().filter(|z| self.sets.iter().any(|(k, _)| k == z)).collect();
            d = d.note(format!(
                "constant{} {} {} 0{}; every dimension must be at least 1",
                if zeros.len() == 1 { "" } else { "s" },
                zeros.iter().map(|z| format!("`{z}`")).collect::<Vec<_>>().join(", "),
                if zeros.len() == 1 { "is" } else { "are" },
                if set.is_empty() { String::new() } else { format!(" (set by {})", set.iter().map(|z| format!("--set {z}=0")).collect::<Vec<_>>().join(", ")) }
            ));
        }
        d
    }

    fn check_size(&self, shape: &[usize], span: Span) -> R<()> {
        if shape.len() > self.limits.max_rank {
            return Err(Diagnostic::error(
                format!("tensor of rank {} exceeds the limit of {}", shape.len(), self.limits.max_rank),
                span,
            )
            .label("too many axes"));
        }
        let mut n: u64 = 1;
        for &d in shape {
            n = match n.checked_mul(d as u64) {
                Some(n) if n <= self.limits.max_numel => n,
                _ => {
                    return Err(Diagnostic::error(
                        format!("tensor of shape {shape:?} exceeds the limit of {} elements", self.limits.max_numel),
                        span,
                    )
                    .label("too large"))
                }
            };
        }
        Ok(())
    }

    fn ty(&self, v: ValueId) -> TensorType {
        self.g.ty(v).clone()
    }

    fn describe(&self, v: &Value) -> String {
        match v {
            Value::Tensor(t) => format!("a tensor {}", self.g.ty(*t)),
            Value::Int(i) => format!("the integer {i}"),
            Value::Float(f) => format!("the float {f:?}"),
            other => kind_name(other).to_string(),
        }
    }

    /// A tensor operand: tensors as they are, numbers as scalar nodes.
    fn tensor(&mut self, v: &Value, span: Span, what: &str) -> R<ValueId> {
        match v {
            Value::Tensor(t) => Ok(*t),
            Value::Int(_) | Value::Float(_) => {
                let value = num(v).unwrap_or(0.0);
                self.push(Op::Scalar { value }, &[], span)
            }
            other => Err(Diagnostic::error(format!("{what}: expected a tensor, got {}", self.describe(other)), span)
                .label("not a tensor")),
        }
    }

    // ----- environment -----

    fn lookup(&self, name: &str) -> Option<&Value> {
        for f in self.frames.iter().rev() {
            if let Some((_, v)) = f.iter().rev().find(|(n, _)| n == name) {
                return Some(v);
            }
        }
        None
    }

    fn bind(&mut self, name: &str, v: Value) {
        self.frames.last_mut().expect("frame").push((name.to_string(), v));
    }

    fn assign(&mut self, name: &Ident, v: Value) -> R<()> {
        if self.consts.contains_key(&name.name) && self.frames[0].iter().any(|(n, _)| *n == name.name)
        {
            let shadowed = self.frames[1..].iter().any(|f| f.iter().any(|(n, _)| *n == name.name));
            if !shadowed {
                return Err(Diagnostic::error(format!("cannot assign to constant `{}`", name.name), name.span)
                    .label("constants are fixed; override them with --set")
                    .also(self.consts[&name.name], "declared here"));
            }
        }
        for f in self.frames.iter_mut().rev() {
            if let Some(slot) = f.iter_mut().rev().find(|(n, _)| *n == name.name) {
                slot.1 = v;
                return Ok(());
            }
        }
        Err(self.unknown_name(name, "variable").note("declare it first with `let`"))
    }

    fn visible_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.frames.iter().flat_map(|f| f.iter().map(|(n, _)| n.clone())).collect();
        v.extend(BUILTIN_VALUES.iter().map(|s| s.to_string()));
        v
    }

    fn unknown_name(&self, name: &Ident, what: &str) -> Diagnostic {
        let names = self.visible_names();
        let mut d = Diagnostic::error(format!("unknown {what} `{}`", name.name), name.span).label("not defined here");
        if let Some(s) = suggest(&name.name, names.iter().map(|s| s.as_str())) {
            d = d.note(format!("did you mean `{s}`?"));
        }
        d
    }

    fn tick(&mut self, span: Span) -> R<()> {
        self.steps += 1;
        if self.steps > self.limits.max_steps {
            return Err(Diagnostic::error(
                format!("compile-time evaluation exceeded {} steps", self.limits.max_steps),
                span,
            )
            .label("still evaluating here")
            .note("is a loop or the model much larger than intended?"));
        }
        Ok(())
    }

    // ----- program -----

    pub fn program(&mut self) -> R<()> {
        let prog = self.prog;
        for it in &prog.items {
            match it {
                Item::Fn(f) => {
                    if let Some(prev) = self.fns.get(f.name.name.as_str()) {
                        return Err(Diagnostic::error(format!("function `{}` defined twice", f.name.name), f.name.span)
                            .label("second definition")
                            .also(prev.name.span, "first defined here"));
                    }
                    self.fns.insert(&f.name.name, f);
                }
                Item::Const { name, .. } => {
                    if let Some(prev) = self.consts.get(&name.name) {
                        return Err(Diagnostic::error(format!("constant `{}` declared twice", name.name), name.span)
                            .label("second declaration")
                            .also(*prev, "first declared here"));
                    }
                    self.consts.insert(name.name.clone(), name.span);
                }
                Item::Stmt(_) => {}
            }
        }
        for (k, _) in self.sets {
            if !self.consts.contains_key(k) {
                let mut names: Vec<&str> = self.consts.keys().map(|s| s.as_str()).collect();
                names.sort();
                let mut d = Diagnostic::global(format!("--set {k}=...: the model has no constant `{k}`"));
                if let Some(s) = suggest(k, names.iter().copied()) {
                    d = d.note(format!("did you mean `{s}`?"));
                }
                d = d.note(format!("constants: {}", names.join(", ")));
                return Err(d);
            }
        }
        for it in &prog.items {
            match it {
                Item::Fn(_) => {}
                Item::Const { name, value, .. } => self.constant(name, value)?,
                Item::Stmt(s) => self.stmt(s)?,
            }
        }
        Ok(())
    }

    fn constant(&mut self, name: &'a Ident, value: &'a Expr) -> R<()> {
        let default = self.expr(value)?;
        let set = self.sets.iter().rev().find(|(k, _)| *k == name.name).map(|(_, v)| v.as_str());
        let v = match (&default, set) {
            (Value::Int(_) | Value::Float(_) | Value::Bool(_), None) => default.clone(),
            (_, None) => {
                return Err(Diagnostic::error(
                    format!("constant `{}` must be a number or a bool, not {}", name.name, kind_name(&default)),
                    value.span,
                )
                .label("not a compile-time scalar"))
            }
            (Value::Int(_), Some(s)) => match s.replace('_', "").parse::<i64>() {
                Ok(i) => Value::Int(i),
                Err(_) => {
                    return Err(Diagnostic::error(
                        format!("--set {}={s}: `{}` is an integer constant and `{s}` is not an integer", name.name, name.name),
                        name.span,
                    )
                    .label("declared here as an integer"))
                }
            },
            (Value::Float(_), Some(s)) => match s.parse::<f64>() {
                Ok(f) if f.is_finite() => Value::Float(f),
                _ => {
                    return Err(Diagnostic::error(
                        format!("--set {}={s}: `{}` is a float constant and `{s}` is not a finite number", name.name, name.name),
                        name.span,
                    )
                    .label("declared here as a float"))
                }
            },
            (Value::Bool(_), Some(s)) => match s {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => {
                    return Err(Diagnostic::error(
                        format!("--set {}={s}: `{}` is a bool constant; give true or false", name.name, name.name),
                        name.span,
                    )
                    .label("declared here as a bool"))
                }
            },
            (other, Some(_)) => {
                return Err(Diagnostic::error(
                    format!("constant `{}` must be a number or a bool, not {}", name.name, kind_name(other)),
                    value.span,
                )
                .label("not a compile-time scalar"))
            }
        };
        let as_f64 = match &v {
            Value::Int(i) => *i as f64,
            Value::Float(f) => *f,
            Value::Bool(b) => *b as u8 as f64,
            _ => 0.0,
        };
        self.g.constants.push((name.name.clone(), as_f64));
        self.frames[0].push((name.name.clone(), v));
        Ok(())
    }

    fn stmt(&mut self, s: &'a Stmt) -> R<()> {
        self.tick(s.span)?;
        match &s.kind {
            StmtKind::Let(name, e) => {
                let v = self.expr(e)?;
                if BUILTIN_VALUES.contains(&name.name.as_str()) || self.consts.contains_key(&name.name) && self.frames.len() == 1
                {
                    return Err(Diagnostic::error(format!("`{}` is already a constant or builtin name", name.name), name.span)
                        .label("choose another name"));
                }
                self.bind(&name.name, v);
            }
            StmtKind::Assign(name, e) => {
                let v = self.expr(e)?;
                self.assign(name, v)?;
            }
            StmtKind::For { var, lo, hi, body } => {
                let lov = self.expr(lo)?;
                match hi {
                    Some(hi) => {
                        let hiv = self.expr(hi)?;
                        let (Value::Int(a), Value::Int(b)) = (&lov, &hiv) else {
                            return Err(Diagnostic::error(
                                format!("a range needs integer bounds, got {} and {}", self.describe(&lov), self.describe(&hiv)),
                                lo.span.to(hi.span),
                            )
                            .label("not integers"));
                        };
                        let (a, b) = (*a, *b);
                        if b.saturating_sub(a) > self.limits.max_loop {
                            return Err(Diagnostic::error(
                                format!("loop of {} iterations exceeds the limit of {}", b.saturating_sub(a), self.limits.max_loop),
                                lo.span.to(hi.span),
                            )
                            .label("too many iterations"));
                        }
                        if b <= a {
                            let at = lo.span.to(hi.span);
                            if let ExprKind::Name(n) = &hi.kind {
                                if self.consts.contains_key(n) && !self.warnings.iter().any(|w| w.span == Some(at)) {
                                    self.warnings.push(
                                        Diagnostic::error(format!("this loop runs 0 times: constant `{n}` is {b}"), at).label("empty range"),
                                    );
                                }
                            }
                        }
                        let mut i = a;
                        while i < b {
                            self.loop_body(var, Value::Int(i), body)?;
                            i += 1;
                        }
                    }
                    None => {
                        let Value::List(items) = lov else {
                            return Err(Diagnostic::error(
                                format!("`for` iterates over a range `a..b` or a list, got {}", self.describe(&lov)),
                                lo.span,
                            )
                            .label("not iterable"));
                        };
                        for v in items {
                            self.loop_body(var, v, body)?;
                        }
                    }
                }
            }
            StmtKind::Output(name, e) => {
                let v = self.expr(e)?;
                let t = self.tensor(&v, e.span, "output")?;
                if let Some(prev) = self.output_spans.get(&name.name) {
                    return Err(Diagnostic::error(format!("output `{}` defined twice", name.name), name.span)
                        .label("second definition")
                        .also(*prev, "first defined here"));
                }
                self.output_spans.insert(name.name.clone(), name.span);
                self.g.outputs.push((name.name.clone(), t));
            }
            StmtKind::Assert(cond, msg) => {
                let v = self.expr(cond)?;
                match v {
                    Value::Bool(true) => {}
                    Value::Bool(false) => {
                        let m = msg.clone().unwrap_or_else(|| "assertion failed".to_string());
                        return Err(Diagnostic::error(format!("assertion failed: {m}"), cond.span).label("this is false"));
                    }
                    other => {
                        return Err(Diagnostic::error(
                            format!("`assert` needs a bool, got {}", self.describe(&other)),
                            cond.span,
                        )
                        .label("not a bool"))
                    }
                }
            }
            StmtKind::Expr(e) => {
                self.expr(e)?;
            }
        }
        Ok(())
    }

    fn loop_body(&mut self, var: &Ident, v: Value, body: &'a Block) -> R<()> {
        self.frames.push(vec![(var.name.clone(), v)]);
        let r = self.block(body);
        self.frames.pop();
        r.map(|_| ())
    }

    fn block(&mut self, b: &'a Block) -> R<Value> {
        self.frames.push(Vec::new());
        let r = (|| {
            for s in &b.stmts {
                self.stmt(s)?;
            }
            match &b.tail {
                Some(e) => self.expr(e),
                None => Ok(Value::Unit),
            }
        })();
        self.frames.pop();
        r
    }

    fn expr(&mut self, e: &'a Expr) -> R<Value> {
        self.tick(e.span)?;
        self.depth += 1;
        if self.depth > self.limits.max_depth {
            self.depth -= 1;
            return Err(Diagnostic::error("evaluation nested too deeply", e.span).label("here"));
        }
        let r = self.expr_inner(e);
        self.depth -= 1;
        r
    }

    fn expr_inner(&mut self, e: &'a Expr) -> R<Value> {
        let span = e.span;
        match &e.kind {
            ExprKind::Int(i) => Ok(Value::Int(*i)),
            ExprKind::Float(f) => Ok(Value::Float(*f)),
            ExprKind::Bool(b) => Ok(Value::Bool(*b)),
            ExprKind::Str(s) => Ok(Value::Str(s.clone())),
            ExprKind::Name(n) => self.name(&Ident { name: n.clone(), span }),
            ExprKind::List(items) => {
                if items.len() > self.limits.max_list {
                    return Err(Diagnostic::error("list too long", span));
                }
                let mut v = Vec::with_capacity(items.len());
                for it in items {
                    v.push(self.expr(it)?);
                }
                Ok(Value::List(v))
            }
            ExprKind::Unary(op, x) => {
                let v = self.expr(x)?;
                match (op, v) {
                    (UnOp::Neg, Value::Int(i)) => i
                        .checked_neg()
                        .map(Value::Int)
                        .ok_or_else(|| Diagnostic::error("integer overflow", span).label("here")),
                    (UnOp::Neg, Value::Float(f)) => Ok(Value::Float(-f)),
                    (UnOp::Neg, Value::Tensor(t)) => Ok(Value::Tensor(self.push(Op::Unary { f: UnaryFn::Neg }, &[t], span)?)),
                    (UnOp::Not, Value::Bool(b)) => Ok(Value::Bool(!b)),
                    (op, v) => Err(Diagnostic::error(
                        format!("cannot apply `{}` to {}", if *op == UnOp::Neg { "-" } else { "!" }, self.describe(&v)),
                        span,
                    )
                    .label("wrong kind of operand")),
                }
            }
            ExprKind::Binary(op, l, r) => self.binary(*op, l, r, span),
            ExprKind::Call { callee, args } => {
                let vals = self.args(args)?;
                if let Some(f) = self.fns.get(callee.name.as_str()).copied() {
                    return self.call_user(f, callee, vals, span);
                }
                self.builtin(callee, vals, span)
            }
            ExprKind::Method { recv, name, args } => {
                if let (ExprKind::Name(var), "push" | "pop") = (&recv.kind, name.name.as_str()) {
                    let var = Ident { name: var.clone(), span: recv.span };
                    return self.list_method(&var, name, args, span);
                }
                let mut vals = vec![Arg2 { name: None, value: self.expr(recv)?, span: recv.span }];
                vals.extend(self.args(args)?);
                if let Some(f) = self.fns.get(name.name.as_str()).copied() {
                    return self.call_user(f, name, vals, span);
                }
                self.builtin(name, vals, span)
            }
            ExprKind::Index(base, idx) => {
                let b = self.expr(base)?;
                let i = self.expr(idx)?;
                let Value::Int(i) = i else {
                    return Err(Diagnostic::error(format!("an index must be an integer, got {}", self.describe(&i)), idx.span)
                        .label("not an integer"));
                };
                match b {
                    Value::List(items) => {
                        let n = items.len() as i64;
                        let j = if i < 0 { i + n } else { i };
                        if j < 0 || j >= n {
                            return Err(Diagnostic::error(format!("index {i} out of range for a list of {n}"), idx.span)
                                .label("out of range"));
                        }
                        Ok(items[j as usize].clone())
                    }
                    Value::Tensor(t) => {
                        let ty = self.ty(t);
                        if ty.rank() == 0 {
                            return Err(Diagnostic::error(format!("cannot index a scalar tensor {ty}"), span).label("rank 0"));
                        }
                        let n = ty.shape[0] as i64;
                        let j = if i < 0 { i + n } else { i };
                        if j < 0 || j >= n {
                            return Err(Diagnostic::error(format!("index {i} out of range for axis 0 of {ty}"), idx.span)
                                .label("out of range"));
                        }
                        Ok(Value::Tensor(self.push(Op::Index { axis: 0, index: j as usize }, &[t], span)?))
                    }
                    other => Err(Diagnostic::error(format!("cannot index {}", self.describe(&other)), base.span)
                        .label("not a list or tensor")),
                }
            }
            ExprKind::If { cond, then, els } => {
                let c = self.expr(cond)?;
                match c {
                    Value::Bool(true) => self.block(then),
                    Value::Bool(false) => match els {
                        Some(e) => self.expr(e),
                        None => Ok(Value::Unit),
                    },
                    Value::Tensor(_) => Err(Diagnostic::error("an `if` condition must be known at compile time, not a tensor", cond.span)
                        .label("a run-time value")
                        .note("use arithmetic on tensors (e.g. a mask) instead")),
                    other => Err(Diagnostic::error(format!("an `if` condition must be a bool, got {}", self.describe(&other)), cond.span)
                        .label("not a bool")),
                }
            }
            ExprKind::Block(b) => self.block(b),
            ExprKind::Scope { path, body } => {
                let segs = self.path(path)?;
                let old = self.scope.len();
                self.scope.extend(segs);
                self.scope_str = self.scope.join(".");
                let r = self.block(body);
                self.scope.truncate(old);
                self.scope_str = self.scope.join(".");
                r
            }
            ExprKind::Param { path, shape, storage, attrs } => self.param(path, shape, storage.as_deref(), attrs, span),
            ExprKind::Input { name, shape, dtype } => {
                let dims = self.shape(shape, span)?;
                if let Some(k) = dims.iter().position(|&d| d == 0) {
                    return Err(self.zero_sized(format!("input `{}` has shape {dims:?}: a zero-sized dimension", name.name), shape[k].span));
                }
                let dt = match dtype.name.as_str() {
                    "i32" => DType::I32,
                    "f32" => DType::F32,
                    other => {
                        return Err(Diagnostic::error(format!("unknown element type `{other}`; inputs are i32 or f32"), dtype.span)
                            .label("expected i32 or f32"))
                    }
                };
                if let Some(prev) = self.inputs.get(&name.name) {
                    return Err(Diagnostic::error(format!("input `{}` declared twice", name.name), name.span)
                        .label("second declaration")
                        .also(*prev, "first declared here"));
                }
                self.inputs.insert(name.name.clone(), name.span);
                let id = self.push(Op::Input { name: name.name.clone(), ty: TensorType::new(dt, dims) }, &[], span)?;
                Ok(Value::Tensor(id))
            }
        }
    }

    fn name(&mut self, id: &Ident) -> R<Value> {
        if let Some(v) = self.lookup(&id.name) {
            return Ok(v.clone());
        }
        let n = id.name.as_str();
        let v = match n {
            "f16" => Value::Storage(StorageClass::F16),
            "f32" => Value::Storage(StorageClass::F32),
            "none" => Value::Qat(Qat::None),
            "zeros" => Value::Init(Init::Zeros),
            "training" => Value::Bool(self.mode == Mode::Train),
            "pi" => Value::Float(std::f64::consts::PI),
            _ if n.len() > 3 && n.starts_with("int") && n[3..].bytes().all(|b| b.is_ascii_digit()) && n.len() <= 6 => {
                let bits: u32 = n[3..].parse().unwrap_or(0);
                Value::Storage(StorageClass::Int { bits, clip_percentile: None })
            }
            _ => {
                if self.fns.contains_key(n) || OTHER_BUILTINS.contains(&n) || unary_builtin(n).is_some() {
                    return Err(Diagnostic::error(format!("`{n}` is a function; call it: `{n}(...)`"), id.span)
                        .label("a function, not a value"));
                }
                return Err(self.unknown_name(id, "name"));
            }
        };
        Ok(v)
    }

    fn path(&mut self, p: &'a Path) -> R<Vec<String>> {
        let mut out = Vec::new();
        for (seg, sp) in &p.segs {
            match seg {
                PathSeg::Name(n) => out.push(n.clone()),
                PathSeg::Int(i) => out.push(i.to_string()),
                PathSeg::Expr(e) => match self.expr(e)? {
                    Value::Int(i) => out.push(i.to_string()),
                    Value::Str(s) if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => out.push(s),
                    other => {
                        return Err(Diagnostic::error(
                            format!("a name segment `{{...}}` must be an integer or a plain word, got {}", self.describe(&other)),
                            *sp,
                        )
                        .label("not usable in a name"))
                    }
                },
            }
        }
        Ok(out)
    }

    fn shape(&mut self, dims: &'a [Expr], span: Span) -> R<Vec<usize>> {
        let mut out = Vec::with_capacity(dims.len());
        if dims.len() > self.limits.max_rank {
            return Err(Diagnostic::error(format!("rank {} exceeds the limit of {}", dims.len(), self.limits.max_rank), span)
                .label("too many axes"));
        }
        for d in dims {
            match self.expr(d)? {
                Value::Int(i) if i >= 0 && (i as u64) <= self.limits.max_numel => out.push(i as usize),
                Value::Int(i) => {
                    return Err(Diagnostic::error(format!("dimension {i} is out of range"), d.span)
                        .label(if i < 0 { "negative" } else { "too large" }))
                }
                other => {
                    return Err(Diagnostic::error(format!("a dimension must be an integer, got {}", self.describe(&other)), d.span)
                        .label("not an integer"))
                }
            }
        }
        self.check_size(&out, span)?;
        Ok(out)
    }

    fn binary(&mut self, op: BinOp, l: &'a Expr, r: &'a Expr, span: Span) -> R<Value> {
        if matches!(op, BinOp::And | BinOp::Or) {
            let a = self.expr(l)?;
            let Value::Bool(a) = a else {
                return Err(Diagnostic::error(format!("`{}` needs bools, got {}", op.symbol(), self.describe(&a)), l.span)
                    .label("not a bool"));
            };
            if (op == BinOp::And && !a) || (op == BinOp::Or && a) {
                return Ok(Value::Bool(a));
            }
            let b = self.expr(r)?;
            let Value::Bool(b) = b else {
                return Err(Diagnostic::error(format!("`{}` needs bools, got {}", op.symbol(), self.describe(&b)), r.span)
                    .label("not a bool"));
            };
            return Ok(Value::Bool(b));
        }
        let a = self.expr(l)?;
        let b = self.expr(r)?;
        let mismatch = |me: &Self| {
            Diagnostic::error(
                format!("cannot apply `{}` to {} and {}", op.symbol(), me.describe(&a), me.describe(&b)),
                span,
            )
            .label("unsupported operands")
        };
        match (&a, &b) {
            (Value::Int(x), Value::Int(y)) => {
                let (x, y) = (*x, *y);
                let ovf = || Diagnostic::error("integer overflow in constant arithmetic", span).label("here");
                let v = match op {
                    BinOp::Add => Value::Int(x.checked_add(y).ok_or_else(ovf)?),
                    BinOp::Sub => Value::Int(x.checked_sub(y).ok_or_else(ovf)?),
                    BinOp::Mul => Value::Int(x.checked_mul(y).ok_or_else(ovf)?),
                    BinOp::Div | BinOp::Rem => {
                        if y == 0 {
                            return Err(Diagnostic::error("division by zero", r.span).label("this is zero"));
                        }
                        if op == BinOp::Div {
                            Value::Int(x.checked_div_euclid(y).ok_or_else(ovf)?)
                        } else {
                            Value::Int(x.checked_rem_euclid(y).ok_or_else(ovf)?)
                        }
                    }
                    BinOp::Pow => {
                        if y < 0 {
                            Value::Float((x as f64).powf(y as f64))
                        } else {
                            let e = u32::try_from(y).map_err(|_| ovf())?;
                            Value::Int(x.checked_pow(e).ok_or_else(ovf)?)
                        }
                    }
                    BinOp::Eq => Value::Bool(x == y),
                    BinOp::Ne => Value::Bool(x != y),
                    BinOp::Lt => Value::Bool(x < y),
                    BinOp::Le => Value::Bool(x <= y),
                    BinOp::Gt => Value::Bool(x > y),
                    BinOp::Ge => Value::Bool(x >= y),
                    BinOp::And | BinOp::Or => unreachable!(),
                };
                Ok(v)
            }
            (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => {
                let (x, y) = (num(&a).unwrap_or(0.0), num(&b).unwrap_or(0.0));
                let v = match op {
                    BinOp::Add => x + y,
                    BinOp::Sub => x - y,
                    BinOp::Mul => x * y,
                    BinOp::Div => x / y,
                    BinOp::Rem => x.rem_euclid(y),
                    BinOp::Pow => x.powf(y),
                    BinOp::Eq => return Ok(Value::Bool(x == y)),
                    BinOp::Ne => return Ok(Value::Bool(x != y)),
                    BinOp::Lt => return Ok(Value::Bool(x < y)),
                    BinOp::Le => return Ok(Value::Bool(x <= y)),
                    BinOp::Gt => return Ok(Value::Bool(x > y)),
                    BinOp::Ge => return Ok(Value::Bool(x >= y)),
                    BinOp::And | BinOp::Or => unreachable!(),
                };
                if !v.is_finite() {
                    return Err(Diagnostic::error(format!("`{x} {} {y}` is not a finite number", op.symbol()), span)
                        .label("overflow, division by zero or NaN"));
                }
                Ok(Value::Float(v))
            }
            (Value::Bool(x), Value::Bool(y)) if matches!(op, BinOp::Eq | BinOp::Ne) => {
                Ok(Value::Bool((x == y) == (op == BinOp::Eq)))
            }
            (Value::Str(x), Value::Str(y)) if matches!(op, BinOp::Eq | BinOp::Ne) => {
                Ok(Value::Bool((x == y) == (op == BinOp::Eq)))
            }
            (Value::List(x), Value::List(y)) if matches!(op, BinOp::Eq | BinOp::Ne) => {
                Ok(Value::Bool((x == y) == (op == BinOp::Eq)))
            }
            (Value::Str(x), Value::Str(y)) if op == BinOp::Add => Ok(Value::Str(format!("{x}{y}"))),
            (Value::List(x), Value::List(y)) if op == BinOp::Add => {
                if x.len() + y.len() > self.limits.max_list {
                    return Err(Diagnostic::error("list too long", span).label("here"));
                }
                let mut v = x.clone();
                v.extend(y.iter().cloned());
                Ok(Value::List(v))
            }
            (Value::Tensor(_), Value::Tensor(_) | Value::Int(_) | Value::Float(_))
            | (Value::Int(_) | Value::Float(_), Value::Tensor(_)) => {
                let f = match op {
                    BinOp::Add => BinaryFn::Add,
                    BinOp::Sub => BinaryFn::Sub,
                    BinOp::Mul => BinaryFn::Mul,
                    BinOp::Div => BinaryFn::Div,
                    BinOp::Pow => {
                        let Value::Tensor(t) = a else { return Err(mismatch(self).note("only a tensor can be raised to a power")) };
                        let p = num(&b).ok_or_else(|| {
                            mismatch(self).note("a tensor power must be a number known at compile time (x^2)")
                        })?;
                        let f = if p == 2.0 {
                            UnaryFn::Square
                        } else if p == 0.5 {
                            UnaryFn::Sqrt
                        } else if p == -0.5 {
                            UnaryFn::Rsqrt
                        } else if p == -1.0 {
                            UnaryFn::Recip
                        } else if p == 1.0 {
                            return Ok(Value::Tensor(t));
                        } else {
                            return Err(Diagnostic::error(
                                format!("tensor power {p} is not supported; use 2, 0.5, -0.5, -1 or exp/log"),
                                r.span,
                            )
                            .label("unsupported exponent"));
                        };
                        return Ok(Value::Tensor(self.push(Op::Unary { f }, &[t], span)?));
                    }
                    BinOp::Rem => return Err(mismatch(self).note("`%` is for compile-time integers")),
                    _ => {
                        return Err(mismatch(self)
                            .note("comparisons are compile-time only; tensors have no value at compile time"))
                    }
                };
                let x = self.tensor(&a, l.span, "operand")?;
                let y = self.tensor(&b, r.span, "operand")?;
                match self.push(Op::Binary { f }, &[x, y], span) {
                    Ok(v) => Ok(Value::Tensor(v)),
                    Err(d) => {
                        let (tx, ty) = (self.ty(x), self.ty(y));
                        Err(d.also(l.span, format!("this is {tx}")).also(r.span, format!("this is {ty}")))
                    }
                }
            }
            _ => Err(mismatch(self)),
        }
    }

    fn list_method(&mut self, var: &Ident, name: &Ident, args: &'a [Arg], span: Span) -> R<Value> {
        let Some(cur) = self.lookup(&var.name).cloned() else {
            return Err(self.unknown_name(var, "variable"));
        };
        let Value::List(mut items) = cur else {
            return Err(Diagnostic::error(
                format!("`.{}()` needs a list variable; `{}` is {}", name.name, var.name, self.describe(&cur)),
                var.span,
            )
            .label("not a list"));
        };
        if name.name == "push" {
            if args.len() != 1 || args[0].name.is_some() {
                return Err(Diagnostic::error("`push` takes one value", span).label("here"));
            }
            let v = self.expr(&args[0].value)?;
            if items.len() >= self.limits.max_list {
                return Err(Diagnostic::error("list too long", span).label("here"));
            }
            items.push(v);
            self.assign(var, Value::List(items))?;
            Ok(Value::Unit)
        } else {
            if !args.is_empty() {
                return Err(Diagnostic::error("`pop` takes no arguments", span).label("here"));
            }
            let Some(v) = items.pop() else {
                return Err(Diagnostic::error(format!("pop from the empty list `{}`", var.name), span).label("nothing to pop"));
            };
            self.assign(var, Value::List(items))?;
            Ok(v)
        }
    }

    fn args(&mut self, args: &'a [Arg]) -> R<Vec<Arg2>> {
        let mut vals = Vec::with_capacity(args.len());
        for a in args {
            vals.push(Arg2 { name: a.name.clone(), value: self.expr(&a.value)?, span: a.value.span });
        }
        Ok(vals)
    }

    fn call_user(&mut self, f: &'a FnDef, callee: &Ident, args: Vec<Arg2>, span: Span) -> R<Value> {
        if self.calls >= self.limits.max_calls {
            return Err(Diagnostic::error(format!("calls nested deeper than {} (runaway recursion?)", self.limits.max_calls), span)
                .label("in this call"));
        }
        let mut slots: Vec<Option<Value>> = vec![None; f.params.len()];
        let mut positional = 0usize;
        for a in args {
            let idx = match &a.name {
                None => {
                    if positional >= f.params.len() {
                        return Err(Diagnostic::error(
                            format!("`{}` takes {} argument(s), got more", callee.name, f.params.len()),
                            a.span,
                        )
                        .label("extra argument")
                        .also(f.name.span, "defined here"));
                    }
                    positional += 1;
                    positional - 1
                }
                Some(n) => match f.params.iter().position(|(p, _)| p.name == n.name) {
                    Some(i) => i,
                    None => {
                        return Err(Diagnostic::error(format!("`{}` has no parameter `{}`", callee.name, n.name), n.span)
                            .label("unknown argument name")
                            .also(f.name.span, "defined here"))
                    }
                },
            };
            if slots[idx].is_some() {
                return Err(Diagnostic::error(format!("argument `{}` given twice", f.params[idx].0.name), a.span)
                    .label("again here"));
            }
            slots[idx] = Some(a.value);
        }
        self.calls += 1;
        let saved = self.frames.split_off(1);
        self.frames.push(Vec::new());
        let r = (|| {
            for (i, (p, default)) in f.params.iter().enumerate() {
                let v = match slots[i].take() {
                    Some(v) => v,
                    None => match default {
                        Some(d) => self.expr(d)?,
                        None => {
                            return Err(Diagnostic::error(format!("missing argument `{}` of `{}`", p.name, callee.name), span)
                                .label("in this call")
                                .also(p.span, "declared here"))
                        }
                    },
                };
                self.bind(&p.name, v);
            }
            self.block(&f.body)
        })();
        self.frames.truncate(1);
        self.frames.extend(saved);
        self.calls -= 1;
        // A short backtrace: where the failing function was called from.
        r.map_err(|d| {
            if d.secondary.len() < 4 && d.span != Some(span) {
                d.also(span, format!("in this call of `{}`", callee.name))
            } else {
                d
            }
        })
    }

    // ----- builtins -----

    fn sig(&self, fname: &str, names: &[&str], defaults: &[Option<Value>], args: Vec<Arg2>, span: Span) -> R<Vec<(Value, Span)>> {
        let mut slots: Vec<Option<(Value, Span)>> = vec![None; names.len()];
        let mut positional = 0;
        for a in args {
            let idx = match &a.name {
                None => {
                    if positional >= names.len() {
                        return Err(Diagnostic::error(
                            format!("`{fname}` takes {} argument(s): {fname}({})", names.len(), names.join(", ")),
                            a.span,
                        )
                        .label("extra argument"));
                    }
                    positional += 1;
                    positional - 1
                }
                Some(n) => match names.iter().position(|p| *p == n.name) {
                    Some(i) => i,
                    None => {
                        return Err(Diagnostic::error(format!("`{fname}` has no argument `{}`: {fname}({})", n.name, names.join(", ")), n.span)
                            .label("unknown argument name"))
                    }
                },
            };
            if slots[idx].is_some() {
                return Err(Diagnostic::error(format!("argument `{}` given twice", names[idx]), a.span).label("again here"));
            }
            slots[idx] = Some((a.value, a.span));
        }
        let mut out = Vec::with_capacity(names.len());
        for (i, s) in slots.into_iter().enumerate() {
            match s {
                Some(v) => out.push(v),
                None => match defaults.get(i).cloned().flatten() {
                    Some(d) => out.push((d, span)),
                    None => {
                        return Err(Diagnostic::error(
                            format!("missing argument `{}`: {fname}({})", names[i], names.join(", ")),
                            span,
                        )
                        .label("in this call"))
                    }
                },
            }
        }
        Ok(out)
    }

    fn int_arg(&self, fname: &str, v: &(Value, Span)) -> R<i64> {
        match &v.0 {
            Value::Int(i) => Ok(*i),
            other => Err(Diagnostic::error(format!("{fname}: expected an integer, got {}", self.describe(other)), v.1)
                .label("not an integer")),
        }
    }

    fn num_arg(&self, fname: &str, v: &(Value, Span)) -> R<f64> {
        num(&v.0).ok_or_else(|| {
            Diagnostic::error(format!("{fname}: expected a number, got {}", self.describe(&v.0)), v.1).label("not a number")
        })
    }

    fn tensor_arg(&mut self, fname: &str, v: &(Value, Span)) -> R<ValueId> {
        match &v.0 {
            Value::Tensor(t) => Ok(*t),
            other => Err(Diagnostic::error(format!("{fname}: expected a tensor, got {}", self.describe(other)), v.1)
                .label("not a tensor")),
        }
    }

    fn axis_arg(&self, fname: &str, v: &(Value, Span), rank: usize) -> R<usize> {
        let a = self.int_arg(fname, v)?;
        let r = rank as i64;
        let n = if a < 0 { a + r } else { a };
        if n < 0 || n >= r {
            return Err(Diagnostic::error(format!("{fname}: axis {a} out of range for a tensor of rank {rank}"), v.1)
                .label("bad axis"));
        }
        Ok(n as usize)
    }

    fn dims_arg(&self, fname: &str, v: &(Value, Span)) -> R<Vec<i64>> {
        let Value::List(items) = &v.0 else {
            return Err(Diagnostic::error(format!("{fname}: expected a list of integers, got {}", self.describe(&v.0)), v.1)
                .label("not a list"));
        };
        if items.len() > self.limits.max_rank {
            return Err(Diagnostic::error(format!("{fname}: rank {} exceeds the limit of {}", items.len(), self.limits.max_rank), v.1)
                .label("too many axes"));
        }
        items
            .iter()
            .map(|x| match x {
                Value::Int(i) => Ok(*i),
                other => Err(Diagnostic::error(format!("{fname}: expected integers, got {}", self.describe(other)), v.1)
                    .label("not all integers")),
            })
            .collect()
    }

    fn unsigned(&self, fname: &str, v: &(Value, Span)) -> R<usize> {
        let i = self.int_arg(fname, v)?;
        if i < 0 || i as u64 > self.limits.max_numel {
            return Err(Diagnostic::error(format!("{fname}: {i} is out of range"), v.1).label("out of range"));
        }
        Ok(i as usize)
    }

    fn finite(&self, x: f64, span: Span, what: &str) -> R<Value> {
        if x.is_finite() {
            Ok(Value::Float(x))
        } else {
            Err(Diagnostic::error(format!("{what} is not a finite number"), span).label("here"))
        }
    }

    fn builtin(&mut self, callee: &Ident, args: Vec<Arg2>, span: Span) -> R<Value> {
        let f = callee.name.as_str();
        if let Some(u) = unary_builtin(f) {
            let a = self.sig(f, &["x"], &[], args, span)?;
            if let Some(x) = num(&a[0].0) {
                let y = u.eval(x);
                return self.finite(y, span, &format!("{f}({x})"));
            }
            let t = self.tensor_arg(f, &a[0])?;
            return Ok(Value::Tensor(self.push(Op::Unary { f: u }, &[t], span)?));
        }
        match f {
            // --- quantization and initialisation values ---
            "int" => {
                let a = self.sig(f, &["bits"], &[], args, span)?;
                let b = self.int_arg(f, &a[0])?;
                if !(2..=8).contains(&b) {
                    return Err(Diagnostic::error(format!("integer storage needs 2..=8 bits, got {b}"), a[0].1).label("bits out of range"));
                }
                Ok(Value::Storage(StorageClass::Int { bits: b as u32, clip_percentile: None }))
            }
            "ste" => {
                let a = self.sig(f, &["bits"], &[], args, span)?;
                let b = self.int_arg(f, &a[0])?;
                if !(2..=8).contains(&b) {
                    return Err(Diagnostic::error(format!("QAT needs 2..=8 bits, got {b}"), a[0].1).label("bits out of range"));
                }
                Ok(Value::Qat(Qat::Ste { bits: b as u32 }))
            }
            "normal" => {
                let a = self.sig(f, &["std"], &[], args, span)?;
                let s = self.num_arg(f, &a[0])?;
                if !(s >= 0.0 && s.is_finite()) {
                    return Err(Diagnostic::error(format!("normal: std must be a non-negative number, got {s}"), a[0].1).label("bad std"));
                }
                Ok(Value::Init(Init::Normal { std: s }))
            }
            "uniform" => {
                let a = self.sig(f, &["bound"], &[], args, span)?;
                let bound = self.num_arg(f, &a[0])?;
                if !(bound >= 0.0 && bound.is_finite()) {
                    return Err(Diagnostic::error(format!("uniform: bound must be a non-negative number, got {bound}"), a[0].1).label("bad bound"));
                }
                Ok(Value::Init(Init::Uniform { bound }))
            }
            "orthogonal" => {
                let a = self.sig(f, &["gain"], &[Some(Value::Float(1.0))], args, span)?;
                let gain = self.num_arg(f, &a[0])?;
                Ok(Value::Init(Init::Orthogonal { gain }))
            }
            "const" => {
                let a = self.sig(f, &["value"], &[], args, span)?;
                let value = self.num_arg(f, &a[0])?;
                Ok(Value::Init(Init::Constant { value }))
            }
            "rows" => {
                let mut values = Vec::new();
                for a in &args {
                    if a.name.is_some() {
                        return Err(Diagnostic::error("rows(...) takes the row values positionally", a.span).label("named argument"));
                    }
                    values.push(self.num_arg(f, &(a.value.clone(), a.span))?);
                }
                if values.is_empty() {
                    return Err(Diagnostic::error("rows(...) needs one value per row", span).label("no values"));
                }
                Ok(Value::Init(Init::Rows { values }))
            }
            // --- compile-time helpers ---
            "min" | "max" if !matches!(args.first().map(|a| &a.value), Some(Value::Tensor(_))) => {
                let a = self.sig(f, &["a", "b"], &[], args, span)?;
                match (&a[0].0, &a[1].0) {
                    (Value::Int(x), Value::Int(y)) => Ok(Value::Int(if f == "min" { *x.min(y) } else { *x.max(y) })),
                    _ => {
                        let (x, y) = (self.num_arg(f, &a[0])?, self.num_arg(f, &a[1])?);
                        Ok(Value::Float(if f == "min" { x.min(y) } else { x.max(y) }))
                    }
                }
            }
            "floor" | "ceil" | "to_int" => {
                let a = self.sig(f, &["x"], &[], args, span)?;
                let x = self.num_arg(f, &a[0])?;
                let y = match f {
                    "floor" => x.floor(),
                    "ceil" => x.ceil(),
                    _ => x.trunc(),
                };
                if y.is_nan() || y.abs() >= 9.0e18 {
                    return Err(Diagnostic::error(format!("{f}({x}) does not fit an integer"), a[0].1).label("out of range"));
                }
                Ok(Value::Int(y as i64))
            }
            "to_float" => {
                let a = self.sig(f, &["x"], &[], args, span)?;
                Ok(Value::Float(self.num_arg(f, &a[0])?))
            }
            "len" => {
                let a = self.sig(f, &["list"], &[], args, span)?;
                match &a[0].0 {
                    Value::List(v) => Ok(Value::Int(v.len() as i64)),
                    other => Err(Diagnostic::error(format!("len: expected a list, got {}", self.describe(other)), a[0].1).label("not a list")),
                }
            }
            "shape" | "rank" | "numel" => {
                let a = self.sig(f, &["x"], &[], args, span)?;
                if let (Value::List(_), "numel") = (&a[0].0, f) {
                    let dims = self.dims_arg(f, &a[0])?;
                    let mut n: i64 = 1;
                    for d in dims {
                        n = n.checked_mul(d).ok_or_else(|| Diagnostic::error("numel overflows", a[0].1).label("here"))?;
                    }
                    return Ok(Value::Int(n));
                }
                let t = self.tensor_arg(f, &a[0])?;
                let ty = self.ty(t);
                Ok(match f {
                    "shape" => Value::List(ty.shape.iter().map(|&d| Value::Int(d as i64)).collect()),
                    "rank" => Value::Int(ty.rank() as i64),
                    _ => Value::Int(ty.numel() as i64),
                })
            }
            // --- tensor primitives ---
            "leaky_relu" => {
                let a = self.sig(f, &["x", "slope"], &[None, Some(Value::Float(0.01))], args, span)?;
                let slope = self.num_arg(f, &a[1])?;
                let t = self.tensor_arg(f, &a[0])?;
                Ok(Value::Tensor(self.push(Op::LeakyRelu { slope }, &[t], span)?))
            }
            "maximum" | "minimum" => {
                let a = self.sig(f, &["a", "b"], &[], args, span)?;
                let x = self.tensor(&a[0].0, a[0].1, f)?;
                let y = self.tensor(&a[1].0, a[1].1, f)?;
                let bf = if f == "maximum" { BinaryFn::Max } else { BinaryFn::Min };
                Ok(Value::Tensor(self.push(Op::Binary { f: bf }, &[x, y], span)?))
            }
            "sum" | "mean" | "max" => {
                let a = self.sig(f, &["x", "axis", "keepdim"], &[None, None, Some(Value::Bool(false))], args, span)?;
                let t = self.tensor_arg(f, &a[0])?;
                let axis = self.axis_arg(f, &a[1], self.ty(t).rank())?;
                let Value::Bool(keepdim) = a[2].0 else {
                    return Err(Diagnostic::error(format!("{f}: keepdim must be true or false"), a[2].1).label("not a bool"));
                };
                let rf = match f {
                    "sum" => ReduceFn::Sum,
                    "mean" => ReduceFn::Mean,
                    _ => ReduceFn::Max,
                };
                Ok(Value::Tensor(self.push(Op::Reduce { f: rf, axis, keepdim }, &[t], span)?))
            }
            "linear" | "embedding" | "cross_entropy" => {
                let names: &[&str] = match f {
                    "linear" => &["x", "w"],
                    "embedding" => &["table", "ids"],
                    _ => &["logits", "targets"],
                };
                let a = self.sig(f, names, &[], args, span)?;
                let x = self.tensor_arg(f, &a[0])?;
                let y = self.tensor_arg(f, &a[1])?;
                let op = match f {
                    "linear" => Op::Linear,
                    "embedding" => Op::Gather,
                    _ => Op::CrossEntropy,
                };
                Ok(Value::Tensor(self.push(op, &[x, y], span)?))
            }
            "reshape" | "broadcast" => {
                let a = self.sig(f, &["x", "shape"], &[], args, span)?;
                let t = self.tensor_arg(f, &a[0])?;
                let dims = self.dims_arg(f, &a[1])?;
                let numel = self.ty(t).numel() as u64;
                let mut shape = Vec::with_capacity(dims.len());
                let mut infer = None;
                for (i, &d) in dims.iter().enumerate() {
                    if d == -1 && f == "reshape" && infer.is_none() {
                        infer = Some(i);
                        shape.push(1usize);
                    } else if d < 0 || d as u64 > self.limits.max_numel {
                        return Err(Diagnostic::error(format!("{f}: dimension {d} is out of range"), a[1].1).label("bad dimension"));
                    } else {
                        shape.push(d as usize);
                    }
                }
                self.check_size(&shape, a[1].1)?;
                if let Some(i) = infer {
                    let rest: u64 = shape.iter().map(|&d| d as u64).product();
                    if rest == 0 || !numel.is_multiple_of(rest) {
                        return Err(Diagnostic::error(format!("reshape: cannot infer -1 for {} elements into {dims:?}", numel), a[1].1)
                            .label("does not divide"));
                    }
                    shape[i] = (numel / rest) as usize;
                }
                let op = if f == "reshape" { Op::Reshape { shape } } else { Op::Broadcast { shape } };
                Ok(Value::Tensor(self.push(op, &[t], span)?))
            }
            "permute" => {
                let a = self.sig(f, &["x", "perm"], &[], args, span)?;
                let t = self.tensor_arg(f, &a[0])?;
                let rank = self.ty(t).rank() as i64;
                let dims = self.dims_arg(f, &a[1])?;
                let perm = dims
                    .iter()
                    .map(|&d| if d < 0 { d + rank } else { d })
                    .map(|d| usize::try_from(d).unwrap_or(usize::MAX))
                    .collect();
                Ok(Value::Tensor(self.push(Op::Permute { perm }, &[t], span)?))
            }
            "split_heads" => {
                let a = self.sig(f, &["x", "heads"], &[], args, span)?;
                let t = self.tensor_arg(f, &a[0])?;
                let h = self.unsigned(f, &a[1])?;
                let ty = self.ty(t);
                let r = ty.rank();
                if r < 2 || h == 0 || !ty.shape[r - 1].is_multiple_of(h) {
                    return Err(Diagnostic::error(
                        format!("split_heads: expects x[..., T, heads*head_dim] with a last axis divisible by {h}, got {ty}"),
                        span,
                    )
                    .label("cannot split into heads"));
                }
                let mut shape = ty.shape.clone();
                let d = shape[r - 1] / h;
                shape[r - 1] = h;
                shape.push(d);
                let x = self.push(Op::Reshape { shape }, &[t], span)?;
                let mut perm: Vec<usize> = (0..r + 1).collect();
                perm.swap(r - 2, r - 1);
                Ok(Value::Tensor(self.push(Op::Permute { perm }, &[x], span)?))
            }
            "merge_heads" => {
                let a = self.sig(f, &["x"], &[], args, span)?;
                let t = self.tensor_arg(f, &a[0])?;
                let ty = self.ty(t);
                let r = ty.rank();
                if r < 3 {
                    return Err(Diagnostic::error(format!("merge_heads: expects x[..., heads, T, head_dim], got {ty}"), span)
                        .label("not split into heads"));
                }
                let mut perm: Vec<usize> = (0..r).collect();
                perm.swap(r - 3, r - 2);
                let x = self.push(Op::Permute { perm }, &[t], span)?;
                let mut shape = self.ty(x).shape.clone();
                let d = shape.pop().unwrap_or(1);
                if let Some(last) = shape.last_mut() {
                    *last *= d;
                }
                Ok(Value::Tensor(self.push(Op::Reshape { shape }, &[x], span)?))
            }
            "rope" => {
                let a = self.sig(f, &["x", "base"], &[], args, span)?;
                let t = self.tensor_arg(f, &a[0])?;
                let base = self.num_arg(f, &a[1])?;
                if !(base > 0.0 && base.is_finite()) {
                    return Err(Diagnostic::error(format!("rope: base must be positive, got {base}"), a[1].1).label("bad base"));
                }
                Ok(Value::Tensor(self.push(Op::Rope { base, inverse: false }, &[t], span)?))
            }
            "causal_attention" => {
                let a = self.sig(f, &["q", "k", "v", "scale"], &[], args, span)?;
                let q = self.tensor_arg(f, &a[0])?;
                let k = self.tensor_arg(f, &a[1])?;
                let v = self.tensor_arg(f, &a[2])?;
                let scale = self.num_arg(f, &a[3])?;
                Ok(Value::Tensor(self.push(Op::CausalAttention { scale }, &[q, k, v], span)?))
            }
            "bigram_hash" => {
                let a = self.sig(f, &["ids", "buckets"], &[], args, span)?;
                let t = self.tensor_arg(f, &a[0])?;
                let buckets = self.unsigned(f, &a[1])?;
                if buckets > i32::MAX as usize {
                    return Err(Diagnostic::error("bigram_hash: too many buckets for i32 ids", a[1].1).label("too large"));
                }
                Ok(Value::Tensor(self.push(Op::BigramHash { buckets }, &[t], span)?))
            }
            "shift" => {
                let a = self.sig(f, &["x", "axis", "offset"], &[None, None, Some(Value::Int(1))], args, span)?;
                let t = self.tensor_arg(f, &a[0])?;
                let axis = self.axis_arg(f, &a[1], self.ty(t).rank())?;
                let offset = self.int_arg(f, &a[2])?;
                Ok(Value::Tensor(self.push(Op::Shift { axis, offset }, &[t], span)?))
            }
            "index" => {
                let a = self.sig(f, &["x", "axis", "i"], &[], args, span)?;
                let t = self.tensor_arg(f, &a[0])?;
                let ty = self.ty(t);
                let axis = self.axis_arg(f, &a[1], ty.rank())?;
                let i = self.int_arg(f, &a[2])?;
                let n = ty.shape[axis] as i64;
                let j = if i < 0 { i + n } else { i };
                if j < 0 || j >= n {
                    return Err(Diagnostic::error(format!("index {i} out of range for axis {axis} of {ty}"), a[2].1).label("out of range"));
                }
                Ok(Value::Tensor(self.push(Op::Index { axis, index: j as usize }, &[t], span)?))
            }
            "fake_quant" => {
                let a = self.sig(f, &["w", "bits"], &[], args, span)?;
                let t = self.tensor_arg(f, &a[0])?;
                let b = self.int_arg(f, &a[1])?;
                if !(2..=8).contains(&b) {
                    return Err(Diagnostic::error(format!("fake_quant: bits must be 2..=8, got {b}"), a[1].1).label("bits out of range"));
                }
                Ok(Value::Tensor(self.push(Op::FakeQuant { bits: b as u32 }, &[t], span)?))
            }
            _ => {
                let mut cands: Vec<&str> = builtin_functions();
                cands.extend(self.fns.keys().copied());
                let mut d = Diagnostic::error(format!("unknown function `{f}`"), callee.span).label("not a builtin or a `fn` of this file");
                if let Some(s) = suggest(f, cands.into_iter()) {
                    d = d.note(format!("did you mean `{s}`?"));
                }
                Err(d)
            }
        }
    }

    // ----- parameters -----

    fn param(
        &mut self,
        path: &'a Path,
        shape: &'a [Expr],
        storage: Option<&'a Expr>,
        attrs: &'a [(Attr, Span)],
        span: Span,
    ) -> R<Value> {
        let mut segs = self.scope.clone();
        segs.extend(self.path(path)?);
        let name = segs.join(".");
        let dims = self.shape(shape, span)?;
        let mut quant = QuantSpec::default();
        let mut storage_span = path.span;
        if let Some(s) = storage {
            storage_span = s.span;
            match self.expr(s)? {
                Value::Storage(sc) => {
                    if let StorageClass::Int { bits, .. } = sc {
                        if !(2..=8).contains(&bits) {
                            return Err(Diagnostic::error(format!("integer storage needs 2..=8 bits, got int{bits}"), s.span)
                                .label("bits out of range"));
                        }
                    }
                    quant.storage = sc;
                }
                other => {
                    return Err(Diagnostic::error(
                        format!("expected a storage class (int2..int8, int(bits), f16, f32), got {}", self.describe(&other)),
                        s.span,
                    )
                    .label("not a storage class"))
                }
            }
        }
        let mut init = None;
        let mut seen: Vec<(&'static str, Span)> = Vec::new();
        for (attr, asp) in attrs {
            let key = match attr {
                Attr::Clip(_) => "clip",
                Attr::Qat(_) => "qat",
                Attr::Prune(_) => "prune",
                Attr::Init(_) => "init",
            };
            if let Some((_, prev)) = seen.iter().find(|(k, _)| *k == key) {
                return Err(Diagnostic::error(format!("`{key}` given twice"), *asp).label("second").also(*prev, "first"));
            }
            seen.push((key, *asp));
            match attr {
                Attr::Clip(e) => {
                    let v = self.expr(e)?;
                    let p = num(&v).ok_or_else(|| {
                        Diagnostic::error(format!("clip: expected a percentile, got {}", self.describe(&v)), e.span).label("not a number")
                    })?;
                    if !(p > 0.0 && p <= 100.0) {
                        return Err(Diagnostic::error(format!("clip percentile must be in (0, 100], got {p}"), e.span).label("out of range"));
                    }
                    match &mut quant.storage {
                        StorageClass::Int { clip_percentile, .. } => *clip_percentile = Some(p),
                        other => {
                            return Err(Diagnostic::error(format!("`clip` applies to integer storage, not {other}"), *asp)
                                .label("not an integer class")
                                .also(storage_span, "storage class"))
                        }
                    }
                }
                Attr::Qat(e) => match self.expr(e)? {
                    Value::Qat(q) => quant.qat = q,
                    other => {
                        return Err(Diagnostic::error(format!("qat: expected `none` or `ste(bits)`, got {}", self.describe(&other)), e.span)
                            .label("not a QAT mode"))
                    }
                },
                Attr::Prune(e) => {
                    let v = self.expr(e)?;
                    let p = num(&v).ok_or_else(|| {
                        Diagnostic::error(format!("prune: expected a fraction, got {}", self.describe(&v)), e.span).label("not a number")
                    })?;
                    if !(0.0..1.0).contains(&p) {
                        return Err(Diagnostic::error(format!("prune fraction must be in [0, 1), got {p}"), e.span).label("out of range"));
                    }
                    quant.prune = p;
                }
                Attr::Init(e) => match self.expr(e)? {
                    Value::Init(i) => init = Some((i, e.span)),
                    other => {
                        return Err(Diagnostic::error(
                            format!("init: expected zeros, const(v), rows(..), normal(std) or orthogonal(gain), got {}", self.describe(&other)),
                            e.span,
                        )
                        .label("not an initialiser"))
                    }
                },
            }
        }
        if let Qat::Ste { bits } = quant.qat {
            let qsp = seen.iter().find(|(k, _)| *k == "qat").map(|(_, s)| *s).unwrap_or(span);
            if dims.len() != 2 {
                return Err(Diagnostic::error(format!("QAT quantizes per row and needs a matrix; `{name}` has shape {dims:?}"), qsp)
                    .label("not a matrix"));
            }
            match quant.storage {
                StorageClass::Int { bits: sb, .. } if sb == bits => {}
                ref other => {
                    return Err(Diagnostic::error(
                        format!("QAT trains for int{bits} but `{name}` is stored as {other}; training must see what the artifact holds"),
                        qsp,
                    )
                    .label("QAT bits differ from storage")
                    .also(storage_span, "storage class"))
                }
            }
        }
        let init = match init {
            None => Init::Zeros,
            Some((i, isp)) => {
                match &i {
                    Init::Rows { values } if dims.first() != Some(&values.len()) => {
                        return Err(Diagnostic::error(
                            format!("rows(...) gives {} row value(s) but `{name}` has shape {dims:?}", values.len()),
                            isp,
                        )
                        .label("one value per row"))
                    }
                    Init::Orthogonal { .. } if dims.len() != 2 => {
                        return Err(Diagnostic::error(format!("orthogonal init needs a matrix; `{name}` has shape {dims:?}"), isp)
                            .label("not a matrix"))
                    }
                    _ => {}
                }
                i
            }
        };
        let origin = self.origin(span);
        let is_ste = matches!(quant.qat, Qat::Ste { .. });
        let bits = if let Qat::Ste { bits } = quant.qat { bits } else { 0 };
        let info = ParamInfo { name: name.clone(), shape: dims, quant, init, origin: Some(origin) };
        if let Some(prev) = self.param_spans.get(&name) {
            return Err(Diagnostic::error(format!("parameter `{name}` declared twice"), path.span)
                .label("second declaration")
                .also(*prev, "first declared here")
                .note("to use a parameter twice, bind it with `let` and reuse the variable"));
        }
        if self.g.params.len() >= self.limits.max_params {
            return Err(Diagnostic::error(format!("more than {} parameters", self.limits.max_params), span)
                .label("one too many")
                .note("is a loop or the model much larger than intended?"));
        }
        if self.g.nodes.len() >= self.limits.max_nodes {
            return Err(Diagnostic::error(format!("the graph would exceed {} nodes", self.limits.max_nodes), span)
                .label("while lowering this"));
        }
        // Pushed directly: the type is known, and `Graph::add_param`/`Graph::push`
        // look parameters up by a linear scan (quadratic for huge programs).
        let ty = TensorType::f32(info.shape.clone());
        let porigin = info.origin.clone();
        self.g.params.push(info);
        let id = pgc_ir::ParamId(self.g.params.len() as u32 - 1);
        self.param_spans.insert(name.clone(), path.span);
        let mut v = ValueId(self.g.nodes.len() as u32);
        self.g.nodes.push(pgc_ir::Node { op: Op::Param { id }, args: Vec::new(), ty, origin: porigin });
        if self.mode == Mode::Train && is_ste {
            v = self.push(Op::FakeQuant { bits }, &[v], span)?;
        }
        Ok(Value::Tensor(v))
    }
}
