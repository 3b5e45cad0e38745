//! Temporary stand-in until the packed kernel lands.
use crate::Float;
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    a: &[T],
    rsa: usize,
    csa: usize,
    b: &[T],
    rsb: usize,
    csb: usize,
    beta: T,
    c: &mut [T],
    ldc: usize,
) {
    for i in 0..m {
        for j in 0..n {
            let mut s = T::ZERO;
            for p in 0..k {
                s += a[i * rsa + p * csa] * b[p * rsb + j * csb];
            }
            let out = &mut c[i * ldc + j];
            *out = if beta == T::ZERO {
                alpha * s
            } else {
                alpha * s + beta * *out
            };
        }
    }
}
