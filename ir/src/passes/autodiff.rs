//! Reverse-mode autodiff: from a forward graph and its scalar loss, the gradient of every parameter.
