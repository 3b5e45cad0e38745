//! gemm
pub mod peak;
