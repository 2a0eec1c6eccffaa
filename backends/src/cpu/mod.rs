//! The CPU reference backend: executes forward and backward graphs in f64 or f32.
