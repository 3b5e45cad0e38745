//! Plain-Rust loops compiled for the widest vectors the CPU has.
//!
//! The crate is built for the baseline `x86_64` target (SSE2, 4-lane `f32`
//! vectors), so that one binary runs everywhere. The GEMM micro-kernels pick
//! AVX2 or AVX-512 at run time with hand-written intrinsics; [`multiversion!`]
//! gives the same to ordinary loops (the Winograd transforms, for one). It
//! defines a function that calls an `#[inline(always)]` body either from a
//! copy compiled with AVX2 and FMA enabled — so that the body is inlined
//! there and auto-vectorised 8 lanes wide — or, without AVX2 (or when
//! [`gemm::force_portable`](crate::gemm::force_portable) holds on this thread,
//! or on other architectures), directly. The results are the same either way: only the
//! instructions differ (Rust never contracts `a * b + c` into an FMA).

/// Whether the AVX2+FMA copies may run: the CPU has both, and SIMD is not
/// forced off.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn avx2_available() -> bool {
    crate::gemm::simd_allowed()
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
}

/// `multiversion!(fn name<T: Float>(args...) => body);` defines `name`,
/// which runs the `#[inline(always)]` function `body(args...)` compiled with
/// AVX2+FMA when [`avx2_available`], else as compiled for the baseline. A
/// second form takes `<T: Bound, W: Bound2<A, B>, const A: usize, const B:
/// usize>` (the Winograd transforms, generic over their variant).
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident<$t:ident: $bound:path>($($arg:ident: $ty:ty),* $(,)?) => $body:ident) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name<$t: $bound>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if $crate::simd::avx2_available() {
                /// The body, inlined into a function compiled with AVX2 and FMA.
                ///
                /// # Safety
                /// The CPU must support AVX2 and FMA.
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2<$t: $bound>($($arg: $ty),*) {
                    $body($($arg),*)
                }
                // SAFETY: `avx2_available` checked at run time that the CPU
                // supports AVX2 and FMA, the only requirement of `avx2`.
                return unsafe { avx2($($arg),*) };
            }
            $body($($arg),*)
        }
    };
    // The same for a body generic over a type, a second type with a bound
    // that may name the two constants, and two `usize` constants.
    ($(#[$m:meta])* $vis:vis fn $name:ident<$t:ident: $bound:path, $w:ident: $wb:path, const $c1:ident: usize, const $c2:ident: usize>($($arg:ident: $ty:ty),* $(,)?) => $body:ident) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name<$t: $bound, $w: $wb, const $c1: usize, const $c2: usize>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if $crate::simd::avx2_available() {
                /// The body, inlined into a function compiled with AVX2 and FMA.
                ///
                /// # Safety
                /// The CPU must support AVX2 and FMA.
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2<$t: $bound, $w: $wb, const $c1: usize, const $c2: usize>($($arg: $ty),*) {
                    $body::<$t, $w, $c1, $c2>($($arg),*)
                }
                // SAFETY: `avx2_available` checked at run time that the CPU
                // supports AVX2 and FMA, the only requirement of `avx2`.
                return unsafe { avx2::<$t, $w, $c1, $c2>($($arg),*) };
            }
            $body::<$t, $w, $c1, $c2>($($arg),*)
        }
    };
}
pub(crate) use multiversion;

#[cfg(test)]
mod tests {
    use crate::Float;

    #[inline(always)]
    fn scale_body<T: Float>(x: &[T], k: T, out: &mut [T]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = v * k + T::ONE;
        }
    }
    super::multiversion!(fn scale<T: Float>(x: &[T], k: T, out: &mut [T]) => scale_body);

    #[test]
    fn both_versions_compute_the_body() {
        let x: Vec<f32> = (0..1000).map(|i| i as f32 * 0.37).collect();
        let mut want = vec![0.0; 1000];
        scale_body(&x, 1.5, &mut want);
        let mut got = vec![0.0; 1000];
        scale(&x, 1.5, &mut got);
        assert_eq!(got, want);
        let portable_kernels = crate::gemm::force_portable(true);
        let mut portable = vec![0.0; 1000];
        scale(&x, 1.5, &mut portable);
        drop(portable_kernels);
        assert_eq!(portable, want);
    }
}
