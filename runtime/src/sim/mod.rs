//! The PTX simulator: parse PTX text and execute kernels on the CPU with the CUDA execution model.
