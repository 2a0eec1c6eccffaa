//! Hopper's asynchronous machinery as the simulator models it: the tensor
//! map's simulator encoding, the box layout of TMA copies, wgmma's shared
//! memory matrix descriptors, and mbarrier state. Pure data and arithmetic;
//! the interpreter (`exec.rs`) drives them. Semantics are from the PTX ISA
//! (sections on `cp.async.bulk.tensor`, `mbarrier`, `wgmma` and the
//! asynchronous proxy); `SUBSET.md` lists what was also checked on silicon.

use crate::device::{TensorMap, TmaDtype, TmaSwizzle};

/// Bytes of a tensor map parameter (`.param .align 64 .b8 p[128]`).
pub const TMAP_BYTES: usize = 128;
const MAGIC: &[u8; 8] = b"PGCTMAP1";

fn dtype_code(d: TmaDtype) -> u8 {
    TmaDtype::ALL.iter().position(|&x| x == d).unwrap_or(0) as u8
}

fn swizzle_code(s: TmaSwizzle) -> u8 {
    match s {
        TmaSwizzle::None => 0,
        TmaSwizzle::B32 => 1,
        TmaSwizzle::B64 => 2,
        TmaSwizzle::B128 => 3,
    }
}

/// The simulator's 128 bytes for a tensor map (what `KernelArg::TensorMap`
/// puts in the parameter buffer).
pub fn encode_tmap(t: &TensorMap) -> [u8; TMAP_BYTES] {
    let mut b = [0u8; TMAP_BYTES];
    b[..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&t.addr.to_le_bytes());
    b[16] = dtype_code(t.dtype);
    b[17] = t.rank as u8;
    b[18] = swizzle_code(t.swizzle);
    for d in 0..5 {
        b[24 + 8 * d..32 + 8 * d].copy_from_slice(&t.dims[d].to_le_bytes());
        b[96 + 4 * d..100 + 4 * d].copy_from_slice(&t.box_dims[d].to_le_bytes());
    }
    for d in 0..4 {
        b[64 + 8 * d..72 + 8 * d].copy_from_slice(&t.strides[d].to_le_bytes());
    }
    b
}

/// Reads a tensor map back from kernel parameter bytes; bytes that are not
/// one (a plain buffer passed where a map belongs, or a corrupted copy) are
/// an error, as are fields the driver would have refused.
pub fn decode_tmap(b: &[u8]) -> Result<TensorMap, String> {
    if b.len() < TMAP_BYTES || &b[..8] != MAGIC {
        return Err("the tensor-map operand does not hold a tensor map (pass KernelArg::TensorMap for this parameter)".into());
    }
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
    let dtype = *TmaDtype::ALL.get(b[16] as usize).ok_or("bad tensor-map element type")?;
    let swizzle = match b[18] {
        0 => TmaSwizzle::None,
        1 => TmaSwizzle::B32,
        2 => TmaSwizzle::B64,
        3 => TmaSwizzle::B128,
        _ => return Err("bad tensor-map swizzle".into()),
    };
    let t = TensorMap {
        addr: u64_at(8),
        dtype,
        rank: b[17] as u32,
        dims: [0, 1, 2, 3, 4].map(|d| u64_at(24 + 8 * d)),
        strides: [0, 1, 2, 3].map(|d| u64_at(64 + 8 * d)),
        box_dims: [0, 1, 2, 3, 4].map(|d| u32_at(96 + 4 * d)),
        swizzle,
    };
    t.validate()?;
    Ok(t)
}

/// One element of a TMA box: its linear position in the box (the shared
/// byte offset before the swizzle is `pos * elem_bytes`) and its global
/// byte offset from the map's address, or `None` when the coordinates fall
/// outside the tensor (loads fill zeros, stores skip it).
pub fn box_elements(t: &TensorMap, coords: &[i64], mut f: impl FnMut(u64, Option<u64>)) {
    let r = t.rank as usize;
    let n: u64 = t.box_dims[..r].iter().map(|&b| b as u64).product();
    let es = t.dtype.bytes() as u64;
    for pos in 0..n {
        let mut rem = pos;
        let mut goff = 0u64;
        let mut inside = true;
        for (d, &c0) in coords.iter().enumerate().take(r) {
            let bd = t.box_dims[d] as u64;
            let i = (rem % bd) as i64;
            rem /= bd;
            let c = c0 + i;
            if c < 0 || c as u64 >= t.dims[d] {
                inside = false;
            } else {
                goff += c as u64 * if d == 0 { es } else { t.strides[d - 1] };
            }
        }
        f(pos, inside.then_some(goff));
    }
}

/// A wgmma shared-memory matrix descriptor (64 bits: start address, leading
/// and stride byte offsets in 16-byte units, base offset, swizzle mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatDesc {
    pub start: u32,
    pub lbo: u32,
    pub sbo: u32,
    pub base_offset: u32,
    pub swizzle: TmaSwizzle,
}

impl MatDesc {
    pub fn decode(v: u64) -> MatDesc {
        let f = |lo: u32, bits: u32| ((v >> lo) & ((1 << bits) - 1)) as u32;
        MatDesc {
            start: f(0, 14) << 4,
            lbo: f(16, 14) << 4,
            sbo: f(32, 14) << 4,
            base_offset: f(49, 3),
            swizzle: match f(62, 2) {
                1 => TmaSwizzle::B128,
                2 => TmaSwizzle::B64,
                3 => TmaSwizzle::B32,
                _ => TmaSwizzle::None,
            },
        }
    }

    pub fn encode(&self) -> u64 {
        let sw = match self.swizzle {
            TmaSwizzle::None => 0u64,
            TmaSwizzle::B128 => 1,
            TmaSwizzle::B64 => 2,
            TmaSwizzle::B32 => 3,
        };
        ((self.start as u64 >> 4) & 0x3fff) | ((self.lbo as u64 >> 4) & 0x3fff) << 16 | ((self.sbo as u64 >> 4) & 0x3fff) << 32 | (self.base_offset as u64 & 7) << 49 | sw << 62
    }

    /// The shared address of element (`row`, `k`) of a 16-bit operand
    /// (`row` an M index of A or an N index of B), from the PTX ISA's
    /// canonical layouts with T = 8 elements per 16 bytes and c = span / 16:
    ///
    /// - K-major, no swizzle: `((8,m),(T,2k)):((1T,SBO),(1,LBO))`
    /// - K-major, swizzled: `((8,m),(T,2k)):((cT,SBO),(1,T))`
    /// - MN-major, no swizzle: `((T,1,m),(8,k)):((1,T,SBO),(1T,LBO))`
    /// - MN-major, swizzled: `((T,c,m),(8,k)):((1,T,LBO),(cT,SBO))`
    ///
    /// then the swizzle on the absolute address (base offset 0).
    pub fn addr16(&self, row: u32, k: u32, mn_major: bool) -> u32 {
        const T: u32 = 8;
        let c = self.swizzle.span() / 16;
        let (lbo, sbo) = (self.lbo / 2, self.sbo / 2);
        let elems = match (mn_major, c) {
            (false, 0) => (row % 8) * T + (row / 8) * sbo + k % T + (k / T) * lbo,
            (false, c) => (row % 8) * c * T + (row / 8) * sbo + k,
            (true, 0) => row % T + (row / T) * sbo + (k % 8) * T + (k / 8) * lbo,
            (true, c) => row % T + ((row / T) % c) * T + (row / (c * T)) * lbo + (k % 8) * c * T + (k / 8) * sbo,
        };
        self.swizzle.apply(self.start.wrapping_add(2 * elems))
    }
}

/// One mbarrier's state (the 8-byte object in shared memory).
#[derive(Debug, Clone, Copy)]
pub struct MBar {
    /// arrivals each phase expects
    pub expected: u32,
    /// arrivals still missing in the current phase
    pub pending: u32,
    /// transaction bytes still expected (may go negative transiently, when
    /// bytes land before their `expect_tx`)
    pub tx: i64,
    /// phases completed so far (the current phase's parity is `phase & 1`)
    pub phase: u32,
    pub init_line: u32,
}

/// The largest arrival count and transaction count an mbarrier holds (2^20 - 1).
pub const MBAR_MAX: i64 = (1 << 20) - 1;

impl MBar {
    pub fn new(count: u32, line: u32) -> MBar {
        MBar { expected: count, pending: count, tx: 0, phase: 0, init_line: line }
    }

    /// Whether the phase with parity `parity` has completed: the ISA's
    /// `try_wait.parity` is true once the current phase's parity differs.
    pub fn parity_done(&self, parity: u32) -> bool {
        self.phase & 1 != parity & 1
    }

    fn maybe_complete(&mut self) -> bool {
        if self.pending == 0 && self.tx == 0 {
            self.phase = self.phase.wrapping_add(1);
            self.pending = self.expected;
            return true;
        }
        false
    }

    /// `n` arrivals; `Ok(true)` when they complete the phase.
    pub fn arrive(&mut self, n: u32) -> Result<bool, String> {
        if n > self.pending {
            return Err(format!(
                "{n} arrival(s) on an mbarrier with {} of its {} arrivals left in this phase (phase {}, waiting for {} transaction bytes): more arrivals than mbarrier.init's count",
                self.pending, self.expected, self.phase, self.tx
            ));
        }
        self.pending -= n;
        Ok(self.maybe_complete())
    }

    /// `expect_tx` of `bytes`.
    pub fn expect_tx(&mut self, bytes: u32) -> Result<(), String> {
        self.tx += bytes as i64;
        if self.tx > MBAR_MAX {
            return Err(format!("mbarrier transaction count {} exceeds 2^20 - 1", self.tx));
        }
        Ok(())
    }

    /// `bytes` delivered by the async proxy (`complete_tx`); `Ok(true)` when
    /// that completes the phase.
    pub fn complete_tx(&mut self, bytes: u64) -> Result<bool, String> {
        self.tx -= bytes as i64;
        if self.tx < -MBAR_MAX {
            return Err(format!("mbarrier transaction count {} is below -(2^20 - 1)", self.tx));
        }
        if self.pending == 0 && self.tx < 0 {
            return Err(format!(
                "a TMA copy delivered {} more bytes than this phase's expect_tx announced (phase {}): the transaction count went negative after every arrival",
                -self.tx, self.phase
            ));
        }
        Ok(self.maybe_complete())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_maps_round_trip_and_refuse_garbage() {
        let t = TensorMap { addr: 0x7f00_0000_0100, dtype: TmaDtype::Bf16, rank: 2, dims: [70, 33, 1, 1, 1], strides: [160, 0, 0, 0], box_dims: [64, 8, 1, 1, 1], swizzle: TmaSwizzle::B128 };
        assert_eq!(decode_tmap(&encode_tmap(&t)), Ok(t));
        assert!(decode_tmap(&[0u8; 128]).is_err());
        let mut b = encode_tmap(&t);
        b[18] = 9;
        assert!(decode_tmap(&b).is_err());
        let mut b = encode_tmap(&t);
        b[96..100].copy_from_slice(&128u32.to_le_bytes()); // 256 bytes > the 128-byte span
        assert!(decode_tmap(&b).unwrap_err().contains("swizzle span"));
    }

    #[test]
    fn swizzle_permutes_chunks_within_each_row_group() {
        // 128B: chunk c of row r lands at chunk c ^ (r % 8)
        for r in 0..16u32 {
            for c in 0..8u32 {
                let a = TmaSwizzle::B128.apply(r * 128 + c * 16 + 3);
                assert_eq!(a, r * 128 + ((c ^ (r % 8)) * 16) + 3);
            }
        }
        // 32B: two chunks per 32-byte row, xor with bit 7 of the address (row / 4 % 2)
        assert_eq!(TmaSwizzle::B32.apply(128), 128 + 16);
        assert_eq!(TmaSwizzle::None.apply(1234), 1234);
    }

    #[test]
    fn descriptors_round_trip_and_follow_the_canonical_layouts() {
        let d = MatDesc { start: 1024, lbo: 16, sbo: 1024, base_offset: 0, swizzle: TmaSwizzle::B128 };
        assert_eq!(MatDesc::decode(d.encode()), d);
        // K-major 128B: rows of 128 bytes, k contiguous, 8-row groups SBO apart
        assert_eq!(d.addr16(0, 0, false), 1024);
        assert_eq!(d.addr16(0, 9, false), 1024 + 18);
        assert_eq!(d.addr16(1, 0, false), TmaSwizzle::B128.apply(1024 + 128));
        assert_eq!(d.addr16(8, 0, false), 2048);
        // K-major, no swizzle: 8x16-byte core matrices, SBO between row groups, LBO between k halves
        let n = MatDesc { start: 0, lbo: 128, sbo: 256, base_offset: 0, swizzle: TmaSwizzle::None };
        assert_eq!(n.addr16(1, 0, false), 16);
        assert_eq!(n.addr16(0, 8, false), 128);
        assert_eq!(n.addr16(8, 0, false), 256);
        // MN-major, swizzled: the MN index contiguous in 128-byte rows, k rows apart
        let m = MatDesc { start: 0, lbo: 8192, sbo: 1024, base_offset: 0, swizzle: TmaSwizzle::B128 };
        assert_eq!(m.addr16(5, 0, true), 10);
        assert_eq!(m.addr16(0, 1, true), TmaSwizzle::B128.apply(128));
        assert_eq!(m.addr16(0, 8, true), 1024);
        assert_eq!(m.addr16(64, 0, true), 8192);
    }

    #[test]
    fn mbarrier_phases_arrivals_and_transactions() {
        let mut b = MBar::new(2, 1);
        assert!(!b.parity_done(0));
        b.expect_tx(64).unwrap();
        assert!(!b.arrive(1).unwrap());
        assert!(!b.arrive(1).unwrap(), "bytes still missing");
        assert!(b.complete_tx(64).unwrap());
        assert!(b.parity_done(0) && !b.parity_done(1));
        // bytes may land before their expect_tx while arrivals are pending
        assert!(!b.complete_tx(32).unwrap());
        b.expect_tx(32).unwrap();
        assert!(!b.arrive(1).unwrap());
        assert!(b.arrive(1).unwrap());
        assert!(b.parity_done(1));
        assert!(b.arrive(3).is_err(), "more arrivals than the count");
        b.arrive(2).unwrap();
        let mut c = MBar::new(1, 1);
        c.expect_tx(16).unwrap();
        c.arrive(1).unwrap();
        assert!(c.complete_tx(32).is_err(), "more bytes than announced");
    }
}
