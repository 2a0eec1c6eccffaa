//! pgc code generators.

pub mod cpu;
pub mod ptx;
