//! The fused kinds (element-wise, row-wise, reduction, gather, scatter,
//! weight preparation, cross entropy): one launch of grid-stride sections
//! built with the toolkit ([`super::toolkit`]).

use super::toolkit::{emit, output_target, plain_source, plan_outputs, Fused};
use crate::ptx::ctx::{Ctx, PtxError};
use crate::scalar::expr::DType;
use crate::ptx::pointwise::{BufArg, GraphExprs};
use crate::ptx::program::{ArgRef, Launch};
use pgc_ir::Op;

/// Emit a plan kernel of one of the fused kinds as one launch.
pub fn emit_kernel(cx: &mut Ctx, ki: usize) -> Result<Launch, PtxError> {
    let kernel = cx.plan.kernels[ki].clone();
    let g = cx.g;
    let mut gx = GraphExprs::new(g, kernel.ops.iter().chain(&kernel.prologue).copied());
    for &v in &kernel.inputs {
        let (elem, arg) = plain_source(cx, v)?;
        gx.source_lazy(v, elem, arg);
    }
    for &v in &kernel.ops {
        if let Op::Param { id } = g.node(v).op {
            if !gx.has_source(v) {
                gx.source_lazy(v, DType::F32, ArgRef::ParamMaster(id));
            }
        }
    }
    let mut outs = Vec::new();
    for &o in &kernel.outputs {
        let (elem, arg) = output_target(cx, o)?;
        let buf = gx.buffer(elem, BufArg::Ref(arg));
        outs.push((o, buf, elem));
    }
    let mut f = Fused::new(gx);
    plan_outputs(&mut f, &outs, &kernel.ops)?;
    let name = cx.unique_name(&kernel.name);
    emit(cx, &name, f)
}

