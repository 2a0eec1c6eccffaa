//! The state of a training run: what a checkpoint holds and a resumed run
//! continues from.

use super::optim::State;
use super::swa::Swa;

/// The per-step records of the golden layout.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Record {
    pub loss: Vec<f64>,
    pub lr_scale: Vec<f64>,
    pub muon_momentum: Vec<f64>,
    pub grad_norm: Vec<f64>,
}

/// Everything a resumed run needs to continue bit for bit.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainState<F> {
    /// Completed optimizer steps.
    pub step: u64,
    /// Measured training time so far (ms), the wall-clock schedule's clock.
    pub clock_ms: f64,
    /// Stream position of the next micro-step's first token.
    pub loader_pos: u64,
    /// The step at which the clock reached the cap (the run stops there).
    pub stop_after: Option<u64>,
    pub params: Vec<Vec<F>>,
    pub opt: Vec<State<F>>,
    pub swa: Swa<F>,
    pub record: Record,
    /// Weights after the first step.
    pub first: Option<Vec<Vec<F>>>,
}
