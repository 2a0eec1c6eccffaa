//! The PTX backend on a CUDA GPU against the PyTorch float64 golden files:
//! the same body as tests/ptx/golden_sim.rs (`tests/common/golden.rs`) through
//! `pgc run --backend cuda`: tiny, small and odd, train and eval, f32
//! (relative error at most 1e-4 per tensor) and bf16 (the numerics contract
//! against both yardsticks).
//!
//! Without a GPU every test prints a skip note and passes, unless
//! `PGC_REQUIRE_GPU=1` (then they fail).

use crate::common;
use crate::GPU_LOCK;
use common::golden::{self, Backend, Prec};

fn check(test: &str, name: &str, precisions: &[Prec]) {
    let _guard = GPU_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = pgc_runtime::cuda::CudaDevice::new(0) {
        if std::env::var("PGC_REQUIRE_GPU").as_deref() == Ok("1") {
            panic!("{test}: PGC_REQUIRE_GPU=1 but no GPU could be opened: {e}");
        }
        println!("{test}: skipped, no GPU ({e})");
        return;
    }
    golden::check(name, Backend::Cuda, precisions, &|_, _| String::new());
}

#[test]
fn golden_tiny_on_the_gpu() {
    check("golden_tiny_on_the_gpu", "tiny", &[Prec::F32, Prec::Bf16]);
}

#[test]
fn golden_small_on_the_gpu() {
    check("golden_small_on_the_gpu", "small", &[Prec::F32, Prec::Bf16]);
}

#[test]
fn golden_odd_on_the_gpu() {
    check("golden_odd_on_the_gpu", "odd", &[Prec::F32, Prec::Bf16]);
}
