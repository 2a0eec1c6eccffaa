//! pgc runtime: the device abstraction, the PTX simulator, weights and tokens I/O.

pub mod cuda;
pub mod device;
pub mod exec;
pub mod optim;
pub mod sim;
pub mod weights;
pub mod init;
pub mod artifact;
pub mod data;
pub mod outfile;
