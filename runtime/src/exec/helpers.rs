//! The executor's own kernels: zero-fill and copy of byte regions (zeroing
//! atomically accumulated outputs, staging arena reads), emitted with the PTX
//! builder like every generated kernel. Each is a grid-stride loop over `n`
//! items of 16 bytes (`v4.u32`) or 2 bytes (`b16`, for unaligned heads and
//! tails: every region holds whole elements of at least 2 bytes).

use pgc_backends::ptx::builder::*;

/// The entries of [`module`]: zero-fill and copy with 16-byte items, and with 2-byte items.
pub const ZERO16: &str = "pgc_exec_zero16";
pub const ZERO2: &str = "pgc_exec_zero2";
pub const COPY16: &str = "pgc_exec_copy16";
pub const COPY2: &str = "pgc_exec_copy2";

/// The helper module.
pub fn module() -> Module {
    let mut m = Module::new();
    for (name, copy, width) in [(ZERO16, false, 16), (ZERO2, false, 2), (COPY16, true, 16), (COPY2, true, 2)] {
        m.push(grid_stride(name, copy, width));
    }
    m
}

/// `dst[i] = 0` (or `dst[i] = src[i]`) for items `i < n` of `width` bytes.
/// Parameters: `dst`, (`src`,) `n` (`.u64`).
fn grid_stride(name: &str, copy: bool, width: u32) -> Kernel {
    let mut b = KernelBuilder::new(name);
    let dst_p = b.param("dst", ParamType::U64);
    let src_p = copy.then(|| b.param("src", ParamType::U64));
    let n_p = b.param("n", ParamType::U64);
    let dst = b.ld_param_global_ptr(&dst_p);
    let src = src_p.map(|p| b.ld_param_global_ptr(&p));
    let n = b.ld_param(&n_p);
    let (cta, ntid, tid, ncta) = (b.special(Special::CtaidX), b.special(Special::NtidX), b.special(Special::TidX), b.special(Special::NctaidX));
    let first = b.mad_lo(Type::U32, cta, ntid, tid);
    let stride = b.mul_wide_u32(ncta, ntid);
    let i = b.cvt(Type::U64, Type::U32, None, first);
    let top = b.new_label();
    let done = b.new_label();
    b.place(top);
    let past = b.setp(Cmp::Ge, Type::U64, i, n);
    b.guarded(past, false, |b| b.bra(done));
    let off = b.mul_lo(Type::U64, i, width as u64);
    let to = Addr::reg(b.add_u64(dst, off));
    let from = src.map(|s| Addr::reg(b.add_u64(s, off)));
    match (from, width) {
        (None, 16) => {
            let z = b.val(Type::U32, 0u32);
            b.st_vec(Space::Global, Type::U32, to, vec![z.into(); 4]);
        }
        (None, _) => {
            let z = b.val(Type::B16, 0u32);
            b.st(Space::Global, Type::B16, to, z);
        }
        (Some(from), 16) => {
            let r: [Reg; 4] = b.regs(RegClass::B32);
            b.ld_vec(Space::Global, false, Type::U32, &r, from);
            b.st_vec(Space::Global, Type::U32, to, r.iter().map(|&x| x.into()).collect());
        }
        (Some(from), _) => {
            let h = b.ld(Space::Global, Type::B16, from);
            b.st(Space::Global, Type::B16, to, h);
        }
    }
    b.bin_to(BinOp::Add, Type::U64, i, i, stride);
    b.bra(top);
    b.place(done);
    b.ret();
    b.finish()
}

#[cfg(test)]
mod tests {
    #[test]
    fn helpers_assemble_for_sm_90a() {
        // Skipped (with a note) where ptxas is not installed; scripts/test installs it.
        if let Some(r) = pgc_backends::ptx::ptxas::assemble_or_skip(&super::module().render(), "executor helpers") {
            assert_eq!(r.kernels.len(), 4, "{r:?}");
        }
    }
}
