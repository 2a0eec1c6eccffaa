//! pgc code generators.

pub mod cpu;
