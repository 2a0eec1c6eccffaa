//! `CudaDevice` against a mock CUDA driver: a small `libcuda.so.1` written
//! in C below (built with `cc`; the test passes with a note where there is no
//! C compiler). Device memory is host memory, launches run synchronously, and
//! the one kernel it can run is `vector_add` (read from the real argument
//! list: this checks how arguments are marshalled through cudarc). It
//! behaves like the driver where this module relies on it: dynamic shared
//! memory above 48 KiB fails unless the function's limit was raised, PTX
//! errors come back in the JIT error log, a faulting kernel's error surfaces
//! at the next synchronisation, stream capture records launches for a graph.
//! It logs the calls that matter to `$PGC_MOCK_CUDA_LOG`. Runs in a child
//! process of this test binary (cudarc binds the library once per process).

use pgc_runtime::cuda::{CudaDevice, CudaOptions, TimingOptions};
use pgc_runtime::device::{Device, DeviceError, DeviceExt, KernelArg, LaunchConfig};
use std::path::{Path, PathBuf};
use std::process::Command;

const CHILD_ENV: &str = "PGC_MOCK_CUDA_CHILD";
const LOG_ENV: &str = "PGC_MOCK_CUDA_LOG";

const MOCK: &str = r#"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
enum { OK = 0, INVALID_VALUE = 1, OUT_OF_MEMORY = 2, INVALID_PTX = 218, NOT_FOUND = 500,
       ILLEGAL_ADDRESS = 700, CAPTURE_UNSUPPORTED = 900 };

static FILE *logf;
static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#include <stdarg.h>
static void say(const char *fmt, ...) {
    if (!logf) { const char *p = getenv("PGC_MOCK_CUDA_LOG"); if (!p) return; logf = fopen(p, "a"); if (!logf) return; }
    va_list ap; va_start(ap, fmt); vfprintf(logf, fmt, ap); va_end(ap); fputc('\n', logf); fflush(logf);
}

static int inited, sticky, capturing, live_allocs;
static double clock_ms;
static char ctx_dummy;

CUresult cuInit(unsigned f) { (void)f; inited = 1; return OK; }
CUresult cuDriverGetVersion(int *v) { *v = 12040; return OK; }
CUresult cuGetErrorName(CUresult e, const char **s) {
    switch (e) {
    case INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; break;
    case OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
    case INVALID_PTX: *s = "CUDA_ERROR_INVALID_PTX"; break;
    case NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; break;
    case ILLEGAL_ADDRESS: *s = "CUDA_ERROR_ILLEGAL_ADDRESS"; break;
    case CAPTURE_UNSUPPORTED: *s = "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED"; break;
    default: *s = "CUDA_ERROR_UNKNOWN"; break;
    }
    return OK;
}
CUresult cuGetErrorString(CUresult e, const char **s) { (void)e; *s = "(mock driver)"; return OK; }
CUresult cuDeviceGetCount(int *n) { *n = 1; return OK; }
CUresult cuDeviceGet(int *d, int ordinal) { if (ordinal != 0) return INVALID_VALUE; *d = 0; return OK; }
CUresult cuDeviceGetName(char *name, int len, int d) { (void)d; snprintf(name, len, "pgc mock GPU"); return OK; }
CUresult cuDeviceGetAttribute(int *v, int attr, int d) {
    (void)d;
    switch (attr) {
    case 16: *v = 132; break;          /* multiprocessors */
    case 75: *v = 9; break;            /* cc major */
    case 76: *v = 0; break;            /* cc minor */
    case 97: *v = 232448; break;       /* shared per block, opt-in */
    default: *v = 0; break;
    }
    return OK;
}
CUresult cuDeviceTotalMem_v2(size_t *b, int d) { (void)d; *b = (size_t)80 << 30; return OK; }
CUresult cuMemGetInfo_v2(size_t *f, size_t *t) { *f = (size_t)79 << 30; *t = (size_t)80 << 30; return OK; }
CUresult cuDevicePrimaryCtxRetain(void **c, int d) { (void)d; *c = &ctx_dummy; say("retain"); return OK; }
CUresult cuDevicePrimaryCtxRelease_v2(int d) { (void)d; say("release live_allocs=%d", live_allocs); return OK; }
CUresult cuCtxSetCurrent(void *c) { return c == &ctx_dummy ? OK : INVALID_VALUE; }
CUresult cuStreamCreate(void **s, unsigned flags) { *s = malloc(8); say("stream flags=%u", flags); return OK; }
CUresult cuStreamDestroy_v2(void *s) { free(s); return OK; }
CUresult cuStreamSynchronize(void *s) {
    (void)s;
    if (capturing) return CAPTURE_UNSUPPORTED;
    if (sticky) return sticky;
    return OK;
}
CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n) {
    if (n > ((size_t)1 << 40)) return OUT_OF_MEMORY;
    if (n == 0) return INVALID_VALUE;
    *p = (CUdeviceptr)(uintptr_t)malloc(n); live_allocs++; return OK;
}
CUresult cuMemFree_v2(CUdeviceptr p) { free((void *)(uintptr_t)p); live_allocs--; return OK; }
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void *s, size_t n, void *st) { (void)st; if (sticky) return sticky; memcpy((void *)(uintptr_t)d, s, n); return OK; }
CUresult cuMemcpyDtoHAsync_v2(void *d, CUdeviceptr s, size_t n, void *st) { (void)st; if (sticky) return sticky; memcpy(d, (void *)(uintptr_t)s, n); return OK; }
CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, void *st) { (void)st; memset((void *)(uintptr_t)d, v, n); return OK; }

typedef struct { char *text; } Module;
typedef struct { char name[128]; int dyn_limit; } Func;
CUresult cuModuleLoadDataEx(void **m, const void *image, unsigned n, int *opts, void **vals) {
    const char *text = image;
    char *errlog = 0; size_t errlen = 0;
    for (unsigned i = 0; i < n; i++) {
        if (opts[i] == 5) errlog = vals[i];
        if (opts[i] == 6) errlen = (size_t)(uintptr_t)vals[i];
    }
    const char *bad = strstr(text, "%nonesuch");
    if (bad) {
        int line = 1;
        for (const char *p = text; p < bad; p++) line += *p == '\n';
        if (errlog && errlen) snprintf(errlog, errlen, "ptxas application ptx input, line %d; error   : Unknown symbol '%%nonesuch'\nptxas fatal   : Ptx assembly aborted due to errors", line);
        return INVALID_PTX;
    }
    Module *mod = malloc(sizeof *mod); mod->text = strdup(text); *m = mod;
    say("load");
    return OK;
}
CUresult cuModuleUnload(void *m) { Module *mod = m; free(mod->text); free(mod); say("unload"); return OK; }
CUresult cuModuleGetFunction(void **f, void *m, const char *name) {
    Module *mod = m; char pat[160]; snprintf(pat, sizeof pat, ".entry %s(", name);
    if (!strstr(mod->text, pat)) return NOT_FOUND;
    Func *fn = calloc(1, sizeof *fn); snprintf(fn->name, sizeof fn->name, "%s", name); *f = fn;
    return OK;
}
CUresult cuFuncGetAttribute(int *v, int attr, void *f) {
    (void)f;
    switch (attr) { case 0: *v = 1024; break; case 4: *v = 32; break; default: *v = 0; }
    return OK;
}
CUresult cuFuncSetAttribute(void *f, int attr, int v) {
    Func *fn = f; if (attr != 8) return INVALID_VALUE;
    if (v > 232448) return INVALID_VALUE;
    fn->dyn_limit = v; say("setattr %s max_dynamic_shared=%d", fn->name, v); return OK;
}

typedef struct { Func *f; unsigned g[3], b[3], smem; uint64_t p[4]; } Node;
static Node nodes[64]; static int nnodes;
typedef struct { Node nodes[64]; int n; } Graph;

static CUresult run(Node *nd) {
    clock_ms += 0.25;
    if (strcmp(nd->f->name, "vector_add") != 0) return OK;
    float *a = (float *)(uintptr_t)nd->p[0], *b = (float *)(uintptr_t)nd->p[1], *c = (float *)(uintptr_t)nd->p[2];
    unsigned n = (unsigned)nd->p[3];
    if (n == 0xdead) { sticky = ILLEGAL_ADDRESS; return OK; }
    unsigned total = nd->g[0] * nd->b[0];
    for (unsigned i = 0; i < n && i < total; i++) c[i] = a[i] + b[i];
    return OK;
}
CUresult cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned smem, void *stream, void **params, void **extra) {
    (void)stream; (void)extra;
    Func *fn = f;
    if (sticky) return sticky;
    if (gx == 7777) return INVALID_VALUE;
    if (smem > 48 * 1024 && (int)smem > fn->dyn_limit) { say("launch %s refused: smem=%u limit=%d", fn->name, smem, fn->dyn_limit); return INVALID_VALUE; }
    Node nd = { fn, {gx, gy, gz}, {bx, by, bz}, smem, {0, 0, 0, 0} };
    if (strcmp(fn->name, "vector_add") == 0) {
        for (int i = 0; i < 3; i++) nd.p[i] = *(uint64_t *)params[i];
        nd.p[3] = *(uint32_t *)params[3];
    }
    say("launch %s grid=%u,%u,%u block=%u,%u,%u smem=%u%s", fn->name, gx, gy, gz, bx, by, bz, smem, capturing ? " (captured)" : "");
    if (capturing) { if (nnodes < 64) nodes[nnodes++] = nd; return OK; }
    return run(&nd);
}

typedef struct { double t; } Event;
// A tensor map: the mock keeps the global address in the first 8 bytes.
CUresult cuTensorMapEncodeTiled(void *map, int dtype, unsigned rank, void *addr, const uint64_t *dims, const uint64_t *strides,
                                const unsigned *box, const unsigned *estr, int il, int sw, int l2, int oob) {
    (void)dtype; (void)dims; (void)strides; (void)box; (void)estr; (void)il; (void)sw; (void)l2; (void)oob;
    if (rank < 1 || rank > 5 || ((uintptr_t)addr & 15)) return INVALID_VALUE;
    memset(map, 0, 128); memcpy(map, &addr, 8);
    return OK;
}

CUresult cuEventCreate(void **e, unsigned flags) { (void)flags; *e = calloc(1, sizeof(Event)); return OK; }
CUresult cuEventRecord(void *e, void *s) { (void)s; ((Event *)e)->t = clock_ms; return OK; }
CUresult cuEventSynchronize(void *e) { (void)e; return sticky; }
CUresult cuEventElapsedTime(float *ms, void *a, void *b) { *ms = (float)(((Event *)b)->t - ((Event *)a)->t); return OK; }
CUresult cuEventDestroy_v2(void *e) { free(e); return OK; }

CUresult cuStreamBeginCapture_v2(void *s, int mode) { (void)s; say("begin capture mode=%d", mode); capturing = 1; nnodes = 0; return OK; }
CUresult cuStreamEndCapture(void *s, void **g) {
    (void)s; capturing = 0;
    Graph *gr = malloc(sizeof *gr); memcpy(gr->nodes, nodes, sizeof nodes); gr->n = nnodes; *g = gr;
    say("end capture nodes=%d", nnodes); return OK;
}
CUresult cuGraphInstantiateWithFlags(void **x, void *g, unsigned long long flags) {
    (void)flags; Graph *c = malloc(sizeof *c); memcpy(c, g, sizeof *c); *x = c; return OK;
}
CUresult cuGraphLaunch(void *x, void *s) {
    (void)s; Graph *g = x;
    for (int i = 0; i < g->n; i++) { CUresult r = run(&g->nodes[i]); if (r) return r; }
    return OK;
}
CUresult cuGraphExecDestroy(void *x) { free(x); return OK; }
CUresult cuGraphDestroy(void *g) { free(g); say("graph destroyed"); return OK; }
"#;

fn build_mock() -> Option<PathBuf> {
    let dir = std::env::temp_dir().join(format!("pgc-mock-cuda-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let c = dir.join("mock.c");
    std::fs::write(&c, MOCK).ok()?;
    let lib = dir.join("libcuda.so.1");
    let out = Command::new("cc").args(["-shared", "-fPIC", "-O1", "-Wall", "-Wl,-soname,libcuda.so.1", "-o"]).arg(&lib).arg(&c).output().ok()?;
    if !out.status.success() {
        println!("cc could not build the mock driver:\n{}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    Some(lib)
}

const VECTOR_ADD: &str = include_str!("../ptx/vector_add.ptx");

/// The child: the whole scenario against the mock; panics on any mismatch.
#[test]
fn child_scenario() {
    let Some(lib) = std::env::var_os(CHILD_ENV) else { return };
    let dev = match CudaDevice::open(0, &CudaOptions { library: Some(PathBuf::from(lib)) }) {
        Ok(d) => d,
        // a temp folder mounted noexec, say
        Err(e) if e.to_string().contains("could not be loaded") => {
            println!("SKIP: the mock library does not load here: {e}");
            return;
        }
        Err(e) => panic!("open: {e}"),
    };
    if dev.info().name != "pgc mock GPU" {
        println!("SHADOWED: a real driver ({}) was bound instead of the mock", dev.info().name);
        return;
    }
    let i = dev.info();
    assert_eq!((i.compute_capability, i.sm_count, i.max_shared_per_block_optin, i.driver_version), ((9, 0), 132, 232448, 12040));

    // vector add through the real argument marshalling
    let n = 1000usize;
    let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
    let b: Vec<f32> = (0..n).map(|i| 1.0 - i as f32).collect();
    let (da, db) = (dev.upload_f32(&a).unwrap(), dev.upload_f32(&b).unwrap());
    let dc = dev.alloc(n * 4).unwrap();
    dev.fill(&dc, 0xff).unwrap();
    let m = dev.load_module(VECTOR_ADD).unwrap();
    let args = [KernelArg::Buf(da, 0), KernelArg::Buf(db, 0), KernelArg::Buf(dc, 0), KernelArg::U32(n as u32)];
    dev.launch(&m, "vector_add", LaunchConfig::linear(4, 256), &args).unwrap();
    dev.synchronize().unwrap();
    let c = dev.download_f32(&dc).unwrap();
    assert!((0..n).all(|i| c[i] == a[i] + b[i]), "vector_add result wrong: {:?}", &c[..8]);
    // a byte offset moves the pointer: c[0..] = a[10..] + b[10..] for n - 10 elements
    let off = [KernelArg::Buf(da, 40), KernelArg::Buf(db, 40), KernelArg::Buf(dc, 0), KernelArg::U32(n as u32 - 10)];
    dev.launch(&m, "vector_add", LaunchConfig::linear(4, 256), &off).unwrap();
    let c = dev.download_f32(&dc).unwrap();
    assert_eq!(c[0], a[10] + b[10]);

    // kernel info and params
    let ki = dev.kernel_info(&m, "vector_add").unwrap();
    assert_eq!((ki.registers, ki.max_threads_per_block), (32, 1024));
    assert_eq!(dev.kernel_params(&m, "vector_add").unwrap().unwrap().len(), 4);
    assert!(matches!(dev.kernel_info(&m, "nope"), Err(DeviceError::UnknownKernel(_))));

    // dynamic shared memory: raised once above 48 KiB, not below
    let smem = |bytes| LaunchConfig { shared_bytes: bytes, ..LaunchConfig::linear(4, 256) };
    dev.launch(&m, "vector_add", smem(40 * 1024), &args).unwrap();
    dev.launch(&m, "vector_add", smem(100_000), &args).unwrap();
    dev.launch(&m, "vector_add", smem(100_000), &args).unwrap();
    dev.launch(&m, "vector_add", smem(90_000), &args).unwrap();
    dev.launch(&m, "vector_add", smem(200_000), &args).unwrap();
    assert!(matches!(dev.launch(&m, "vector_add", smem(240_000), &args), Err(DeviceError::BadLaunch { .. })));

    // a launch the driver refuses names the kernel
    let e = dev.launch(&m, "vector_add", LaunchConfig::linear(7777, 256), &args).unwrap_err();
    assert!(e.to_string().contains("kernel `vector_add`") && e.to_string().contains("CUDA_ERROR_INVALID_VALUE"), "{e}");

    // a PTX error comes back with its line
    let bad = VECTOR_ADD.replace("%f3, %f1, %f2;", "%f3, %f1, %nonesuch;");
    let line = bad.lines().position(|l| l.contains("%nonesuch")).unwrap() as u32 + 1;
    match dev.load_module(&bad) {
        Err(DeviceError::Ptx { line: l, msg, .. }) => assert!(l == line && msg.contains("nonesuch"), "line {l} (want {line}): {msg}"),
        other => panic!("{other:?}"),
    }

    // out of memory
    assert!(matches!(dev.alloc(1 << 41), Err(DeviceError::OutOfMemory { .. })));

    // events: the mock's clock advances 0.25 ms per kernel
    let t = dev.time_launches_with(TimingOptions { warmup: 2, repeats: 5 }, || dev.launch(&m, "vector_add", LaunchConfig::linear(4, 256), &args)).unwrap();
    assert_eq!((t.median_ms, t.samples_ms.len()), (0.25, 5));

    // graphs: launches are recorded, not run, then replayed
    dev.fill(&dc, 0xff).unwrap();
    let graph = dev.capture_graph(|| dev.launch(&m, "vector_add", LaunchConfig::linear(4, 256), &args)).unwrap();
    assert!(dev.download_f32(&dc).unwrap()[0].is_nan(), "a captured launch ran");
    assert_eq!(graph.kernels(), ["vector_add"]);
    graph.launch().unwrap();
    assert_eq!(dev.download_f32(&dc).unwrap()[5], a[5] + b[5]);
    assert_eq!(dev.time_launches(|| graph.launch()).unwrap(), 0.25);
    drop(graph);
    // copies inside a capture are refused; the capture is closed and the device works after
    let e = dev.capture_graph(|| dev.copy_to_device(&dc, &[0u8; 4])).err().unwrap();
    assert!(e.to_string().contains("capturing"), "{e}");
    dev.launch(&m, "vector_add", LaunchConfig::linear(4, 256), &args).unwrap();
    dev.synchronize().unwrap();

    // a kernel fault surfaces at the next synchronisation, naming the kernel
    let fault = [KernelArg::Buf(da, 0), KernelArg::Buf(db, 0), KernelArg::Buf(dc, 0), KernelArg::U32(0xdead)];
    dev.launch(&m, "vector_add", LaunchConfig::linear(4, 256), &fault).unwrap();
    let e = dev.synchronize().unwrap_err().to_string();
    assert!(e.contains("after kernel `vector_add`") && e.contains("CUDA_ERROR_ILLEGAL_ADDRESS"), "{e}");
    println!("SCENARIO DONE");
}

fn read_log(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[test]
fn mock_driver_scenario() {
    let Some(lib) = build_mock() else {
        println!("skip: no C compiler to build the mock libcuda");
        return;
    };
    let dir = lib.parent().unwrap().to_path_buf();
    let log = dir.join("calls.log");
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &crate::test_name(module_path!(), "child_scenario"), "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &lib)
        .env(LOG_ENV, &log)
        .output()
        .expect("run the test binary");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let calls = read_log(&log);
    let _ = std::fs::remove_dir_all(&dir);
    println!("{text}\n--- mock driver log ---\n{calls}");
    assert!(out.status.success(), "the scenario failed");
    if text.contains("SHADOWED") || text.contains("SKIP:") {
        return;
    }
    assert!(text.contains("SCENARIO DONE"));
    // the stream is non-blocking (flag 1), the limit was raised twice (100000, then 200000)
    assert!(calls.contains("stream flags=1"), "{calls}");
    let raised: Vec<&str> = calls.lines().filter(|l| l.starts_with("setattr")).collect();
    assert_eq!(raised, ["setattr vector_add max_dynamic_shared=100000", "setattr vector_add max_dynamic_shared=200000"]);
    assert!(!calls.contains("refused"), "{calls}");
    assert!(calls.contains("begin capture mode=2") && calls.contains("end capture nodes=1"), "{calls}");
    assert!(calls.contains("launch vector_add grid=4,1,1 block=256,1,1 smem=0 (captured)"), "{calls}");
    assert!(calls.contains("graph destroyed"));
    // dropping the device freed every buffer and unloaded the module
    assert!(calls.contains("unload") && calls.contains("release live_allocs=0"), "{calls}");
}
