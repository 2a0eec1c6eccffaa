//! Loading and saving parameter tensors and token files (safetensors), with checks.
