//! Recycled float buffers. Fresh large allocations come from the OS as
//! untouched pages, and the page faults of writing them cost as much as the
//! arithmetic of an element-wise kernel; the plan's values have few distinct
//! sizes, so a buffer freed by one kernel is handed to the next one needing
//! that many elements. Between runs the pool is kept (as a GPU runtime keeps
//! its arena), so a training loop's steps after the first find their
//! buffers already mapped.

use super::super::{Real, Tensor};
use std::any::Any;
use std::collections::HashMap;
use std::sync::Mutex;

/// Buffers smaller than this are left to the allocator.
const MIN_LEN: usize = 4096;
/// A pool holding more than this many bytes is not kept between runs.
const KEEP_BYTES: usize = 1 << 30;

/// Pools handed back by finished runs, one per float type at most.
static KEPT: Mutex<Vec<Box<dyn Any + Send>>> = Mutex::new(Vec::new());

#[derive(Default)]
pub struct Pool<F> {
    free: HashMap<usize, Vec<Vec<F>>>,
}

impl<F: Real> Pool<F> {
    /// A buffer of `len` elements with unspecified (finite or not) contents:
    /// the caller overwrites every element.
    pub fn take(&mut self, len: usize) -> Vec<F> {
        match self.free.get_mut(&len).and_then(|v| v.pop()) {
            Some(b) => b,
            None => vec![F::ZERO; len],
        }
    }

    /// Keep `t`'s storage for reuse when no other tensor shares it.
    pub fn give(&mut self, t: Tensor<F>) {
        if t.numel() < MIN_LEN {
            return;
        }
        if let Ok(v) = t.try_take() {
            self.give_vec(v);
        }
    }

    pub fn give_vec(&mut self, v: Vec<F>) {
        if v.len() >= MIN_LEN {
            self.free.entry(v.len()).or_default().push(v);
        }
    }
}

impl<F: Real> crate::cpu::ops::Alloc<F> for Pool<F> {
    fn buf(&mut self, len: usize) -> Vec<F> {
        self.take(len)
    }
}

impl<F: Real> Pool<F> {
    /// The pool a previous run kept, or an empty one.
    pub fn checkout() -> Pool<F> {
        let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
        match kept.iter().position(|b| b.is::<Pool<F>>()) {
            Some(i) => *kept.swap_remove(i).downcast::<Pool<F>>().expect("checked type"),
            None => Pool::default(),
        }
    }

    /// Keep this pool for the next run (unless one is kept already, or it is too large).
    pub fn checkin(self) {
        let bytes: usize = self.free.values().flatten().map(|v| v.len() * std::mem::size_of::<F>()).sum();
        let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
        if bytes <= KEEP_BYTES && !kept.iter().any(|b| b.is::<Pool<F>>()) {
            kept.push(Box::new(self));
        }
    }
}
