//! The GEMM emitters' test matrix: the configurations the tests assemble
//! and run, deterministic inputs, and an f64 reference of `op(A) @ op(B)`
//! followed by the epilogue. Test support only, so it lives with the tests
//! (`tests/common/gemm.rs` runs a case on a device).
//!
//! A case's epilogue is an [`EpiCase`]: what the reference computes, and
//! what the kernel's [`Epilogue`] is built from: the library's row-scale step,
//! or a pointwise program in the scalar IR (as the plan adapters build them)
//! for everything element-wise.

use pgc_backends::ptx::pointwise::epi::{PwEpilogue, PwStore};
use pgc_backends::ptx::templates::epilogue::{DType, EpiStep, Epilogue};
use pgc_backends::ptx::templates::gemm::{AStore, BStore, GemmConfig, GemmLayout, Precision, TileConfig};
use pgc_backends::scalar::expr::{Exprs, Ty, Var, E, F2};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The awkward shapes every layout is checked on (M, N, K).
pub const AWKWARD_SHAPES: [(u32, u32, u32); 3] = [(33, 48, 200), (1, 8, 16), (257, 129, 65)];

pub const LAYOUTS: [GemmLayout; 4] = [GemmLayout::LINEAR, GemmLayout::INPUT_GRAD, GemmLayout::WEIGHT_GRAD, GemmLayout::TT];

/// What a case computes after the product `acc` at `(row, col)`. The first
/// two write `c`; the pointwise ones write `out` (and `pre` / `aux`), the
/// GEMM's own `c` being unused.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum EpiCase {
    /// `c = acc`
    Store,
    /// `c = acc * rstd[row]` (linear: allowed under split-K)
    RowScale,
    /// `out = max(acc, 0)^2`, and the pre-activation `pre = acc` when `pre` gives its type
    Relu2 { pre: Option<DType> },
    /// `out = res[row, col] + s[col] * acc` (the column scale `s` only when `col_scale`)
    Residual { res: DType, col_scale: bool },
    /// The relu² gradient after a column bias, stored twice (`aux` in f32):
    /// `aux = out = (acc + bias[col]) * 2 max(pre[row, col], 0) * 0.5` (`pre` f32)
    BiasRelu2Grad,
}

/// The epilogues the tests cover.
pub const EPILOGUES: [EpiCase; 7] = [
    EpiCase::Store,
    EpiCase::RowScale,
    EpiCase::Relu2 { pre: Some(DType::Bf16) },
    EpiCase::Relu2 { pre: None },
    EpiCase::Residual { res: DType::F32, col_scale: true },
    EpiCase::Residual { res: DType::Bf16, col_scale: false },
    EpiCase::BiasRelu2Grad,
];


/// A pointwise epilogue under construction: the scalar program over
/// `(row, col, acc)` and a tensor spec per buffer, in parameter order.
struct Pw {
    x: Exprs,
    row: Var,
    col: Var,
    acc: Var,
    shape: [usize; 2],
    specs: Vec<TensorSpec>,
    stores: Vec<PwStore>,
}

impl Pw {
    fn new(m: u32, n: u32) -> Pw {
        let mut x = Exprs::new();
        let row = x.var(Ty::U32, m as u64, "row");
        let col = x.var(Ty::U32, n as u64, "col");
        let acc = x.var(Ty::Float, 0, "acc");
        Pw { x, row, col, acc, shape: [m as usize, n as usize], specs: vec![], stores: vec![] }
    }
    fn acc(&mut self) -> E {
        self.x.var_e(self.acc)
    }
    fn col(&mut self) -> E {
        self.x.var_e(self.col)
    }
    /// `row * N + col`
    fn elem_index(&mut self) -> E {
        let (r, c) = (self.x.var_e(self.row), self.x.var_e(self.col));
        self.x.linear(&self.shape, &[r, c])
    }
    fn buf(&mut self, name: &str, elems: usize, dt: DType, output: bool) -> pgc_backends::scalar::expr::Buf {
        self.specs.push(TensorSpec { name: name.into(), elems, dtype: dt, output, initial: false });
        self.x.buf(dt)
    }
    /// `name[row, col]`
    fn load_elem(&mut self, name: &str, dt: DType) -> E {
        let b = self.buf(name, self.shape[0] * self.shape[1], dt, false);
        let i = self.elem_index();
        self.x.load(b, i)
    }
    /// `name[col]` (f32)
    fn load_col(&mut self, name: &str) -> E {
        let b = self.buf(name, self.shape[1], DType::F32, false);
        let i = self.col();
        self.x.load(b, i)
    }
    /// `name[row, col] = value`
    fn store(&mut self, name: &str, dt: DType, value: E) {
        let buf = self.buf(name, self.shape[0] * self.shape[1], dt, true);
        let index = self.elem_index();
        self.stores.push(PwStore { buf, index, value });
    }
    fn finish(self) -> (Vec<EpiStep>, Vec<TensorSpec>) {
        let params = self.specs.iter().map(|t| t.name.clone()).collect();
        let pw = PwEpilogue { exprs: self.x, row: self.row, col: self.col, acc: self.acc, params, stores: self.stores, row_sums: vec![] };
        (vec![EpiStep::Pointwise(Box::new(pw))], self.specs)
    }
}

impl EpiCase {
    fn is_pointwise(self) -> bool {
        !matches!(self, EpiCase::Store | EpiCase::RowScale)
    }

    /// Kernel-name suffix of a pointwise case (the library tags every pointwise step `p`).
    fn tag(self) -> String {
        let dt = |d: DType| if d == DType::F32 { "f" } else { "h" };
        match self {
            EpiCase::Store | EpiCase::RowScale => String::new(),
            EpiCase::Relu2 { pre } => format!("q{}", pre.map(dt).unwrap_or("")),
            EpiCase::Residual { res, col_scale } => format!("a{}{}", dt(res), if col_scale { "c" } else { "" }),
            EpiCase::BiasRelu2Grad => "g".into(),
        }
    }

    /// The kernel's epilogue steps for an `[m, n]` output `out` (`out` of a
    /// pointwise case), and the tensors those steps add, in parameter order.
    pub fn build(self, m: u32, n: u32, out: DType) -> (Vec<EpiStep>, Vec<TensorSpec>) {
        let mut pw = Pw::new(m, n);
        match self {
            EpiCase::Store => return (vec![], vec![]),
            EpiCase::RowScale => {
                let spec = TensorSpec { name: "rstd".into(), elems: m as usize, dtype: DType::F32, output: false, initial: false };
                return (vec![EpiStep::RowScale { param: "rstd".into() }], vec![spec]);
            }
            EpiCase::Relu2 { pre } => {
                let acc = pw.acc();
                let zero = pw.x.f32_c(0.0);
                let t = pw.x.f2(F2::Max, acc, zero);
                let y = pw.x.fmul(t, t);
                pw.store("out", out, y);
                if let Some(dt) = pre {
                    pw.store("pre", dt, acc);
                }
            }
            EpiCase::Residual { res, col_scale } => {
                let mut v = pw.acc();
                if col_scale {
                    let s = pw.load_col("s");
                    v = pw.x.fmul(v, s);
                }
                let r = pw.load_elem("res", res);
                let y = pw.x.fadd(v, r);
                pw.store("out", out, y);
            }
            EpiCase::BiasRelu2Grad => {
                let acc = pw.acc();
                let bias = pw.load_col("bias");
                let v = pw.x.fadd(acc, bias);
                let p = pw.load_elem("pre", DType::F32);
                let zero = pw.x.f32_c(0.0);
                let t = pw.x.f2(F2::Max, p, zero);
                let t2 = pw.x.fadd(t, t);
                let v = pw.x.fmul(v, t2);
                let half = pw.x.f32_c(0.5);
                let v = pw.x.fmul(v, half);
                pw.store("aux", DType::F32, v);
                pw.store("out", out, v);
            }
        }
        pw.finish()
    }

    /// The f64 reference after the product `acc` at `(i, j)` of an `[m, n]`
    /// output: each output's value, unrounded.
    fn reference(self, acc: f64, i: usize, j: usize, n: usize, inp: &BTreeMap<String, Vec<f64>>) -> Vec<(&'static str, f64)> {
        let e = i * n + j;
        match self {
            EpiCase::Store => vec![("c", acc)],
            EpiCase::RowScale => vec![("c", acc * inp["rstd"][i])],
            EpiCase::Relu2 { pre } => {
                let mut v = vec![("out", acc.max(0.0) * acc.max(0.0))];
                if pre.is_some() {
                    v.push(("pre", acc));
                }
                v
            }
            EpiCase::Residual { col_scale, .. } => {
                let s = if col_scale { inp["s"][j] } else { 1.0 };
                vec![("out", inp["res"][e] + s * acc)]
            }
            EpiCase::BiasRelu2Grad => {
                let v = (acc + inp["bias"][j]) * 2.0 * inp["pre"][e].max(0.0) * 0.5;
                vec![("aux", v), ("out", v)]
            }
        }
    }
}

/// One test case: a kernel configuration, the epilogue it was built from and a problem size.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GemmCase {
    pub config: GemmConfig,
    pub epi: EpiCase,
    pub m: u32,
    pub n: u32,
    pub k: u32,
}

impl GemmCase {
    /// `op(A) @ op(B)` of size `(m, n, k)` followed by `epi` into outputs of type `out`.
    pub fn new(prec: Precision, layout: GemmLayout, (m, n, k): (u32, u32, u32), epi: EpiCase, out: DType) -> GemmCase {
        let (steps, _) = epi.build(m, n, out);
        let config = GemmConfig::new(prec, layout, m, n, k, Epilogue { steps, out });
        GemmCase { config, epi, m, n, k }.named()
    }

    pub fn with_tile(mut self, t: TileConfig) -> GemmCase {
        self.config = self.config.with_tile(t);
        self.named()
    }

    pub fn with_split_k(mut self, splits: u32) -> GemmCase {
        self.config = self.config.with_split_k(splits);
        self.named()
    }

    /// Pointwise epilogues all tag `p`: the case's tag keeps kernel names unique.
    fn named(mut self) -> GemmCase {
        if self.epi.is_pointwise() {
            self.config.name = format!("{}_{}", self.config.default_name(), self.epi.tag());
        }
        self
    }
}

/// The bf16 cases the wgmma path can run (operand rows a multiple of 16
/// bytes, bf16 in memory), on it, plus the shapes with K = 8, 24 and
/// N = 1, 70 the Hopper GEMM issue names, N = 64 tiles where N is small.
pub fn wgmma_cases() -> Vec<GemmCase> {
    let mut all = cases();
    for (layout, s) in [(GemmLayout::LINEAR, (70, 1, 8)), (GemmLayout::LINEAR, (129, 70, 24)), (GemmLayout::INPUT_GRAD, (65, 24, 70)), (GemmLayout::LINEAR, (300, 260, 136))] {
        all.push(GemmCase::new(Precision::Bf16, layout, s, EpiCase::Store, DType::F32));
        all.push(GemmCase::new(Precision::Bf16, layout, s, EpiCase::Store, DType::Bf16));
    }
    // f32 operands converted by the producer warpgroup (the residual stream under a row scale, f32 weights)
    for (layout, s, fa, fb) in [
        (GemmLayout::LINEAR, (33, 48, 200), true, false),
        (GemmLayout::LINEAR, (129, 70, 24), false, true),
        (GemmLayout::INPUT_GRAD, (65, 24, 72), true, true),
        (GemmLayout::WEIGHT_GRAD, (48, 136, 70), true, false),
    ] {
        let mut c = GemmCase::new(Precision::Bf16, layout, s, EpiCase::Store, DType::F32);
        c.config = c.config.with_f32_operands(fa, fb, s.0, s.1, s.2);
        all.push(c);
        let mut c = GemmCase::new(Precision::Bf16, layout, s, EpiCase::RowScale, DType::Bf16);
        c.config = c.config.with_f32_operands(fa, fb, s.0, s.1, s.2);
        all.push(c);
    }
    let mut wide = Vec::new();
    // 256-wide tiles (setmaxnreg): N over two tiles, with an epilogue
    for (s, e, out) in [((200, 520, 136), EpiCase::Store, DType::Bf16), ((130, 300, 64), EpiCase::RowScale, DType::F32)] {
        let mut c = GemmCase::new(Precision::Bf16, GemmLayout::LINEAR, s, e, out);
        c.config = c.config.with_wgmma(256, 3);
        c.config.name = format!("{}_w{}", c.config.name, wide.len());
        wide.push(c);
    }
    all.into_iter()
        .filter(|c| c.config.precision == Precision::Bf16 && c.config.wgmma_allowed(c.m, c.n, c.k))
        .enumerate()
        .map(|(i, mut c)| {
            let bn = if c.n <= 64 { 64 } else { 128 };
            let split = c.config.split_k;
            c.config = c.config.with_wgmma(bn, 4);
            if split > 1 {
                c.config = c.config.with_split_k(split);
            }
            // the case's index in the name: two pointwise epilogues can share a tag
            c.config.name = format!("{}_c{i}", c.config.name);
            c
        })
        .chain(wide)
        .collect()
}

/// The test matrix: every layout x precision x awkward shape (plain store),
/// every epilogue on two shapes per precision, and each tile preset / stage
/// count.
pub fn cases() -> Vec<GemmCase> {
    let mut out = vec![];
    for prec in [Precision::Bf16, Precision::F32] {
        for layout in LAYOUTS {
            for s in AWKWARD_SHAPES {
                out.push(GemmCase::new(prec, layout, s, EpiCase::Store, DType::F32));
            }
        }
    }
    for out_t in [DType::F32, DType::Bf16] {
        for e in EPILOGUES {
            for (layout, s) in [(GemmLayout::LINEAR, (33, 48, 200)), (GemmLayout::INPUT_GRAD, (257, 129, 65))] {
                out.push(GemmCase::new(Precision::Bf16, layout, s, e, out_t));
            }
            for (layout, s) in [(GemmLayout::WEIGHT_GRAD, (33, 48, 200)), (GemmLayout::LINEAR, (257, 129, 65))] {
                out.push(GemmCase::new(Precision::F32, layout, s, e, out_t));
            }
        }
    }
    // every epilogue with the big tile (register pressure: 64x64 warp tiles)
    for out_t in [DType::F32, DType::Bf16] {
        for e in EPILOGUES {
            out.push(GemmCase::new(Precision::Bf16, GemmLayout::INPUT_GRAD, (256, 192, 96), e, out_t).with_tile(TileConfig::LARGE));
        }
    }
    let presets = [
        TileConfig::LARGE,
        TileConfig::LARGE_8W,
        TileConfig { stages: 2, ..TileConfig::LARGE_8W },
        TileConfig { stages: 4, bk: 64, ..TileConfig::MEDIUM },
        TileConfig::MEDIUM,
        TileConfig { stages: 4, ..TileConfig::SMALL },
        TileConfig { bm: 64, bn: 128, bk: 32, warps_m: 2, warps_n: 2, stages: 3, min_blocks: 1 },
    ];
    for t in presets {
        for (layout, s) in [(GemmLayout::LINEAR, (256, 192, 96)), (GemmLayout::WEIGHT_GRAD, (200, 136, 72))] {
            out.push(GemmCase::new(Precision::Bf16, layout, s, EpiCase::Store, DType::Bf16).with_tile(t));
        }
    }
    for t in [TileConfig::F32_DEFAULT, TileConfig { stages: 3, ..TileConfig::F32_SMALL }] {
        out.push(GemmCase::new(Precision::F32, GemmLayout::INPUT_GRAD, (130, 100, 50), EpiCase::Store, DType::F32).with_tile(t));
    }
    // split-K (accumulating into C; linear epilogues only), including splits that get no k-tiles
    for (prec, layout, s, split, e) in [
        (Precision::Bf16, GemmLayout::WEIGHT_GRAD, (33, 48, 200), 3, EpiCase::Store),
        (Precision::Bf16, GemmLayout::LINEAR, (257, 129, 65), 2, EpiCase::RowScale),
        (Precision::Bf16, GemmLayout::WEIGHT_GRAD, (40, 24, 16), 4, EpiCase::Store),
        (Precision::F32, GemmLayout::WEIGHT_GRAD, (33, 48, 200), 5, EpiCase::RowScale),
        (Precision::F32, GemmLayout::INPUT_GRAD, (1, 8, 16), 2, EpiCase::Store),
    ] {
        out.push(GemmCase::new(prec, layout, s, e, DType::F32).with_split_k(split));
    }
    out
}

/// Model-sized cases for timing on a GPU (11-layer model: dim 512, MLP 1536,
/// 16384 tokens): each training-step layout with several big tiles.
pub fn perf_cases() -> Vec<GemmCase> {
    let tiles = [
        TileConfig::LARGE,
        TileConfig { stages: 4, bk: 32, ..TileConfig::LARGE },
        TileConfig::LARGE_8W,
        TileConfig { bk: 64, ..TileConfig::LARGE_8W },
        TileConfig { bm: 128, bn: 256, bk: 64, warps_m: 2, warps_n: 4, stages: 3, min_blocks: 1 },
    ];
    let shapes = [
        (GemmLayout::LINEAR, (16384, 1536, 512)),
        (GemmLayout::LINEAR, (16384, 512, 1536)),
        (GemmLayout::INPUT_GRAD, (16384, 512, 1536)),
        (GemmLayout::WEIGHT_GRAD, (1536, 512, 16384)),
    ];
    let mut out = vec![];
    for (layout, s) in shapes {
        for t in tiles {
            out.push(GemmCase::new(Precision::Bf16, layout, s, EpiCase::Store, DType::Bf16).with_tile(t));
        }
    }
    // weight gradients: few output tiles, long K: split-K or smaller tiles
    for (t, split) in [(TileConfig::LARGE, 1), (TileConfig::LARGE, 4), (TileConfig::LARGE, 6), (TileConfig::LARGE_8W, 4), (TileConfig::MEDIUM, 1)] {
        let out_t = if split > 1 { DType::F32 } else { DType::Bf16 };
        let c = GemmCase::new(Precision::Bf16, GemmLayout::WEIGHT_GRAD, (1536, 512, 16384), EpiCase::Store, out_t);
        out.push(c.with_tile(t).with_split_k(split));
    }
    out
}

/// A tensor a case's kernel takes, in pointer-parameter order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub elems: usize,
    pub dtype: DType,
    pub output: bool,
    /// An output whose initial contents matter (split-K accumulates into C):
    /// [`GemmCase::inputs`] provides them.
    pub initial: bool,
}

impl GemmCase {
    /// Tensors in kernel-parameter order (`a, b, c`, then the epilogue's);
    /// the scalars `m, n, k` come between `c` and the epilogue's tensors.
    pub fn tensors(&self) -> Vec<TensorSpec> {
        let (m, n, k) = (self.m as usize, self.n as usize, self.k as usize);
        let inp = match self.config.precision {
            Precision::Bf16 => DType::Bf16,
            Precision::F32 => DType::F32,
        };
        let t = |name: &str, elems: usize, dtype: DType, output: bool| TensorSpec { name: name.into(), elems, dtype, output, initial: false };
        let out = self.config.epilogue.out;
        let c = if self.epi.is_pointwise() {
            // a pointwise epilogue stores its outputs itself: `c` is any valid pointer
            t("c", 1, DType::F32, false)
        } else {
            TensorSpec { initial: self.config.split_k > 1, ..t("c", m * n, out, true) }
        };
        // an operand the kernel converts is f32 in memory
        let (ta, tb) = (if self.config.a_f32 { DType::F32 } else { inp }, if self.config.b_f32 { DType::F32 } else { inp });
        let mut v = vec![t("a", m * k, ta, false), t("b", k * n, tb, false), c];
        v.extend(self.epi.build(self.m, self.n, out).1);
        v
    }

    /// Deterministic inputs, already rounded to their element type.
    pub fn inputs(&self, seed: u64) -> BTreeMap<String, Vec<f64>> {
        let mut rng = Lcg(seed ^ 0x9e37_79b9_7f4a_7c15);
        let mut out = BTreeMap::new();
        for t in self.tensors() {
            if t.output && !t.initial {
                continue;
            }
            let positive = matches!(t.name.as_str(), "rstd" | "s");
            let v: Vec<f64> = (0..t.elems)
                .map(|_| {
                    let u = rng.uniform();
                    let x = if positive { 0.5 + u.abs() } else { u };
                    // f32 operands of a bf16 GEMM hold bf16 values: the in-kernel conversion is exact
                    let converted = (t.name == "a" && self.config.a_f32) || (t.name == "b" && self.config.b_f32);
                    round_to(x, if converted { DType::Bf16 } else { t.dtype })
                })
                .collect();
            out.insert(t.name.clone(), v);
        }
        out
    }

    /// The f64 reference outputs (every output tensor), each rounded to its element type.
    pub fn reference(&self, inp: &BTreeMap<String, Vec<f64>>) -> BTreeMap<String, Vec<f64>> {
        let (m, n, k) = (self.m as usize, self.n as usize, self.k as usize);
        let (a, b) = (&inp["a"], &inp["b"]);
        let dtypes: BTreeMap<String, DType> = self.tensors().into_iter().filter(|t| t.output).map(|t| (t.name, t.dtype)).collect();
        let mut out: BTreeMap<String, Vec<f64>> = dtypes.keys().map(|name| (name.clone(), vec![0.0; m * n])).collect();
        let c_init = if self.config.split_k > 1 { Some(&inp["c"]) } else { None };
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f64;
                for kk in 0..k {
                    let av = match self.config.layout.a {
                        AStore::MK => a[i * k + kk],
                        AStore::KM => a[kk * m + i],
                    };
                    let bv = match self.config.layout.b {
                        BStore::NK => b[j * k + kk],
                        BStore::KN => b[kk * n + j],
                    };
                    acc += av * bv;
                }
                let e = i * n + j;
                for (name, mut v) in self.epi.reference(acc, i, j, n, inp) {
                    if let Some(ci) = c_init {
                        v += ci[e]; // split-K: only `c` (linear epilogues)
                    }
                    out.get_mut(name).unwrap()[e] = round_to(v, dtypes[name]);
                }
            }
        }
        out
    }

    /// Relative tolerance on `max|got - want| / max|want|` for an output of type `dt`:
    /// the f32 results of bf16 inputs are exact products summed in f32.
    pub fn tolerance(dt: DType) -> f64 {
        match dt {
            DType::F32 => 1e-5,
            DType::Bf16 => 8e-3,
            DType::I32 => 0.0,
        }
    }
}

/// `max|got - want| / max|want|` (0 when both are all zero).
pub fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let mut num = 0.0f64;
    let mut den = 0.0f64;
    for (g, w) in got.iter().zip(want) {
        if g.is_nan() {
            return f64::INFINITY;
        }
        num = num.max((g - w).abs());
        den = den.max(w.abs());
    }
    if den == 0.0 {
        num
    } else {
        num / den
    }
}

/// Round to f32 or bf16 (round to nearest even), returned as f64.
pub fn round_to(x: f64, dt: DType) -> f64 {
    let f = x as f32;
    match dt {
        DType::F32 => f as f64,
        DType::Bf16 => bf16_to_f32(f32_to_bf16(f)) as f64,
        DType::I32 => x.round(),
    }
}

pub fn f32_to_bf16(f: f32) -> u16 {
    let b = f.to_bits();
    if f.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    let r = b.wrapping_add(0x7fff + ((b >> 16) & 1));
    (r >> 16) as u16
}

pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Encode values as little-endian bytes of the element type.
pub fn encode(v: &[f64], dt: DType) -> Vec<u8> {
    match dt {
        DType::F32 => v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect(),
        DType::Bf16 => v.iter().flat_map(|x| f32_to_bf16(*x as f32).to_le_bytes()).collect(),
        DType::I32 => v.iter().flat_map(|x| (*x as i32).to_le_bytes()).collect(),
    }
}

pub fn decode(bytes: &[u8], dt: DType) -> Vec<f64> {
    match dt {
        DType::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect(),
        DType::Bf16 => bytes.chunks_exact(2).map(|c| bf16_to_f32(u16::from_le_bytes([c[0], c[1]])) as f64).collect(),
        DType::I32 => bytes.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect(),
    }
}

/// A small deterministic generator (64-bit LCG, top bits).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next_u32(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u32() as f64 / (1u64 << 31) as f64) * 2.0 - 1.0
    }
}
