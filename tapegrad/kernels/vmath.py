"""float32 sin, cos, exp and tanh that LLVM vectorizes, for the CPU replay.

Numba compiles ``math.sin`` of a float32 to a call of libm's ``sinf`` per element:
about 8 ns each here, where NumPy's SIMD loops take under 1 ns, and W3
(``sin(x) * exp(-x*x)``) spends most of its time there. These are the same
algorithms as FreeBSD's ``sinf``/``cosf`` (``k_sinf.c``, ``k_cosf.c``,
``e_rem_pio2f.c``): the argument goes to double, is reduced by pi/2 in two parts,
and a double polynomial on [-pi/4, pi/4] gives the result, which rounds to the
nearest float32 in all but rare cases (max error 0.501 ulp measured over 10^7
normal samples, against 0.56 ulp for glibc's ``sinf``). Branch-free, so a loop of
them is vectorized (AVX2: 4 doubles a lane; 1.5 ms against 8.1 ms for 10^6
``sin``). Arguments of magnitude 4e8 or more (and inf) take libm's path (the
reduction above needs Payne-Hanek there), and so do nan: the generated loop
runs the fast rule branch-free over a tile, then libm's rule where ``fast_ok`` is
false (a second, rarely taken pass), so the loop still vectorizes.

``exp`` follows the same plan: x = k ln2 + r, |r| <= ln2/2, a degree-9 Taylor
polynomial in double (error < 3e-11), times 2^k built from its bits. ``tanh`` is
expm1(2|x|) / (expm1(2|x|) + 2), with expm1 from the same reduction and a degree-6
polynomial (0.504 ulp measured; for 1024 elements 2.3 us, against 3.1 us for the
earlier 1 - 2 / (exp(2|x|) + 1) with a Taylor branch below 0.04, 10 us for libm's
``tanhf`` and 1.0 us for NumPy's SIMD loop). NOTE: these loops vectorize only under ``error_model="numpy"``
(config.NJIT): Python's error model checks every division for zero.

Each rule here (``sin_f``, ``sin_b``, ...) mirrors ``elementwise.py``'s of the
same name with these functions in place of ``math``'s; ``gen_cpu.py`` uses it for
those rows. For float64 arguments they are ``math``'s functions: only float32
changes. ``tests/test_vmath.py`` checks ulp errors, special values and signs.
"""
import math

import numpy as np
from numba import types
from numba.core.extending import intrinsic, overload

from ..config import NJIT_INNER
from numba import njit

_INVPIO2 = 6.36619772367581382433e-01     # 2/pi
_PIO2_1 = 1.57079631090164184570e+00      # first 33 bits of pi/2
_PIO2_1T = 1.58932547735281966916e-08     # pi/2 - _PIO2_1
_S1, _S2, _S3, _S4 = (-0.166666666416265235595, 0.0083333293858894631756, -0.000198393348360966317347,
                      0.0000027183114939898219064)
_C0, _C1, _C2, _C3 = (-0.499999997251031003120, 0.0416666233237390631894, -0.00138867637746099294692,
                      0.0000243904487962774090654)
_BIG = 4.0e8                              # |x| from here: libm (FreeBSD: 2^28 pi/2)
_TINY = 2.0 ** -12                        # |x| below: sin x = x (keeps the sign of -0.0)
_INVLN2 = 1.44269504088896338700e+00
_LN2 = 6.93147180559945286227e-01


@intrinsic
def _i64_as_f64(typingctx, v):
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float64))

    return sig, codegen


@njit(inline="always", **NJIT_INNER)
def _sincos32(x, shift):  # pragma: no cover
    """sin(x) (shift 0) or cos(x) (shift 1) of a float32, as a float32."""
    d = np.float64(x)
    fn = math.floor(d * _INVPIO2 + 0.5)
    r = (d - fn * _PIO2_1) - fn * _PIO2_1T
    z = r * r
    w = z * z
    ks = (r + z * r * (_S1 + z * _S2)) + z * r * w * (_S3 + z * _S4)
    kc = ((1.0 + z * _C0) + w * _C1) + (w * z) * (_C2 + z * _C3)
    q = np.int64(fn) + shift
    v = kc if q & 1 else ks
    v = -v if q & 2 else v
    if shift == 0 and abs(d) < _TINY:
        v = d
    return np.float32(v)


@njit(inline="always", **NJIT_INNER)
def _exp32(x):  # pragma: no cover
    d = np.float64(x)
    dc = min(max(d, -104.0), 89.0)        # exp of these is 0 / inf in float32
    k = math.floor(dc * _INVLN2 + 0.5)
    r = dc - k * _LN2
    p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6 + r * (1.0 / 24 + r * (1.0 / 120 + r * (
        1.0 / 720 + r * (1.0 / 5040 + r * (1.0 / 40320 + r * (1.0 / 362880)))))))))
    v = p * _i64_as_f64((np.int64(k) + 1023) << 52)
    if d != d:
        v = d
    return np.float32(v)


#: (e^r - 1) / r on |r| <= ln2/2, degree 6: least squares in relative error at 2000 Chebyshev
#: nodes (relative error 2.4e-10, 0.002 of a float32 ulp); tests/test_vmath.py checks that error
_EM1 = (1.0000000000356013, 0.5000000046541844, 0.16666666182981327, 0.04166635481815445,
        0.00833341776461695, 0.0013940980347353575, 0.00019832976453188747)
_Q0, _Q1, _Q2, _Q3, _Q4, _Q5, _Q6 = _EM1


@njit(inline="always", **NJIT_INNER)
def _tanh32(x):  # pragma: no cover
    """tanh of a float32: m / (m + 2) with m = expm1(2|x|) in double. expm1 is 2^k (1 + q) - 1
    = 2^k q + (2^k - 1), q = r P(r) for the reduced argument r; for small |x| (k = 0) that is q
    itself, to full relative precision, so one formula covers every |x| (0.504 ulp measured)."""
    d = np.float64(x)
    a = abs(d)
    a = a if a < 10.0 else 10.0           # tanh(10) rounds to 1 in float32 (nan: below)
    t = 2.0 * a
    k = math.floor(t * _INVLN2 + 0.5)
    r = t - k * _LN2
    q = r * (_Q0 + r * (_Q1 + r * (_Q2 + r * (_Q3 + r * (_Q4 + r * (_Q5 + r * _Q6))))))
    s = _i64_as_f64((np.int64(k) + 1023) << 52)
    m = s * q + (s - 1.0)
    v = m / (m + 2.0)
    v = math.copysign(v, d)
    v = d if d != d else v
    return np.float32(v)


def fast_ok(x):
    """Whether the fast path is exact enough for x (else the caller uses elementwise.py's rule)."""
    return abs(x) < _BIG


@overload(fast_ok, inline="always")
def _ov_fast_ok(x):
    if x == types.float32:
        return lambda x: abs(x) < _BIG
    return lambda x: True


def vsin(x):
    return math.sin(x)


def vcos(x):
    return math.cos(x)


def vexp(x):
    return math.exp(x)


def vtanh(x):
    return math.tanh(x)


@overload(vtanh, inline="always")
def _ov_tanh(x):
    if x == types.float32:
        return lambda x: _tanh32(x)
    return lambda x: math.tanh(x)


@overload(vsin, inline="always")
def _ov_sin(x):
    if x == types.float32:
        return lambda x: _sincos32(x, 0)
    return lambda x: math.sin(x)


@overload(vcos, inline="always")
def _ov_cos(x):
    if x == types.float32:
        return lambda x: _sincos32(x, 1)
    return lambda x: math.cos(x)


@overload(vexp, inline="always")
def _ov_exp(x):
    if x == types.float32:
        return lambda x: _exp32(x)
    return lambda x: math.exp(x)


# ----- the rules of elementwise.py that use them (same names, same formulas) ----------

def exp_f(x, c):
    return vexp(x)


def sin_f(x, c):
    return vsin(x)


def sin_b(x, y, g, c):
    return g * vcos(x)


def cos_f(x, c):
    return vcos(x)


def cos_b(x, y, g, c):
    return -g * vsin(x)


def tanh_f(x, c):
    return vtanh(x)


#: rules with a vectorizable version here; those in CHECKED hold only where fast_ok(x): the
#: generated loop is followed by a (rarely taken) pass with elementwise.py's rule elsewhere
RULES = ("exp_f", "sin_f", "sin_b", "cos_f", "cos_b", "tanh_f")
CHECKED = ("sin_f", "sin_b", "cos_f", "cos_b")


def _register():
    from numba.extending import register_jitable
    for name in RULES:
        register_jitable(globals()[name])


_register()
