//! Model statistics for `pgc compile`'s report: parameters and bytes per storage class, FLOPs.
