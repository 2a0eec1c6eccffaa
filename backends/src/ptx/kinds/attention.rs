//! Plan attention kernels.

use crate::ptx::compile::{Ctx, PtxError};
use pgc_ir::plan::Launch;

pub fn emit_kernel(cx: &mut Ctx, ki: usize) -> Result<Launch, PtxError> {
    let _ = (cx, ki);
    Err(PtxError::Unsupported("attention kernels are not emitted yet".into()))
}
