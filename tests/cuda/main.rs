//! The CUDA backend's tests (a real GPU, fake and mock drivers, the golden
//! files on a GPU), one binary; tests/cuda/no_driver.rs sets an environment
//! variable, so it is a binary of its own.

#[path = "../common/mod.rs"]
mod common;

/// Held by every test that opens the GPU, so that timings never overlap.
static GPU_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The name libtest gives test `f` of module `module` (`module_path!()`,
/// which starts with the crate's name), for running it in a child process.
fn test_name(module: &str, f: &str) -> String {
    let m = module.split_once("::").map_or("", |(_, m)| m);
    format!("{m}::{f}")
}

mod fake_driver;
mod golden;
mod gpu;
mod mock_driver;
