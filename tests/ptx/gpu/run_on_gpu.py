#!/usr/bin/env python3
"""Run the PTX test kernels of tests/ptx on a real GPU through the CUDA driver
API (ctypes on libcuda; no toolkit needed) and record inputs and outputs as
golden files for tests/sim/gpu_golden.rs, which checks that the simulator
reproduces them. Usage: run_on_gpu.py OUTDIR (writes OUTDIR/<kernel>.bin);
run_on_gpu.py --hopper OUTDIR records the sm_90 micro-kernels of
tests/ptx/hopper (TMA, mbarriers, wgmma) as OUTDIR/hopper_*.bin.

File format: a sequence of records: u32 name length, name (utf-8), u64 byte
length, bytes. Integers little-endian.
"""
import ctypes as C, math, os, random, struct, sys

HERE = os.path.dirname(os.path.abspath(__file__))
PTX = os.path.dirname(HERE)
cu = C.CDLL("libcuda.so.1")


def chk(r, what):
    if r != 0:
        s = C.c_char_p()
        cu.cuGetErrorString(r, C.byref(s))
        raise RuntimeError(f"{what}: CUDA error {r} {s.value}")


chk(cu.cuInit(0), "cuInit")
dev = C.c_int()
chk(cu.cuDeviceGet(C.byref(dev), 0), "cuDeviceGet")
name = C.create_string_buffer(256)
cu.cuDeviceGetName(name, 256, dev)
ctx = C.c_void_p()
chk(cu.cuCtxCreate_v2(C.byref(ctx), 0, dev), "cuCtxCreate")
print("device:", name.value.decode())


def load(fname):
    src = open(os.path.join(PTX, fname), "rb").read() + b"\0"
    mod = C.c_void_p()
    log = C.create_string_buffer(8192)
    opts = (C.c_int * 2)(5, 6)  # CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES
    vals = (C.c_void_p * 2)(C.cast(log, C.c_void_p), C.c_void_p(8192))
    r = cu.cuModuleLoadDataEx(C.byref(mod), C.c_char_p(src), 2, opts, vals)
    if r != 0:
        print(log.value.decode(errors="replace"))
    chk(r, "cuModuleLoadDataEx " + fname)
    return mod


def func(mod, n):
    f = C.c_void_p()
    chk(cu.cuModuleGetFunction(C.byref(f), mod, n.encode()), "cuModuleGetFunction " + n)
    return f


def dalloc(nbytes, data=None):
    p = C.c_uint64()
    chk(cu.cuMemAlloc_v2(C.byref(p), max(nbytes, 4)), "cuMemAlloc")
    if data is not None:
        chk(cu.cuMemcpyHtoD_v2(p, C.c_char_p(data), len(data)), "HtoD")
    else:
        chk(cu.cuMemsetD8_v2(p, 0, nbytes), "memset")
    return p


def fetch(p, nbytes):
    buf = C.create_string_buffer(nbytes)
    chk(cu.cuMemcpyDtoH_v2(buf, p, nbytes), "DtoH")
    return buf.raw


def launch(f, grid, block, args, shared=0):
    vals = []
    for a in args:
        if isinstance(a, TensorMap):
            vals.append(a.buf)  # 128 bytes passed by value (the driver copies them)
        else:
            vals.append(C.c_uint64(a.value) if isinstance(a, C.c_uint64) else C.c_uint32(a))
    params = (C.c_void_p * len(vals))(*[C.cast(C.byref(v), C.c_void_p) for v in vals])
    chk(cu.cuLaunchKernel(f, *grid, *block, shared, None, params, None), "cuLaunchKernel")
    chk(cu.cuCtxSynchronize(), "sync")


class TensorMap:
    """A TMA tensor map over a row-major bf16 matrix (cuTensorMapEncodeTiled):
    rows x cols elements, `pitch` bytes between rows, boxes of box_rows x
    box_cols, swizzle 0 (none), 1 (32B), 2 (64B), 3 (128B)."""

    def __init__(self, ptr, rows, cols, pitch, box_rows, box_cols, swizzle):
        raw = C.create_string_buffer(128 + 64)
        self._raw = raw
        addr = (C.addressof(raw) + 63) & ~63
        self.buf = (C.c_uint8 * 128).from_address(addr)
        dims = (C.c_uint64 * 2)(cols, rows)
        strides = (C.c_uint64 * 1)(pitch)
        box = (C.c_uint32 * 2)(box_cols, box_rows)
        estr = (C.c_uint32 * 2)(1, 1)
        # CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 = 9, interleave none, L2 promotion 128B, no NaN fill
        chk(cu.cuTensorMapEncodeTiled(C.c_void_p(addr), 9, 2, C.c_void_p(ptr.value), dims, strides, box, estr, 0, swizzle, 2, 0), "cuTensorMapEncodeTiled")


def f32s(xs):
    return struct.pack(f"<{len(xs)}f", *xs)


def rand_f32(seed, n):
    r = random.Random(seed)
    return f32s([r.uniform(-1, 1) for _ in range(n)])


def bf16(b4):
    (bits,) = struct.unpack("<I", b4)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF


def save(outdir, kname, recs):
    with open(os.path.join(outdir, kname + ".bin"), "wb") as fh:
        for n, b in recs:
            nb = n.encode()
            fh.write(struct.pack("<I", len(nb)) + nb + struct.pack("<Q", len(b)) + b)
    print(kname, "ok", [(n, len(b)) for n, b in recs])


def main(outdir):
    os.makedirs(outdir, exist_ok=True)
    # vector_add
    n = 1000
    a, b = rand_f32(1, n), rand_f32(11, n)
    pa, pb, pc = dalloc(4 * n, a), dalloc(4 * n, b), dalloc(4 * n)
    launch(func(load("vector_add.ptx"), "vector_add"), (8, 1, 1), (128, 1, 1), [pa, pb, pc, n])
    save(outdir, "vector_add", [("a", a), ("b", b), ("c", fetch(pc, 4 * n))])
    # warp_reduce
    n = 512
    x = rand_f32(2, n)
    px, ps, pm, pq = dalloc(4 * n, x), dalloc(64), dalloc(64), dalloc(4 * n)
    launch(func(load("warp_reduce.ptx"), "warp_reduce"), (4, 1, 1), (128, 1, 1), [px, ps, pm, pq])
    save(outdir, "warp_reduce", [("x", x), ("sums", fetch(ps, 64)), ("maxs", fetch(pm, 64)), ("scan", fetch(pq, 4 * n))])
    # transpose 64 x 96
    x = rand_f32(3, 64 * 96)
    px, py = dalloc(len(x), x), dalloc(len(x))
    launch(func(load("transpose.ptx"), "transpose"), (3, 2, 1), (32, 8, 1), [px, py, 64, 96])
    save(outdir, "transpose", [("x", x), ("y", fetch(py, len(x)))])
    # gemm, batch 2
    fa, fb = rand_f32(4, 2 * 4096), rand_f32(5, 2 * 4096)
    ha = struct.pack("<8192H", *[bf16(fa[i:i + 4]) for i in range(0, len(fa), 4)])
    hb = struct.pack("<8192H", *[bf16(fb[i:i + 4]) for i in range(0, len(fb), 4)])
    pa, pb, pc = dalloc(len(ha), ha), dalloc(len(hb), hb), dalloc(2 * 4096 * 4)
    launch(func(load("gemm_bf16_mma.ptx"), "gemm_bf16_64x64x64"), (2, 1, 1), (128, 1, 1), [pa, pb, pc])
    save(outdir, "gemm", [("a", ha), ("b", hb), ("c", fetch(pc, 2 * 4096 * 4))])
    # cp.async pipeline: 2 blocks x 7 tiles
    x = rand_f32(6, 2 * 7 * 512)
    px, po = dalloc(len(x), x), dalloc(256 * 4)
    launch(func(load("cp_async_pipeline.ptx"), "cp_async_pipeline"), (2, 1, 1), (128, 1, 1), [px, po, 7])
    save(outdir, "cp_async", [("x", x), ("out", fetch(po, 256 * 4))])
    # numerics: specials first, then values over many scales
    r = random.Random(7)
    sx = [math.nan, math.inf, -math.inf, -0.0, 1e-40, 65520.0, 1 + 2 ** -8, 0.025, -0.025, 0.035, 3.0e38, -1e-45, 1.0, -1.0, 0.5, 100.0]
    sy = [1.0, 2.0, 0.0, 3.0, -1e-40, 65519.0, 1 + 3 * 2 ** -8, -0.015, 0.005, 1e-30, 2.0, math.nan, 0.0, -0.0, math.inf, 7.0]
    xs = sx + [r.uniform(-1, 1) * 10 ** r.uniform(-4, 4) for _ in range(240)]
    ys = sy + [r.uniform(-1, 1) * 10 ** r.uniform(-4, 4) for _ in range(240)]
    bx, by = f32s(xs), f32s(ys)
    px, py, po = dalloc(len(bx), bx), dalloc(len(by), by), dalloc(256 * 48)
    launch(func(load("numerics.ptx"), "numerics"), (1, 1, 1), (256, 1, 1), [px, py, po])
    save(outdir, "numerics", [("x", bx), ("y", by), ("out", fetch(po, 256 * 48))])


def bf16_array(seed, n, keep=None):
    """n random bf16 values (uniform in [-1, 1)); entries where keep(i) is false are 0."""
    r = random.Random(seed)
    vals = []
    for i in range(n):
        v = bf16(struct.pack("<f", r.uniform(-1, 1)))
        vals.append(v if keep is None or keep(i) else 0)
    return struct.pack(f"<{n}H", *vals)


def hopper(outdir):
    """The sm_90 micro-kernels of tests/ptx/hopper (TMA in every swizzle mode,
    mbarrier phases, wgmma from descriptors and registers), for
    tests/sim/gpu_golden.rs's replay of the simulator's Hopper semantics."""
    os.makedirs(outdir, exist_ok=True)
    # tma_roundtrip: 100 x 70 bf16 (row pitch 72), 64-row boxes, each swizzle with its span
    rows, cols, pitch = 100, 70, 72
    recs = []
    src = bf16_array(21, rows * pitch)
    for sw, box_cols in [(0, 64), (1, 16), (2, 32), (3, 64)]:
        gx, gy = -(-cols // box_cols), -(-rows // 64)
        box_bytes = 64 * box_cols * 2
        pa = dalloc(len(src), src)
        pb = dalloc(len(src), struct.pack(f"<{rows * pitch}H", *([0xDEAD] * (rows * pitch))))
        praw = dalloc(gx * gy * box_bytes)
        ma = TensorMap(pa, rows, cols, pitch * 2, 64, box_cols, sw)
        mb = TensorMap(pb, rows, cols, pitch * 2, 64, box_cols, sw)
        launch(func(load("hopper/tma_roundtrip.ptx"), "tma_roundtrip"), (gx, gy, 1), (128, 1, 1), [ma, mb, praw, box_bytes, box_cols, 64])
        recs += [(f"sw{sw}.dst", fetch(pb, len(src))), (f"sw{sw}.raw", fetch(praw, gx * gy * box_bytes))]
    save(outdir, "hopper_tma", [("src", src)] + recs)
    # wgmma tiles: M = N = 128, K = 72 (the second K tile mostly out of bounds); A from registers: N = 64, K = 128
    recs = []
    for name, a_sw, b_sw, b_mn in [("wgmma_k_sw128", 3, 3, False), ("wgmma_k_sw64", 2, 2, False), ("wgmma_k_sw32", 1, 1, False),
                                   ("wgmma_k_interleave", 0, 0, False), ("wgmma_b_mn_sw128", 3, 3, True), ("wgmma_a_regs", None, 3, False)]:
        m, n, k = (128, 128, 72) if a_sw is not None else (128, 64, 128)
        lda = -(-k // 8) * 8
        kc = {0: 8, 1: 16, 2: 32, 3: 64}
        a = bf16_array(31, m * lda, lambda i: i % lda < k)
        if b_mn:
            b, ldb = bf16_array(32, k * n), n
        else:
            b, ldb = bf16_array(32, n * lda, lambda i: i % lda < k), lda
        pa, pb, pc = dalloc(len(a), a), dalloc(len(b), b), dalloc(m * n * 4)
        a_arg = TensorMap(pa, m, k, lda * 2, 64, kc[a_sw], a_sw) if a_sw is not None else pa
        b_arg = TensorMap(pb, k, n, ldb * 2, 64, 64, 3) if b_mn else TensorMap(pb, n, k, ldb * 2, 64, kc[b_sw], b_sw)
        launch(func(load(f"hopper/{name}.ptx"), name), (n // 64, m // 64, 1), (128, 1, 1), [a_arg, b_arg, pc, n, -(-k // 64), lda])
        recs += [(f"{name}.a", a), (f"{name}.b", b), (f"{name}.c", fetch(pc, m * n * 4))]
    save(outdir, "hopper_wgmma", recs)
    # bulk reduce-add: 3 blocks add 1040 bytes of f32 into 1024 values of 0.5
    pd = dalloc(4096, f32s([0.5] * 1024))
    launch(func(load("hopper/bulk_reduce.ptx"), "bulk_reduce"), (3, 1, 1), (128, 1, 1), [pd, 1040])
    save(outdir, "hopper_bulk", [("dst", fetch(pd, 4096))])


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--hopper"]:
        hopper(args[1] if len(args) > 1 else HERE)
    else:
        main(args[0] if args else HERE)
