//! The architecture's one-way data flow, checked on the source: within each
//! crate, no module (file) refers to a module that (transitively) refers
//! back to it. A reference is a path through `crate::`, `super::`, `self::`
//! or a child module's name, outside comments and `#[cfg(test)] mod tests`
//! (tests may reach anywhere). `pub(super)`-style visibilities are not
//! references. A cycle fails the test with the modules on it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn module_of(base: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(base).unwrap().with_extension("");
    let mut segs: Module = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
    if matches!(segs.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        segs.pop();
    }
    segs
}

/// The source less comments, test modules and restricted visibilities.
fn code(src: &str) -> String {
    let src = match src.find("#[cfg(test)]\nmod tests") {
        Some(i) => &src[..i],
        None => src,
    };
    let mut out = String::with_capacity(src.len());
    for line in src.lines() {
        let line = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        out.push_str(line);
        out.push('\n');
    }
    for vis in ["pub(crate)", "pub(super)", "pub(self)"] {
        out = out.replace(vis, "pub");
    }
    out
}

/// Every `a::b::c` path in `code`, as its segments (identifiers only).
fn paths(code: &str) -> Vec<Vec<String>> {
    let b = code.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if ident(b[i]) && (i == 0 || !(ident(b[i - 1]) || b[i - 1] == b':')) {
            let mut segs = Vec::new();
            let mut j = i;
            loop {
                let s = j;
                while j < b.len() && ident(b[j]) {
                    j += 1;
                }
                segs.push(code[s..j].to_string());
                if j + 2 < b.len() && &b[j..j + 2] == b"::" && ident(b[j + 2]) {
                    j += 2;
                } else {
                    break;
                }
            }
            // `super::{A, B}` refers into `super` even with one segment.
            let group = code[j..].starts_with("::{");
            if segs.len() > 1 || (group && matches!(segs[0].as_str(), "crate" | "super" | "self")) {
                out.push(segs);
            }
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

/// The module a path refers into, if it is one of the crate's.
fn resolve(cur: &Module, path: &[String], mods: &BTreeSet<Module>) -> Option<Module> {
    if path.len() == 1 && path[0] == "self" {
        return None;
    }
    let mut m: Module;
    let mut rest = path;
    match path[0].as_str() {
        "crate" => {
            m = vec![];
            rest = &path[1..];
        }
        "super" | "self" => {
            m = cur.clone();
            while let Some(s) = rest.first() {
                match s.as_str() {
                    "super" => {
                        m.pop()?;
                    }
                    "self" => {}
                    _ => break,
                }
                rest = &rest[1..];
            }
        }
        first => {
            let mut child = cur.clone();
            child.push(first.to_string());
            if !mods.contains(&child) {
                return None;
            }
            m = cur.clone();
        }
    }
    for s in rest {
        let mut next = m.clone();
        next.push(s.clone());
        if mods.contains(&next) {
            m = next;
        } else {
            break;
        }
    }
    Some(m)
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct T<'a> {
        edges: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<Module, usize>,
        low: BTreeMap<Module, usize>,
        stack: Vec<Module>,
        on: BTreeSet<Module>,
        out: Vec<Vec<Module>>,
    }
    fn visit(t: &mut T, v: &Module) {
        let n = t.index.len();
        t.index.insert(v.clone(), n);
        t.low.insert(v.clone(), n);
        t.stack.push(v.clone());
        t.on.insert(v.clone());
        for w in t.edges.get(v).into_iter().flatten() {
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(&w);
                let done = &w == v;
                comp.push(w);
                if done {
                    break;
                }
            }
            if comp.len() > 1 {
                t.out.push(comp);
            }
        }
    }
    let mut t = T { edges, index: BTreeMap::new(), low: BTreeMap::new(), stack: vec![], on: BTreeSet::new(), out: vec![] };
    for v in edges.keys() {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn no_module_refers_back_to_a_module_that_refers_to_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for krate in ["frontend/src", "ir/src", "backends/src", "runtime/src", "src"] {
        let base = root.join(krate);
        let mut fs = Vec::new();
        files(&base, &mut fs);
        assert!(!fs.is_empty(), "no sources under {}", base.display());
        let mods: BTreeSet<Module> = fs.iter().map(|f| module_of(&base, f)).collect();
        let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
        for f in &fs {
            let m = module_of(&base, f);
            let src = std::fs::read_to_string(f).unwrap();
            let deps: BTreeSet<Module> = paths(&code(&src)).iter().filter_map(|p| resolve(&m, p, &mods)).filter(|d| *d != m).collect();
            edges.insert(m, deps);
        }
        for c in cycles(&edges) {
            let names: Vec<String> = c.iter().map(|m| if m.is_empty() { "<crate root>".to_string() } else { m.join("::") }).collect();
            found.push(format!("{krate}: {}", names.join(" <-> ")));
        }
    }
    assert!(found.is_empty(), "module cycles:\n{}", found.join("\n"));
}

#[test]
fn the_checker_sees_a_planted_cycle() {
    // parent refers to child through a call, child to parent through `super::`.
    let mods: BTreeSet<Module> = [vec![], vec!["a".to_string()], vec!["a".to_string(), "b".to_string()]].into_iter().collect();
    let parent = vec!["a".to_string()];
    let child = vec!["a".to_string(), "b".to_string()];
    let mut edges = BTreeMap::new();
    let dp: BTreeSet<Module> = paths(&code("fn f() { b::g(); } // super::x")).iter().filter_map(|p| resolve(&parent, p, &mods)).filter(|d| *d != parent).collect();
    let dc: BTreeSet<Module> = paths(&code("pub(super) fn g() { super::T::new(); }")).iter().filter_map(|p| resolve(&child, p, &mods)).filter(|d| *d != child).collect();
    assert_eq!(dp, [child.clone()].into_iter().collect());
    assert_eq!(dc, [parent.clone()].into_iter().collect());
    edges.insert(parent, dp);
    edges.insert(child, dc);
    assert_eq!(cycles(&edges).len(), 1);
    // `pub(super)` alone is no reference; a group import is.
    assert!(paths(&code("pub(super) fn g() {}")).is_empty());
    assert_eq!(paths(&code("use super::{A, B};")), vec![vec!["super".to_string()]]);
}
