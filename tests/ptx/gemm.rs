//! The GEMM kernels run on the PTX simulator (with its sanitizer: races,
//! out-of-bounds, uninitialised shared reads, cp.async hazards) and are
//! compared with an f64 reference of the same (bf16-rounded) inputs:
//! `max|got - want| / max|want|` below 1e-5 for f32 outputs (both the bf16
//! tensor-core and the f32 FFMA kernels), and below bf16 rounding for bf16
//! outputs. Outputs start as NaN so an element the kernel fails to write
//! shows up.

use crate::common;

use common::gemm::{check_cases, render, run_gemm, run_gemm_on_grid};
use common::gemm_matrix::{bf16_to_f32, cases, f32_to_bf16, rel_err, wgmma_cases, EpiCase, GemmCase, AWKWARD_SHAPES};
use pgc_backends::ptx::templates::epilogue::DType;
use pgc_backends::ptx::templates::gemm::{emit_gemm, GemmKernel, GemmLayout, Precision};
use pgc_runtime::device::{Device, ModuleHandle};
use pgc_runtime::sim::SimDevice;
use std::collections::BTreeMap;

/// Emit a case's kernel and load it on the simulator.
fn load(dev: &SimDevice, case: &GemmCase) -> Result<(GemmKernel, ModuleHandle), String> {
    let k = emit_gemm(&case.config).map_err(|e| e.to_string())?;
    let mh = dev.load_module(&render(&k)).map_err(|e| format!("load {}: {e}", k.name()))?;
    Ok((k, mh))
}

/// Run a case's kernel on `inputs`; returns its outputs.
fn run_on_sim(dev: &SimDevice, case: &GemmCase, inputs: &BTreeMap<String, Vec<f64>>) -> Result<BTreeMap<String, Vec<f64>>, String> {
    let (k, mh) = load(dev, case)?;
    run_gemm(dev, &mh, &k, case, inputs)
}

fn check(cases: &[GemmCase]) {
    let dev = SimDevice::new();
    let failures = check_cases(&dev, cases, 1000, &|_, c| load(&dev, c), &mut |_, _| {});
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}

fn select(f: impl Fn(&GemmCase) -> bool) -> Vec<GemmCase> {
    cases().into_iter().filter(|c| f(c)).collect()
}

fn is_plain(c: &GemmCase) -> bool {
    c.config.epilogue.steps.is_empty() && c.config.epilogue.out == DType::F32
}

fn awkward(c: &GemmCase) -> bool {
    AWKWARD_SHAPES.contains(&(c.m, c.n, c.k))
}

#[test]
fn sim_bf16_layouts_awkward_shapes() {
    check(&select(|c| c.config.precision == Precision::Bf16 && is_plain(c) && awkward(c) && c.config.split_k == 1));
}

#[test]
fn sim_f32_layouts_awkward_shapes() {
    check(&select(|c| c.config.precision == Precision::F32 && is_plain(c) && awkward(c) && c.config.split_k == 1));
}

#[test]
fn sim_bf16_epilogues() {
    check(&select(|c| c.config.precision == Precision::Bf16 && !is_plain(c) && awkward(c) && c.config.split_k == 1));
}

#[test]
fn sim_f32_epilogues() {
    check(&select(|c| c.config.precision == Precision::F32 && !is_plain(c) && awkward(c) && c.config.split_k == 1));
}

#[test]
fn sim_tile_presets() {
    check(&select(|c| !awkward(c) && c.config.split_k == 1));
}

/// The wgmma path (TMA, mbarriers, producer and consumer warpgroups) on
/// every case it takes: layouts, awkward shapes, every epilogue, split-K.
#[test]
fn sim_wgmma_cases() {
    let cases = wgmma_cases();
    let layouts: std::collections::BTreeSet<&str> = cases.iter().map(|c| c.config.layout.tag()).collect();
    assert!(cases.len() >= 20 && layouts.len() >= 2, "{} wgmma cases over {layouts:?}", cases.len());
    assert!(cases.iter().any(|c| c.config.split_k > 1) && cases.iter().any(|c| !is_plain(c)));
    eprintln!("{} wgmma cases over layouts {layouts:?}", cases.len());
    check(&cases);
}

/// Persistent wgmma blocks walking several output tiles each (the ring and
/// its mbarrier phases running on across tiles), with a 2-stage ring that
/// wraps often: grids of 1, 2 and 5 blocks over 9 to 16 tiles.
#[test]
fn sim_wgmma_persistent_blocks_walk_many_tiles() {
    let dev = SimDevice::new();
    let cases = [
        (GemmLayout::LINEAR, (300, 260, 136), 1, EpiCase::Store, DType::F32),
        (GemmLayout::INPUT_GRAD, (257, 200, 64), 1, EpiCase::RowScale, DType::Bf16),
        (GemmLayout::WEIGHT_GRAD, (136, 200, 264), 3, EpiCase::Store, DType::F32),
    ];
    for (i, (layout, s, split, epi, out)) in cases.into_iter().enumerate() {
        let mut c = GemmCase::new(Precision::Bf16, layout, s, epi, out);
        c.config = c.config.with_wgmma(64, 2);
        if split > 1 {
            c.config = c.config.with_split_k(split);
        }
        let (k, mh) = load(&dev, &c).unwrap();
        for blocks in [1u32, 2, 5] {
            let inputs = c.inputs(77 + i as u64);
            let want = c.reference(&inputs);
            let got = run_gemm_on_grid(&dev, &mh, &k, &c, &inputs, [blocks, 1, split]).unwrap_or_else(|e| panic!("{e}"));
            for t in c.tensors().iter().filter(|t| t.output) {
                let err = rel_err(&got[&t.name], &want[&t.name]);
                eprintln!("{} {:?} on {blocks} block(s): {} rel err {err:.2e}", c.config.name, s, t.name);
                assert!(err <= GemmCase::tolerance(t.dtype), "{} on {blocks} blocks: {} error {err}", c.config.name, t.name);
            }
        }
    }
}

#[test]
fn sim_split_k() {
    check(&select(|c| c.config.split_k > 1));
}

/// The three GEMMs of a linear layer's training step, fed the model's tensors
/// directly: `y = x W^T`, `dx = dy W`, `dW = dy^T x` with `x[T, K]`,
/// `W[N, K]`, `dy[T, N]`, compared with loops written in the model's terms
/// (independent of the layout interpretation in `GemmCase::reference`).
#[test]
fn sim_linear_layer_training_step() {
    use common::gemm_matrix::{round_to, Lcg};
    let (t, n, k) = (40usize, 24usize, 56usize);
    let mut rng = Lcg(7);
    let mut gen = |len: usize| -> Vec<f64> { (0..len).map(|_| round_to(rng.uniform(), DType::Bf16)).collect() };
    let (x, w, dy) = (gen(t * k), gen(n * k), gen(t * n));
    let case = |l, m: usize, nn: usize, kk: usize| GemmCase::new(Precision::Bf16, l, (m as u32, nn as u32, kk as u32), EpiCase::Store, DType::F32);
    let dev = SimDevice::new();
    let run = |c: &GemmCase, a: &Vec<f64>, b: &Vec<f64>| {
        let inp = BTreeMap::from([("a".to_string(), a.clone()), ("b".to_string(), b.clone())]);
        run_on_sim(&dev, c, &inp).unwrap().remove("c").unwrap()
    };
    let y = run(&case(GemmLayout::LINEAR, t, n, k), &x, &w);
    let dx = run(&case(GemmLayout::INPUT_GRAD, t, k, n), &dy, &w);
    let dw = run(&case(GemmLayout::WEIGHT_GRAD, n, k, t), &dy, &x);
    let mut y_ref = vec![0.0; t * n];
    let mut dx_ref = vec![0.0; t * k];
    let mut dw_ref = vec![0.0; n * k];
    for ti in 0..t {
        for ni in 0..n {
            for ki in 0..k {
                y_ref[ti * n + ni] += x[ti * k + ki] * w[ni * k + ki];
                dx_ref[ti * k + ki] += dy[ti * n + ni] * w[ni * k + ki];
                dw_ref[ni * k + ki] += dy[ti * n + ni] * x[ti * k + ki];
            }
        }
    }
    for (name, got, want) in [("y", &y, &y_ref), ("dx", &dx, &dx_ref), ("dW", &dw, &dw_ref)] {
        let e = rel_err(got, want);
        println!("{name}: rel err {e:.3e}");
        assert!(e < 1e-5, "{name}: rel err {e}");
    }
}

#[test]
fn bf16_rounding_is_nearest_even() {
    assert_eq!(f32_to_bf16(1.0), 0x3f80);
    // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0)
    assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
    assert_eq!(f32_to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
    assert_eq!(bf16_to_f32(0xc000), -2.0);
}

#[test]
fn reference_matches_hand_computed() {
    let case = GemmCase::new(Precision::F32, GemmLayout::WEIGHT_GRAD, (2, 2, 3), EpiCase::Relu2 { pre: None }, DType::F32);
    let mut inp = BTreeMap::new();
    // A stored [K, M], B stored [K, N]
    inp.insert("a".to_string(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    inp.insert("b".to_string(), vec![1.0, -1.0, 1.0, -1.0, 1.0, -1.0]);
    let r = case.reference(&inp);
    // C[0][0] = 1+3+5 = 9 -> 81; C[0][1] = -9 -> 0; C[1][0] = 12 -> 144; C[1][1] = -12 -> 0
    assert_eq!(r["out"], vec![81.0, 0.0, 144.0, 0.0]);
}
