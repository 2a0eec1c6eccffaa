//! The CUDA implementation of [`Device`], on the driver API through cudarc.
//!
//! cudarc loads `libcuda` at run time (its `dynamic-loading` feature), so this
//! module builds, and its error paths run, on machines without CUDA. cudarc
//! panics when a driver function is first used without a loadable library, so
//! [`CudaDevice::open`] looks for the library first and returns
//! [`DeviceError::Driver`] ("CUDA driver not available: ...") instead; any
//! panic from cudarc while opening the device is caught and reported the same
//! way.
//!
//! One device = the device's primary context and one non-blocking stream.
//! Launches are queued on that stream and return at once; a kernel's errors
//! (an illegal address, say) surface at the next [`Device::synchronize`] or
//! copy, whose error names the last kernel launched. After such an error the
//! CUDA context is unusable (CUDA's rule): open a new process.
//!
//! - PTX is compiled by the driver (`cuModuleLoadDataEx`, the JIT's error log
//!   in the error; a `line N` in it becomes [`DeviceError::Ptx`]).
//! - Launches check the arguments against the kernel's `.param` list read off
//!   the PTX (the simulator's rules), the block size against the kernel's
//!   register-limited maximum, and the shared memory against the device; a
//!   kernel asking for more than 48 KiB of shared memory gets
//!   `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES` raised first.
//! - Copies are stream-ordered and synchronous for the caller.
//! - Timing: [`CudaDevice::time_launches`] (CUDA events, warm-up, median),
//!   [`CudaDevice::event`] for finer marks; CUDA graphs:
//!   [`CudaDevice::capture_graph`].
//!
//! Environment: `PGC_CUDA_LIB` names the driver library to load first (a path;
//! `none` disables CUDA). cudarc then binds `libcuda.so.1` by its soname,
//! which resolves to that library when the system loader path has no
//! `libcuda.so` of its own.

mod params;

use crate::device::{DevBuf, Device, DeviceError, KernelArg, LaunchConfig, ModuleHandle, Result};
use cudarc::driver::result as cu;
use cudarc::driver::sys;
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

pub use params::{Param, ParamKind};

/// The environment variable naming the driver library (see the module doc).
pub const LIB_ENV: &str = "PGC_CUDA_LIB";

/// Default shared-memory limit per block without opting in.
const SHARED_DEFAULT_LIMIT: u32 = 48 * 1024;

/// How to open a [`CudaDevice`].
#[derive(Clone, Debug, Default)]
pub struct CudaOptions {
    /// The driver library to load first. `None`: `$PGC_CUDA_LIB` if set, else
    /// cudarc's search (`libcuda.so`, `libcuda.so.1`, ... on the loader path).
    /// A path of `none` disables CUDA.
    pub library: Option<PathBuf>,
}

/// What the driver says about the device.
#[derive(Clone, Debug)]
pub struct CudaInfo {
    pub ordinal: usize,
    pub name: String,
    /// `(major, minor)`: `(9, 0)` for H100/H200.
    pub compute_capability: (i32, i32),
    pub sm_count: u32,
    /// Shared memory a block may opt in to (227 KiB on Hopper).
    pub max_shared_per_block_optin: u32,
    pub total_memory: usize,
    /// `cuDriverGetVersion`: 12040 for CUDA 12.4.
    pub driver_version: i32,
}

/// Resources of a loaded kernel, as the driver compiled it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelInfo {
    pub registers: u32,
    pub static_shared_bytes: u32,
    /// Local memory per thread (spills and local arrays).
    pub local_bytes: u32,
    /// The largest block this kernel can be launched with (registers permitting).
    pub max_threads_per_block: u32,
}

/// The statistics of [`CudaDevice::time_launches_with`], in milliseconds.
#[derive(Clone, Debug)]
pub struct Timing {
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    /// Every timed repeat, in order.
    pub samples_ms: Vec<f64>,
}

/// Warm-up calls (untimed) and timed repeats for [`CudaDevice::time_launches_with`].
#[derive(Clone, Copy, Debug)]
pub struct TimingOptions {
    pub warmup: usize,
    pub repeats: usize,
}

impl Default for TimingOptions {
    fn default() -> Self {
        TimingOptions { warmup: 3, repeats: 20 }
    }
}

struct Func {
    f: sys::CUfunction,
    info: KernelInfo,
    /// The dynamic shared memory limit set on the function (0: the default).
    dyn_limit: u32,
}

struct LoadedModule {
    module: sys::CUmodule,
    /// Parameter lists from the PTX text (`None`: not understood, unchecked).
    params: HashMap<String, Option<Vec<params::Param>>>,
    funcs: HashMap<String, Func>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    bufs: HashMap<u64, DevBuf>,
    modules: HashMap<u64, LoadedModule>,
    /// The work queued since the last successful synchronisation, for errors.
    pending: Option<String>,
    /// Inside [`CudaDevice::capture_graph`]: the kernels captured so far.
    capturing: Option<Vec<String>>,
}

/// A CUDA GPU: the primary context of one device and one stream.
pub struct CudaDevice {
    info: CudaInfo,
    dev: sys::CUdevice,
    ctx: sys::CUcontext,
    stream: sys::CUstream,
    state: Mutex<State>,
}

// The driver API is thread-safe; every call binds the context to the calling
// thread first, and the bookkeeping is behind the mutex.
unsafe impl Send for CudaDevice {}
unsafe impl Sync for CudaDevice {}

fn describe(e: cu::DriverError) -> String {
    let name = e.error_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|_| format!("{:?}", e.0));
    match e.error_string() {
        Ok(s) => format!("{name}: {}", s.to_string_lossy()),
        Err(_) => name,
    }
}

/// The driver's encoding of a tensor map (`cuTensorMapEncodeTiled`).
fn encode_tensor_map(t: &crate::device::TensorMap, driver_version: i32) -> std::result::Result<sys::CUtensorMap, String> {
    use crate::device::{TmaDtype, TmaSwizzle};
    use sys::CUtensorMapDataType as D;
    use sys::CUtensorMapSwizzle as S;
    t.validate()?;
    // the entry point exists from CUDA 12.0 on (calling a missing one would abort)
    if driver_version < 12000 {
        return Err(format!("TMA tensor maps need a CUDA 12 driver; this one is {}.{}", driver_version / 1000, driver_version % 1000 / 10));
    }
    let dt = match t.dtype {
        TmaDtype::U8 => D::CU_TENSOR_MAP_DATA_TYPE_UINT8,
        TmaDtype::U16 => D::CU_TENSOR_MAP_DATA_TYPE_UINT16,
        TmaDtype::Bf16 => D::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
        TmaDtype::F16 => D::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
        TmaDtype::U32 => D::CU_TENSOR_MAP_DATA_TYPE_UINT32,
        TmaDtype::F32 => D::CU_TENSOR_MAP_DATA_TYPE_FLOAT32,
    };
    let sw = match t.swizzle {
        TmaSwizzle::None => S::CU_TENSOR_MAP_SWIZZLE_NONE,
        TmaSwizzle::B32 => S::CU_TENSOR_MAP_SWIZZLE_32B,
        TmaSwizzle::B64 => S::CU_TENSOR_MAP_SWIZZLE_64B,
        TmaSwizzle::B128 => S::CU_TENSOR_MAP_SWIZZLE_128B,
    };
    let mut m = sys::CUtensorMap { opaque: [0; 16] };
    let element_strides = [1u32; 5];
    // SAFETY: every pointer names an array of at least `rank` elements that
    // outlives the call; the driver only writes `m`.
    let r = unsafe {
        sys::cuTensorMapEncodeTiled(
            &mut m,
            dt,
            t.rank,
            t.addr as *mut c_void,
            t.dims.as_ptr(),
            t.strides.as_ptr(),
            t.box_dims.as_ptr(),
            element_strides.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sw,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    r.result().map_err(|e| format!("cuTensorMapEncodeTiled refused the tensor map {t:?}: {e}"))?;
    Ok(m)
}

fn driver_err(context: impl Into<String>, e: cu::DriverError) -> DeviceError {
    DeviceError::Driver { context: context.into(), msg: describe(e) }
}

fn unavailable(msg: impl Into<String>) -> DeviceError {
    DeviceError::Driver { context: "CUDA driver not available".into(), msg: msg.into() }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic in cudarc".to_string()
    }
}

/// Make sure a driver library can be loaded before cudarc touches it.
fn probe_driver(opts: &CudaOptions) -> Result<()> {
    let explicit = opts.library.clone().or_else(|| std::env::var_os(LIB_ENV).map(PathBuf::from));
    if let Some(path) = explicit {
        if path.as_os_str() == "none" {
            return Err(unavailable(format!("disabled ({LIB_ENV}=none)")));
        }
        // SAFETY: loading the NVIDIA driver library runs its initialisers, as
        // cudarc's own loading would.
        match unsafe { libloading::Library::new(&path) } {
            // Keep it loaded for the life of the process: cudarc's dlopen of
            // `libcuda.so.1` then finds it by its soname.
            Ok(lib) => std::mem::forget(lib),
            Err(e) => {
                let why = match std::error::Error::source(&e) {
                    Some(s) => format!("{e}: {s}"),
                    None => e.to_string(),
                };
                return Err(unavailable(format!("the driver library `{}` (from {LIB_ENV} or the options) could not be loaded: {why}", path.display())));
            }
        }
    }
    // SAFETY: tries to dlopen the usual names, nothing else.
    if !unsafe { sys::is_culib_present() } {
        return Err(unavailable(
            "no NVIDIA driver library (libcuda.so / libcuda.so.1) on the loader path; \
             install the NVIDIA driver, add its folder to LD_LIBRARY_PATH, or set PGC_CUDA_LIB to the library's path",
        ));
    }
    Ok(())
}

impl CudaDevice {
    /// JIT-compile `ptx` and keep the entries' parameter lists for checking launches.
    fn load(&self, ptx: &str, params: HashMap<String, Option<Vec<params::Param>>>) -> Result<ModuleHandle> {
        let image = CString::new(ptx).map_err(|e| DeviceError::Ptx { line: 0, col: 0, msg: format!("PTX text holds a NUL byte at offset {}", e.nul_position()) })?;
        self.bind()?;
        // The JIT runs without the lock: several threads may compile at once.
        const LOG: usize = 1 << 16;
        let mut err_log = vec![0u8; LOG];
        let mut info_log = vec![0u8; LOG];
        let mut opts = [
            sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER,
            sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
            sys::CUjit_option::CU_JIT_INFO_LOG_BUFFER,
            sys::CUjit_option::CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES,
        ];
        let mut vals: [*mut c_void; 4] = [err_log.as_mut_ptr() as *mut c_void, LOG as *mut c_void, info_log.as_mut_ptr() as *mut c_void, LOG as *mut c_void];
        let mut module: sys::CUmodule = std::ptr::null_mut();
        // SAFETY: a NUL-terminated image; the option values are buffers that
        // outlive the call and their sizes.
        let r = unsafe { sys::cuModuleLoadDataEx(&mut module, image.as_ptr() as *const c_void, opts.len() as u32, opts.as_mut_ptr(), vals.as_mut_ptr()) };
        if let Err(e) = r.result() {
            let text = |b: &[u8]| String::from_utf8_lossy(&b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())]).trim().to_string();
            let log = text(&err_log);
            if let Some(pe) = jit_ptx_error(&log) {
                return Err(pe);
            }
            let st = self.lock();
            let msg = if log.is_empty() { describe(e) } else { format!("{}; JIT log:\n{log}", describe(e)) };
            let context = match &st.pending {
                Some(p) => format!("load_module (driver PTX JIT, after {p})"),
                None => "load_module (driver PTX JIT)".to_string(),
            };
            return Err(DeviceError::Driver { context, msg });
        }
        let mut st = self.lock();
        let id = st.next_id;
        st.next_id += 1;
        st.modules.insert(id, LoadedModule { module, params, funcs: HashMap::new() });
        Ok(ModuleHandle { id })
    }

    /// Open device `ordinal` (0 = the first GPU). With no driver library, no
    /// GPU, or a driver that fails to initialise: `Err(DeviceError::Driver)`
    /// whose text starts "CUDA driver not available" (or names the device),
    /// never a panic.
    pub fn new(ordinal: usize) -> Result<Self> {
        Self::open(ordinal, &CudaOptions::default())
    }

    pub fn open(ordinal: usize, opts: &CudaOptions) -> Result<Self> {
        probe_driver(opts)?;
        match std::panic::catch_unwind(|| Self::open_loaded(ordinal)) {
            Ok(r) => r,
            Err(p) => Err(unavailable(format!("the driver library could not be used: {}", panic_text(&*p)))),
        }
    }

    /// Whether a CUDA device can be opened here (opens and closes it).
    pub fn available() -> bool {
        Self::new(0).is_ok()
    }

    fn open_loaded(ordinal: usize) -> Result<Self> {
        cu::init().map_err(|e| unavailable(format!("cuInit failed ({}): no usable GPU, or the driver is not running", describe(e))))?;
        let mut version = 0i32;
        // SAFETY: a plain out-parameter.
        unsafe { sys::cuDriverGetVersion(&mut version) }.result().map_err(|e| driver_err("cuDriverGetVersion", e))?;
        let count = cu::device::get_count().map_err(|e| driver_err("cuDeviceGetCount", e))?;
        if ordinal >= count.max(0) as usize {
            return Err(DeviceError::Driver { context: format!("CUDA device {ordinal}"), msg: format!("not found: the driver sees {count} device(s)") });
        }
        let dev = cu::device::get(ordinal as i32).map_err(|e| driver_err(format!("cuDeviceGet({ordinal})"), e))?;
        let name = cu::device::get_name(dev).map_err(|e| driver_err("cuDeviceGetName", e))?;
        let attr = |a: sys::CUdevice_attribute| -> Result<i32> {
            // SAFETY: `dev` came from cuDeviceGet.
            unsafe { cu::device::get_attribute(dev, a) }.map_err(|e| driver_err(format!("cuDeviceGetAttribute({a:?})"), e))
        };
        use sys::CUdevice_attribute::*;
        let cc = (attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?, attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?);
        let sm_count = attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32;
        let optin = attr(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)? as u32;
        // SAFETY: as above.
        let total_memory = unsafe { cu::device::total_mem(dev) }.map_err(|e| driver_err("cuDeviceTotalMem", e))?;
        // SAFETY: `dev` is valid; released in Drop.
        let ctx = unsafe { cu::primary_ctx::retain(dev) }.map_err(|e| driver_err("cuDevicePrimaryCtxRetain", e))?;
        let fail = |e: DeviceError| {
            // SAFETY: balances the retain above.
            let _ = unsafe { cu::primary_ctx::release(dev) };
            e
        };
        // SAFETY: a retained context.
        unsafe { cu::ctx::set_current(ctx) }.map_err(|e| fail(driver_err("cuCtxSetCurrent", e)))?;
        let stream = cu::stream::create(cu::stream::StreamKind::NonBlocking).map_err(|e| fail(driver_err("cuStreamCreate", e)))?;
        let info = CudaInfo {
            ordinal,
            name,
            compute_capability: cc,
            sm_count,
            max_shared_per_block_optin: optin,
            total_memory,
            driver_version: version,
        };
        Ok(CudaDevice { info, dev, ctx, stream, state: Mutex::new(State { next_id: 1, ..State::default() }) })
    }

    pub fn info(&self) -> &CudaInfo {
        &self.info
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state for copying `len` bytes to or from `buf` (`what`: the call),
    /// checked and bound; None when there is nothing to copy.
    fn begin_copy(&self, buf: &DevBuf, len: usize, what: &str) -> Result<Option<MutexGuard<'_, State>>> {
        let st = self.lock();
        Self::live(&st, buf)?;
        if len > buf.bytes {
            return Err(DeviceError::CopySize { len, bytes: buf.bytes });
        }
        Self::not_while_capturing(&st, what)?;
        if len == 0 {
            return Ok(None);
        }
        self.bind()?;
        Ok(Some(st))
    }

    /// Make the context current on this thread.
    fn bind(&self) -> Result<()> {
        // SAFETY: the context is retained for the life of `self`.
        unsafe { cu::ctx::set_current(self.ctx) }.map_err(|e| driver_err("cuCtxSetCurrent", e))
    }

    /// An error of a stream-ordered call that may report an earlier kernel's fault.
    fn after_queue_err(&self, st: &State, what: &str, e: cu::DriverError) -> DeviceError {
        let context = match &st.pending {
            Some(p) => format!("{what} (after {p})"),
            None => what.to_string(),
        };
        driver_err(context, e)
    }

    fn not_while_capturing(st: &State, what: &str) -> Result<()> {
        if st.capturing.is_some() {
            return Err(DeviceError::Driver { context: what.into(), msg: "not allowed while capturing a CUDA graph".into() });
        }
        Ok(())
    }

    fn live(st: &State, buf: &DevBuf) -> Result<()> {
        match st.bufs.get(&buf.id) {
            Some(b) if b == buf => Ok(()),
            _ => Err(DeviceError::InvalidBuffer(*buf)),
        }
    }

    /// Free and total device memory in bytes (`cuMemGetInfo`).
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.bind()?;
        cu::mem_get_info().map_err(|e| driver_err("cuMemGetInfo", e))
    }

    /// Set every byte of `buf` to `byte` (stream-ordered; returns once done).
    pub fn fill(&self, buf: &DevBuf, byte: u8) -> Result<()> {
        let mut st = self.lock();
        Self::live(&st, buf)?;
        Self::not_while_capturing(&st, "fill")?;
        self.bind()?;
        // SAFETY: a live allocation of `buf.bytes` bytes.
        let r = unsafe { cu::memset_d8_async(buf.addr, byte, buf.bytes, self.stream) }
            .and_then(|_| unsafe { cu::stream::synchronize(self.stream) });
        r.map_err(|e| self.after_queue_err(&st, "fill", e))?;
        st.pending = None;
        Ok(())
    }

    /// Resolve (and cache) a kernel of a loaded module.
    fn func<'s>(&self, st: &'s mut State, module: &ModuleHandle, kernel: &str) -> Result<&'s mut Func> {
        let m = st.modules.get_mut(&module.id).ok_or(DeviceError::InvalidModule(*module))?;
        if !m.funcs.contains_key(kernel) {
            let cname = CString::new(kernel).map_err(|_| DeviceError::UnknownKernel(kernel.to_string()))?;
            // SAFETY: a loaded module.
            let f = match unsafe { cu::module::get_function(m.module, cname) } {
                Ok(f) => f,
                Err(cu::DriverError(sys::CUresult::CUDA_ERROR_NOT_FOUND)) => return Err(DeviceError::UnknownKernel(kernel.to_string())),
                Err(e) => return Err(driver_err(format!("kernel `{kernel}`: cuModuleGetFunction"), e)),
            };
            let attr = |a: sys::CUfunction_attribute| -> Result<u32> {
                // SAFETY: a function of a loaded module.
                unsafe { cu::function::get_function_attribute(f, a) }
                    .map(|v| v.max(0) as u32)
                    .map_err(|e| driver_err(format!("kernel `{kernel}`: cuFuncGetAttribute({a:?})"), e))
            };
            use sys::CUfunction_attribute::*;
            let info = KernelInfo {
                registers: attr(CU_FUNC_ATTRIBUTE_NUM_REGS)?,
                static_shared_bytes: attr(CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)?,
                local_bytes: attr(CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES)?,
                max_threads_per_block: attr(CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?,
            };
            m.funcs.insert(kernel.to_string(), Func { f, info, dyn_limit: 0 });
        }
        Ok(m.funcs.get_mut(kernel).expect("inserted above"))
    }

    /// Registers, shared and local memory of a loaded kernel.
    pub fn kernel_info(&self, module: &ModuleHandle, kernel: &str) -> Result<KernelInfo> {
        let mut st = self.lock();
        self.bind()?;
        Ok(self.func(&mut st, module, kernel)?.info.clone())
    }

    /// The `.param` list of a kernel as read off its PTX (`None`: not understood).
    pub fn kernel_params(&self, module: &ModuleHandle, kernel: &str) -> Result<Option<Vec<Param>>> {
        let st = self.lock();
        let m = st.modules.get(&module.id).ok_or(DeviceError::InvalidModule(*module))?;
        match m.params.get(kernel) {
            Some(p) => Ok(p.clone()),
            None => Err(DeviceError::UnknownKernel(kernel.to_string())),
        }
    }

    /// Unload a module (its kernels can no longer be launched).
    pub fn unload_module(&self, module: &ModuleHandle) -> Result<()> {
        let mut st = self.lock();
        Self::not_while_capturing(&st, "unload_module")?;
        let m = st.modules.remove(&module.id).ok_or(DeviceError::InvalidModule(*module))?;
        self.bind()?;
        // SAFETY: queued work may still use it: wait first.
        let _ = unsafe { cu::stream::synchronize(self.stream) };
        unsafe { cu::module::unload(m.module) }.map_err(|e| driver_err("cuModuleUnload", e))
    }

    // ---- events and timing -------------------------------------------------

    /// A CUDA event (timing enabled) to [`CudaDevice::record`] on the stream.
    pub fn event(&self) -> Result<CudaEvent<'_>> {
        self.bind()?;
        let ev = cu::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT).map_err(|e| driver_err("cuEventCreate", e))?;
        Ok(CudaEvent { dev: self, ev })
    }

    /// Record `ev` on the device's stream (after everything queued so far).
    pub fn record(&self, ev: &CudaEvent<'_>) -> Result<()> {
        self.bind()?;
        // SAFETY: a live event of this context, the device's stream.
        unsafe { cu::event::record(ev.ev, self.stream) }.map_err(|e| driver_err("cuEventRecord", e))
    }

    /// Median time in milliseconds of `f`'s queued work (3 warm-up calls, 20
    /// timed repeats, each between two CUDA events). `f` launches kernels on
    /// this device (or replays a graph); it must not synchronise.
    pub fn time_launches(&self, f: impl FnMut() -> Result<()>) -> Result<f64> {
        Ok(self.time_launches_with(TimingOptions::default(), f)?.median_ms)
    }

    /// [`CudaDevice::time_launches`] with the warm-up and repeat counts given;
    /// all the statistics.
    pub fn time_launches_with(&self, opts: TimingOptions, mut f: impl FnMut() -> Result<()>) -> Result<Timing> {
        for _ in 0..opts.warmup {
            f()?;
        }
        self.synchronize()?;
        let repeats = opts.repeats.max(1);
        let mut marks = Vec::with_capacity(repeats);
        for _ in 0..repeats {
            let (a, b) = (self.event()?, self.event()?);
            self.record(&a)?;
            f()?;
            self.record(&b)?;
            marks.push((a, b));
        }
        self.synchronize()?;
        let mut samples = Vec::with_capacity(repeats);
        for (a, b) in &marks {
            samples.push(a.elapsed_ms(b)? as f64);
        }
        let mut sorted = samples.clone();
        sorted.sort_by(|x, y| x.total_cmp(y));
        let n = sorted.len();
        let median = if n % 2 == 1 { sorted[n / 2] } else { 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]) };
        Ok(Timing { median_ms: median, min_ms: sorted[0], max_ms: sorted[n - 1], samples_ms: samples })
    }

    // ---- graphs ------------------------------------------------------------

    /// Capture the launches `f` makes on this device into a CUDA graph
    /// (nothing runs during capture). Copies, fills, frees and synchronisation
    /// are refused inside `f`; allocation is allowed. Replay with
    /// [`CudaGraph::launch`]: the kernels see the argument values captured.
    pub fn capture_graph(&self, f: impl FnOnce() -> Result<()>) -> Result<CudaGraph<'_>> {
        {
            let mut st = self.lock();
            Self::not_while_capturing(&st, "capture_graph")?;
            self.bind()?;
            // SAFETY: the device's stream.
            unsafe { cu::stream::begin_capture(self.stream, sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED) }
                .map_err(|e| self.after_queue_err(&st, "cuStreamBeginCapture", e))?;
            st.capturing = Some(vec![]);
        }
        // Ends the capture however `f` leaves (error or panic).
        struct Capture<'a> {
            dev: &'a CudaDevice,
            done: bool,
        }
        impl Capture<'_> {
            fn end(&mut self) -> (std::result::Result<sys::CUgraph, cu::DriverError>, Vec<String>) {
                self.done = true;
                let kernels = self.dev.lock().capturing.take().unwrap_or_default();
                let _ = self.dev.bind();
                // SAFETY: the stream is capturing (begun above).
                (unsafe { cu::stream::end_capture(self.dev.stream) }, kernels)
            }
        }
        impl Drop for Capture<'_> {
            fn drop(&mut self) {
                if !self.done {
                    if let (Ok(g), _) = self.end() {
                        // SAFETY: a graph just made, not instantiated.
                        let _ = unsafe { cu::graph::destroy(g) };
                    }
                }
            }
        }
        let mut cap = Capture { dev: self, done: false };
        let r = f();
        let (g, kernels) = cap.end();
        let graph = match (r, g) {
            (Err(e), Ok(g)) => {
                // SAFETY: as in Drop.
                let _ = unsafe { cu::graph::destroy(g) };
                return Err(e);
            }
            (Err(e), Err(_)) => return Err(e),
            (Ok(()), Err(e)) => return Err(driver_err("cuStreamEndCapture", e)),
            (Ok(()), Ok(g)) => g,
        };
        // SAFETY: a complete captured graph.
        let exec = match unsafe { cu::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0)) } {
            Ok(x) => x,
            Err(e) => {
                let _ = unsafe { cu::graph::destroy(graph) };
                return Err(driver_err("cuGraphInstantiate", e));
            }
        };
        Ok(CudaGraph { dev: self, graph, exec, kernels })
    }
}

/// A CUDA event of a [`CudaDevice`].
pub struct CudaEvent<'d> {
    dev: &'d CudaDevice,
    ev: sys::CUevent,
}

impl CudaEvent<'_> {
    /// Milliseconds from this event to `later` (both recorded); waits for `later`.
    pub fn elapsed_ms(&self, later: &CudaEvent<'_>) -> Result<f32> {
        self.dev.bind()?;
        // SAFETY: live events of the same context.
        unsafe { cu::event::synchronize(later.ev) }.map_err(|e| driver_err("cuEventSynchronize", e))?;
        unsafe { cu::event::elapsed(self.ev, later.ev) }.map_err(|e| driver_err("cuEventElapsedTime", e))
    }
}

impl Drop for CudaEvent<'_> {
    fn drop(&mut self) {
        let _ = self.dev.bind();
        // SAFETY: created by cuEventCreate, destroyed once.
        let _ = unsafe { cu::event::destroy(self.ev) };
    }
}

/// An instantiated CUDA graph (see [`CudaDevice::capture_graph`]).
pub struct CudaGraph<'d> {
    dev: &'d CudaDevice,
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
    kernels: Vec<String>,
}

impl CudaGraph<'_> {
    /// Queue one replay on the device's stream.
    pub fn launch(&self) -> Result<()> {
        let mut st = self.dev.lock();
        CudaDevice::not_while_capturing(&st, "graph launch")?;
        self.dev.bind()?;
        // SAFETY: an instantiated graph of this context, the device's stream.
        unsafe { cu::graph::launch(self.exec, self.dev.stream) }.map_err(|e| self.dev.after_queue_err(&st, "cuGraphLaunch", e))?;
        st.pending = Some(match (self.kernels.first(), self.kernels.last()) {
            (Some(a), Some(b)) => format!("a graph of {} kernel launches, `{a}` .. `{b}`", self.kernels.len()),
            _ => "an empty graph".to_string(),
        });
        Ok(())
    }

    /// The kernels captured, in launch order.
    pub fn kernels(&self) -> &[String] {
        &self.kernels
    }
}

impl Drop for CudaGraph<'_> {
    fn drop(&mut self) {
        let _ = self.dev.bind();
        // SAFETY: made by capture_graph, destroyed once.
        unsafe {
            let _ = cu::graph::exec_destroy(self.exec);
            let _ = cu::graph::destroy(self.graph);
        }
    }
}

/// Parse the driver JIT's error log for the first `line N` error.
fn jit_ptx_error(log: &str) -> Option<DeviceError> {
    for l in log.lines() {
        if !l.contains("error") {
            continue;
        }
        if let Some(i) = l.find("line ") {
            let digits: String = l[i + 5..].chars().take_while(|c| c.is_ascii_digit()).collect();
            if let Ok(line) = digits.parse::<u32>() {
                return Some(DeviceError::Ptx { line, col: 0, msg: format!("driver JIT: {}", l.trim()) });
            }
        }
    }
    None
}

impl Device for CudaDevice {
    fn name(&self) -> String {
        self.info.name.clone()
    }

    fn alloc(&self, bytes: usize) -> Result<DevBuf> {
        let mut st = self.lock();
        self.bind()?;
        // SAFETY: a plain allocation (at least one byte: cuMemAlloc refuses 0).
        let addr = match unsafe { cu::malloc_sync(bytes.max(1)) } {
            Ok(p) => p,
            Err(cu::DriverError(sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY)) => return Err(DeviceError::OutOfMemory { requested: bytes }),
            Err(e) => return Err(self.after_queue_err(&st, &format!("cuMemAlloc({bytes})"), e)),
        };
        let id = st.next_id;
        st.next_id += 1;
        let buf = DevBuf { id, addr, bytes };
        st.bufs.insert(id, buf);
        Ok(buf)
    }

    fn free(&self, buf: DevBuf) -> Result<()> {
        let mut st = self.lock();
        Self::live(&st, &buf)?;
        Self::not_while_capturing(&st, "free")?;
        self.bind()?;
        st.bufs.remove(&buf.id);
        // SAFETY: a live allocation, removed from the table; cuMemFree waits
        // for queued work that may use it.
        unsafe { cu::free_sync(buf.addr) }.map_err(|e| self.after_queue_err(&st, "cuMemFree", e))
    }

    fn copy_to_device(&self, dst: &DevBuf, src: &[u8]) -> Result<()> {
        let Some(mut st) = self.begin_copy(dst, src.len(), "copy_to_device")? else { return Ok(()) };
        // SAFETY: `src` fits the live allocation and outlives the copy (we wait).
        let r = unsafe { cu::memcpy_htod_async(dst.addr, src, self.stream) }.and_then(|_| unsafe { cu::stream::synchronize(self.stream) });
        r.map_err(|e| self.after_queue_err(&st, &format!("copy of {} bytes to the device", src.len()), e))?;
        st.pending = None;
        Ok(())
    }

    fn copy_from_device(&self, src: &DevBuf, dst: &mut [u8]) -> Result<()> {
        let Some(mut st) = self.begin_copy(src, dst.len(), "copy_from_device")? else { return Ok(()) };
        let len = dst.len();
        // SAFETY: `dst` fits the live allocation and outlives the copy (we wait).
        let r = unsafe { cu::memcpy_dtoh_async(dst, src.addr, self.stream) }.and_then(|_| unsafe { cu::stream::synchronize(self.stream) });
        r.map_err(|e| self.after_queue_err(&st, &format!("copy of {len} bytes from the device"), e))?;
        st.pending = None;
        Ok(())
    }

    fn load_module(&self, ptx: &str) -> Result<ModuleHandle> {
        self.load(ptx, params::from_text(ptx))
    }

    fn load_module_with(&self, ptx: &str, entries: &[pgc_backends::ptx::program::Entry]) -> Result<ModuleHandle> {
        self.load(ptx, params::from_entries(entries))
    }
    fn launch(&self, module: &ModuleHandle, kernel: &str, cfg: LaunchConfig, args: &[KernelArg]) -> Result<()> {
        let mut st = self.lock();
        self.bind()?;
        let bad = |msg: String| DeviceError::BadLaunch { kernel: kernel.to_string(), msg };
        let bad_args = |msg: String| DeviceError::BadArgs { kernel: kernel.to_string(), msg };
        // arguments against the PTX parameter list
        let m = st.modules.get(&module.id).ok_or(DeviceError::InvalidModule(*module))?;
        let declared = match m.params.get(kernel) {
            Some(p) => p.clone(),
            None => return Err(DeviceError::UnknownKernel(kernel.to_string())),
        };
        if let Some(ps) = &declared {
            if ps.len() != args.len() {
                return Err(bad_args(format!("{} arguments given, the kernel has {} parameters", args.len(), ps.len())));
            }
            for (i, (a, p)) in args.iter().zip(ps).enumerate() {
                if !p.accepts(a) {
                    return Err(bad_args(format!("argument {i} ({a:?}) does not match parameter `{}` ({:?}, {} bytes)", p.name, p.kind, p.size())));
                }
            }
        }
        let mut values: Vec<u64> = Vec::with_capacity(args.len());
        let mut maps: Vec<sys::CUtensorMap> = Vec::new();
        for (i, a) in args.iter().enumerate() {
            values.push(match a {
                KernelArg::TensorMap(t) => {
                    maps.push(encode_tensor_map(t, self.info.driver_version).map_err(|m| bad_args(format!("argument {i}: {m}")))?);
                    0
                }
                KernelArg::Buf(b, off) => {
                    Self::live(&st, b)?;
                    if *off > b.bytes as u64 {
                        return Err(bad_args(format!("argument {i}: offset {off} is past the end of a {}-byte buffer", b.bytes)));
                    }
                    b.addr + off
                }
                KernelArg::U64(v) => *v,
                KernelArg::U32(v) => *v as u64,
                KernelArg::I32(v) => *v as u32 as u64,
                KernelArg::F32(v) => v.to_bits() as u64,
            });
        }
        // launch shape
        let [bx, by, bz] = cfg.block;
        let [gx, gy, gz] = cfg.grid;
        if bx == 0 || by == 0 || bz == 0 || gx == 0 || gy == 0 || gz == 0 {
            return Err(bad(format!("zero dimension in grid {:?} / block {:?}", cfg.grid, cfg.block)));
        }
        if gx > i32::MAX as u32 || gy > 65535 || gz > 65535 {
            return Err(bad(format!("grid {:?}: x at most 2^31-1, y and z at most 65535", cfg.grid)));
        }
        let threads = bx as u64 * by as u64 * bz as u64;
        let optin = self.info.max_shared_per_block_optin;
        let func = self.func(&mut st, module, kernel)?;
        if threads > func.info.max_threads_per_block as u64 || bz > 64 {
            return Err(bad(format!(
                "block {:?} has {threads} threads; this kernel allows at most {} ({} registers per thread), z at most 64",
                cfg.block, func.info.max_threads_per_block, func.info.registers
            )));
        }
        let total_shared = func.info.static_shared_bytes as u64 + cfg.shared_bytes as u64;
        if total_shared > optin as u64 {
            return Err(bad(format!(
                "{} bytes of dynamic + {} of static shared memory per block; the device allows {optin}",
                cfg.shared_bytes, func.info.static_shared_bytes
            )));
        }
        if total_shared > SHARED_DEFAULT_LIMIT as u64 && cfg.shared_bytes > func.dyn_limit {
            // SAFETY: a function of a loaded module; the value is within the device's limit.
            unsafe { cu::function::set_function_attribute(func.f, sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, cfg.shared_bytes as i32) }
                .map_err(|e| driver_err(format!("kernel `{kernel}`: raising its dynamic shared memory limit to {} bytes", cfg.shared_bytes), e))?;
            func.dyn_limit = cfg.shared_bytes;
        }
        let f = func.f;
        // a tensor map goes by value: its 128 bytes, not a pointer-sized slot
        let mut next_map = maps.iter_mut();
        let mut ptrs: Vec<*mut c_void> = values
            .iter_mut()
            .zip(args)
            .map(|(v, a)| match (a, &mut next_map) {
                (KernelArg::TensorMap(_), it) => it.next().map_or(std::ptr::null_mut(), |m| m as *mut sys::CUtensorMap as *mut c_void),
                _ => v as *mut u64 as *mut c_void,
            })
            .collect();
        // SAFETY: the argument list matches the kernel's parameters (checked
        // above when the PTX list was read); the values outlive the call,
        // which copies them.
        unsafe { cu::launch_kernel(f, (gx, gy, gz), (bx, by, bz), cfg.shared_bytes, self.stream, &mut ptrs) }.map_err(|e| {
            let what = format!("kernel `{kernel}`: launch (grid {:?}, block {:?}, {} bytes of dynamic shared memory)", cfg.grid, cfg.block, cfg.shared_bytes);
            self.after_queue_err(&st, &what, e)
        })?;
        if let Some(k) = st.capturing.as_mut() {
            k.push(kernel.to_string());
        } else {
            st.pending = Some(format!("kernel `{kernel}`"));
        }
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        let mut st = self.lock();
        Self::not_while_capturing(&st, "synchronize")?;
        self.bind()?;
        // SAFETY: the device's stream.
        unsafe { cu::stream::synchronize(self.stream) }.map_err(|e| self.after_queue_err(&st, "synchronize", e))?;
        st.pending = None;
        Ok(())
    }
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the handles below were made by this device and are released once.
        unsafe {
            if cu::ctx::set_current(self.ctx).is_err() {
                return;
            }
            let _ = cu::stream::synchronize(self.stream);
            for (_, b) in st.bufs.drain() {
                let _ = cu::free_sync(b.addr);
            }
            for (_, m) in st.modules.drain() {
                let _ = cu::module::unload(m.module);
            }
            let _ = cu::stream::destroy(self.stream);
            let _ = cu::primary_ctx::release(self.dev);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_is_a_clean_error() {
        let opts = CudaOptions { library: Some("/nonexistent/pgc-test/libcuda.so.1".into()) };
        let e = CudaDevice::open(0, &opts).err().expect("a missing library must not open");
        let text = e.to_string();
        assert!(text.contains("CUDA driver not available"), "{text}");
        assert!(text.contains("/nonexistent/pgc-test/libcuda.so.1"), "{text}");
    }

    #[test]
    fn none_disables_cuda() {
        let e = CudaDevice::open(0, &CudaOptions { library: Some("none".into()) }).err().unwrap();
        assert!(e.to_string().contains("disabled"), "{e}");
    }

    #[test]
    fn jit_log_line_becomes_ptx_error() {
        let log = "ptxas application ptx input, line 12; error   : Unknown symbol 'foo'\nptxas fatal   : Ptx assembly aborted due to errors";
        match jit_ptx_error(log) {
            Some(DeviceError::Ptx { line, msg, .. }) => {
                assert_eq!(line, 12);
                assert!(msg.contains("Unknown symbol"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        assert!(jit_ptx_error("ptxas fatal: something").is_none());
    }
}
