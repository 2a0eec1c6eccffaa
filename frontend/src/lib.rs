//! The lowering of .pgdsl source to the IR.
