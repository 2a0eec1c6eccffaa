//! The PTX simulator's tests (the hand-written kernels of tests/ptx, planted
//! bugs, counters, recorded GPU outputs), one binary.

mod harness;


mod bugs;
mod counters;
mod gpu_golden;
mod kernels;
mod ptxas;
mod hopper;
mod wgmma;
mod speed;
