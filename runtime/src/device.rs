//! The device abstraction shared by the PTX simulator and the CUDA runtime.
//!
//! [`Device`] is object-safe (`&dyn Device`, `Box<dyn Device>`); the simulator
//! ([`crate::sim::SimDevice`]) and the CUDA runtime ([`crate::cuda::CudaDevice`])
//! implement it. Buffers and modules are plain handles
//! (`Copy`), owned by the device that made them: using a handle after `free`, or
//! with another device, is an error (the simulator also reports kernel accesses
//! into freed memory as out-of-bounds).

use pgc_backends::ptx::program::Entry;
use std::fmt;
use thiserror::Error;

/// A device memory allocation: an opaque id, the device address of its first
/// byte (what a kernel sees in a `.u64` parameter), and its length in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DevBuf {
    pub id: u64,
    pub addr: u64,
    pub bytes: usize,
}

/// A loaded PTX module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModuleHandle {
    pub id: u64,
}

/// Grid and block dimensions and the dynamic shared memory of one launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    /// Bytes of dynamic (`extern .shared`) shared memory per block.
    pub shared_bytes: u32,
}

impl LaunchConfig {
    /// A 1-D launch: `grid` blocks of `block` threads, no dynamic shared memory.
    pub fn linear(grid: u32, block: u32) -> Self {
        LaunchConfig { grid: [grid, 1, 1], block: [block, 1, 1], shared_bytes: 0 }
    }
}

/// One kernel argument, matched against the kernel's `.param` list.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KernelArg {
    /// A device pointer: the buffer's address plus a byte offset (8-byte param).
    Buf(DevBuf, u64),
    U32(u32),
    I32(i32),
    U64(u64),
    F32(f32),
    /// A TMA tensor map, passed by value in a `.param .align 64 .b8 p[128]`:
    /// the simulator writes its own encoding of the fields, CUDA the driver's
    /// (`cuTensorMapEncodeTiled`).
    TensorMap(TensorMap),
}

/// Element types a tensor map may describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TmaDtype {
    U8,
    U16,
    Bf16,
    F16,
    U32,
    F32,
}

impl TmaDtype {
    pub fn bytes(self) -> u32 {
        match self {
            TmaDtype::U8 => 1,
            TmaDtype::U16 | TmaDtype::Bf16 | TmaDtype::F16 => 2,
            TmaDtype::U32 | TmaDtype::F32 => 4,
        }
    }
    pub const ALL: [TmaDtype; 6] = [TmaDtype::U8, TmaDtype::U16, TmaDtype::Bf16, TmaDtype::F16, TmaDtype::U32, TmaDtype::F32];
}

/// The shared-memory swizzle of a tensor map's box (and of a wgmma matrix
/// descriptor): 16-byte chunk `c` of row `r` of a span is stored at chunk
/// `c ^ (r % (span / 16))`, where rows are `span` bytes and the pattern
/// repeats every 8 rows (`Swizzle<log2(span/16), 4, 3>` on the shared address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TmaSwizzle {
    None,
    B32,
    B64,
    B128,
}

impl TmaSwizzle {
    /// The swizzle span in bytes (0 for none).
    pub fn span(self) -> u32 {
        match self {
            TmaSwizzle::None => 0,
            TmaSwizzle::B32 => 32,
            TmaSwizzle::B64 => 64,
            TmaSwizzle::B128 => 128,
        }
    }
    /// The shared address a linear shared address lands at.
    pub fn apply(self, addr: u32) -> u32 {
        let bits = match self {
            TmaSwizzle::None => return addr,
            TmaSwizzle::B32 => 1,
            TmaSwizzle::B64 => 2,
            TmaSwizzle::B128 => 3,
        };
        let mask = ((1u32 << bits) - 1) << 4;
        addr ^ ((addr >> 3) & mask)
    }
}

/// A tiled tensor map: a tensor of up to 5 dimensions in global memory
/// (dimension 0 contiguous) and the box one TMA copy moves to or from shared
/// memory (rows of `box_dims[0]` elements, packed, then swizzled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TensorMap {
    /// device address of element (0, .., 0)
    pub addr: u64,
    pub dtype: TmaDtype,
    pub rank: u32,
    /// elements per dimension (dimension 0 first); unused entries are 1
    pub dims: [u64; 5],
    /// byte strides of dimensions 1.. (dimension 0 is contiguous)
    pub strides: [u64; 4],
    /// box elements per dimension; unused entries are 1
    pub box_dims: [u32; 5],
    pub swizzle: TmaSwizzle,
}

impl TensorMap {
    /// A 2-D map over a row-major matrix of `rows x cols` elements with
    /// `row_bytes` between rows, starting `offset` bytes into `buf`, moving
    /// boxes of `box_rows x box_cols`. Checks what the driver checks.
    #[allow(clippy::too_many_arguments)]
    pub fn matrix(buf: &DevBuf, offset: u64, dtype: TmaDtype, rows: u64, cols: u64, row_bytes: u64, box_rows: u32, box_cols: u32, swizzle: TmaSwizzle) -> std::result::Result<Self, String> {
        let t = TensorMap { addr: buf.addr + offset, dtype, rank: 2, dims: [cols, rows, 1, 1, 1], strides: [row_bytes, 0, 0, 0], box_dims: [box_cols, box_rows, 1, 1, 1], swizzle };
        t.validate()?;
        let last = offset + (rows.max(1) - 1) * row_bytes + cols * dtype.bytes() as u64;
        if last > buf.bytes as u64 {
            return Err(format!("tensor map of {rows} x {cols} (row stride {row_bytes} bytes) from byte {offset} overruns the {}-byte buffer", buf.bytes));
        }
        Ok(t)
    }

    /// Bytes one copy of the box moves (out-of-bounds elements included:
    /// they are filled with zeros and count toward the transaction).
    pub fn box_bytes(&self) -> u64 {
        self.box_dims.iter().map(|&b| b as u64).product::<u64>() * self.dtype.bytes() as u64
    }

    /// The constraints `cuTensorMapEncodeTiled` documents, so that a map the
    /// simulator accepts is one the driver accepts.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let r = self.rank as usize;
        if !(1..=5).contains(&r) {
            return Err(format!("tensor rank {} (1 to 5)", self.rank));
        }
        if !self.addr.is_multiple_of(16) {
            return Err(format!("global address {:#x} is not 16-byte aligned", self.addr));
        }
        for d in 0..5 {
            let (n, b) = (self.dims[d], self.box_dims[d]);
            if d >= r {
                if n != 1 || b != 1 {
                    return Err(format!("dimension {d} is past the rank {r} but not 1"));
                }
                continue;
            }
            if n == 0 || n > 1 << 32 {
                return Err(format!("dimension {d} has {n} elements (1 to 2^32)"));
            }
            if b == 0 || b > 256 {
                return Err(format!("box dimension {d} is {b} (1 to 256)"));
            }
        }
        for d in 1..r {
            let s = self.strides[d - 1];
            if !s.is_multiple_of(16) || s >= 1 << 40 {
                return Err(format!("stride of dimension {d} is {s} bytes (a multiple of 16 below 2^40)"));
            }
        }
        let inner = self.box_dims[0] * self.dtype.bytes();
        if !inner.is_multiple_of(16) {
            return Err(format!("the box's inner dimension is {inner} bytes (a multiple of 16)"));
        }
        let span = self.swizzle.span();
        if span > 0 && inner > span {
            return Err(format!("the box's inner dimension is {inner} bytes, more than the {span}-byte swizzle span"));
        }
        Ok(())
    }
}

#[derive(Debug, Error)]
pub enum DeviceError {
    #[error("out of device memory: asked for {requested} bytes")]
    OutOfMemory { requested: usize },
    #[error("invalid buffer handle {0:?} (freed, or from another device)")]
    InvalidBuffer(DevBuf),
    #[error("copy of {len} bytes does not fit buffer of {bytes} bytes")]
    CopySize { len: usize, bytes: usize },
    #[error("invalid module handle {0:?}")]
    InvalidModule(ModuleHandle),
    #[error("PTX error at line {line}:{col}: {msg}")]
    Ptx { line: u32, col: u32, msg: String },
    #[error("no kernel named `{0}` in the module")]
    UnknownKernel(String),
    #[error("kernel `{kernel}`: bad arguments: {msg}")]
    BadArgs { kernel: String, msg: String },
    #[error("kernel `{kernel}`: bad launch configuration: {msg}")]
    BadLaunch { kernel: String, msg: String },
    /// An error found while executing a kernel in the simulator (sanitizer checks).
    #[error(transparent)]
    Sim(#[from] Box<SimError>),
    /// An error from a GPU driver (the CUDA implementation).
    #[error("{context}: {msg}")]
    Driver { context: String, msg: String },
}

/// What a sanitizer check (or the executor) found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimErrorKind {
    /// global, shared, local or param access outside its memory
    OutOfBounds,
    /// an access whose address is not a multiple of its size
    Misaligned,
    /// a read of shared memory that no thread has written in this block
    UninitializedRead,
    /// two threads touch the same shared byte between two barriers, one writes
    Race,
    /// a barrier not reached by all the threads it waits for
    BarrierDivergence,
    /// a warp-collective instruction (shfl/vote/ldmatrix/mma/bra.uni) executed
    /// by a subset of the lanes it needs
    WarpDivergence,
    /// shared memory touched while a cp.async into it is in flight
    AsyncCopyHazard,
    /// shared memory written by ordinary stores, then read or written by the
    /// async proxy (TMA, wgmma) without `fence.proxy.async` by the writer
    ProxyFence,
    /// an mbarrier used before `mbarrier.init`, re-initialised in use, or
    /// given more arrivals or transaction bytes than its phase expects
    Mbarrier,
    /// a wgmma accumulator or A register touched while its wgmma is in flight,
    /// or a wgmma on registers touched since the last `wgmma.fence`
    WgmmaHazard,
    /// every warp of the block waits and nothing in flight can release one
    Deadlock,
    /// the step limit of `SimOptions::max_warp_steps` (the simulator) was exceeded
    StepLimit,
    Other,
}

/// An error found while executing a kernel: names kernel, block, thread and PTX line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimError {
    pub kind: SimErrorKind,
    pub kernel: String,
    pub block: [u32; 3],
    pub thread: [u32; 3],
    /// 1-based PTX source line of the instruction
    pub line: u32,
    pub msg: String,
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} in kernel `{}`, block ({},{},{}), thread ({},{},{}), PTX line {}: {}",
            self.kind, self.kernel, self.block[0], self.block[1], self.block[2], self.thread[0], self.thread[1], self.thread[2], self.line, self.msg
        )
    }
}

impl std::error::Error for SimError {}

pub type Result<T, E = DeviceError> = std::result::Result<T, E>;

/// A device that runs PTX kernels. Kernel launches are ordered; `launch` may
/// return before the kernel has finished (CUDA), in which case errors of the
/// kernel surface at `synchronize` or the next copy. The simulator runs each
/// launch to completion and reports its errors from `launch`.
pub trait Device: Send + Sync {
    /// A human-readable name (`"pgc PTX simulator"`, `"NVIDIA H100 80GB HBM3"`).
    fn name(&self) -> String;
    /// Allocate `bytes` bytes of global memory (contents unspecified; the
    /// simulator zero-fills).
    fn alloc(&self, bytes: usize) -> Result<DevBuf>;
    fn free(&self, buf: DevBuf) -> Result<()>;
    /// Copy `src` to the start of `dst` (`src.len() <= dst.bytes`).
    fn copy_to_device(&self, dst: &DevBuf, src: &[u8]) -> Result<()>;
    /// Copy the start of `src` into `dst` (`dst.len() <= src.bytes`).
    fn copy_from_device(&self, src: &DevBuf, dst: &mut [u8]) -> Result<()>;
    /// Load a PTX module (text). Parse and unsupported-instruction errors
    /// name the PTX line and column.
    fn load_module(&self, ptx: &str) -> Result<ModuleHandle>;
    /// Load a generated module whose entries the PTX builder describes (name,
    /// parameter signature): a device that checks launch arguments (CUDA)
    /// takes the signatures from here instead of reading the text. The
    /// simulator parses the text anyway and checks against what it parsed.
    fn load_module_with(&self, ptx: &str, entries: &[Entry]) -> Result<ModuleHandle> {
        let _ = entries;
        self.load_module(ptx)
    }
    fn launch(&self, module: &ModuleHandle, kernel: &str, cfg: LaunchConfig, args: &[KernelArg]) -> Result<()>;
    fn synchronize(&self) -> Result<()>;
}

/// Helpers over [`Device`] for typed host data (little-endian plain values).
pub trait DeviceExt: Device {
    fn upload_f32(&self, data: &[f32]) -> Result<DevBuf> {
        let buf = self.alloc(data.len() * 4)?;
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.copy_to_device(&buf, &bytes)?;
        Ok(buf)
    }
    fn upload_u16(&self, data: &[u16]) -> Result<DevBuf> {
        let buf = self.alloc(data.len() * 2)?;
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.copy_to_device(&buf, &bytes)?;
        Ok(buf)
    }
    fn upload_u32(&self, data: &[u32]) -> Result<DevBuf> {
        let buf = self.alloc(data.len() * 4)?;
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.copy_to_device(&buf, &bytes)?;
        Ok(buf)
    }
    fn download_f32(&self, buf: &DevBuf) -> Result<Vec<f32>> {
        let mut bytes = vec![0u8; buf.bytes / 4 * 4];
        self.copy_from_device(buf, &mut bytes)?;
        Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }
    fn download_u32(&self, buf: &DevBuf) -> Result<Vec<u32>> {
        let mut bytes = vec![0u8; buf.bytes / 4 * 4];
        self.copy_from_device(buf, &mut bytes)?;
        Ok(bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }
}

impl<D: Device + ?Sized> DeviceExt for D {}
