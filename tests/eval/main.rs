//! `pgc eval`'s tests (the data reader, the backends agreeing), one binary.

#[path = "../common/mod.rs"]
mod common;

mod backends;
mod eval;
