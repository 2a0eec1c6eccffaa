//! The memory plan: every value a kernel writes gets a byte range in one
//! activation arena; ranges are reused once a value's last reader has run.

use serde::{Deserialize, Serialize};

/// Offsets are aligned to this many bytes (enough for 16-byte vector access and cp.async).
pub const ALIGN: u64 = 256;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lifetime {
    pub bytes: u64,
    /// Index of the kernel that writes the value.
    pub first: usize,
    /// Index of the last kernel that reads it (`usize::MAX`-free: the plan's
    /// kernel count for values that must outlive the plan, i.e. outputs).
    pub last: usize,
}

/// Assign offsets: values are placed in the order they are written, each at
/// the lowest offset whose range is free for its whole lifetime (first fit
/// over the ranges live at that moment). Returns offsets and the arena size.
pub fn assign(lifetimes: &[Lifetime]) -> (Vec<u64>, u64) {
    let mut order: Vec<usize> = (0..lifetimes.len()).collect();
    order.sort_by_key(|&i| (lifetimes[i].first, std::cmp::Reverse(lifetimes[i].bytes)));
    let mut offsets = vec![0u64; lifetimes.len()];
    // Ranges placed so far: (offset, end, last use).
    let mut placed: Vec<(u64, u64, usize)> = Vec::new();
    let mut peak = 0u64;
    for i in order {
        let l = &lifetimes[i];
        let size = l.bytes.div_ceil(ALIGN) * ALIGN;
        // Ranges that overlap this value's lifetime, sorted by offset.
        let mut busy: Vec<(u64, u64)> =
            placed.iter().filter(|&&(_, _, last)| last >= l.first).map(|&(o, e, _)| (o, e)).collect();
        busy.sort_unstable();
        let mut at = 0u64;
        for (o, e) in busy {
            if o >= at + size {
                break;
            }
            at = at.max(e);
        }
        offsets[i] = at;
        placed.push((at, at + size, l.last));
        peak = peak.max(at + size);
    }
    (offsets, peak)
}

/// True when no two values that are live at the same time overlap in memory.
pub fn is_valid(lifetimes: &[Lifetime], offsets: &[u64]) -> bool {
    for i in 0..lifetimes.len() {
        for j in i + 1..lifetimes.len() {
            let (a, b) = (&lifetimes[i], &lifetimes[j]);
            let live_together = a.first <= b.last && b.first <= a.last;
            let overlap = offsets[i] < offsets[j] + b.bytes && offsets[j] < offsets[i] + a.bytes;
            if live_together && overlap && a.bytes > 0 && b.bytes > 0 {
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_dead_ranges_and_never_overlaps_live_ones() {
        let l = |bytes, first, last| Lifetime { bytes, first, last };
        let lts = vec![l(1000, 0, 1), l(1000, 1, 2), l(1000, 2, 3), l(500, 3, 4), l(3000, 4, 5)];
        let (off, peak) = assign(&lts);
        assert!(is_valid(&lts, &off));
        // The third value reuses the first one's bytes; the arena is smaller
        // than the values laid end to end (3 * 1024 + 512 + 3072).
        assert_eq!(off[2], off[0]);
        assert!(peak < 3 * 1024 + 512 + 3072, "peak {peak}");
        // A pseudo-random stress: always valid.
        let mut s = 12345u64;
        let mut lts = Vec::new();
        for k in 0..300 {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let len = (s >> 40) as usize % 20;
            lts.push(l((s >> 20) % 100_000 + 1, k, k + len));
        }
        let (off, _) = assign(&lts);
        assert!(is_valid(&lts, &off));
    }
}
