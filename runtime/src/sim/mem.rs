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
//! An allocation is either eager (every word allocated and zeroed up front)
//! or lazy ([`Allocation::new_lazy`], for sampled runs of plans larger than
//! the host's memory): its words live in 64 KiB pages that exist only once
//! written; a word never written reads as a seeded pseudo-random value (two
//! bf16 halves in [-1, 1), so it reads as a finite float of either width).
//!
//! Allocations live at distinct, never reused addresses starting at
//! [`GLOBAL_BASE`], each followed by a gap of at least [`GUARD`] bytes, so an
//! access past the end, before the start, or into freed memory falls outside
//! every allocation and is reported as out of bounds.

use super::decode::{AtomOp, Ty};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

pub const GLOBAL_BASE: u64 = 0x0000_7f00_0000_0000;
pub const GUARD: u64 = 4096;
/// Generic addresses of the shared window: SHARED_WINDOW + shared address.
pub const SHARED_WINDOW: u64 = 0x0000_5000_0000_0000;
/// Generic addresses of the local window: LOCAL_WINDOW + local address.
pub const LOCAL_WINDOW: u64 = 0x0000_6000_0000_0000;
/// Generic addresses of the kernel parameters (`cvta.param`): PARAM_WINDOW + param offset.
pub const PARAM_WINDOW: u64 = 0x0000_4000_0000_0000;
pub const WINDOW_SIZE: u64 = 1 << 32;

/// Words per page of a lazy allocation (64 KiB).
pub const PAGE_WORDS: usize = 1 << 14;

enum Words {
    Eager(Box<[AtomicU32]>),
    Lazy { seed: u64, pages: Box<[OnceLock<Box<[AtomicU32]>>]>, resident: AtomicU64 },
}

pub struct Allocation {
    pub id: u64,
    pub base: u64,
    pub len: u64,
    words: Words,
}

/// The never-written word `w` of a lazy allocation seeded `seed`: two bf16
/// halves in [-1, 1) from a splitmix64 hash of (seed, word index).
#[inline]
pub fn seeded_word(seed: u64, w: u64) -> u32 {
    let mut z = seed ^ w.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let half = |r: u64| -> u32 {
        // r in [0, 2^16) -> f32 in [-1, 1) -> its bf16 (truncated, exact for these)
        let x = (r as f32) * (2.0 / 65536.0) - 1.0;
        x.to_bits() >> 16
    };
    half(z & 0xffff) | half((z >> 16) & 0xffff) << 16
}

impl Allocation {
    pub fn new(id: u64, base: u64, len: u64) -> Option<Self> {
        let n = len.div_ceil(4).max(1) as usize;
        let mut v: Vec<AtomicU32> = Vec::new();
        v.try_reserve_exact(n).ok()?;
        v.resize_with(n, || AtomicU32::new(0));
        Some(Allocation { id, base, len, words: Words::Eager(v.into_boxed_slice()) })
    }

    /// A lazy allocation: pages materialise on their first write (filled
    /// with the seeded words first); reads of other pages cost no memory.
    pub fn new_lazy(id: u64, base: u64, len: u64, seed: u64) -> Option<Self> {
        let n = len.div_ceil(4).max(1) as usize;
        let np = n.div_ceil(PAGE_WORDS);
        let mut v: Vec<OnceLock<Box<[AtomicU32]>>> = Vec::new();
        v.try_reserve_exact(np).ok()?;
        v.resize_with(np, OnceLock::new);
        let seed = seed ^ id.wrapping_mul(0xd6e8_feb8_6659_fd93);
        Some(Allocation { id, base, len, words: Words::Lazy { seed, pages: v.into_boxed_slice(), resident: AtomicU64::new(0) } })
    }

    /// Host bytes the allocation's words occupy (lazy: materialised pages only).
    pub fn resident_bytes(&self) -> u64 {
        match &self.words {
            Words::Eager(v) => v.len() as u64 * 4,
            Words::Lazy { resident, .. } => resident.load(Relaxed) * PAGE_WORDS as u64 * 4,
        }
    }

    /// The word for a write (materialising a lazy page).
    #[inline]
    fn wmut(&self, w: usize) -> &AtomicU32 {
        match &self.words {
            Words::Eager(v) => &v[w],
            Words::Lazy { seed, pages, resident } => {
                let p = w / PAGE_WORDS;
                let page = pages[p].get_or_init(|| {
                    resident.fetch_add(1, Relaxed);
                    let first = (p * PAGE_WORDS) as u64;
                    (0..PAGE_WORDS as u64).map(|k| AtomicU32::new(seeded_word(*seed, first + k))).collect()
                });
                &page[w % PAGE_WORDS]
            }
        }
    }

    /// The current value of word `w`.
    #[inline]
    fn wget(&self, w: usize) -> u32 {
        match &self.words {
            Words::Eager(v) => v[w].load(Relaxed),
            Words::Lazy { seed, pages, .. } => match pages[w / PAGE_WORDS].get() {
                Some(page) => page[w % PAGE_WORDS].load(Relaxed),
                None => seeded_word(*seed, w as u64),
            },
        }
    }

    /// Load `size` (1, 2, 4, 8) bytes at byte offset `off` (aligned to `size`).
    #[inline]
    pub fn load(&self, off: u64, size: u32) -> u64 {
        let w = (off >> 2) as usize;
        match size {
            4 => self.wget(w) as u64,
            8 => self.wget(w) as u64 | (self.wget(w + 1) as u64) << 32,
            2 => (self.wget(w) >> ((off & 2) * 8)) as u64 & 0xffff,
            _ => (self.wget(w) >> ((off & 3) * 8)) as u64 & 0xff,
        }
    }

    #[inline]
    pub fn store(&self, off: u64, size: u32, v: u64) {
        let w = (off >> 2) as usize;
        match size {
            4 => self.wmut(w).store(v as u32, Relaxed),
            8 => {
                self.wmut(w).store(v as u32, Relaxed);
                self.wmut(w + 1).store((v >> 32) as u32, Relaxed);
            }
            _ => {
                let shift = (off & 3) * 8;
                let m: u32 = if size == 2 { 0xffff } else { 0xff };
                let mask = m << shift;
                let val = ((v as u32) & m) << shift;
                let _ = self.wmut(w).fetch_update(Relaxed, Relaxed, |x| Some((x & !mask) | val));
            }
        }
    }

    /// 32-bit atomic read-modify-write at `off` (4-aligned); returns the old value.
    pub fn atomic(&self, off: u64, op: AtomOp, ty: Ty, b: u32, c: u32) -> u32 {
        let a = self.wmut((off >> 2) as usize);
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
            self.wmut(k).store(u32::from_le_bytes([c[0], c[1], c[2], c[3]]), Relaxed);
        }
        self.write_bytes(full as u64 * 4, &src[full * 4..]);
    }

    pub fn read_all(&self, dst: &mut [u8]) {
        let full = dst.len() / 4;
        for k in 0..full {
            dst[k * 4..k * 4 + 4].copy_from_slice(&self.wget(k).to_le_bytes());
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
