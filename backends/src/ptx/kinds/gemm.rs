//! Plan GEMM kernels.

use crate::ptx::compile::{Ctx, PtxError};
use pgc_ir::plan::Launch;

pub fn emit_kernel(cx: &mut Ctx, ki: usize) -> Result<Launch, PtxError> {
    let _ = (cx, ki);
    Err(PtxError::Unsupported("GEMM kernels are not emitted yet".into()))
}
