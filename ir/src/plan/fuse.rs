//! Partition a graph into kernels by applying the fusion rules to groups of
//! nodes (union-find), then order the groups topologically.
//!
//! Every merge joins a producer group into a consumer group and is refused
//! when it would create a cycle between groups (a path that leaves the pair
//! and comes back), so the result can always be ordered.

use super::classify::{initial_kind, is_elementwise, is_row_reduction, KernelKind};
use super::rules::FusionRule;
use crate::op::Op;
use crate::types::{DType, Precision};
use crate::Graph;
use std::collections::{BTreeSet, HashSet};

/// One group of nodes that becomes one kernel.
#[derive(Clone, Debug)]
pub struct Group {
    pub kind: KernelKind,
    /// Nodes computed by the kernel, ascending.
    pub nodes: Vec<usize>,
    /// Nodes also computed here (duplicated) as a prologue: `rms(x)` rows
    /// recomputed from `x` and the stored row scale.
    pub prologue: Vec<usize>,
    pub rules: BTreeSet<FusionRule>,
}

struct Partition<'g> {
    g: &'g Graph,
    users: Vec<Vec<usize>>,
    /// Union-find parent; `None` for sources that belong to no kernel.
    parent: Vec<Option<usize>>,
    kind: Vec<KernelKind>,
    /// Members of each group, in no particular order (sorted when the groups are made).
    members: Vec<Vec<usize>>,
    /// Per group root: its smallest member, its domain (see [`Partition::domain`])
    /// and the nodes outside it that read a member: kept up to date by
    /// `merge`, so a merge costs the size of these sets, not of the group
    /// (a 100,000-op chain fuses in linear time).
    min: Vec<usize>,
    dom: Vec<usize>,
    exits: Vec<HashSet<usize>>,
    rules: Vec<BTreeSet<FusionRule>>,
    requested: HashSet<usize>,
}

impl<'g> Partition<'g> {
    fn root(&mut self, mut i: usize) -> Option<usize> {
        let mut p = self.parent[i]?;
        while p != i {
            let gp = self.parent[p].expect("groups are closed under parent");
            self.parent[i] = Some(gp);
            i = p;
            p = gp;
        }
        Some(p)
    }

    /// Groups of the users of node `i` (None if some user is a source, which cannot happen).
    fn user_groups(&mut self, i: usize) -> BTreeSet<usize> {
        let users = self.users[i].clone();
        users.into_iter().filter_map(|u| self.root(u)).collect()
    }

    /// Element count of the largest index space the group works over.
    fn domain(&self, r: usize) -> usize {
        self.dom[r]
    }

    /// The index space node `n` works over.
    fn node_domain(&self, n: usize) -> usize {
        let node = &self.g.nodes[n];
        let own = node.ty.numel();
        if matches!(node.op, Op::Reduce { .. } | Op::SumTo { .. } | Op::CrossEntropy) {
            own.max(self.g.ty(node.args[0]).numel())
        } else {
            own
        }
    }

    /// Make node `i` a group of its own.
    fn start_group(&mut self, i: usize, kind: KernelKind) {
        self.parent[i] = Some(i);
        self.kind[i] = kind;
        self.members[i] = vec![i];
        self.min[i] = i;
        self.dom[i] = self.node_domain(i);
        self.exits[i] = self.users[i].iter().copied().collect();
    }

    /// Would joining groups `a` and `b` create a cycle through a third group?
    /// A group runs as one kernel, so reaching any node of a group reaches all
    /// of them: the search walks users and jumps to every member of each
    /// group it enters (a node-level path alone misses a third group holding
    /// one node that reads the pair and another that the pair reads).
    fn creates_cycle(&mut self, a: usize, b: usize) -> bool {
        let mut stack: Vec<usize> = self.exits[a].iter().chain(&self.exits[b]).copied().collect();
        stack.retain(|&u| !matches!(self.root(u), Some(r) if r == a || r == b));
        let mut seen = HashSet::new();
        let mut groups_seen = HashSet::new();
        while let Some(n) = stack.pop() {
            if matches!(self.root(n), Some(r) if r == a || r == b) {
                return true;
            }
            if !seen.insert(n) {
                continue;
            }
            stack.extend(self.users[n].iter().copied());
            if let Some(r) = self.root(n) {
                if groups_seen.insert(r) {
                    stack.extend(self.members[r].iter().copied().filter(|m| *m != n));
                }
            }
        }
        false
    }

    /// Merge group `from` into group `into` (which keeps its identity), with the new kind.
    fn merge(&mut self, from: usize, into: usize, kind: KernelKind, rule: FusionRule) -> bool {
        if from == into || self.creates_cycle(from, into) {
            return false;
        }
        let mut exits = std::mem::take(&mut self.exits[from]);
        let mut other = std::mem::take(&mut self.exits[into]);
        if exits.len() < other.len() {
            std::mem::swap(&mut exits, &mut other);
        }
        exits.extend(other);
        exits.retain(|&u| !matches!(self.root(u), Some(r) if r == from || r == into));
        self.exits[into] = exits;
        self.parent[from] = Some(into);
        let moved = std::mem::take(&mut self.members[from]);
        self.members[into].extend(moved);
        self.min[into] = self.min[into].min(self.min[from]);
        self.dom[into] = self.dom[into].max(self.dom[from]);
        let moved_rules = std::mem::take(&mut self.rules[from]);
        self.rules[into].extend(moved_rules);
        self.rules[into].insert(rule);
        self.kind[into] = kind;
        true
    }

    fn single_user_group(&mut self, i: usize) -> Option<usize> {
        let groups = self.user_groups(i);
        (groups.len() == 1).then(|| *groups.iter().next().unwrap())
    }
}

/// Group the graph's live nodes into kernels; `requested` are the outputs the
/// plan must store, `live[i]` whether a requested output needs node `i`.
/// Dead nodes (e.g. gradients of constants that autodiff emits) belong to no
/// kernel and count as no one's user, so they cannot attract fusions.
pub fn partition(g: &Graph, precision: Precision, enabled: &BTreeSet<FusionRule>, requested: &HashSet<usize>, live: &[bool]) -> Vec<Group> {
    let n = g.nodes.len();
    let mut users = vec![Vec::new(); n];
    for (i, node) in g.nodes.iter().enumerate().filter(|&(i, _)| live[i]) {
        for a in &node.args {
            if !users[a.index()].contains(&i) {
                users[a.index()].push(i);
            }
        }
    }
    let mut p = Partition {
        g,
        users,
        parent: vec![None; n],
        kind: vec![KernelKind::Elementwise; n],
        members: vec![Vec::new(); n],
        min: vec![0; n],
        dom: vec![0; n],
        exits: vec![HashSet::new(); n],
        rules: vec![BTreeSet::new(); n],
        requested: requested.clone(),
    };
    for i in (0..n).filter(|&i| live[i]) {
        let kind = match initial_kind(g, i) {
            Some(k) => Some(k),
            // bf16 tensor cores read a bf16 copy of weights: one preparation kernel per weight use.
            None if precision == Precision::Bf16 && matches!(g.nodes[i].op, Op::Param { .. }) => p.users[i]
                .iter()
                .any(|&u| is_tensor_core_operand(g, u, i))
                .then_some(KernelKind::WeightPrep),
            None => None,
        };
        if let Some(k) = kind {
            p.start_group(i, k);
        }
    }
    let on = |r: FusionRule| enabled.contains(&r);

    // Fake quantization reads its fp32 master directly: the preparation kernel of a
    // QAT weight is the fake-quant kernel (always; there is no unfused alternative).
    for i in 0..n {
        if matches!(g.nodes[i].op, Op::FakeQuant { .. }) {
            let w = g.nodes[i].args[0].index();
            if let (Some(rw), Some(ri)) = (p.root(w), p.root(i)) {
                if p.users[w].len() == 1 {
                    p.merge(rw, ri, KernelKind::WeightPrep, FusionRule::Elementwise);
                    p.rules[ri].remove(&FusionRule::Elementwise);
                }
            }
        }
    }

    // Producers into consumers, last node first, so chains collapse backwards.
    for i in (0..n).rev() {
        let Some(ri) = p.root(i) else { continue };
        if p.requested.contains(&i) && p.users[i].is_empty() {
            continue;
        }
        let op = &g.nodes[i].op;
        if is_elementwise(op) && on(FusionRule::Elementwise) && p.members[ri].len() == 1 {
            // Computed in the earliest consumer kernel that can hold it, and stored
            // from there when later kernels read it too.
            let numel = g.nodes[i].ty.numel();
            let mut candidates: Vec<(usize, usize)> = Vec::new();
            for u in p.user_groups(i) {
                let ok = match p.kind[u] {
                    KernelKind::Elementwise | KernelKind::RowWise | KernelKind::Reduce | KernelKind::CrossEntropy | KernelKind::Scatter => {
                        numel <= p.domain(u)
                    }
                    KernelKind::Gather => g.nodes[i].ty.dtype == DType::I32,
                    _ => false,
                };
                if ok {
                    candidates.push((p.min[u], u));
                }
            }
            candidates.sort_unstable();
            for (_, u) in candidates {
                let uk = p.kind[u];
                if p.merge(ri, u, uk, FusionRule::Elementwise) {
                    break;
                }
            }
        } else if is_row_reduction(g, i) && on(FusionRule::Rowwise) && p.members[ri].len() == 1 {
            let Some(u) = p.single_user_group(i) else { continue };
            let input = g.ty(g.nodes[i].args[0]);
            let len = input.shape.last().copied().unwrap_or(1).max(1);
            let rows = input.numel() / len;
            let fits = match p.kind[u] {
                KernelKind::Elementwise | KernelKind::RowWise => true,
                // Column sums over the same rows accumulate in the row loop;
                // any other reduction would redo the row's sum per element.
                KernelKind::Reduce => p.members[u].iter().all(|&m| !is_reduction(&g.nodes[m].op) || is_column_sum(g, m, rows, len)),
                _ => false,
            } && p.domain(u) == input.numel()
                && rows == g.nodes[i].ty.numel();
            if fits {
                p.merge(ri, u, KernelKind::RowWise, FusionRule::Rowwise);
            }
        }
    }

    // Column sums join the row-wise kernel that computes the rows they sum
    // (a norm backward's input gradient and the per-channel scale gradient
    // taken from it): the rows are summed while in registers, not re-read.
    if on(FusionRule::Rowwise) {
        for i in 0..n {
            let Some(ru) = p.root(i) else { continue };
            if p.kind[ru] != KernelKind::Reduce || !matches!(g.nodes[i].op, Op::SumTo { .. }) {
                continue;
            }
            let x = g.ty(g.nodes[i].args[0]);
            let len = x.shape.last().copied().unwrap_or(1).max(1);
            let rows = x.numel() / len;
            if !p.members[ru].iter().all(|&m| !is_reduction(&g.nodes[m].op) || is_column_sum(g, m, rows, len)) || p.domain(ru) != rows * len {
                continue;
            }
            let args: BTreeSet<usize> = p.members[ru].iter().flat_map(|&m| g.nodes[m].args.iter().map(|a| a.index())).collect();
            for a in args {
                let Some(rr) = p.root(a) else { continue };
                let same_rows = p.members[rr].iter().any(|&m| is_row_reduction(g, m) && g.ty(g.nodes[m].args[0]).numel() == rows * len && g.ty(g.nodes[m].args[0]).shape.last() == Some(&len));
                if rr != ru && p.kind[rr] == KernelKind::RowWise && same_rows && p.domain(rr) == rows * len && p.merge(ru, rr, KernelKind::RowWise, FusionRule::Rowwise) {
                    break;
                }
            }
        }
    }

    // Epilogues: the element-wise group that alone consumes a GEMM's result.
    if on(FusionRule::GemmEpilogue) {
        for i in 0..n {
            if !matches!(g.nodes[i].op, Op::Linear | Op::MatMul | Op::OuterSum) {
                continue;
            }
            let Some(ri) = p.root(i) else { continue };
            // The earliest element-wise consumer over the GEMM's output space becomes
            // its epilogue; the product itself is still stored if others read it.
            let mut candidates: Vec<(usize, usize)> = Vec::new();
            for u in p.user_groups(i) {
                if p.kind[u] == KernelKind::Elementwise && p.domain(u) == g.nodes[i].ty.numel() {
                    candidates.push((p.min[u], u));
                }
            }
            candidates.sort_unstable();
            for (_, u) in candidates {
                if p.kind[ri] == KernelKind::Gemm && p.merge(u, ri, KernelKind::Gemm, FusionRule::GemmEpilogue) {
                    break;
                }
            }
        }
    }

    // Element-wise consumers of a row-wise kernel's value, over its shape,
    // join that kernel (an extra output instead of a re-read).
    if on(FusionRule::ElementwiseIntoProducer) {
        for i in 0..n {
            let Some(ru) = p.root(i) else { continue };
            if p.kind[ru] != KernelKind::Elementwise || p.min[ru] != i {
                continue;
            }
            let members = p.members[ru].clone();
            let shape = &g.nodes[i].ty.shape;
            let plain = members.iter().all(|&m| {
                let node = &g.nodes[m];
                matches!(node.op, Op::Unary { .. } | Op::Binary { .. } | Op::LeakyRelu { .. } | Op::LeakyStep { .. }) && &node.ty.shape == shape
            });
            if !plain {
                continue;
            }
            // The values read from outside: one row-wise producer (same shape), else parameters and scalars.
            let mut producer = None;
            let mut ok = true;
            for &m in &members {
                for a in &g.nodes[m].args {
                    let a = a.index();
                    if members.contains(&a) || matches!(g.nodes[a].op, Op::Param { .. } | Op::Scalar { .. }) {
                        continue;
                    }
                    match p.root(a) {
                        Some(ra) if p.kind[ra] == KernelKind::RowWise && &g.nodes[a].ty.shape == shape && producer.is_none_or(|r| r == ra) => producer = Some(ra),
                        _ => ok = false,
                    }
                }
            }
            if let (true, Some(rr)) = (ok, producer) {
                if p.domain(rr) == g.nodes[i].ty.numel() {
                    p.merge(ru, rr, KernelKind::RowWise, FusionRule::ElementwiseIntoProducer);
                }
            }
        }
    }

    // q/k preparation read only by the attention forward.
    if on(FusionRule::QkPrologueIntoAttention) {
        for i in 0..n {
            if !matches!(g.nodes[i].op, Op::CausalAttention { .. }) {
                continue;
            }
            let Some(ra) = p.root(i) else { continue };
            for a in g.nodes[i].args.clone() {
                let Some(rq) = p.root(a.index()) else { continue };
                let only_attention = p.members[rq].iter().all(|&m| p.users[m].iter().all(|&u| p.members[rq].contains(&u) || u == i));
                if rq != ra && only_attention && matches!(p.kind[rq], KernelKind::RowWise | KernelKind::Elementwise) {
                    p.merge(rq, ra, KernelKind::Attention, FusionRule::QkPrologueIntoAttention);
                }
            }
        }
    }

    if on(FusionRule::AttentionBackwardTogether) {
        for i in 0..n {
            if !matches!(g.nodes[i].op, Op::CausalAttentionGrad { .. }) {
                continue;
            }
            for j in i + 1..n {
                if matches!(g.nodes[j].op, Op::CausalAttentionGrad { .. }) && g.nodes[j].args == g.nodes[i].args {
                    if let (Some(ri), Some(rj)) = (p.root(i), p.root(j)) {
                        p.merge(rj, ri, KernelKind::AttentionBackward, FusionRule::AttentionBackwardTogether);
                    }
                }
            }
        }
    }

    if on(FusionRule::LmHeadCrossEntropy) {
        fuse_lm_head(&mut p);
    }

    // The weight preparations read only parameters: one kernel holds them all.
    if on(FusionRule::WeightPrepTogether) {
        let mut first = None;
        for i in 0..n {
            let Some(r) = p.root(i) else { continue };
            if p.kind[r] != KernelKind::WeightPrep || p.min[r] != i {
                continue;
            }
            match first {
                None => first = Some(r),
                Some(f) => {
                    p.merge(r, f, KernelKind::WeightPrep, FusionRule::WeightPrepTogether);
                }
            }
        }
    }

    let mut groups: Vec<Group> = (0..n)
        .filter(|&i| p.parent[i] == Some(i))
        .map(|r| {
            let mut nodes = p.members[r].clone();
            nodes.sort_unstable();
            Group { kind: p.kind[r], nodes, prologue: Vec::new(), rules: p.rules[r].clone() }
        })
        .collect();

    if on(FusionRule::RmsnormIntoGemm) {
        move_rms_into_gemms(g, &p.users, &mut groups, requested);
    }
    if on(FusionRule::RecomputeElementwise) {
        recompute_cheap_values(g, &mut groups, requested);
    }
    order(g, groups)
}

fn is_reduction(op: &Op) -> bool {
    matches!(op, Op::SumTo { .. } | Op::Reduce { .. })
}

/// Is node `m` a sum over every leading axis of a `rows x len` value (a
/// column sum of that row space)?
fn is_column_sum(g: &Graph, m: usize, rows: usize, len: usize) -> bool {
    let node = &g.nodes[m];
    let x = g.ty(node.args[0]);
    matches!(node.op, Op::SumTo { .. }) && x.shape.last() == Some(&len) && x.numel() == rows * len && node.ty.numel() == len && node.ty.shape.last() == Some(&len)
}

/// Is node `input` read by node `user` as a tensor-core operand (a matrix product
/// or attention input)?
pub fn is_tensor_core_operand(g: &Graph, user: usize, input: usize) -> bool {
    let node = &g.nodes[user];
    matches!(node.op, Op::Linear | Op::MatMul | Op::OuterSum | Op::CausalAttention { .. } | Op::CausalAttentionGrad { .. })
        && node.args.iter().any(|a| a.index() == input)
}

/// The logits GEMM, the softcap, the cross entropy and the logits gradient
/// (with the softcap's backward) in one kernel.
fn fuse_lm_head(p: &mut Partition) {
    let g = p.g;
    for c in 0..g.nodes.len() {
        if !matches!(g.nodes[c].op, Op::CrossEntropy) {
            continue;
        }
        let Some(rc) = p.root(c) else { continue };
        // The GEMM whose result the cross-entropy kernel reads (through the softcap).
        let mut members = p.members[rc].clone();
        members.sort_unstable();
        let gemm = members
            .into_iter()
            .flat_map(|m| g.nodes[m].args.iter().map(|a| a.index()).collect::<Vec<_>>())
            .find(|&a| matches!(g.nodes[a].op, Op::Linear));
        let Some(gemm) = gemm else { continue };
        let Some(rg) = p.root(gemm) else { continue };
        if p.kind[rg] != KernelKind::Gemm || !p.merge(rc, rg, KernelKind::LmHead, FusionRule::LmHeadCrossEntropy) {
            continue;
        }
        // The gradient of the logits from the same logits and targets, and the
        // element-wise softcap backward that consumes it.
        for d in 0..g.nodes.len() {
            if !(matches!(g.nodes[d].op, Op::CrossEntropyGrad) && g.nodes[d].args[..2] == g.nodes[c].args[..2]) {
                continue;
            }
            let (Some(rd), Some(rh)) = (p.root(d), p.root(gemm)) else { continue };
            if rd != rh && !p.merge(rd, rh, KernelKind::LmHead, FusionRule::LmHeadCrossEntropy) {
                continue;
            }
            let rh = p.root(gemm).unwrap();
            for u in p.user_groups(d) {
                if u != rh && p.kind[u] == KernelKind::Elementwise && p.domain(u) <= g.nodes[d].ty.numel() {
                    p.merge(u, rh, KernelKind::LmHead, FusionRule::LmHeadCrossEntropy);
                }
            }
        }
    }
}

/// `rms(x) = x * r` stored only to feed `Linear` inputs: store `r` instead and
/// recompute the product in each GEMM's prologue (applied to output rows).
fn move_rms_into_gemms(g: &Graph, users: &[Vec<usize>], groups: &mut [Group], requested: &HashSet<usize>) {
    let group_of = |groups: &[Group], n: usize| groups.iter().position(|gr| gr.nodes.binary_search(&n).is_ok());
    for gi in 0..groups.len() {
        if groups[gi].kind != KernelKind::RowWise {
            continue;
        }
        let nodes = groups[gi].nodes.clone();
        for &m in &nodes {
            let node = &g.nodes[m];
            let outside: Vec<usize> = users[m].iter().copied().filter(|u| nodes.binary_search(u).is_err()).collect();
            if outside.is_empty() || requested.contains(&m) || !matches!(node.op, Op::Binary { f: crate::op::BinaryFn::Mul }) {
                continue;
            }
            // m = x * r with r one value per row (shape [..., 1]) computed in this group.
            let [a, b] = [node.args[0].index(), node.args[1].index()];
            let row_scale = |v: usize| g.nodes[v].ty.shape.last() == Some(&1) && nodes.binary_search(&v).is_ok();
            if !(row_scale(b) || row_scale(a)) {
                continue;
            }
            let all_linear_inputs = outside.iter().all(|&u| matches!(g.nodes[u].op, Op::Linear) && g.nodes[u].args[0].index() == m);
            let other_users_inside = users[m].iter().any(|u| nodes.binary_search(u).is_ok());
            // Each GEMM then reads the f32 x instead of a bf16 copy: with
            // more than one (the q, k, v projections) storing the bf16
            // normalised rows once moves fewer bytes.
            if !all_linear_inputs || other_users_inside || outside.len() > 1 {
                continue;
            }
            let targets: Vec<usize> = outside.iter().filter_map(|&u| group_of(groups, u)).collect();
            groups[gi].nodes.retain(|&x| x != m);
            groups[gi].rules.insert(FusionRule::RmsnormIntoGemm);
            for t in targets {
                if !groups[t].prologue.contains(&m) {
                    groups[t].prologue.push(m);
                    groups[t].rules.insert(FusionRule::RmsnormIntoGemm);
                }
            }
        }
    }
}

/// A value `f(u)` for one of the cheap one-input functions below.
fn cheap_of(g: &Graph, v: usize) -> Option<usize> {
    use crate::op::UnaryFn;
    let node = &g.nodes[v];
    let cheap = match &node.op {
        Op::Unary { f } => matches!(f, UnaryFn::Relu | UnaryFn::Step | UnaryFn::Square | UnaryFn::Neg | UnaryFn::Abs),
        Op::LeakyRelu { .. } | Op::LeakyStep { .. } => true,
        _ => false,
    };
    (cheap && node.args.len() == 1 && g.ty(node.args[0]).shape == node.ty.shape).then(|| node.args[0].index())
}

/// recompute-elementwise: a kernel that reads both `u` and a cheap `f(u)`
/// computed elsewhere recomputes `f(u)` (a prologue node) instead of reading
/// it. Also a reshape/permute view of a value another kernel stores anyway
/// (the q/k projections in the head layout, kept for the norm's backward):
/// the reader indexes the stored value instead of a stored copy. Element-wise,
/// row-wise and reduction kernels, and GEMM epilogues (not the product's
/// operands, which the tensor cores read from memory).
fn recompute_cheap_values(g: &Graph, groups: &mut [Group], requested: &HashSet<usize>) {
    let mut owner = vec![usize::MAX; g.nodes.len()];
    for (gi, gr) in groups.iter().enumerate() {
        for &m in &gr.nodes {
            owner[m] = gi;
        }
    }
    let is_layout = |m: usize| matches!(g.nodes[m].op, Op::Reshape { .. } | Op::Permute { .. });
    for gr in groups.iter_mut() {
        if !matches!(gr.kind, KernelKind::Elementwise | KernelKind::RowWise | KernelKind::Reduce | KernelKind::Gemm) {
            continue;
        }
        let inside: HashSet<usize> = gr.nodes.iter().chain(&gr.prologue).copied().collect();
        let reads: BTreeSet<usize> = inside.iter().flat_map(|&m| g.nodes[m].args.iter().map(|a| a.index())).filter(|a| !inside.contains(a)).collect();
        let operands: HashSet<usize> = gr
            .nodes
            .iter()
            .filter(|&&m| matches!(g.nodes[m].op, Op::Linear | Op::MatMul | Op::OuterSum))
            .flat_map(|&m| g.nodes[m].args.iter().map(|a| a.index()))
            .collect();
        let mut add: Vec<usize> = Vec::new();
        for &v in &reads {
            if requested.contains(&v) || operands.contains(&v) || gr.prologue.contains(&v) {
                continue;
            }
            if let Some(u) = cheap_of(g, v) {
                if reads.contains(&u) {
                    add.push(v);
                }
                continue;
            }
            // A chain of views down to a value stored by another kernel than the views'.
            let mut chain = vec![v];
            let mut u = v;
            while is_layout(u) {
                let a = g.nodes[u].args[0].index();
                if owner[a] != owner[v] || owner[a] == usize::MAX {
                    chain.push(usize::MAX);
                    break;
                }
                chain.push(a);
                u = a;
            }
            if chain.last() == Some(&usize::MAX) && is_layout(v) {
                chain.pop();
                add.extend(chain);
            }
        }
        for v in add {
            if !gr.prologue.contains(&v) {
                gr.prologue.push(v);
            }
            gr.rules.insert(FusionRule::RecomputeElementwise);
        }
    }
}

/// Topological order of the groups (ties: the group holding the earliest node first).
fn order(g: &Graph, groups: Vec<Group>) -> Vec<Group> {
    let n = g.nodes.len();
    let mut owner = vec![usize::MAX; n];
    for (gi, gr) in groups.iter().enumerate() {
        for &m in &gr.nodes {
            owner[m] = gi;
        }
    }
    let reads = |gr: &Group| -> BTreeSet<usize> {
        gr.nodes.iter().chain(&gr.prologue).flat_map(|&m| g.nodes[m].args.iter().map(|a| a.index())).collect()
    };
    let mut deps: Vec<BTreeSet<usize>> = Vec::with_capacity(groups.len());
    for (gi, gr) in groups.iter().enumerate() {
        let mut d = BTreeSet::new();
        for v in reads(gr) {
            if owner[v] != usize::MAX && owner[v] != gi {
                d.insert(owner[v]);
            } else if owner[v] == usize::MAX {
                // A prologue node's own inputs belong to other groups.
                for a in &g.nodes[v].args {
                    let o = owner[a.index()];
                    if o != usize::MAX && o != gi {
                        d.insert(o);
                    }
                }
            }
        }
        deps.push(d);
    }
    let mut indeg: Vec<usize> = deps.iter().map(|d| d.len()).collect();
    let mut dependents = vec![Vec::new(); groups.len()];
    for (gi, d) in deps.iter().enumerate() {
        for &x in d {
            dependents[x].push(gi);
        }
    }
    let mut ready: BTreeSet<(usize, usize)> =
        (0..groups.len()).filter(|&gi| indeg[gi] == 0).map(|gi| (groups[gi].nodes[0], gi)).collect();
    let mut out = Vec::with_capacity(groups.len());
    while let Some(&(k, gi)) = ready.iter().next() {
        ready.remove(&(k, gi));
        out.push(gi);
        for &d in &dependents[gi] {
            indeg[d] -= 1;
            if indeg[d] == 0 {
                ready.insert((groups[d].nodes[0], d));
            }
        }
    }
    assert_eq!(out.len(), groups.len(), "fusion never merges across a cycle");
    let mut slots: Vec<Option<Group>> = groups.into_iter().map(Some).collect();
    out.into_iter().map(|gi| slots[gi].take().expect("each group once")).collect()
}
