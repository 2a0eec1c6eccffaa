//! Text -> graph: read a `.pgdsl` file and lower it with `--set` overrides.

use super::{input, internal, PipelineError, Result};
use pgc_ir::{Graph, Mode};
use std::path::Path;

/// A model's source text and the path it was read from (for diagnostics).
pub struct ModelSource {
    pub path: String,
    pub text: String,
}

/// Read a model file (UTF-8 text).
pub fn read_model(path: &Path) -> Result<ModelSource> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| input(format!("cannot read {name}: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| input(format!("{name}: not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to())))?;
    Ok(ModelSource { path: name, text })
}

impl ModelSource {
    /// The model lowered to the graph IR in `mode`, with constants overridden
    /// by `sets`. The frontend's warnings go to stderr, once per process
    /// (commands lower a model more than once); a model with no `output` is
    /// refused, since no command has anything to compute for it.
    pub fn lower(&self, sets: &[(String, String)], mode: Mode) -> Result<Graph> {
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        let (g, warnings) = pgc_frontend::compile_model_warn(&self.text, &self.path, sets, mode)
            .map_err(|d| PipelineError::Diagnostics(d.render(&self.text)))?;
        if g.outputs.is_empty() {
            return Err(input(format!("{}: the model declares no `output` (an empty file?): there is nothing to compile or run", self.path)));
        }
        if !warnings.items.is_empty() && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            eprint!("{}", warnings.render_warnings(&self.text));
        }
        Ok(g)
    }
}

/// `g` with the backward pass of its scalar output `loss` appended.
pub fn with_backward(g: &Graph, loss: &str) -> Result<Graph> {
    pgc_ir::passes::autodiff::backward(g, loss).map_err(|e| internal(format!("deriving the backward pass: {e}")))
}

/// The IR hash an artifact records: FNV-1a 64 of the graph's JSON text.
pub fn ir_hash(g: &Graph) -> Result<u64> {
    let json = serde_json::to_string(g).map_err(internal)?;
    Ok(pgc_runtime::artifact::fnv1a64(json.as_bytes()))
}
