//! The graph IR's tests (pass-level file tests of tests/ir/*.ir, autodiff's
//! finite-difference checks), one binary.

mod cases;
mod gradcheck;
