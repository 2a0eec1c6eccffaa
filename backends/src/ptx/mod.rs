//! PTX emission for sm_90a: a typed PTX builder and one emitter per kernel kind.
