//! Stochastic weight averaging (TRAINING.md section 11): after step t
//! (`n = t + 1` steps done), when `s_t < swa_start_frac` and
//! `n % swa_every == 0`, the weights are added to a running sum; the
//! average is `sum / count`, applied after training only when `count > 1`.

use super::hyper::Hyper;
use pgc_backends::cpu::Real;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Swa<F> {
    /// Sum of the collected snapshots, per parameter (None before the first).
    pub sum: Option<Vec<Vec<F>>>,
    pub count: u64,
}

impl<F: Real> Swa<F> {
    /// Whether the step that ran at LR scale `scale` and left `steps_done` completed steps collects.
    pub fn due(hp: &Hyper, steps_done: u64, scale: f64) -> bool {
        hp.swa_enabled && scale < hp.swa_start_frac && hp.swa_every > 0 && steps_done.is_multiple_of(hp.swa_every)
    }

    pub fn collect(&mut self, params: &[Vec<F>]) {
        match &mut self.sum {
            None => self.sum = Some(params.to_vec()),
            Some(sum) => {
                for (s, p) in sum.iter_mut().zip(params) {
                    for (a, &b) in s.iter_mut().zip(p) {
                        *a += b;
                    }
                }
            }
        }
        self.count += 1;
    }

    /// `sum / count` per parameter (None before the first collection).
    pub fn average(&self) -> Option<Vec<Vec<F>>> {
        let n = F::from_f64(self.count as f64);
        self.sum.as_ref().map(|s| s.iter().map(|v| v.iter().map(|&x| x / n).collect()).collect())
    }

    /// The weights training ends with: the average when more than one snapshot was taken, else `last`.
    pub fn final_weights(&self, last: &[Vec<F>]) -> Vec<Vec<F>> {
        match self.average() {
            Some(avg) if self.count > 1 => avg,
            _ => last.to_vec(),
        }
    }
}
