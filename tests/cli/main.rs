//! The command line's tests (`pgc run/compile/profile/bench/verify`, error
//! paths), one binary.

#[path = "../common/mod.rs"]
mod common;

mod bench;
mod compile_ptx;
mod exec;
mod plan_exec;
mod profile;
mod robustness;
mod run;
mod run_full;
mod verify;
