//! The CUDA backend's error path without a driver: opening a device returns
//! an error that says the driver is missing, never a panic. Deterministic on
//! any machine: the library is named explicitly (a path that does not exist).
//! One test function, so the environment variable is set with no other test
//! thread reading it.

use pgc_runtime::cuda::{CudaDevice, CudaOptions, LIB_ENV};

#[test]
fn no_driver_is_a_clean_error() {
    // an explicit library that does not exist
    let missing = "/nonexistent/pgc/libcuda.so.1";
    let e = CudaDevice::open(0, &CudaOptions { library: Some(missing.into()) }).err().expect("must not open");
    let text = e.to_string();
    println!("{text}");
    assert!(text.contains("CUDA driver not available") && text.contains(missing), "{text}");

    // the same through the environment, with the default constructor
    std::env::set_var(LIB_ENV, missing);
    let r = CudaDevice::new(0);
    std::env::remove_var(LIB_ENV);
    let text = r.err().expect("must not open").to_string();
    assert!(text.contains("driver") && text.contains(missing), "{text}");

    // whatever this machine has: Ok with a GPU, else an error naming the driver or the device
    match CudaDevice::new(0) {
        Ok(d) => println!("a GPU is present: {}", d.info().name),
        Err(e) => {
            let text = e.to_string();
            println!("{text}");
            assert!(text.contains("CUDA driver") || text.contains("CUDA device"), "{text}");
        }
    }
    // an ordinal far past any machine's device count
    if let Err(e) = CudaDevice::new(1000) {
        let text = e.to_string();
        assert!(text.contains("CUDA driver") || text.contains("CUDA device 1000"), "{text}");
    } else {
        panic!("device 1000 opened");
    }
}
