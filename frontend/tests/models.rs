//! The shipped models compile, verify and have the parameter counts of spec/MODEL.md.

use pgc_frontend::compile_model;
use pgc_ir::{Graph, Init, Mode, Op, Qat, StorageClass};

fn model(name: &str) -> String {
    let p = format!("{}/../models/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn compile(name: &str, sets: &[(&str, &str)], mode: Mode) -> Graph {
    let src = model(name);
    let sets: Vec<(String, String)> = sets.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    match compile_model(&src, name, &sets, mode) {
        Ok(g) => g,
        Err(d) => panic!("{}", d.render_with(&src, false)),
    }
}

#[test]
fn param_count_11l() {
    assert_eq!(compile("11l.pgdsl", &[], Mode::Train).param_count(), 27_878_489);
}

#[test]
fn param_count_10l_int5() {
    assert_eq!(compile("10l_int5.pgdsl", &[], Mode::Train).param_count(), 25_517_137);
}

#[test]
fn param_count_11l_9_layers_4096_buckets() {
    let g = compile("11l.pgdsl", &[("layers", "9"), ("bigram_buckets", "4096")], Mode::Train);
    assert_eq!(g.param_count(), 22_368_841);
    assert_eq!(g.constant("layers"), Some(9.0));
}

#[test]
fn names_shapes_and_storage_follow_the_spec() {
    let g = compile("11l.pgdsl", &[], Mode::Train);
    let p = |n: &str| g.param(n).unwrap_or_else(|| panic!("no parameter {n}"));
    assert_eq!(p("tok_emb.weight").shape, vec![1024, 512]);
    assert_eq!(p("tok_emb.weight").quant.storage, StorageClass::F16);
    assert_eq!(p("tok_emb.weight").init, Init::Normal { std: 0.005 });
    assert_eq!(p("bigram.embed.weight").shape, vec![10240, 128]);
    assert_eq!(p("bigram.proj.weight").shape, vec![512, 128]);
    assert_eq!(p("bigram.scale").shape, Vec::<usize>::new());
    assert_eq!(p("smear.gate").shape, vec![512]);
    assert_eq!(p("skip_weights").shape, vec![5, 512]);
    for i in 0..11 {
        let b = format!("blocks.{i}.");
        assert_eq!(p(&(b.clone() + "attn.c_q.weight")).shape, vec![512, 512]);
        let ck = p(&(b.clone() + "attn.c_k.weight"));
        assert_eq!(ck.shape, vec![256, 512]);
        if i == 9 {
            assert_eq!(ck.quant.storage, StorageClass::F16);
            assert_eq!(ck.quant.prune, 0.0);
        } else {
            assert_eq!(ck.quant.storage, StorageClass::Int { bits: 6, clip_percentile: None });
            assert_eq!(ck.quant.prune, 0.03);
        }
        let fc = p(&(b.clone() + "mlp.fc.weight"));
        assert_eq!(fc.shape, vec![1536, 512]);
        assert_eq!(fc.quant.storage, StorageClass::Int { bits: 4, clip_percentile: None });
        assert_eq!(fc.quant.qat, Qat::Ste { bits: 4 });
        assert_eq!(fc.quant.prune, 0.05);
        assert_eq!(p(&(b.clone() + "mlp.proj.weight")).init, Init::Zeros);
        assert_eq!(p(&(b.clone() + "attn.proj.weight")).init, Init::Zeros);
        assert_eq!(p(&(b.clone() + "attn.q_gain")).init, Init::Constant { value: 1.5 });
        assert_eq!(p(&(b.clone() + "resid_mix")).init, Init::Rows { values: vec![1.0, 0.0] });
        assert_eq!(p(&(b.clone() + "resid_mix")).quant.storage, StorageClass::F16);
    }
    assert_eq!(g.params.len(), 6 + 11 * 10);
}

#[test]
fn inputs_outputs_and_origins() {
    let g = compile("11l.pgdsl", &[("batch", "2"), ("seq", "16")], Mode::Train);
    let inputs: Vec<_> = g
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::Input { name, ty } => Some((name.clone(), ty.to_string())),
            _ => None,
        })
        .collect();
    assert_eq!(inputs, vec![("input_ids".to_string(), "i32[2,16]".to_string()), ("target_ids".to_string(), "i32[2,16]".to_string())]);
    let loss = g.output("loss").expect("loss");
    assert_eq!(g.ty(loss).to_string(), "f32[]");
    let logits = g.output("logits").expect("logits");
    assert_eq!(g.ty(logits).to_string(), "f32[2,16,1024]");
    assert!(g.nodes.iter().all(|n| n.origin.is_some()));
    assert!(g.nodes.iter().any(|n| n.origin.as_ref().unwrap().scope == "blocks.3.attn"));
    assert_eq!(g.nodes.iter().filter(|n| matches!(n.op, Op::CausalAttention { .. })).count(), 11);
}

#[test]
fn qat_only_in_train_mode() {
    let fq = |g: &Graph| g.nodes.iter().filter(|n| matches!(n.op, Op::FakeQuant { bits: 4 })).count();
    assert_eq!(fq(&compile("11l.pgdsl", &[], Mode::Train)), 22);
    assert_eq!(fq(&compile("11l.pgdsl", &[], Mode::Eval)), 0);
    let g = compile("10l_int5.pgdsl", &[], Mode::Train);
    assert_eq!(g.nodes.iter().filter(|n| matches!(n.op, Op::FakeQuant { .. })).count(), 0);
    assert_eq!(g.param("blocks.0.mlp.fc.weight").unwrap().quant.storage, StorageClass::Int { bits: 5, clip_percentile: None });
}

#[test]
fn ir_json_round_trips() {
    for (m, sets) in [("11l.pgdsl", vec![]), ("10l_int5.pgdsl", vec![("layers", "3")])] {
        for mode in [Mode::Train, Mode::Eval] {
            let g = compile(m, &sets, mode);
            let j = serde_json::to_string(&g).unwrap();
            let g2: Graph = serde_json::from_str(&j).unwrap();
            assert_eq!(g, g2);
            let j2 = serde_json::to_string(&g2).unwrap();
            assert_eq!(j, j2);
            let g3: Graph = serde_json::from_str(&j2).unwrap();
            assert_eq!(g2, g3);
        }
    }
}

#[test]
fn ir_text_round_trips() {
    let g = compile("11l.pgdsl", &[("layers", "3")], Mode::Train);
    let t = pgc_ir::text::print(&g);
    let g2 = pgc_ir::text::parse(&t).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g, g2);
}

/// The record's initialisation (TRAINING.md section 13): orthogonal linear
/// weights where both dimensions are >= 64, PyTorch's uniform default below,
/// `bigram.proj` orthogonal / sqrt(2 layers) or zero, the other projections zero.
#[test]
fn initialisation_follows_the_record() {
    let g = compile("11l.pgdsl", &[], Mode::Train);
    let init = |g: &Graph, n: &str| g.param(n).unwrap_or_else(|| panic!("no parameter {n}")).init.clone();
    assert_eq!(init(&g, "bigram.proj.weight"), Init::Orthogonal { gain: 1.0 / (22f64).sqrt() });
    assert_eq!(init(&g, "bigram.embed.weight"), Init::Zeros);
    for w in ["attn.c_q.weight", "attn.c_k.weight", "attn.c_v.weight", "mlp.fc.weight"] {
        assert_eq!(init(&g, &format!("blocks.3.{w}")), Init::Orthogonal { gain: 1.0 }, "{w}");
    }
    for w in ["attn.proj.weight", "mlp.proj.weight"] {
        assert_eq!(init(&g, &format!("blocks.3.{w}")), Init::Zeros, "{w}");
    }
    let small = compile("11l.pgdsl", &[("dim", "32"), ("heads", "4"), ("kv_heads", "2"), ("layers", "3")], Mode::Train);
    assert_eq!(init(&small, "blocks.0.attn.c_q.weight"), Init::Uniform { bound: 1.0 / (32f64).sqrt() });
    assert_eq!(init(&small, "blocks.0.mlp.fc.weight"), Init::Uniform { bound: 1.0 / (32f64).sqrt() });
    assert_eq!(init(&small, "bigram.proj.weight"), Init::Zeros, "a dimension below 64: zero, as the record");
}
