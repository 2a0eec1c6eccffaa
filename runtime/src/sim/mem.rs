//! Global memory of the simulated device.
//!
//! Each allocation is an array of 32-bit words accessed with relaxed atomics,
//! so blocks running on different host threads may read and write global
//! memory concurrently without undefined behaviour in Rust:
//! - aligned 1/2/4-byte stores are single-copy atomic (sub-word stores use a
//!   compare-and-swap on the containing word, so neighbouring bytes written by
//!   other blocks are never clobbered); 8- and 16-byte accesses are split into
//!   32-bit words (as on hardware, no atomicity across words is promised);
//! - when two blocks write the same word without synchronisation, one of the
//!   writes wins, in no particular order (a data race in the kernel; the
//!   simulator does not detect races in global memory);
//! - `atom`/`red` are real atomic read-modify-writes.
//!
//! Allocations live at distinct, never reused addresses starting at
//! [`GLOBAL_BASE`], each followed by a gap of at least [`GUARD`] bytes, so an
//! access past the end, before the start, or into freed memory falls outside
//! every allocation and is reported as out of bounds.

use super::decode::{AtomOp, Ty};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;

pub const GLOBAL_BASE: u64 = 0x0000_7f00_0000_0000;
pub const GUARD: u64 = 4096;
/// Generic addresses of the shared window: SHARED_WINDOW + shared address.
pub const SHARED_WINDOW: u64 = 0x0000_5000_0000_0000;
/// Generic addresses of the local window: LOCAL_WINDOW + local address.
pub const LOCAL_WINDOW: u64 = 0x0000_6000_0000_0000;
pub const WINDOW_SIZE: u64 = 1 << 32;

pub struct Allocation {
    pub id: u64,
    pub base: u64,
    pub len: u64,
    words: Box<[AtomicU32]>,
}

impl Allocation {
    pub fn new(id: u64, base: u64, len: u64) -> Option<Self> {
        let n = len.div_ceil(4).max(1) as usize;
        let mut v: Vec<AtomicU32> = Vec::new();
        v.try_reserve_exact(n).ok()?;
        v.resize_with(n, || AtomicU32::new(0));
        Some(Allocation { id, base, len, words: v.into_boxed_slice() })
    }

    /// Load `size` (1, 2, 4, 8) bytes at byte offset `off` (aligned to `size`).
    #[inline]
    pub fn load(&self, off: u64, size: u32) -> u64 {
        let w = (off >> 2) as usize;
        match size {
            4 => self.words[w].load(Relaxed) as u64,
            8 => self.words[w].load(Relaxed) as u64 | (self.words[w + 1].load(Relaxed) as u64) << 32,
            2 => (self.words[w].load(Relaxed) >> ((off & 2) * 8)) as u64 & 0xffff,
            _ => (self.words[w].load(Relaxed) >> ((off & 3) * 8)) as u64 & 0xff,
        }
    }

    #[inline]
    pub fn store(&self, off: u64, size: u32, v: u64) {
        let w = (off >> 2) as usize;
        match size {
            4 => self.words[w].store(v as u32, Relaxed),
            8 => {
                self.words[w].store(v as u32, Relaxed);
                self.words[w + 1].store((v >> 32) as u32, Relaxed);
            }
            _ => {
                let shift = (off & 3) * 8;
                let m: u32 = if size == 2 { 0xffff } else { 0xff };
                let mask = m << shift;
                let val = ((v as u32) & m) << shift;
                let _ = self.words[w].fetch_update(Relaxed, Relaxed, |x| Some((x & !mask) | val));
            }
        }
    }

    /// 32-bit atomic read-modify-write at `off` (4-aligned); returns the old value.
    pub fn atomic(&self, off: u64, op: AtomOp, ty: Ty, b: u32, c: u32) -> u32 {
        let a = &self.words[(off >> 2) as usize];
        match (op, ty) {
            (AtomOp::Add, Ty::F32) => a.fetch_update(Relaxed, Relaxed, |x| Some((f32::from_bits(x) + f32::from_bits(b)).to_bits())).unwrap_or(0),
            (AtomOp::Add, _) => a.fetch_add(b, Relaxed),
            (AtomOp::Exch, _) => a.swap(b, Relaxed),
            (AtomOp::Cas, _) => match a.compare_exchange(b, c, Relaxed, Relaxed) {
                Ok(x) | Err(x) => x,
            },
            (AtomOp::And, _) => a.fetch_and(b, Relaxed),
            (AtomOp::Or, _) => a.fetch_or(b, Relaxed),
            (AtomOp::Xor, _) => a.fetch_xor(b, Relaxed),
            _ => a.fetch_update(Relaxed, Relaxed, |x| Some(atomic_apply(op, ty, x, b))).unwrap_or(0),
        }
    }

    pub fn write_bytes(&self, off: u64, src: &[u8]) {
        for (k, &b) in src.iter().enumerate() {
            self.store(off + k as u64, 1, b as u64);
        }
    }

    pub fn read_bytes(&self, off: u64, dst: &mut [u8]) {
        for (k, b) in dst.iter_mut().enumerate() {
            *b = self.load(off + k as u64, 1) as u8;
        }
    }

    /// Fast path for whole-word copies (host transfers).
    pub fn write_all(&self, src: &[u8]) {
        let full = src.len() / 4;
        for k in 0..full {
            let c = &src[k * 4..k * 4 + 4];
            self.words[k].store(u32::from_le_bytes([c[0], c[1], c[2], c[3]]), Relaxed);
        }
        self.write_bytes(full as u64 * 4, &src[full * 4..]);
    }

    pub fn read_all(&self, dst: &mut [u8]) {
        let full = dst.len() / 4;
        for k in 0..full {
            dst[k * 4..k * 4 + 4].copy_from_slice(&self.words[k].load(Relaxed).to_le_bytes());
        }
        let rest = &mut dst[full * 4..];
        self.read_bytes(full as u64 * 4, rest);
    }
}

/// The 32-bit atomic operations other than the ones with a native instruction.
pub fn atomic_apply(op: AtomOp, ty: Ty, x: u32, b: u32) -> u32 {
    match (op, ty) {
        (AtomOp::Add, Ty::F32) => (f32::from_bits(x) + f32::from_bits(b)).to_bits(),
        (AtomOp::Add, _) => x.wrapping_add(b),
        (AtomOp::Min, Ty::F32) => f32::from_bits(x).min(f32::from_bits(b)).to_bits(),
        (AtomOp::Max, Ty::F32) => f32::from_bits(x).max(f32::from_bits(b)).to_bits(),
        (AtomOp::Min, Ty::S32) => (x as i32).min(b as i32) as u32,
        (AtomOp::Max, Ty::S32) => (x as i32).max(b as i32) as u32,
        (AtomOp::Min, _) => x.min(b),
        (AtomOp::Max, _) => x.max(b),
        (AtomOp::Exch, _) => b,
        (AtomOp::And, _) => x & b,
        (AtomOp::Or, _) => x | b,
        (AtomOp::Xor, _) => x ^ b,
        (AtomOp::Inc, _) => {
            if x >= b {
                0
            } else {
                x + 1
            }
        }
        (AtomOp::Dec, _) => {
            if x == 0 || x > b {
                b
            } else {
                x - 1
            }
        }
        (AtomOp::Cas, _) => b, // handled by the caller
    }
}

/// The allocations visible to one launch, sorted by address.
pub struct GlobalMem {
    pub allocs: Vec<Arc<Allocation>>,
}

impl GlobalMem {
    /// The allocation holding `[addr, addr+size)` entirely, with the offset.
    #[inline]
    pub fn find(&self, addr: u64, size: u64, hint: &mut usize) -> Option<(&Allocation, u64)> {
        if let Some(a) = self.allocs.get(*hint) {
            if addr >= a.base && addr.wrapping_sub(a.base).checked_add(size).is_some_and(|e| e <= a.len) {
                return Some((a, addr - a.base));
            }
        }
        let i = self.allocs.partition_point(|a| a.base <= addr);
        if i == 0 {
            return None;
        }
        let a = &self.allocs[i - 1];
        let off = addr - a.base;
        if off.checked_add(size).is_some_and(|e| e <= a.len) {
            *hint = i - 1;
            Some((a, off))
        } else {
            None
        }
    }

    /// Describe where an address lies, for error messages.
    pub fn describe(&self, addr: u64) -> String {
        let i = self.allocs.partition_point(|a| a.base <= addr);
        if i > 0 {
            let a = &self.allocs[i - 1];
            let off = addr - a.base;
            if off < a.len + GUARD {
                return format!("{} bytes past the start of a {}-byte allocation at {:#x}", off, a.len, a.base);
            }
        }
        if let Some(a) = self.allocs.get(i) {
            if a.base - addr < GUARD {
                return format!("{} bytes before a {}-byte allocation at {:#x}", a.base - addr, a.len, a.base);
            }
        }
        "not inside any allocation".to_string()
    }
}
