//! The executor's own kernels: copy of byte regions (staging arena reads)
//! and zero-fill of a table of regions (atomically accumulated outputs),
//! emitted with the PTX builder like every generated kernel. Each is a
//! grid-stride loop over items of 16 bytes (`v4.u32`) or 2 bytes (`b16`,
//! for unaligned heads and tails: every region holds whole elements of at
//! least 2 bytes).

use pgc_backends::ptx::builder::*;

/// The entries of [`module`]: copy with 16-byte items and with 2-byte items.
pub const COPY16: &str = "pgc_exec_copy16";
pub const COPY2: &str = "pgc_exec_copy2";
/// Zero-fill of many regions in one launch (a launch's zero-fills, see [`zero_table`]).
pub const ZERO_TABLE: &str = "pgc_exec_zero_table";
/// Bytes of one [`ZERO_TABLE`] entry: `.u64` address of the 16-byte part,
/// its count of 16-byte items, address of the 2-byte tail, its count.
pub const ZERO_ENTRY_BYTES: u64 = 32;

/// The helper module.
pub fn module() -> Module {
    let mut m = Module::new();
    for (name, width) in [(COPY16, 16), (COPY2, 2)] {
        m.push(copy(name, width));
    }
    m.push(zero_table());
    m
}

/// The first item and the stride of a grid-stride loop over `%ctaid.x` blocks.
fn grid_start(b: &mut KernelBuilder) -> (Reg, Reg) {
    let (cta, ntid, tid, ncta) = (b.special(Special::CtaidX), b.special(Special::NtidX), b.special(Special::TidX), b.special(Special::NctaidX));
    let first = b.mad_lo(Type::U32, cta, ntid, tid);
    let stride = b.mul_wide_u32(ncta, ntid);
    (first, stride)
}

/// `for (i = first; i < n; i += stride) body(i * width)` over `.u64` items.
fn item_loop(b: &mut KernelBuilder, (first, stride): (Reg, Reg), n: Reg, width: u64, body: impl FnOnce(&mut KernelBuilder, Reg)) {
    let i = b.cvt(Type::U64, Type::U32, None, first);
    let top = b.new_label();
    let done = b.new_label();
    b.place(top);
    let past = b.setp(Cmp::Ge, Type::U64, i, n);
    b.guarded(past, false, |b| b.bra(done));
    let off = b.mul_lo(Type::U64, i, width);
    body(b, off);
    b.bin_to(BinOp::Add, Type::U64, i, i, stride);
    b.bra(top);
    b.place(done);
}

/// Region `%ctaid.y` of the table at `table` (entries of [`ZERO_ENTRY_BYTES`]):
/// its 16-byte items, then its 2-byte tail, zeroed by a grid-stride loop over
/// `%ctaid.x` blocks. Parameters: `table` (`.u64`).
fn zero_table() -> Kernel {
    let mut b = KernelBuilder::new(ZERO_TABLE);
    let table_p = b.param("table", ParamType::U64);
    let table = b.ld_param_global_ptr(&table_p);
    let row = b.special(Special::CtaidY);
    let entry = b.mad_wide_u32(row, ZERO_ENTRY_BYTES as u32, table);
    let start = grid_start(&mut b);
    for (k, width) in [(0i64, 16u64), (16, 2)] {
        let base = b.ld(Space::Global, Type::U64, Addr::reg_off(entry, k));
        let n = b.ld(Space::Global, Type::U64, Addr::reg_off(entry, k + 8));
        item_loop(&mut b, start, n, width, |b, off| {
            let to = Addr::reg(b.add_u64(base, off));
            if width == 16 {
                let z = b.val(Type::U32, 0u32);
                b.st_vec(Space::Global, Type::U32, to, vec![z.into(); 4]);
            } else {
                let z = b.val(Type::B16, 0u32);
                b.st(Space::Global, Type::B16, to, z);
            }
        });
    }
    b.ret();
    b.finish()
}

/// `dst[i] = src[i]` for items `i < n` of `width` bytes.
/// Parameters: `dst`, `src`, `n` (`.u64`).
fn copy(name: &str, width: u32) -> Kernel {
    let mut b = KernelBuilder::new(name);
    let dst_p = b.param("dst", ParamType::U64);
    let src_p = b.param("src", ParamType::U64);
    let n_p = b.param("n", ParamType::U64);
    let dst = b.ld_param_global_ptr(&dst_p);
    let src = b.ld_param_global_ptr(&src_p);
    let n = b.ld_param(&n_p);
    let start = grid_start(&mut b);
    item_loop(&mut b, start, n, width as u64, |b, off| {
        let to = Addr::reg(b.add_u64(dst, off));
        let from = Addr::reg(b.add_u64(src, off));
        if width == 16 {
            let r: [Reg; 4] = b.regs(RegClass::B32);
            b.ld_vec(Space::Global, false, Type::U32, &r, from);
            b.st_vec(Space::Global, Type::U32, to, r.iter().map(|&x| x.into()).collect());
        } else {
            let h = b.ld(Space::Global, Type::B16, from);
            b.st(Space::Global, Type::B16, to, h);
        }
    });
    b.ret();
    b.finish()
}

#[cfg(test)]
mod tests {
    #[test]
    fn helpers_assemble_for_sm_90a() {
        // Skipped (with a note) where ptxas is not installed; scripts/test installs it.
        if let Some(r) = pgc_backends::ptx::ptxas::assemble_or_skip(&super::module().render(), "executor helpers") {
            assert_eq!(r.kernels.len(), 3, "{r:?}");
        }
    }
}
