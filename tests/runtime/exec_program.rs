//! The program executor (`pgc_runtime::exec`) on the simulator, with programs
//! assembled by hand: weight-prep casts (fp32 master -> bf16 prepared copy),
//! a bf16 tensor-core GEMM from the PTX backend, and a hand-written
//! element-wise kernel whose arguments resolve to every kind of place (arena
//! slots, a prepared parameter, a parameter master, an input, a rope table,
//! scratch), with zero-fills before atomically accumulated outputs. Bad
//! programs and bad calls give errors, never panics.

use pgc_backends::ptx::builder::{Module, Param, ParamType};
use pgc_backends::ptx::templates::epilogue::Epilogue;
use pgc_backends::ptx::templates::gemm::{emit_gemm, GemmConfig, GemmLayout, Precision as GemmPrecision};
use pgc_backends::ptx::program::{ArgRef, AuxBuffer, Entry, LaunchStep, Program, ZeroRef};
use pgc_ir::plan::{Kernel, KernelKind, Place, Plan, Precision, Slot};
use pgc_ir::{BinaryFn, DType, Graph, Init, Mode, Op, ParamInfo, QuantSpec, ReduceFn, TensorType, UnaryFn, ValueId};
use pgc_runtime::exec::{rope_table, ExecError, Executor};
use pgc_runtime::sim::SimDevice;
use std::collections::HashMap;

const M: usize = 37;
const N: usize = 24;
const K: usize = 40;
const ROPE_T: usize = 5;
const ROPE_HALF: usize = 3;
const SCALE: f32 = 0.75;

const IDS: ValueId = ValueId(0);
const X: ValueId = ValueId(1);
const W: ValueId = ValueId(2);
const B: ValueId = ValueId(3);
const C: ValueId = ValueId(4);
const OUT: ValueId = ValueId(5);
const ACC: ValueId = ValueId(6);
const FUSED: ValueId = ValueId(7);
const DEAD: ValueId = ValueId(8);

fn param(g: &mut Graph, name: &str, shape: Vec<usize>) -> ValueId {
    let id = g.add_param(ParamInfo { name: name.into(), shape, quant: QuantSpec::default(), init: Init::Zeros, origin: None }).unwrap();
    g.push(Op::Param { id: id }, &[], None).unwrap()
}

fn graph() -> Graph {
    let mut g = Graph::new(Mode::Eval);
    let ids = g.push(Op::Input { name: "ids".into(), ty: TensorType::new(DType::I32, vec![M]) }, &[], None).unwrap();
    let x = param(&mut g, "x", vec![M, K]);
    let w = param(&mut g, "w", vec![N, K]);
    let b = param(&mut g, "b", vec![N]);
    let c = g.push(Op::Linear, &[x, w], None).unwrap();
    let out = g.push(Op::Binary { f: BinaryFn::Add }, &[c, b], None).unwrap();
    let acc = g.push(Op::Reduce { f: ReduceFn::Sum, axis: 0, keepdim: false }, &[out], None).unwrap();
    let fused = g.push(Op::Unary { f: UnaryFn::Neg }, &[acc], None).unwrap();
    let dead = g.push(Op::Unary { f: UnaryFn::Neg }, &[fused], None).unwrap();
    assert_eq!([ids, x, w, b, c, out, acc, fused, dead], [IDS, X, W, B, C, OUT, ACC, FUSED, DEAD]);
    g.outputs.push(("out".into(), out));
    g.outputs.push(("acc".into(), acc));
    g.outputs.push(("neg".into(), fused));
    g
}

fn kernel(name: &str, kind: KernelKind) -> Kernel {
    Kernel {
        name: name.into(),
        kind,
        ops: vec![],
        prologue: vec![],
        inputs: vec![],
        outputs: vec![],
        rules: vec![],
        flops: 0,
        min_bytes: 0,
    }
}

/// x (bf16 copy) and w (bf16 copy) and c, out at 256-aligned offsets; acc at
/// an offset that is only 4-byte aligned (the helpers' byte paths).
fn plan() -> Plan {
    let mut off = 0u64;
    let mut slot = |bytes: u64, storage: DType, misalign: u64| {
        let s = Slot { offset: off + misalign, bytes, storage };
        off = (off + misalign + bytes).div_ceil(256) * 256;
        s
    };
    let xs = slot((M * K * 2) as u64, DType::Bf16, 0);
    let ws = slot((N * K * 2) as u64, DType::Bf16, 0);
    let cs = slot((M * N * 4) as u64, DType::F32, 0);
    let os = slot((M * N * 4) as u64, DType::F32, 0);
    let acs = slot((N * 4) as u64, DType::F32, 4);
    let values = vec![
        Place::Input { name: "ids".into() },
        Place::Param { id: pgc_ir::ParamId(0), prepared: Some(xs) },
        Place::Param { id: pgc_ir::ParamId(1), prepared: Some(ws) },
        Place::Param { id: pgc_ir::ParamId(2), prepared: None },
        Place::Arena(cs),
        Place::Arena(os),
        Place::Arena(acs),
        Place::Fused,
        Place::Dead,
    ];
    Plan {
        mode: Mode::Eval,
        precision: Precision::Bf16,
        rules: vec![],
        kernels: vec![
            kernel("k000_weight_prep", KernelKind::WeightPrep),
            kernel("k001_gemm", KernelKind::Gemm),
            kernel("k002_elementwise", KernelKind::Elementwise),
        ],
        values,
        arena_bytes: off,
        flops: 0,
        min_bytes: 0,
    }
}

/// Hand-written entries (their code: the text after the name), described as
/// the builder describes generated ones.
const CAST_BF16_CODE: &str = r#"(.param .u64 src, .param .u64 dst, .param .u32 n)
{
    .reg .pred %p<2>;
    .reg .b16 %h<2>;
    .reg .f32 %f<2>;
    .reg .b32 %r<6>;
    .reg .b64 %rd<6>;
    ld.param.u64 %rd0, [src];
    ld.param.u64 %rd1, [dst];
    ld.param.u32 %r0, [n];
    mov.u32 %r1, %ctaid.x;
    mov.u32 %r2, %ntid.x;
    mov.u32 %r3, %tid.x;
    mad.lo.u32 %r4, %r1, %r2, %r3;
    setp.ge.u32 %p0, %r4, %r0;
    @%p0 bra DONE;
    mul.wide.u32 %rd2, %r4, 4;
    add.u64 %rd2, %rd0, %rd2;
    ld.global.f32 %f0, [%rd2];
    cvt.rn.bf16.f32 %h0, %f0;
    mul.wide.u32 %rd3, %r4, 2;
    add.u64 %rd3, %rd1, %rd3;
    st.global.b16 [%rd3], %h0;
DONE:
    ret;
}

// out[i] = c[i] * scale + ids[row] + rope[i % ropelen] + bias[col];
// acc[col] += out[i]; cnt[col] += 1 (atomics: both must start at zero).
"#;

const EW_CODE: &str = r#"(.param .u64 c, .param .u64 ids, .param .u64 rope, .param .u64 bias,
    .param .u64 out, .param .u64 acc, .param .u64 cnt,
    .param .u32 m, .param .u32 n, .param .f32 scale, .param .u32 ropelen)
{
    .reg .pred %p<2>;
    .reg .f32 %f<10>;
    .reg .b32 %r<16>;
    .reg .b64 %rd<20>;
    ld.param.u64 %rd0, [c];
    ld.param.u64 %rd1, [ids];
    ld.param.u64 %rd2, [rope];
    ld.param.u64 %rd3, [bias];
    ld.param.u64 %rd4, [out];
    ld.param.u64 %rd5, [acc];
    ld.param.u64 %rd6, [cnt];
    ld.param.u32 %r0, [m];
    ld.param.u32 %r1, [n];
    ld.param.f32 %f0, [scale];
    ld.param.u32 %r2, [ropelen];
    mov.u32 %r3, %ctaid.x;
    mov.u32 %r4, %ntid.x;
    mov.u32 %r5, %tid.x;
    mad.lo.u32 %r6, %r3, %r4, %r5;
    mul.lo.u32 %r7, %r0, %r1;
    setp.ge.u32 %p0, %r6, %r7;
    @%p0 bra DONE;
    div.u32 %r8, %r6, %r1;
    rem.u32 %r9, %r6, %r1;
    rem.u32 %r10, %r6, %r2;
    mul.wide.u32 %rd7, %r6, 4;
    add.u64 %rd8, %rd0, %rd7;
    ld.global.f32 %f1, [%rd8];
    mul.f32 %f1, %f1, %f0;
    mul.wide.u32 %rd9, %r8, 4;
    add.u64 %rd9, %rd1, %rd9;
    ld.global.s32 %r11, [%rd9];
    cvt.rn.f32.s32 %f2, %r11;
    add.f32 %f1, %f1, %f2;
    mul.wide.u32 %rd10, %r10, 4;
    add.u64 %rd10, %rd2, %rd10;
    ld.global.f32 %f3, [%rd10];
    add.f32 %f1, %f1, %f3;
    mul.wide.u32 %rd11, %r9, 4;
    add.u64 %rd12, %rd3, %rd11;
    ld.global.f32 %f4, [%rd12];
    add.f32 %f1, %f1, %f4;
    add.u64 %rd13, %rd4, %rd7;
    st.global.f32 [%rd13], %f1;
    add.u64 %rd14, %rd5, %rd11;
    red.global.add.f32 [%rd14], %f1;
    add.u64 %rd15, %rd6, %rd11;
    mov.f32 %f5, 0f3F800000;
    red.global.add.f32 [%rd15], %f5;
DONE:
    ret;
}
"#;

fn hand_entry(name: &str, params: &[(&str, ParamType)], code: &str) -> Entry {
    Entry { name: name.into(), params: params.iter().map(|(n, ty)| Param { name: n.to_string(), ty: *ty }).collect(), max_threads: None, code: code.into() }
}

fn blocks(n: usize) -> [u32; 3] {
    [n.div_ceil(128) as u32, 1, 1]
}

fn program() -> Program {
    let cfg = GemmConfig::new(GemmPrecision::Bf16, GemmLayout::LINEAR, M as u32, N as u32, K as u32, Epilogue::store(DType::F32));
    let gemm = emit_gemm(&cfg).unwrap();
    let mut module = Module::new();
    module.push(gemm.kernel.clone());
    let t = [128, 1, 1];
    let launches = vec![
        LaunchStep {
            plan_kernel: 0,
            entry: "cast_bf16".into(),
            grid: blocks(M * K),
            block: t,
            shared_bytes: 0,
            args: vec![ArgRef::ParamMaster(pgc_ir::ParamId(0)), ArgRef::Value(X), ArgRef::U32((M * K) as u32)],
            zero_first: vec![],
        },
        LaunchStep {
            plan_kernel: 0,
            entry: "cast_bf16".into(),
            grid: blocks(N * K),
            block: t,
            shared_bytes: 0,
            args: vec![ArgRef::ParamMaster(pgc_ir::ParamId(1)), ArgRef::Value(W), ArgRef::U32((N * K) as u32)],
            zero_first: vec![],
        },
        LaunchStep {
            plan_kernel: 1,
            entry: gemm.name().to_string(),
            grid: gemm.grid(M as u32, N as u32),
            block: gemm.block(),
            shared_bytes: gemm.smem_bytes,
            args: vec![ArgRef::Value(X), ArgRef::Value(W), ArgRef::Value(C), ArgRef::U32(M as u32), ArgRef::U32(N as u32), ArgRef::U32(K as u32)],
            zero_first: vec![],
        },
        LaunchStep {
            plan_kernel: 2,
            entry: "ew".into(),
            grid: blocks(M * N),
            block: t,
            shared_bytes: 0,
            args: vec![
                ArgRef::Value(C),
                ArgRef::Value(IDS),
                ArgRef::Aux(0),
                ArgRef::Value(B),
                ArgRef::Value(OUT),
                ArgRef::Value(ACC),
                ArgRef::Aux(1),
                ArgRef::U32(M as u32),
                ArgRef::U32(N as u32),
                ArgRef::F32(SCALE),
                ArgRef::U32((2 * ROPE_T * ROPE_HALF) as u32),
            ],
            zero_first: vec![ZeroRef::Value(ACC), ZeroRef::Aux(1)],
        },
    ];
    let mut p = Program::new(
        plan(),
        &module,
        launches,
        vec![AuxBuffer::RopeTable { positions: ROPE_T, half: ROPE_HALF, base: 100.0 }, AuxBuffer::Scratch { bytes: (N * 4) as u64 }],
    );
    use ParamType::{F32, U32, U64};
    p.entries.push(hand_entry("cast_bf16", &[("src", U64), ("dst", U64), ("n", U32)], CAST_BF16_CODE));
    let ew = [("c", U64), ("ids", U64), ("rope", U64), ("bias", U64), ("out", U64), ("acc", U64), ("cnt", U64), ("m", U32), ("n", U32), ("scale", F32), ("ropelen", U32)];
    p.entries.push(hand_entry("ew", &ew, EW_CODE));
    p
}

fn det(n: usize, seed: u64) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let h = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(seed.wrapping_mul(0xD1B5_4A32_D192_ED03));
            ((h >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn params() -> HashMap<String, Vec<f32>> {
    HashMap::from([("x".to_string(), det(M * K, 1)), ("w".to_string(), det(N * K, 2)), ("b".to_string(), det(N, 3))])
}

fn ids() -> Vec<i32> {
    (0..M as i32).map(|i| (i * 7) % 11 - 5).collect()
}

/// Round to bf16, nearest even (finite inputs).
fn bf16(v: f32) -> f32 {
    let b = v.to_bits();
    let r = b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000;
    f32::from_bits(r)
}

fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let num = got.iter().zip(want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
    let den = want.iter().map(|b| b.abs()).fold(0.0, f64::max);
    num / den
}

#[test]
fn hand_assembled_program_runs_and_reads_back() {
    let g = graph();
    let prog = program();
    let dev = SimDevice::new();
    let mut ex = Executor::new(&dev, &prog, &g).unwrap();
    let p = params();
    ex.set_params(&p).unwrap();
    let ids = ids();
    ex.set_input("ids", &ids).unwrap();
    let stats = ex.run().unwrap();
    assert_eq!(stats.launches, 4);
    assert_eq!(stats.zero_fills, 2);

    // Prepared copies: bf16 of the masters; masters unchanged.
    let xs = ex.read_stored(X).unwrap();
    assert_eq!(xs, p["x"].iter().map(|&v| bf16(v)).collect::<Vec<_>>());
    assert_eq!(ex.read(X).unwrap(), p["x"]);
    assert_eq!(ex.read_master("w").unwrap(), p["w"]);
    assert_eq!(ex.read(B).unwrap(), p["b"]);
    assert_eq!(ex.read(IDS).unwrap(), ids.iter().map(|&i| i as f32).collect::<Vec<_>>());

    // GEMM of the bf16 copies against f64.
    let (x, w) = (&p["x"], &p["w"]);
    let mut c = vec![0f64; M * N];
    for i in 0..M {
        for j in 0..N {
            c[i * N + j] = (0..K).map(|k| bf16(x[i * K + k]) as f64 * bf16(w[j * K + k]) as f64).sum();
        }
    }
    let got_c = ex.read(C).unwrap();
    let e = rel_err(&got_c, &c);
    assert!(e < 1e-5, "gemm rel err {e:e}");

    // The element-wise kernel, computed from the GEMM's own f32 output.
    let rope = rope_table(ROPE_T, ROPE_HALF, 100.0);
    let mut out = vec![0f64; M * N];
    let mut acc = vec![0f64; N];
    for i in 0..M * N {
        let (row, col) = (i / N, i % N);
        let v = got_c[i] * SCALE + ids[row] as f32 + rope[i % rope.len()] + p["b"][col];
        out[i] = v as f64;
        acc[col] += v as f64;
    }
    let got_out = ex.read_output("out").unwrap();
    assert_eq!(rel_err(&got_out, &out), 0.0);
    // Run again: the zero-fills keep the atomics from accumulating twice.
    ex.run().unwrap();
    let got_acc = ex.read_output("acc").unwrap();
    let e = rel_err(&got_acc, &acc);
    assert!(e < 1e-6, "acc rel err {e:e}");
    assert_eq!(ex.read_aux(1).unwrap(), vec![M as f32; N]);
    assert_eq!(ex.read_aux(0).unwrap(), rope);

    // Not stored: a clear error.
    let e = ex.read_output("neg").unwrap_err();
    assert!(matches!(e, ExecError::NotStored { .. }) && e.to_string().contains("fused"), "{e}");
    assert!(matches!(ex.read_output("nope"), Err(ExecError::UnknownOutput(_))));
}

#[test]
fn bad_calls_are_errors() {
    let g = graph();
    let prog = program();
    let dev = SimDevice::new();
    let mut ex = Executor::new(&dev, &prog, &g).unwrap();
    let e = ex.run().unwrap_err();
    assert!(matches!(e, ExecError::NotReady(_)) && e.to_string().contains("parameters"), "{e}");
    let mut p = params();
    p.remove("b");
    let e = ex.set_params(&p).unwrap_err();
    assert!(e.to_string().contains("`b` is missing"), "{e}");
    let mut p = params();
    p.get_mut("w").unwrap().pop();
    let e = ex.set_params(&p).unwrap_err();
    assert!(e.to_string().contains("`w` has 959 elements"), "{e}");
    let mut p = params();
    p.insert("extra".into(), vec![0.0]);
    let e = ex.set_params(&p).unwrap_err();
    assert!(e.to_string().contains("`extra` is not a parameter"), "{e}");
    ex.set_params(&params()).unwrap();
    let e = ex.run().unwrap_err();
    assert!(e.to_string().contains("input `ids` is not set"), "{e}");
    let e = ex.set_input("ids", &[1, 2, 3]).unwrap_err();
    assert!(e.to_string().contains("3 values given"), "{e}");
    let e = ex.set_input("tokens", &[1]).unwrap_err();
    assert!(e.to_string().contains("no such input"), "{e}");
}

fn expect_bad(prog: &Program, g: &Graph, needle: &str) {
    let dev = SimDevice::new();
    let result = Executor::new(&dev, prog, g).map(|_| ());
    match result {
        Ok(()) => panic!("accepted a bad program (wanted an error containing `{needle}`)"),
        Err(e) => {
            let s = e.to_string();
            assert!(matches!(e, ExecError::BadProgram(_)), "{s}");
            assert!(s.contains(needle), "`{s}` does not contain `{needle}`");
        }
    }
}

#[test]
fn bad_programs_are_errors_naming_the_launch() {
    let g = graph();
    let base = program();
    let mut p = base.clone();
    p.launches[3].args[0] = ArgRef::Value(FUSED);
    expect_bad(&p, &g, "launch 3 (plan kernel `k002_elementwise`, entry `ew`): argument 0: %7 (neg) is not stored by the plan (fused");
    let mut p = base.clone();
    p.launches[3].args[4] = ArgRef::Value(DEAD);
    expect_bad(&p, &g, "argument 4: %8 (neg) is not stored by the plan (dead");
    let mut p = base.clone();
    p.launches[3].args[2] = ArgRef::Aux(7);
    expect_bad(&p, &g, "aux buffer 7 of 2");
    let mut p = base.clone();
    p.launches[0].args[0] = ArgRef::ParamMaster(pgc_ir::ParamId(99));
    expect_bad(&p, &g, "launch 0 (plan kernel `k000_weight_prep`, entry `cast_bf16`): argument 0: no parameter #99 in the graph");
    let mut p = base.clone();
    p.launches[2].args[0] = ArgRef::Value(ValueId(99));
    expect_bad(&p, &g, "%99 is not a value");
    let mut p = base.clone();
    p.launches[3].zero_first.push(ZeroRef::Value(FUSED));
    expect_bad(&p, &g, "zero-fill: %7");
    let mut p = base.clone();
    p.launches[1].entry = "cast_f16".into();
    expect_bad(&p, &g, "no entry `cast_f16` in the module");
    let mut p = base.clone();
    p.launches[1].plan_kernel = 3;
    expect_bad(&p, &g, "plan kernel 3, but the plan has 3 kernels");
    let mut p = base.clone();
    p.launches[1].grid = [0, 1, 1];
    expect_bad(&p, &g, "empty launch");
    let mut p = base.clone();
    let Place::Arena(acc) = p.plan.values[ACC.index()] else { unreachable!() };
    p.plan.arena_bytes = acc.offset + acc.bytes - 1;
    expect_bad(&p, &g, "%6: slot");
    let mut p = base.clone();
    if let Place::Arena(s) = &mut p.plan.values[4] {
        s.bytes -= 4;
    }
    expect_bad(&p, &g, "%4: slot of");
    let mut p = base.clone();
    p.plan.values.pop();
    expect_bad(&p, &g, "places 8 values but the graph has 9");

    // PTX the device rejects: a load error, not a panic.
    let mut p = base.clone();
    p.entries.push(hand_entry("broken", &[], "( { frob; }"));
    let dev = SimDevice::new();
    let e = Executor::new(&dev, &p, &g).err().expect("bad PTX accepted");
    assert!(matches!(e, ExecError::Load(_)), "{e}");
}

#[test]
fn kernel_errors_name_the_plan_kernel_and_entry() {
    let g = graph();
    let mut prog = program();
    // Too many rows: the element-wise kernel reads past `c` and the sanitizer stops it.
    prog.launches[3].args[7] = ArgRef::U32((M + 40) as u32);
    prog.launches[3].grid = blocks((M + 40) * N);
    let dev = SimDevice::new();
    let mut ex = Executor::new(&dev, &prog, &g).unwrap();
    ex.set_params(&params()).unwrap();
    ex.set_input("ids", &ids()).unwrap();
    let e = ex.run().unwrap_err();
    let s = e.to_string();
    assert!(matches!(e, ExecError::Launch { index: 3, .. }), "{s}");
    assert!(s.contains("launch 3 (plan kernel `k002_elementwise`, entry `ew`)") && s.contains("OutOfBounds"), "{s}");
}
