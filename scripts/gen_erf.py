#!/usr/bin/env python3
"""Chebyshev coefficients of the erf/erfc approximations in src/erf.rs.

Each function below is smooth on its interval; its Chebyshev series is
computed by interpolation at 60 Chebyshev-Gauss nodes in 50-digit arithmetic
(mpmath) and cut where the coefficients fall below 2e-18 of the function's
smallest value on the interval. Prints the Rust constants to stdout:

    python3 scripts/gen_erf.py > /tmp/coeffs.rs
"""

import mpmath as mp

mp.mp.dps = 50
N = 60


def cheb(f, a, b):
    a, b = mp.mpf(a), mp.mpf(b)
    xs = [mp.cos(mp.pi * (k + mp.mpf(1) / 2) / N) for k in range(N)]
    fs = [f((b - a) / 2 * x + (a + b) / 2) for x in xs]
    c = [2 * sum(fs[k] * mp.cos(mp.pi * j * (k + mp.mpf(1) / 2) / N) for k in range(N)) / N
         for j in range(N)]
    c[0] /= 2
    fmin = min(abs(f(a + mp.mpf("1e-30"))), abs(f(b)))
    n = len(c)
    while n > 1 and abs(c[n - 1]) < 2e-18 * fmin:
        n -= 1
    return c[:n]


def small(t):  # erf(x)/x as a function of t = x²
    return mp.erf(mp.sqrt(t)) / mp.sqrt(t)


def scaled(x):  # exp(x²)·erfc(x)
    return mp.exp(x * x) * mp.erfc(x)


def tail(v):  # x·exp(x²)·erfc(x) as a function of v = 1/x
    x = 1 / v
    return x * mp.exp(x * x) * mp.erfc(x)


SPECS = [("ERF_SMALL", small, 0, mp.mpf("0.84375") ** 2)]
CUTS = [0.84375, 1.5, 2.5, 4.0, 6.0]
SPECS += [(f"ERFC_{i + 1}", scaled, a, b) for i, (a, b) in enumerate(zip(CUTS, CUTS[1:]))]
SPECS += [("ERFC_TAIL", tail, mp.mpf(1) / 28, mp.mpf(1) / 6)]

for label, f, a, b in SPECS:
    c = cheb(f, a, b)
    print(f"const {label}: Cheb = Cheb {{\n    lo: {float(a)!r},\n    hi: {float(b)!r},\n    c: &[")
    for v in c:
        print(f"        {float(v)!r},")
    print("    ],\n};\n")
