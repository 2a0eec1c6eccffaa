//! pgc code generators.

pub mod cpu;
pub mod scalar;
pub mod ptx;
