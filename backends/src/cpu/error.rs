//! The CPU backend's errors.

use pgc_ir::TensorType;

#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("the graph does not verify: {0}")]
    Invalid(String),
    #[error("missing parameter `{0}`")]
    MissingParam(String),
    #[error("parameter `{name}`: expected shape {expected:?}, got {got:?}")]
    ParamShape { name: String, expected: Vec<usize>, got: Vec<usize> },
    #[error("parameter `{0}` must be a float tensor")]
    ParamDtype(String),
    #[error("missing input `{0}`")]
    MissingInput(String),
    #[error("input `{name}`: expected {expected}, got {got}")]
    InputType { name: String, expected: TensorType, got: String },
    #[error("the graph has no output named `{0}`")]
    NoOutput(String),
    #[error("%{node} = {op}: {msg}")]
    Op { node: u32, op: &'static str, msg: String },
}

