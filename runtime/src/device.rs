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
