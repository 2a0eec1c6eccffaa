//! Shared helpers for the simulator tests (included with `#[path]`).
#![allow(dead_code)]

use std::path::PathBuf;

pub fn ptx_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("ptx")
}

pub fn ptx(name: &str) -> String {
    let p = ptx_dir().join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// 1-based line of the first line of `src` containing `needle`.
pub fn line_of(src: &str, needle: &str) -> u32 {
    src.lines().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("`{needle}` not found")) as u32 + 1
}

/// Deterministic pseudo-random numbers (xorshift64*), uniform in [-1, 1).
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform()).collect()
    }
}

/// f32 -> bf16 bits, round to nearest even (inputs here are finite).
pub fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// C = A * B in f32 (sequential fused multiply-add over k); A is m x k, B is k x n, row-major.
pub fn gemm_f32(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0f32;
            for p in 0..k {
                acc = a[i * k + p].mul_add(b[p * n + j], acc);
            }
            c[i * n + j] = acc;
        }
    }
    c
}

/// The simulator error a run must end with (printed); panics when it ran, or failed otherwise.
pub fn sim_err<T>(r: Result<T, pgc_runtime::device::DeviceError>) -> pgc_runtime::sim::SimError {
    match r {
        Err(pgc_runtime::device::DeviceError::Sim(e)) => {
            eprintln!("reported: {e}");
            *e
        }
        Err(e) => panic!("expected a simulator error, got {e}"),
        Ok(_) => panic!("expected a simulator error, the kernel ran"),
    }
}
