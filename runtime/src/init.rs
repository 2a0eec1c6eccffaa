//! The training initialisation of spec/MODEL.md, seeded (`--random-weights SEED`).
//!
//! Each parameter is filled as its [`pgc_ir::Init`] annotation says:
//! `Zeros`, `Constant`, `Rows` (row r = `values[r]`), `Normal { std }`, and
//! `Orthogonal { gain }` (like `torch.nn.init.orthogonal_`: the matrix is
//! viewed as `[rows, numel / rows]`; a Gaussian matrix of the taller
//! orientation is orthonormalised — Q of its QR factorisation with R's
//! diagonal positive — transposed back if needed, and scaled by `gain`).
//!
//! Randomness: xoshiro256** (Blackman and Vigna), one independent stream per
//! parameter, seeded by SplitMix64 from `SEED` and the FNV-1a hash of the
//! parameter's name, so a parameter's values do not depend on which other
//! parameters the model declares or in what order. Normal variates come from
//! the Box-Muller transform (both values of each pair are used). The same
//! seed gives the same weights on every machine (the QR uses a fixed
//! operation order; only its matrix products go through `matrixmultiply`,
//! whose results do not depend on the thread count).

use pgc_ir::{Init, ParamInfo};
use rayon::prelude::*;
use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("parameter `{name}`: {msg}")]
    Bad { name: String, msg: String },
}

/// SplitMix64 step (used to seed xoshiro).
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3))
}

/// xoshiro256** with Box-Muller normals.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
    spare: Option<f64>,
}

impl Rng {
    /// The stream for `(seed, name)`.
    pub fn new(seed: u64, name: &str) -> Self {
        let mut sm = seed ^ fnv1a(name).rotate_left(17);
        let s = [splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm)];
        Rng { s, spare: None }
    }
    pub fn next_u64(&mut self) -> u64 {
        let r = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        r
    }
    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Uniform integer in `0..n` (Lemire's multiply-shift on 32 random bits; n < 2^32).
    pub fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * n as u64) >> 32) as u32
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (2.0 * std::f64::consts::PI * u2).sin_cos();
        self.spare = Some(r * s);
        r * c
    }
}

/// The initial values of one parameter (row-major).
pub fn init_param(p: &ParamInfo, seed: u64) -> Result<Vec<f64>, InitError> {
    let n = p.numel();
    let bad = |msg: String| InitError::Bad { name: p.name.clone(), msg };
    let mut rng = Rng::new(seed, &p.name);
    Ok(match &p.init {
        Init::Zeros => vec![0.0; n],
        Init::Constant { value } => vec![*value; n],
        Init::Rows { values } => {
            if p.shape.is_empty() || p.shape[0] != values.len() {
                return Err(bad(format!("rows({} values) needs shape [{}, ...], got {:?}", values.len(), values.len(), p.shape)));
            }
            let per = n / values.len().max(1);
            values.iter().flat_map(|&v| std::iter::repeat_n(v, per)).collect()
        }
        Init::Normal { std } => (0..n).map(|_| std * rng.normal()).collect(),
        Init::Uniform { bound } => (0..n).map(|_| bound * (2.0 * rng.uniform() - 1.0)).collect(),
        Init::Orthogonal { gain } => {
            if p.shape.len() < 2 {
                return Err(bad(format!("orthogonal init needs at least 2 dimensions, shape is {:?}", p.shape)));
            }
            let rows = p.shape[0];
            let cols = n / rows.max(1);
            orthogonal(rows, cols, *gain, &mut rng)
        }
    })
}

/// A `rows x cols` matrix (row-major) with orthonormal rows or columns, times `gain`.
fn orthogonal(rows: usize, cols: usize, gain: f64, rng: &mut Rng) -> Vec<f64> {
    if rows == 0 || cols == 0 {
        return vec![];
    }
    // Orthonormalise the columns of a tall m x n Gaussian matrix (m >= n).
    let (m, n, transposed) = if rows >= cols { (rows, cols, false) } else { (cols, rows, true) };
    // Draw the Gaussian matrix of the parameter's shape, row-major, then view it
    // column-major as m x n: for the tall case that is its transpose.
    let g: Vec<f64> = (0..rows * cols).map(|_| rng.normal()).collect();
    let mut a = vec![0.0; m * n]; // column-major m x n
    for r in 0..rows {
        for c in 0..cols {
            let (i, j) = if transposed { (c, r) } else { (r, c) };
            a[j * m + i] = g[r * cols + c];
        }
    }
    let q = gram_schmidt(a, m, n);
    let mut out = vec![0.0; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            let (i, j) = if transposed { (c, r) } else { (r, c) };
            out[r * cols + c] = gain * q[j * m + i];
        }
    }
    out
}

/// Q of the thin QR factorisation (R with positive diagonal) of a column-major
/// `m x n` matrix (m >= n): block classical Gram-Schmidt with
/// re-orthogonalisation (BCGS2), modified Gram-Schmidt twice inside a block.
fn gram_schmidt(mut a: Vec<f64>, m: usize, n: usize) -> Vec<f64> {
    const NB: usize = 32;
    let mut c = vec![0.0; n * NB];
    let mut j0 = 0;
    while j0 < n {
        let nb = NB.min(n - j0);
        if j0 > 0 {
            for _ in 0..2 {
                let (q, w) = a.split_at_mut(j0 * m);
                // C = Q^T W (j0 x nb, row-major); W -= Q C.
                unsafe {
                    matrixmultiply::dgemm(j0, m, nb, 1.0, q.as_ptr(), m as isize, 1, w.as_ptr(), 1, m as isize, 0.0, c.as_mut_ptr(), nb as isize, 1);
                    matrixmultiply::dgemm(m, j0, nb, -1.0, q.as_ptr(), 1, m as isize, c.as_ptr(), nb as isize, 1, 1.0, w.as_mut_ptr(), 1, m as isize);
                }
            }
        }
        for j in j0..j0 + nb {
            for _ in 0..2 {
                for p in j0..j {
                    let (head, tail) = a.split_at_mut(j * m);
                    let qp = &head[p * m..(p + 1) * m];
                    let w = &mut tail[..m];
                    let d: f64 = qp.iter().zip(w.iter()).map(|(x, y)| x * y).sum();
                    w.iter_mut().zip(qp).for_each(|(y, x)| *y -= d * x);
                }
            }
            let w = &mut a[j * m..(j + 1) * m];
            let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
            w.iter_mut().for_each(|x| *x /= norm);
        }
        j0 += nb;
    }
    a
}

/// Initial values of every parameter, by name.
pub fn random_params(params: &[ParamInfo], seed: u64) -> Result<HashMap<String, Vec<f64>>, InitError> {
    params.par_iter().map(|p| init_param(p, seed).map(|v| (p.name.clone(), v))).collect()
}

/// Random token ids uniform in `0..vocab`: a `[batch, seq + 1]` stream, split
/// into inputs (the first `seq`) and targets (the last `seq`) as training does.
pub fn random_tokens(seed: u64, batch: usize, seq: usize, vocab: u32) -> (Vec<i32>, Vec<i32>) {
    let mut rng = Rng::new(seed, "tokens");
    let mut inputs = Vec::with_capacity(batch * seq);
    let mut targets = Vec::with_capacity(batch * seq);
    for _ in 0..batch {
        let row: Vec<i32> = (0..=seq).map(|_| rng.below(vocab) as i32).collect();
        inputs.extend_from_slice(&row[..seq]);
        targets.extend_from_slice(&row[1..]);
    }
    (inputs, targets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgc_ir::QuantSpec;

    fn p(name: &str, shape: &[usize], init: Init) -> ParamInfo {
        ParamInfo { name: name.into(), shape: shape.to_vec(), quant: QuantSpec::default(), init, origin: None }
    }

    fn gram(v: &[f64], rows: usize, cols: usize, by_rows: bool) -> f64 {
        // max |G - I| of the Gram matrix of rows (or columns)
        let k = if by_rows { rows } else { cols };
        let at = |i: usize, l: usize| if by_rows { v[i * cols + l] } else { v[l * cols + i] };
        let len = if by_rows { cols } else { rows };
        let mut worst = 0.0f64;
        for i in 0..k {
            for j in 0..k {
                let d: f64 = (0..len).map(|l| at(i, l) * at(j, l)).sum();
                worst = worst.max((d - if i == j { 1.0 } else { 0.0 }).abs());
            }
        }
        worst
    }

    #[test]
    fn orthogonal_is_orthonormal_and_deterministic() {
        for (r, c) in [(70, 40), (40, 70), (64, 64)] {
            let q = init_param(&p("w", &[r, c], Init::Orthogonal { gain: 1.0 }), 7).unwrap();
            assert!(gram(&q, r, c, r <= c) < 1e-12, "{r}x{c}");
            assert_eq!(q, init_param(&p("w", &[r, c], Init::Orthogonal { gain: 1.0 }), 7).unwrap());
            assert_ne!(q, init_param(&p("w", &[r, c], Init::Orthogonal { gain: 1.0 }), 8).unwrap());
        }
        let g = init_param(&p("w", &[8, 8], Init::Orthogonal { gain: 0.5 }), 1).unwrap();
        let row0: f64 = g[..8].iter().map(|x| x * x).sum();
        assert!((row0 - 0.25).abs() < 1e-12);
    }

    #[test]
    fn simple_inits() {
        assert_eq!(init_param(&p("z", &[3], Init::Zeros), 1).unwrap(), vec![0.0; 3]);
        assert_eq!(init_param(&p("c", &[], Init::Constant { value: 0.05 }), 1).unwrap(), vec![0.05]);
        assert_eq!(init_param(&p("r", &[2, 2], Init::Rows { values: vec![1.0, 0.0] }), 1).unwrap(), vec![1.0, 1.0, 0.0, 0.0]);
        assert!(init_param(&p("r", &[3, 2], Init::Rows { values: vec![1.0, 0.0] }), 1).is_err());
        let v = init_param(&p("n", &[20000], Init::Normal { std: 0.005 }), 3).unwrap();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        assert!(mean.abs() < 2e-4 && (sd - 0.005).abs() < 2e-4, "{mean} {sd}");
        // uniform in [-b, b): inside the bound, mean 0, variance b^2 / 3
        let b = 0.125;
        let u = init_param(&p("u", &[20000], Init::Uniform { bound: b }), 4).unwrap();
        assert!(u.iter().all(|x| (-b..b).contains(x)));
        let mean = u.iter().sum::<f64>() / u.len() as f64;
        let var = u.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / u.len() as f64;
        assert!(mean.abs() < 3e-3 && (var / (b * b / 3.0) - 1.0).abs() < 0.03, "{mean} {var}");
    }

    #[test]
    fn tokens_are_in_range_and_shifted() {
        let (x, y) = random_tokens(5, 2, 10, 7);
        assert!(x.iter().chain(&y).all(|&t| (0..7).contains(&t)));
        assert_eq!(&x[1..10], &y[..9]);
        assert_eq!(random_tokens(5, 2, 10, 7), (x, y));
    }
}
