//! The record's optimizers on the CPU, in the working precision `F` (f64 or
//! f32): parameter groups, global-norm clipping, AdamW and Muon
//! (TRAINING.md sections 4 to 6). Scalars (learning rates, bias
//! corrections) are computed in f64, as the reference's Python does, and
//! applied in `F`.

use super::hyper::Hyper;
use pgc_backends::cpu::{linalg, Real};

/// Substrings that make a parameter a control tensor (the scalar AdamW group).
pub const CONTROL: &[&str] =
    &["attn_scale", "attn_scales", "mlp_scale", "mlp_scales", "resid_mix", "resid_mixes", "q_gain", "skip_weight", "skip_weights", "smear", "bigram.scale"];

/// Which optimizer owns a parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// AdamW at `tied_embed_lr`: `tok_emb.weight`, `bigram.embed.weight`.
    Embed,
    /// Muon at `matrix_lr`: the 2-D non-control matrices under `blocks.`, and `bigram.proj.weight`.
    Muon,
    /// AdamW at `scalar_lr`: everything else.
    Scalar,
}

impl Group {
    pub fn of(name: &str, shape: &[usize]) -> Group {
        if name == "tok_emb.weight" || name == "bigram.embed.weight" {
            Group::Embed
        } else if name == "bigram.proj.weight" || (name.starts_with("blocks.") && shape.len() == 2 && !CONTROL.iter().any(|c| name.contains(c))) {
            Group::Muon
        } else {
            Group::Scalar
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Group::Embed => "embed",
            Group::Muon => "muon",
            Group::Scalar => "scalar",
        }
    }

    pub fn base_lr(self, hp: &Hyper) -> f64 {
        match self {
            Group::Embed => hp.tied_embed_lr,
            Group::Muon => hp.matrix_lr,
            Group::Scalar => hp.scalar_lr,
        }
    }
}

/// One parameter's optimizer state.
#[derive(Clone, Debug, PartialEq)]
pub enum State<F> {
    /// AdamW moments and the update count `k`.
    Adam { step: u64, exp_avg: Vec<F>, exp_avg_sq: Vec<F> },
    /// Muon's momentum buffer.
    Muon { momentum_buffer: Vec<F> },
}

impl<F: Real> State<F> {
    /// The empty state (zero moments, zero buffer, step 0) of a parameter of `n` elements in `group`.
    pub fn new(group: Group, n: usize) -> Self {
        match group {
            Group::Muon => State::Muon { momentum_buffer: vec![F::ZERO; n] },
            _ => State::Adam { step: 0, exp_avg: vec![F::ZERO; n], exp_avg_sq: vec![F::ZERO; n] },
        }
    }

    /// The state tensors by their PyTorch names (`exp_avg`, `exp_avg_sq`, `momentum_buffer`).
    pub fn tensors(&self) -> Vec<(&'static str, &[F])> {
        match self {
            State::Adam { exp_avg, exp_avg_sq, .. } => vec![("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)],
            State::Muon { momentum_buffer } => vec![("momentum_buffer", momentum_buffer)],
        }
    }

    pub fn tensors_mut(&mut self) -> Vec<(&'static str, &mut Vec<F>)> {
        match self {
            State::Adam { exp_avg, exp_avg_sq, .. } => vec![("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)],
            State::Muon { momentum_buffer } => vec![("momentum_buffer", momentum_buffer)],
        }
    }
}

/// The global L2 norm of all gradients (the norm of the per-tensor norms,
/// in the order given); when `max_norm > 0` every gradient is scaled by
/// `min(1, max_norm / (norm + 1e-6))`. Returns the norm before clipping.
pub fn clip<F: Real>(grads: &mut [Vec<F>], max_norm: f64) -> f64 {
    let norms: Vec<f64> = grads.iter().map(|g| F::from_f64(g.iter().map(|x| x.to_f64() * x.to_f64()).sum::<f64>().sqrt()).to_f64()).collect();
    let total = F::from_f64(norms.iter().map(|n| n * n).sum::<f64>().sqrt());
    if max_norm > 0.0 {
        let coef = (F::from_f64(max_norm) / (total + F::from_f64(1e-6))).min(F::ONE);
        for g in grads.iter_mut() {
            for x in g.iter_mut() {
                *x *= coef;
            }
        }
    }
    total.to_f64()
}

/// One AdamW update (decoupled decay scaled by the current lr, then the
/// moments, then the bias-corrected step) at learning rate `lr`.
pub fn adamw<F: Real>(hp: &Hyper, p: &mut [F], g: &[F], state: &mut State<F>, lr: f64) {
    let State::Adam { step, exp_avg, exp_avg_sq } = state else { panic!("internal: AdamW on a Muon state") };
    *step += 1;
    let k = *step as f64; // powf below: libm pow, as Python's `b ** k`
    let (b1, b2) = (hp.beta1, hp.beta2);
    let decay = F::from_f64(1.0 - lr * hp.weight_decay);
    let (fb1, fb1c, fb2, fb2c) = (F::from_f64(b1), F::from_f64(1.0 - b1), F::from_f64(b2), F::from_f64(1.0 - b2));
    let bias2 = F::from_f64((1.0 - b2.powf(k)).sqrt());
    let eps = F::from_f64(hp.adam_eps);
    let step_size = F::from_f64(-lr / (1.0 - b1.powf(k)));
    for i in 0..p.len() {
        if hp.weight_decay != 0.0 {
            p[i] *= decay;
        }
        exp_avg[i] = exp_avg[i] * fb1 + g[i] * fb1c;
        exp_avg_sq[i] = exp_avg_sq[i] * fb2 + fb2c * g[i] * g[i];
        let denom = exp_avg_sq[i].sqrt() / bias2 + eps;
        p[i] += step_size * (exp_avg[i] / denom);
    }
}

/// One Muon update of a `rows x cols` matrix: momentum, Nesterov, Newton-Schulz,
/// shape scale, decoupled decay, step, at learning rate `lr` and momentum `mu`.
#[allow(clippy::too_many_arguments)]
pub fn muon<F: Real>(hp: &Hyper, p: &mut [F], g: &[F], rows: usize, cols: usize, state: &mut State<F>, lr: f64, mu: f64) {
    let State::Muon { momentum_buffer: buf } = state else { panic!("internal: Muon on an AdamW state") };
    let m = F::from_f64(mu);
    for (b, &x) in buf.iter_mut().zip(g) {
        *b = *b * m + x;
    }
    let d: Vec<F> = if hp.muon_nesterov { g.iter().zip(buf.iter()).map(|(&x, &b)| x + m * b).collect() } else { buf.clone() };
    let o = newton_schulz(&d, rows, cols, hp.muon_backend_steps as usize, hp.ns_coeffs, hp.ns_eps);
    let scale = F::from_f64((rows as f64 / cols as f64).max(1.0).sqrt());
    if hp.muon_weight_decay > 0.0 {
        let decay = F::from_f64(1.0 - lr * hp.muon_weight_decay);
        for x in p.iter_mut() {
            *x *= decay;
        }
    }
    let alpha = F::from_f64(-lr);
    for (x, &u) in p.iter_mut().zip(&o) {
        *x += alpha * (u * scale);
    }
}

/// `NS5`: the quintic Newton-Schulz approximation of `U V^T` for the
/// row-major `rows x cols` matrix `d = U S V^T`: normalise by the Frobenius
/// norm (+ `eps`), work on the transpose when tall, then `steps` times
/// `A = X X^T`, `B = b A + (c A) A`, `X = a X + B X`.
pub fn newton_schulz<F: Real>(d: &[F], rows: usize, cols: usize, steps: usize, coeffs: [f64; 3], eps: f64) -> Vec<F> {
    assert_eq!(d.len(), rows * cols);
    let norm = F::from_f64(d.iter().map(|x| x.to_f64() * x.to_f64()).sum::<f64>().sqrt());
    let denom = norm + F::from_f64(eps);
    let tall = rows > cols;
    let (m, n) = if tall { (cols, rows) } else { (rows, cols) };
    let mut x: Vec<F> = if tall { transpose(d, rows, cols) } else { d.to_vec() };
    for v in x.iter_mut() {
        *v = *v / denom;
    }
    let (a, b, c) = (F::from_f64(coeffs[0]), F::from_f64(coeffs[1]), F::from_f64(coeffs[2]));
    let (mut am, mut cam, mut bm, mut bx) = (vec![F::ZERO; m * m], vec![F::ZERO; m * m], vec![F::ZERO; m * m], vec![F::ZERO; m * n]);
    for _ in 0..steps {
        // A = X X^T (X^T read through strides)
        linalg::gemm(m, n, m, &x, n, 1, &x, 1, n, &mut am);
        for (ca, &v) in cam.iter_mut().zip(&am) {
            *ca = c * v;
        }
        linalg::gemm(m, m, m, &cam, m, 1, &am, m, 1, &mut bm);
        for (bv, &v) in bm.iter_mut().zip(&am) {
            *bv = b * v + *bv;
        }
        linalg::gemm(m, m, n, &bm, m, 1, &x, n, 1, &mut bx);
        for (xv, &v) in x.iter_mut().zip(&bx) {
            *xv = a * *xv + v;
        }
    }
    if tall {
        transpose(&x, m, n)
    } else {
        x
    }
}

fn transpose<F: Real>(d: &[F], rows: usize, cols: usize) -> Vec<F> {
    let mut out = vec![F::ZERO; d.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = d[r * cols + c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_follow_the_record() {
        assert_eq!(Group::of("tok_emb.weight", &[64, 32]), Group::Embed);
        assert_eq!(Group::of("bigram.proj.weight", &[32, 8]), Group::Muon);
        assert_eq!(Group::of("blocks.0.mlp.fc.weight", &[96, 32]), Group::Muon);
        assert_eq!(Group::of("blocks.0.resid_mix", &[2, 32]), Group::Scalar);
        assert_eq!(Group::of("skip_weights", &[1, 32]), Group::Scalar);
        assert_eq!(Group::of("blocks.0.attn.q_gain", &[4]), Group::Scalar);
    }

    #[test]
    fn newton_schulz_orthogonalises_roughly_and_keeps_zero() {
        // A tall 3x2 matrix: the result's singular values land near 1 (within NS5's band).
        let d = [3.0, 1.0, 0.5, 2.0, -1.0, 0.25];
        let o = newton_schulz::<f64>(&d, 3, 2, 5, [3.4445, -4.7750, 2.0315], 1e-7);
        let g = [o[0] * o[0] + o[2] * o[2] + o[4] * o[4], o[1] * o[1] + o[3] * o[3] + o[5] * o[5]];
        assert!(g.iter().all(|&v| (0.4..1.5).contains(&v)), "{g:?}");
        assert!(newton_schulz::<f64>(&[0.0; 6], 2, 3, 5, [3.4445, -4.7750, 2.0315], 1e-7).iter().all(|&v| v == 0.0));
    }

    #[test]
    fn first_adam_step_is_lr_times_sign() {
        let hp = Hyper { weight_decay: 0.0, ..Hyper::default() };
        let mut p = vec![1.0f64, 1.0];
        let mut s = State::new(Group::Scalar, 2);
        adamw(&hp, &mut p, &[0.5, -2.0], &mut s, 0.01);
        assert!((p[0] - 0.99).abs() < 1e-9 && (p[1] - 1.01).abs() < 1e-9, "{p:?}");
    }
}
