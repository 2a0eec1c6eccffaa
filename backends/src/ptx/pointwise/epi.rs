//! The generic GEMM epilogue step: a scalar program run at each output
//! element `(row, col)` of a GEMM with the accumulator bound to a variable.
//!
//! The kernel plan's epilogue ops become [`PwEpilogue::stores`]: each output
//! of the plan kernel is one store of an expression over `row`, `col`, `acc`
//! and loads of other tensors (`params` names one kernel parameter per
//! buffer). Loads are made at `min(row, M - 1)`, `min(col, N - 1)` so edge
//! tiles never read out of bounds; stores are predicated on the element being
//! inside `[M, N]`. Values that depend only on the row (or only on the column)
//! are emitted once and shared by every element of the thread's tile that has
//! the same row (column).
//!
//! [`PwEpilogue::row_sums`] add a value over the columns of each row into a
//! row-indexed f32 buffer (e.g. the LM head's sum of `exp(logit - c)`): each
//! thread sums its own elements of the row, the lanes sharing the row combine
//! with butterfly shuffles, and one lane adds the result with
//! `red.global.add.f32`, so the `[M, N]` values never reach memory.

use crate::scalar::expr::*;
use super::lower::{store, Lower};
use crate::ptx::builder::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// One store of the epilogue program.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PwStore {
    pub buf: Buf,
    pub index: E,
    pub value: E,
}

/// A per-row sum: `buf[index] += value` over the row's columns (`index`
/// depends on the row only; `buf` is f32 and zeroed before the kernel).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PwRowSum {
    pub buf: Buf,
    pub index: E,
    pub value: E,
}

/// A scalar program over `(row, col, acc)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PwEpilogue {
    pub exprs: Exprs,
    pub row: Var,
    pub col: Var,
    pub acc: Var,
    /// Kernel parameter name of each buffer (in buffer order).
    pub params: Vec<String>,
    pub stores: Vec<PwStore>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub row_sums: Vec<PwRowSum>,
}

/// Lowering state of a pointwise epilogue across the elements of one kernel.
pub struct PwLower<'a> {
    epi: &'a PwEpilogue,
    lw: Lower<'a>,
    m1: Reg,
    n1: Reg,
    rows: HashMap<Reg, Reg>,
    cols: HashMap<(Reg, u32), Reg>,
    /// Per row register: the thread's partial sum and target address of each row sum.
    sums: HashMap<Reg, Vec<(Reg, Addr)>>,
}

impl<'a> PwLower<'a> {
    /// `ptrs`: the global pointers of the buffers; `m`, `n`: the GEMM's sizes.
    pub fn new(b: &mut KernelBuilder, epi: &'a PwEpilogue, ptrs: &[Reg], m: Reg, n: Reg) -> Self {
        let mut lw = Lower::new(&epi.exprs);
        for (i, &p) in ptrs.iter().enumerate() {
            lw.bind_buf(Buf(i as u32), p);
        }
        let m1 = b.bin(BinOp::Sub, Type::U32, m, 1u32);
        let n1 = b.bin(BinOp::Sub, Type::U32, n, 1u32);
        PwLower { epi, lw, m1, n1, rows: HashMap::new(), cols: HashMap::new(), sums: HashMap::new() }
    }

    /// The program at element `(row, col + dcol)` with accumulator `acc`; stores under `pred`.
    pub fn element(&mut self, b: &mut KernelBuilder, row: Reg, col: Reg, dcol: u32, acc: Reg, pred: Reg) {
        let r = match self.rows.get(&row) {
            Some(&r) => r,
            None => {
                let r = b.bin(BinOp::Min, Type::U32, row, self.m1);
                self.rows.insert(row, r);
                r
            }
        };
        let c = match self.cols.get(&(col, dcol)) {
            Some(&c) => c,
            None => {
                let c0 = if dcol == 0 { col } else { b.add(Type::U32, col, dcol) };
                let c = b.bin(BinOp::Min, Type::U32, c0, self.n1);
                self.cols.insert((col, dcol), c);
                c
            }
        };
        self.lw.bind(self.epi.row, r, false);
        self.lw.bind(self.epi.col, c, false);
        self.lw.bind(self.epi.acc, acc, false);
        for s in &self.epi.stores {
            let v = self.lw.emit_reg(b, s.value);
            let addr = self.lw.address(b, s.buf, s.index);
            let elem = self.epi.exprs.bufs[s.buf.0 as usize];
            store(b, elem, addr, v.into(), Some(pred));
        }
        for (k, s) in self.epi.row_sums.iter().enumerate() {
            let v = self.lw.emit_reg(b, s.value);
            let v = b.selp(Type::F32, v, 0.0f32, pred);
            if !self.sums.contains_key(&row) {
                let init = self.epi.row_sums.iter().map(|s| (b.val(Type::F32, 0.0f32), self.lw.address(b, s.buf, s.index))).collect();
                self.sums.insert(row, init);
            }
            let acc = &mut self.sums.get_mut(&row).expect("inserted above")[k].0;
            *acc = b.bin(BinOp::Add, Type::F32, *acc, v);
        }
    }

    /// Whether the program has row sums (the GEMM then calls [`Self::finish_row`]).
    pub fn has_row_sums(&self) -> bool {
        !self.epi.row_sums.is_empty()
    }

    /// After the last element of `row` in this thread: combine the partial
    /// sums of the lanes `lane ^ x` for each `x` in `lanes` (every lane of the
    /// warp must call this together), then `leader` adds them when `row_ok`.
    pub fn finish_row(&mut self, b: &mut KernelBuilder, row: Reg, row_ok: Reg, lanes: &[u32], leader: Reg) {
        let Some(parts) = self.sums.remove(&row) else { return };
        let p = b.and_pred(row_ok, leader);
        for (mut acc, addr) in parts {
            for &x in lanes {
                let o = b.shfl_bfly(acc, x);
                acc = b.bin(BinOp::Add, Type::F32, acc, o);
            }
            b.guarded(p, false, |b| b.red_add(Space::Global, Type::F32, addr, acc));
        }
    }
}
