//! The kernel plan (ir::plan) on the real model: every op computed once, in an
//! order where each kernel reads only what earlier kernels wrote, the memory
//! plan never overlaps two live values, and each fusion rule can be switched
//! off (alone, or all together) without breaking any of that.

use pgc_ir::plan::{self, FusionRule, KernelKind, Place, Plan, PlanOptions, Precision};
use pgc_ir::{Graph, Mode, Op, UnaryFn};

use crate::common;
use common::{model_11l as compile, ODD, TINY};
use std::collections::HashMap;

fn options(g: &Graph, precision: Precision, off: &[FusionRule]) -> PlanOptions {
    let mut o = PlanOptions::all(g, precision);
    for r in off {
        o.rules.remove(r);
    }
    if g.mode == Mode::Train {
        o.outputs.retain(|n| n != "logits");
    }
    o
}

/// The invariants every plan must satisfy.
fn check(g: &Graph, p: &Plan, what: &str) {
    let n = g.nodes.len();
    let requested: Vec<usize> = p.values.iter().enumerate().filter(|_| true).map(|(i, _)| i).filter(|&i| g.outputs.iter().any(|(name, v)| v.index() == i && (g.mode == Mode::Eval || name != "logits"))).collect();
    // Which kernel computes each node; prologue nodes may be recomputed in several.
    let mut computed_by = vec![None; n];
    let mut in_prologue = vec![false; n];
    for (k, kr) in p.kernels.iter().enumerate() {
        for v in &kr.ops {
            assert!(computed_by[v.index()].is_none(), "{what}: %{} computed by two kernels", v.index());
            computed_by[v.index()] = Some(k);
        }
        for v in &kr.prologue {
            in_prologue[v.index()] = true;
        }
    }
    // Every node a requested output needs is computed (or is a source).
    let mut needed = vec![false; n];
    for &r in &requested {
        needed[r] = true;
    }
    for i in (0..n).rev() {
        if needed[i] {
            for a in &g.nodes[i].args {
                needed[a.index()] = true;
            }
        }
    }
    for i in 0..n {
        let source = matches!(g.nodes[i].op, Op::Input { .. } | Op::Param { .. } | Op::Scalar { .. });
        if needed[i] && !source {
            assert!(computed_by[i].is_some() || in_prologue[i], "{what}: %{i} ({}) is needed but computed nowhere", g.nodes[i].op.name());
        }
    }
    // Kernels read only sources and values that earlier kernels stored.
    let stored_at = |v: usize| -> bool { matches!(p.values[v], Place::Arena(_)) || matches!(p.values[v], Place::Param { prepared: Some(_), .. }) };
    for (k, kr) in p.kernels.iter().enumerate() {
        for v in &kr.inputs {
            let v = v.index();
            match &g.nodes[v].op {
                Op::Input { .. } | Op::Param { .. } => {}
                _ => {
                    let producer = computed_by[v].unwrap_or_else(|| panic!("{what}: {} reads %{v}, which no kernel computes", kr.name));
                    assert!(producer < k, "{what}: {} reads %{v} before kernel {producer} writes it", kr.name);
                    assert!(stored_at(v), "{what}: {} reads %{v}, which is not stored", kr.name);
                    assert!(p.kernels[producer].outputs.iter().any(|o| o.index() == v), "{what}: %{v} is not an output of its kernel");
                }
            }
        }
        // Every op's operands are inside the kernel, read as inputs, or immediates.
        for v in kr.ops.iter().chain(&kr.prologue) {
            for a in &g.nodes[v.index()].args {
                let inside = kr.ops.contains(a) || kr.prologue.contains(a);
                let read = kr.inputs.contains(a);
                let imm = matches!(g.nodes[a.index()].op, Op::Scalar { .. });
                assert!(inside || read || imm, "{what}: {} uses %{} without reading it", kr.name, a.index());
            }
        }
    }
    for &r in &requested {
        assert!(matches!(p.values[r], Place::Arena(_)), "{what}: requested output %{r} is not stored");
    }
    // Memory: two values alive at once never share bytes.
    let mut first = HashMap::new();
    let mut last = HashMap::new();
    for (k, kr) in p.kernels.iter().enumerate() {
        for v in &kr.outputs {
            first.insert(v.index(), k);
            last.entry(v.index()).or_insert(k);
        }
        for v in &kr.inputs {
            if let Some(l) = last.get_mut(&v.index()) {
                *l = (*l).max(k);
            }
        }
    }
    for &r in &requested {
        last.insert(r, p.kernels.len());
    }
    let mut live: Vec<(usize, usize, u64, u64)> = Vec::new();
    for (&v, &f) in &first {
        let slot = match &p.values[v] {
            Place::Arena(s) => *s,
            Place::Param { prepared: Some(s), .. } => *s,
            other => panic!("{what}: kernel output %{v} has no slot: {other:?}"),
        };
        assert!(slot.offset + slot.bytes <= p.arena_bytes, "{what}: %{v} lies outside the arena");
        live.push((f, last[&v], slot.offset, slot.offset + slot.bytes));
    }
    for i in 0..live.len() {
        for j in i + 1..live.len() {
            let (a, b) = (live[i], live[j]);
            let together = a.0 <= b.1 && b.0 <= a.1;
            let overlap = a.2 < b.3 && b.2 < a.3;
            assert!(!(together && overlap), "{what}: two live values overlap in the arena: {a:?} {b:?}");
        }
    }
}

#[test]
fn plans_are_valid_with_every_rule_switched_off_in_turn() {
    for (cfg, name) in [(TINY, "tiny"), (ODD, "odd")] {
        for mode in [Mode::Train, Mode::Eval] {
            let g = compile(cfg, mode);
            for precision in [Precision::Bf16, Precision::F32] {
                let mut variants: Vec<Vec<FusionRule>> = vec![vec![], FusionRule::ALL.to_vec()];
                variants.extend(FusionRule::ALL.iter().map(|r| vec![*r]));
                for off in variants {
                    let p = plan::build(&g, &options(&g, precision, &off)).unwrap();
                    check(&g, &p, &format!("{name} {mode:?} {precision:?} without {off:?}"));
                }
            }
        }
    }
}

#[test]
fn full_model_plan_fuses_what_it_should() {
    let g = compile(&[("seq", "2048"), ("batch", "1")], Mode::Train);
    let p = plan::build(&g, &options(&g, Precision::Bf16, &[])).unwrap();
    check(&g, &p, "11l train");
    print!("{}", p.summary());
    let count = |k: KernelKind| p.kernels.iter().filter(|kr| kr.kind == k).count();
    assert_eq!(count(KernelKind::LmHead), 1, "one fused output head");
    assert_eq!(count(KernelKind::CrossEntropy), 0, "cross entropy lives in the head");
    assert_eq!(count(KernelKind::Attention), 11);
    assert_eq!(count(KernelKind::AttentionBackward), 11, "q, k, v gradients together");
    assert!(p.kernels.iter().any(|k| k.kind == KernelKind::Gemm && k.rules.contains(&FusionRule::GemmEpilogue)));
    // Every RMS norm's mean of squares sits in a row-wise kernel with its consumers.
    assert!(p.kernels.iter().all(|k| k.kind != KernelKind::RowWise || k.ops.len() > 1));
    // A reduction kernel holds a reduction: element-wise work on row statistics
    // (e.g. the rms norm backward's coefficient) joins its live consumer, not a
    // dead gradient of a constant that autodiff also emitted.
    // The attention output is read by the tensor cores only (through the head
    // merge) and by the attention backward: stored bf16.
    for k in p.kernels.iter().filter(|k| k.kind == KernelKind::Attention) {
        for o in &k.outputs {
            assert!(matches!(&p.values[o.index()], Place::Arena(s) if s.storage == pgc_ir::DType::Bf16), "{}: attention output not bf16", k.name);
        }
    }
    // relu(pre) is not stored: the backward GEMM's epilogue, which reads the
    // pre-activation anyway, recomputes it (recompute-elementwise).
    let stored_relu = p.kernels.iter().flat_map(|k| &k.outputs).filter(|v| matches!(g.node(**v).op, Op::Unary { f: UnaryFn::Relu })).count();
    assert_eq!(stored_relu, 0, "relu values stored");
    assert!(p.kernels.iter().filter(|k| k.rules.contains(&FusionRule::RecomputeElementwise)).count() >= 11);
    // Column sums (per-channel scale gradients) sit in the row-wise kernels of
    // the norm backwards they read; what is left are the q_gain gradients (one
    // per layer, sums over [B, T, d] per head) and one model-level sum.
    assert!(count(KernelKind::Reduce) <= 12, "{} reduce kernels", count(KernelKind::Reduce));
    for k in p.kernels.iter().filter(|k| k.kind == KernelKind::Reduce) {
        assert!(k.ops.iter().any(|v| matches!(g.node(*v).op, Op::SumTo { .. } | Op::Reduce { .. })), "{} has no reduction", k.name);
    }
    // weight-prep-together: one preparation kernel, and it stores every
    // weight's tensor-core copy (a fake-quantized weight's copy is its fake-quant).
    assert_eq!(count(KernelKind::WeightPrep), 1, "one weight preparation");
    let prep = p.kernels.iter().find(|k| k.kind == KernelKind::WeightPrep).unwrap();
    let prepared = p.values.iter().filter(|v| matches!(v, Place::Param { prepared: Some(_), .. })).count();
    let fake_quant = prep.ops.iter().filter(|v| matches!(g.node(**v).op, Op::FakeQuant { .. })).count();
    assert!(fake_quant > 0 && prepared > 0);
    assert_eq!(prep.outputs.len(), prepared + fake_quant, "{}: every prepared copy written", prep.name);
    // bf16-gemm-outputs: the fc pre-activation (read by the backward's epilogue) is bf16.
    let fc = p.kernels.iter().flat_map(|k| &k.outputs).filter(|v| matches!(g.node(**v).op, Op::Linear) && g.ty(**v).shape.last() == Some(&1536));
    for v in fc {
        assert!(matches!(&p.values[v.index()], Place::Arena(s) if s.storage == pgc_ir::DType::Bf16), "%{}: the fc pre-activation is not bf16", v.index());
    }
    // Nothing stored twice as large as the model needs: peak activations under 2 GB at 2048 tokens.
    assert!(p.arena_bytes < 2_000_000_000, "peak {}", p.arena_bytes);

    // Unfused, every op is its own kernel and more bytes move.
    let unfused = plan::build(&g, &options(&g, Precision::Bf16, &FusionRule::ALL)).unwrap();
    check(&g, &unfused, "11l train unfused");
    assert!(unfused.kernels.len() > 2 * p.kernels.len());
    assert!(unfused.min_bytes > p.min_bytes);
    assert_eq!(unfused.flops / 1_000_000_000, p.flops / 1_000_000_000, "fusion moves work, it does not remove FLOPs");
}

#[test]
fn eval_plan_keeps_logits_and_folds_the_norm_into_the_head() {
    let g = compile(TINY, Mode::Eval);
    let p = plan::build(&g, &options(&g, Precision::Bf16, &[])).unwrap();
    check(&g, &p, "tiny eval");
    let head = p.kernels.iter().find(|k| k.kind == KernelKind::LmHead).expect("an lm head kernel");
    let logits = g.output("logits").unwrap();
    assert!(head.outputs.contains(&logits), "eval stores logits from the head");
    assert!(!head.prologue.is_empty(), "rms(x) recomputed in the head's prologue");
    let json = serde_json::to_string(&p).unwrap();
    let back: Plan = serde_json::from_str(&json).unwrap();
    assert_eq!(back, p, "plan.json round-trips");
}

#[test]
fn the_checker_catches_broken_plans() {
    let g = compile(TINY, Mode::Train);
    let p = plan::build(&g, &options(&g, Precision::Bf16, &[])).unwrap();
    let fails = |bad: Plan| std::panic::catch_unwind(|| check(&g, &bad, "broken")).is_err();
    // Kernels out of order.
    let mut reversed = p.clone();
    reversed.kernels.reverse();
    assert!(fails(reversed));
    // A kernel dropped.
    let mut missing = p.clone();
    missing.kernels.remove(p.kernels.len() / 2);
    assert!(fails(missing));
    // Every stored value at offset 0: live values collide.
    let mut collide = p.clone();
    for v in collide.values.iter_mut() {
        if let Place::Arena(s) = v {
            s.offset = 0;
        }
    }
    assert!(fails(collide));
}

#[test]
fn compile_writes_plan_json_and_switches_rules_off() {
    let dir = std::env::temp_dir().join(format!("pgc-plan-cli-{}", std::process::id()));
    let run = |extra: &[&str]| {
        let mut args = vec!["compile", concat!(env!("CARGO_MANIFEST_DIR"), "/models/11l.pgdsl"), "--set", "layers=3", "-o"];
        args.push(dir.to_str().unwrap());
        args.extend_from_slice(extra);
        std::process::Command::new(env!("CARGO_BIN_EXE_pgc")).args(&args).output().unwrap()
    };
    let kernels = |rule_off: Option<&str>| -> usize {
        let out = run(&rule_off.map(|r| vec!["--no-fuse", r]).unwrap_or_default());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let plan: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("plan.json")).unwrap()).unwrap();
        assert!(plan["eval"]["kernels"].as_array().is_some());
        plan["train"]["kernels"].as_array().unwrap().len()
    };
    let fused = kernels(None);
    let unfused_epilogues = kernels(Some("gemm-epilogue"));
    assert!(unfused_epilogues > fused, "{unfused_epilogues} vs {fused}");
    let bad = run(&["--no-fuse", "no-such-rule"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("gemm-epilogue"), "the error lists the rules");
    let _ = std::fs::remove_dir_all(&dir);
}
