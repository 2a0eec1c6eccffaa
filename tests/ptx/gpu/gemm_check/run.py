#!/usr/bin/env python3
"""Device check of pgc's GEMM kernels on a real GPU (needs cupy; perf also torch).

Dump the kernels first:  PGC_GEMM_DUMP=DIR cargo test -p pgc --test ptx gemm_ptxas::
run.py check [DIR]   every test case vs a float64 numpy reference of the rounded inputs
run.py perf  [DIR]   model-sized cases: our kernels vs torch (cuBLAS) in the same process
DIR defaults to this script's folder. device.sh runs both plus compute-sanitizer.
"""
import json
import os
import sys
import time

import numpy as np
import cupy as cp

D = sys.argv[2] if len(sys.argv) > 2 else os.path.dirname(os.path.abspath(__file__))
_fns = {}


def fn(name, smem):
    if name not in _fns:
        m = cp.RawModule(path=f"{D}/kernels/{name}.ptx")
        _fns[name] = (m, m.get_function(name))
    f = _fns[name][1]
    if smem > 48 * 1024:
        f.max_dynamic_shared_size_bytes = smem
    return f


def bf16_bits(x):
    f = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    b = f.view(np.uint32).astype(np.uint64)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_val(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def rnd(x, dt):
    return bf16_val(bf16_bits(x)) if dt == "bf16" else np.asarray(x, np.float32).astype(np.float64)


def to_dev(vals, dt):
    return cp.asarray(bf16_bits(vals) if dt == "bf16" else np.asarray(vals, np.float32))


def from_dev(arr, dt):
    h = cp.asnumpy(arr)
    return bf16_val(h) if dt == "bf16" else h.astype(np.float64)


def nan_dev(elems, dt):
    if dt == "bf16":
        return cp.full(elems, 0x7FC0, dtype=cp.uint16)
    return cp.full(elems, np.nan, dtype=cp.float32)


def rel_err(got, want):
    if np.isnan(got).any():
        return float("inf")
    den = np.abs(want).max()
    num = np.abs(got - want).max()
    return num / den if den > 0 else num


def check():
    cases = json.load(open(f"{D}/cases.json"))
    fails = 0
    for i, c in enumerate(cases):
        rng = np.random.default_rng(1000 + i)
        m, n, k = c["m"], c["n"], c["k"]
        cfg = c["config"]
        inputs = {}
        for t in c["tensors"]:
            if t["output"] and not t.get("initial"):
                continue
            u = rng.uniform(-1, 1, t["elems"])
            if t["name"] in ("rstd", "s"):
                u = 0.5 + np.abs(u)
            inputs[t["name"]] = rnd(u, t["dtype"])
        A = inputs["a"].reshape(m, k) if cfg["layout"]["a"] == "MK" else inputs["a"].reshape(k, m).T
        B = inputs["b"].reshape(n, k).T if cfg["layout"]["b"] == "NK" else inputs["b"].reshape(k, n)
        v = A @ B
        # the case's epilogue (EpiCase in tests/common/gemm_matrix.rs), unrounded per output
        e = c["epi"]
        op = e["op"]
        if op == "store":
            vals = {"c": v}
        elif op == "row_scale":
            vals = {"c": v * inputs["rstd"][:, None]}
        elif op == "relu2":
            vals = {"out": np.maximum(v, 0) ** 2}
            if e.get("pre"):
                vals["pre"] = v
        elif op == "residual":
            s = inputs["s"][None, :] if e["col_scale"] else 1.0
            vals = {"out": inputs["res"].reshape(m, n) + s * v}
        elif op == "bias_relu2_grad":
            g = (v + inputs["bias"][None, :]) * 2 * np.maximum(inputs["pre"].reshape(m, n), 0) * 0.5
            vals = {"aux": g, "out": g}
        else:
            raise SystemExit(f"unknown epilogue {op}")
        if cfg.get("split_k", 1) > 1:
            vals["c"] = vals["c"] + inputs["c"].reshape(m, n)
        want = {t["name"]: rnd(vals[t["name"]], t["dtype"]).reshape(-1) for t in c["tensors"] if t["output"]}
        bufs = []
        for t in c["tensors"]:
            init = t["output"] and not t.get("initial")
            bufs.append(nan_dev(t["elems"], t["dtype"]) if init else to_dev(inputs[t["name"]], t["dtype"]))
        args = bufs[:3] + [np.uint32(m), np.uint32(n), np.uint32(k)] + bufs[3:]
        f = fn(c["kernel"], c["smem_bytes"])
        f(tuple(c["grid"]), tuple(c["block"]), tuple(args), shared_mem=c["smem_bytes"])
        cp.cuda.Device().synchronize()
        for t, b in zip(c["tensors"], bufs):
            if not t["output"]:
                continue
            e = rel_err(from_dev(b, t["dtype"]), want[t["name"]])
            tol = 1e-5 if t["dtype"] == "f32" else 8e-3
            ok = e <= tol
            fails += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {c['kernel']} {m}x{n}x{k} {t['name']}: rel err {e:.3e} (tol {tol:.0e})", flush=True)
    print(f"check: {len(cases)} cases, {fails} failure(s)", flush=True)
    return fails


def perf():
    import torch

    cases = json.load(open(f"{D}/perf.json"))
    print(f"device: {torch.cuda.get_device_name()}", flush=True)
    torch.manual_seed(0)
    for c in cases:
        m, n, k = c["m"], c["n"], c["k"]
        lay = c["config"]["layout"]
        a = torch.randn((m, k) if lay["a"] == "MK" else (k, m), device="cuda").to(torch.bfloat16)
        b = torch.randn((n, k) if lay["b"] == "NK" else (k, n), device="cuda").to(torch.bfloat16)
        split = c["config"].get("split_k", 1)
        out_dt = torch.float32 if c["config"]["epilogue"]["out"] == "f32" else torch.bfloat16
        out = torch.zeros((m, n), device="cuda", dtype=out_dt)
        f = fn(c["kernel"], c["smem_bytes"])
        args = (np.uint64(a.data_ptr()), np.uint64(b.data_ptr()), np.uint64(out.data_ptr()), np.uint32(m), np.uint32(n), np.uint32(k))

        def ours():
            f(tuple(c["grid"]), tuple(c["block"]), args, shared_mem=c["smem_bytes"])

        A = a if lay["a"] == "MK" else a.t()
        B = b.t() if lay["b"] == "NK" else b

        def theirs():
            return A @ B

        def timeit(g, reps=20):
            for _ in range(3):
                g()
            torch.cuda.synchronize()
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            for _ in range(reps):
                g()
            e.record()
            torch.cuda.synchronize()
            return s.elapsed_time(e) / reps * 1e-3

        ours()
        torch.cuda.synchronize()
        got = out.float().clone()
        t_ours = timeit(ours)
        t_torch = timeit(theirs)
        ref = theirs().float()
        err = ((got - ref).abs().max() / ref.abs().max()).item()
        fl = 2.0 * m * n * k
        print(
            f"{c['kernel']:<48} {m}x{n}x{k}: ours {t_ours*1e6:8.1f} us {fl/t_ours/1e12:6.1f} TF/s | torch {t_torch*1e6:8.1f} us {fl/t_torch/1e12:6.1f} TF/s | ratio {t_torch/t_ours:5.2f} | rel err vs torch {err:.2e}",
            flush=True,
        )


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "check":
        sys.exit(1 if check() else 0)
    elif what == "perf":
        perf()
