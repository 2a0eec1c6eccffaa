//! The LR multiplier `s_t` and the Muon momentum `mu_t` of step t
//! (TRAINING.md section 6): warmdown by iteration count, or by wall clock
//! when there is a cap; the momentum ramp.

use super::hyper::Hyper;

/// `s_t` for step `step` after `elapsed_ms` of training time.
pub fn lr_scale(hp: &Hyper, step: u64, elapsed_ms: f64) -> f64 {
    if hp.warmdown_iters <= 0 {
        return 1.0;
    }
    let warmdown = hp.warmdown_iters as f64;
    if !hp.by_clock() {
        let start = (hp.iterations as i64 - hp.warmdown_iters).max(0) as u64;
        return if start <= step && step < hp.iterations { ((hp.iterations - step) as f64 / warmdown.max(1.0)).max(0.0) } else { 1.0 };
    }
    // The warmdown is the last `warmdown_iters` mean step times before the cap.
    let step_ms = elapsed_ms / (step.max(1) as f64);
    let window = warmdown * step_ms;
    let left = (1000.0 * hp.max_wallclock_seconds - elapsed_ms).max(0.0);
    if left <= window {
        left / window.max(1e-9)
    } else {
        1.0
    }
}

/// `mu_t`: linear from `muon_momentum_warmup_start` at step 0 to
/// `muon_momentum` at step `muon_momentum_warmup_steps`, then constant.
pub fn muon_momentum(hp: &Hyper, step: u64) -> f64 {
    let f = if hp.muon_momentum_warmup_steps > 0 { (step as f64 / hp.muon_momentum_warmup_steps as f64).min(1.0) } else { 1.0 };
    (1.0 - f) * hp.muon_momentum_warmup_start + f * hp.muon_momentum
}

/// Training time before step `step`: the simulated clock when
/// `sim_step_ms > 0`, else the measured one.
pub fn elapsed_ms(hp: &Hyper, step: u64, measured_ms: f64) -> f64 {
    if hp.sim_step_ms > 0.0 {
        step as f64 * hp.sim_step_ms
    } else {
        measured_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iteration_warmdown_and_momentum_ramp() {
        let hp = Hyper { iterations: 16, warmdown_iters: 9, max_wallclock_seconds: 0.0, muon_momentum_warmup_steps: 10, ..Hyper::default() };
        let s: Vec<f64> = (0..16).map(|t| lr_scale(&hp, t, 0.0)).collect();
        assert_eq!(&s[..7], &[1.0; 7]);
        assert_eq!(s[7], 1.0); // 9/9
        assert_eq!(s[15], 1.0 / 9.0);
        assert_eq!(muon_momentum(&hp, 0), 0.92);
        assert_eq!(muon_momentum(&hp, 10), 0.99);
        assert!((muon_momentum(&hp, 5) - 0.955).abs() < 1e-15);
    }

    #[test]
    fn clock_warmdown_equals_the_iteration_one_at_a_constant_step_time() {
        let it = Hyper { iterations: 100, warmdown_iters: 30, max_wallclock_seconds: 0.0, ..Hyper::default() };
        let clk = Hyper { max_wallclock_seconds: 10.0, sim_step_ms: 100.0, ..it.clone() };
        for t in 0..100 {
            let a = lr_scale(&it, t, 0.0);
            let b = lr_scale(&clk, t, elapsed_ms(&clk, t, 0.0));
            assert!((a - b).abs() < 1e-12, "step {t}: {a} vs {b}");
        }
    }
}
