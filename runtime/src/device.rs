//! The device abstraction shared by the PTX simulator and the CUDA runtime.
