//! The GEMM emitters' test matrix: the configurations the tests assemble
//! and run, deterministic inputs, and an f64 reference of `op(A) @ op(B)`
//! followed by the epilogue. Test support only, so it lives with the tests
//! (`tests/common/gemm.rs` runs a case on a device).

use pgc_backends::ptx::templates::epilogue::{ElemType, EpiStep, Epilogue};
use pgc_backends::ptx::templates::gemm::{AStore, BStore, GemmConfig, GemmLayout, Precision, TileConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The awkward shapes every layout is checked on (M, N, K).
pub const AWKWARD_SHAPES: [(u32, u32, u32); 3] = [(33, 48, 200), (1, 8, 16), (257, 129, 65)];

pub const LAYOUTS: [GemmLayout; 4] = [GemmLayout::LINEAR, GemmLayout::INPUT_GRAD, GemmLayout::WEIGHT_GRAD, GemmLayout::TT];

/// One test case: a kernel configuration and a problem size.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GemmCase {
    pub config: GemmConfig,
    pub m: u32,
    pub n: u32,
    pub k: u32,
}

/// The epilogues the tests cover (each named step at least once).
pub fn epilogues(out: ElemType) -> Vec<Epilogue> {
    vec![
        Epilogue::store(out),
        Epilogue::row_scale("rstd", out),
        Epilogue::relu2(Some(("pre", ElemType::Bf16)), out),
        Epilogue::relu2(None, out),
        Epilogue::residual("res", ElemType::F32, Some("s"), out),
        Epilogue::residual("res", ElemType::Bf16, None, out),
        Epilogue {
            steps: vec![
                EpiStep::ColBias { param: "bias".into() },
                EpiStep::Relu2Grad { param: "pre".into(), dtype: ElemType::F32 },
                EpiStep::Scale { value: 0.5 },
                EpiStep::StoreAux { param: "aux".into(), dtype: ElemType::F32 },
            ],
            out,
        },
    ]
}

/// The test matrix: every layout x precision x awkward shape (plain store),
/// every epilogue on two shapes per precision, and each tile preset / stage
/// count.
pub fn cases() -> Vec<GemmCase> {
    let mut out = vec![];
    let mut push = |config: GemmConfig, (m, n, k): (u32, u32, u32)| out.push(GemmCase { config, m, n, k });
    for prec in [Precision::Bf16, Precision::F32] {
        for layout in LAYOUTS {
            for s in AWKWARD_SHAPES {
                push(GemmConfig::new(prec, layout, s.0, s.1, s.2, Epilogue::store(ElemType::F32)), s);
            }
        }
    }
    for out_t in [ElemType::F32, ElemType::Bf16] {
        for e in epilogues(out_t) {
            for (layout, s) in [(GemmLayout::LINEAR, (33, 48, 200)), (GemmLayout::INPUT_GRAD, (257, 129, 65))] {
                push(GemmConfig::new(Precision::Bf16, layout, s.0, s.1, s.2, e.clone()), s);
            }
            for (layout, s) in [(GemmLayout::WEIGHT_GRAD, (33, 48, 200)), (GemmLayout::LINEAR, (257, 129, 65))] {
                push(GemmConfig::new(Precision::F32, layout, s.0, s.1, s.2, e.clone()), s);
            }
        }
    }
    // every epilogue with the big tile (register pressure: 64x64 warp tiles)
    for out_t in [ElemType::F32, ElemType::Bf16] {
        for e in epilogues(out_t) {
            let s = (256, 192, 96);
            push(GemmConfig::new(Precision::Bf16, GemmLayout::INPUT_GRAD, s.0, s.1, s.2, e).with_tile(TileConfig::LARGE), s);
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
            let c = GemmConfig::new(Precision::Bf16, layout, s.0, s.1, s.2, Epilogue::store(ElemType::Bf16)).with_tile(t);
            push(c, s);
        }
    }
    for t in [TileConfig::F32_DEFAULT, TileConfig { stages: 3, ..TileConfig::F32_SMALL }] {
        let s = (130, 100, 50);
        push(GemmConfig::new(Precision::F32, GemmLayout::INPUT_GRAD, s.0, s.1, s.2, Epilogue::store(ElemType::F32)).with_tile(t), s);
    }
    // split-K (accumulating into C), including splits that get no k-tiles
    let scaled = Epilogue { steps: vec![EpiStep::RowScale { param: "rstd".into() }, EpiStep::Scale { value: -0.25 }], out: ElemType::F32 };
    for (prec, layout, s, split, e) in [
        (Precision::Bf16, GemmLayout::WEIGHT_GRAD, (33, 48, 200), 3, Epilogue::store(ElemType::F32)),
        (Precision::Bf16, GemmLayout::LINEAR, (257, 129, 65), 2, scaled.clone()),
        (Precision::Bf16, GemmLayout::WEIGHT_GRAD, (40, 24, 16), 4, Epilogue::store(ElemType::F32)),
        (Precision::F32, GemmLayout::WEIGHT_GRAD, (33, 48, 200), 5, scaled),
        (Precision::F32, GemmLayout::INPUT_GRAD, (1, 8, 16), 2, Epilogue::store(ElemType::F32)),
    ] {
        push(GemmConfig::new(prec, layout, s.0, s.1, s.2, e).with_split_k(split), s);
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
    for (layout, (m, n, k)) in shapes {
        for t in tiles {
            let c = GemmConfig::new(Precision::Bf16, layout, m, n, k, Epilogue::store(ElemType::Bf16)).with_tile(t);
            out.push(GemmCase { config: c, m, n, k });
        }
    }
    // weight gradients: few output tiles, long K: split-K or smaller tiles
    let (m, n, k) = (1536, 512, 16384);
    for (t, split) in [(TileConfig::LARGE, 1), (TileConfig::LARGE, 4), (TileConfig::LARGE, 6), (TileConfig::LARGE_8W, 4), (TileConfig::MEDIUM, 1)] {
        let out_t = if split > 1 { ElemType::F32 } else { ElemType::Bf16 };
        let c = GemmConfig::new(Precision::Bf16, GemmLayout::WEIGHT_GRAD, m, n, k, Epilogue::store(out_t)).with_tile(t).with_split_k(split);
        out.push(GemmCase { config: c, m, n, k });
    }
    out
}

/// A tensor a case's kernel takes, in pointer-parameter order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub elems: usize,
    pub dtype: ElemType,
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
            Precision::Bf16 => ElemType::Bf16,
            Precision::F32 => ElemType::F32,
        };
        let t = |name: &str, elems: usize, dtype: ElemType, output: bool| TensorSpec { name: name.into(), elems, dtype, output, initial: false };
        let mut c = t("c", m * n, self.config.epilogue.out, true);
        c.initial = self.config.split_k > 1;
        let mut v = vec![t("a", m * k, inp, false), t("b", k * n, inp, false), c];
        for s in &self.config.epilogue.steps {
            match s {
                EpiStep::RowScale { param } => v.push(t(param, m, ElemType::F32, false)),
                EpiStep::ColScale { param } | EpiStep::ColBias { param } => v.push(t(param, n, ElemType::F32, false)),
                EpiStep::Relu2Grad { param, dtype } | EpiStep::AddTensor { param, dtype } => v.push(t(param, m * n, *dtype, false)),
                EpiStep::StoreAux { param, dtype } => v.push(t(param, m * n, *dtype, true)),
                EpiStep::Scale { .. } | EpiStep::Relu2 => {}
                EpiStep::Pointwise(_) => unreachable!("the GEMM test matrix has no pointwise epilogues"),
            }
        }
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
                    round_to(x, t.dtype)
                })
                .collect();
            out.insert(t.name.clone(), v);
        }
        out
    }

    /// The f64 reference outputs (`c` and any auxiliary outputs), each rounded to its element type.
    pub fn reference(&self, inp: &BTreeMap<String, Vec<f64>>) -> BTreeMap<String, Vec<f64>> {
        let (m, n, k) = (self.m as usize, self.n as usize, self.k as usize);
        let (a, b) = (&inp["a"], &inp["b"]);
        let epi = &self.config.epilogue;
        let mut out: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        out.insert("c".into(), vec![0.0; m * n]);
        let c_init = if self.config.split_k > 1 { Some(&inp["c"]) } else { None };
        for s in &epi.steps {
            if let EpiStep::StoreAux { param, .. } = s {
                out.insert(param.clone(), vec![0.0; m * n]);
            }
        }
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
                let mut v = acc;
                let e = i * n + j;
                for s in &epi.steps {
                    match s {
                        EpiStep::RowScale { param } => v *= inp[param][i],
                        EpiStep::ColScale { param } => v *= inp[param][j],
                        EpiStep::ColBias { param } => v += inp[param][j],
                        EpiStep::Scale { value } => v *= *value as f64,
                        EpiStep::Relu2 => v = v.max(0.0) * v.max(0.0),
                        EpiStep::Relu2Grad { param, .. } => v *= 2.0 * inp[param][e].max(0.0),
                        EpiStep::AddTensor { param, .. } => v += inp[param][e],
                        EpiStep::StoreAux { param, dtype } => out.get_mut(param).unwrap()[e] = round_to(v, *dtype),
                        EpiStep::Pointwise(_) => unreachable!("the GEMM test matrix has no pointwise epilogues"),
                    }
                }
                if let Some(ci) = c_init {
                    v += ci[e];
                }
                out.get_mut("c").unwrap()[e] = round_to(v, epi.out);
            }
        }
        out
    }

    /// Relative tolerance on `max|got - want| / max|want|` for an output of type `dt`:
    /// the f32 results of bf16 inputs are exact products summed in f32.
    pub fn tolerance(dt: ElemType) -> f64 {
        match dt {
            ElemType::F32 => 1e-5,
            ElemType::Bf16 => 8e-3,
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
pub fn round_to(x: f64, dt: ElemType) -> f64 {
    let f = x as f32;
    match dt {
        ElemType::F32 => f as f64,
        ElemType::Bf16 => bf16_to_f32(f32_to_bf16(f)) as f64,
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
pub fn encode(v: &[f64], dt: ElemType) -> Vec<u8> {
    match dt {
        ElemType::F32 => v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect(),
        ElemType::Bf16 => v.iter().flat_map(|x| f32_to_bf16(*x as f32).to_le_bytes()).collect(),
    }
}

pub fn decode(bytes: &[u8], dt: ElemType) -> Vec<f64> {
    match dt {
        ElemType::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect(),
        ElemType::Bf16 => bytes.chunks_exact(2).map(|c| bf16_to_f32(u16::from_le_bytes([c[0], c[1]])) as f64).collect(),
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
