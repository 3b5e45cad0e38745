//! What the running CPU supports, for tests that check which kernel path a
//! conv takes.
#![allow(dead_code)]

/// Whether the CPU has AVX2 and FMA: the least the implicit-GEMM kernels need.
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the CPU has AVX-512F: what the implicit weight gradient needs.
pub fn has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    false
}
