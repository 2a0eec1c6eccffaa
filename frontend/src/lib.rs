//! The .pgdsl language: lexer (logos), parser, diagnostics, lowering to IR.
//!
//! Entry point: [`compile_model`]. The language is documented in
//! `frontend/LANGUAGE.md`.

pub mod ast;
pub mod diag;
pub mod lexer;
pub mod lower;
pub mod parser;

pub use diag::{Diagnostic, Diagnostics, Span};
pub use lower::Limits;

use pgc_ir::{Graph, Mode};

/// Stack for the compiler thread: parsing and lowering recurse, and both are
/// depth-capped well below what this holds.
const STACK_BYTES: usize = 64 << 20;

/// Parse `source` (named `path` in messages), apply `--set` overrides of its
/// `const`s, and lower it to a verified graph in `mode`.
pub fn compile_model(source: &str, path: &str, sets: &[(String, String)], mode: Mode) -> Result<Graph, Diagnostics> {
    compile_model_with(source, path, sets, mode, &Limits::default())
}

/// [`compile_model`], also returning the warnings: things that compile but
/// are probably not what was meant (no outputs, a loop over a constant that
/// is 0). Render them with [`Diagnostics::render_warnings`].
pub fn compile_model_warn(source: &str, path: &str, sets: &[(String, String)], mode: Mode) -> Result<(Graph, Diagnostics), Diagnostics> {
    compile_model_full(source, path, sets, mode, &Limits::default())
}

/// [`compile_model`] with explicit resource limits.
pub fn compile_model_with(
    source: &str,
    path: &str,
    sets: &[(String, String)],
    mode: Mode,
    limits: &Limits,
) -> Result<Graph, Diagnostics> {
    compile_model_full(source, path, sets, mode, limits).map(|(g, _)| g)
}

fn compile_model_full(
    source: &str,
    path: &str,
    sets: &[(String, String)],
    mode: Mode,
    limits: &Limits,
) -> Result<(Graph, Diagnostics), Diagnostics> {
    let run = || compile_inner(source, path, sets, mode, limits);
    std::thread::scope(|s| match std::thread::Builder::new().stack_size(STACK_BYTES).spawn_scoped(s, run) {
        Ok(h) => h.join().unwrap_or_else(|_| {
            Err(Diagnostics::single(path, Diagnostic::global("internal error: the frontend panicked (please report this)")))
        }),
        // No thread available: run here (the depth caps still hold for a main-thread stack).
        Err(_) => compile_inner(source, path, sets, mode, limits),
    })
}

/// Parse only (for tools and tests).
pub fn parse(source: &str, path: &str) -> Result<ast::Program, Diagnostics> {
    parser::parse(source).map_err(|e| Diagnostics::new(path, e))
}

fn compile_inner(source: &str, path: &str, sets: &[(String, String)], mode: Mode, limits: &Limits) -> Result<(Graph, Diagnostics), Diagnostics> {
    let prog = parser::parse(source).map_err(|e| Diagnostics::new(path, e))?;
    let mut lw = lower::Lower::new(source, &prog, sets, mode, limits.clone());
    lw.program().map_err(|d| Diagnostics::single(path, d))?;
    if let Err(errs) = pgc_ir::verify(&lw.g) {
        let items = errs
            .into_iter()
            .map(|e| {
                let span = e.origin.as_ref().map(|o| {
                    lw.origin_spans.get(&(o.line, o.col)).copied().unwrap_or_else(|| {
                        let at = diag::offset_of(source, o.line, o.col);
                        Span::new(at, at)
                    })
                });
                match span {
                    Some(s) => Diagnostic::error(e.message, s).label("here"),
                    None => Diagnostic::global(e.message),
                }
            })
            .collect();
        return Err(Diagnostics::new(path, items));
    }
    let mut warnings = std::mem::take(&mut lw.warnings);
    if lw.g.outputs.is_empty() {
        warnings.push(Diagnostic::global("the model declares no `output`: there is nothing to compute"));
    }
    Ok((lw.g, Diagnostics::new(path, warnings)))
}
