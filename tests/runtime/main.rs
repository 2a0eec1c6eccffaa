//! The runtime's tests (the .pgz artifact, the program executor), one binary.

#[path = "../common/mod.rs"]
mod common;

mod artifact;
mod exec_program;
