"""The vectorizable float32 sin/cos/exp/tanh of the CPU replay (kernels/vmath.py), through
tapegrad's own ops: ulp errors against a float64 reference, special values, the
libm path for large arguments, and the gradients that use them (sin' = cos, cos' = -sin).
An error bound, not bit equality with libm: glibc's sinf itself is off by up to 0.56 ulp."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tapegrad as tg

REF = {"sin": np.sin, "cos": np.cos, "exp": np.exp, "tanh": np.tanh}
GRAD = {"sin": np.cos, "cos": lambda x: -np.sin(x), "exp": np.exp}


def ulps(got, x64, fn):
    """|got - fn(x)| in units of the float32 spacing at fn(x) (inf/nan must match exactly)."""
    ref = fn(x64)
    got64 = got.astype(np.float64)
    with np.errstate(over="ignore"):
        ref32 = ref.astype(np.float32)      # where it overflows float32, the answer is inf
    fin = np.isfinite(ref32)
    assert np.array_equal(got[~fin], ref32[~fin], equal_nan=True), (x64[~fin], got[~fin])
    sp = np.spacing(np.abs(ref[fin]).astype(np.float32)).astype(np.float64)
    return np.abs(got64[fin] - ref[fin]) / sp


def forward(name, x):
    return getattr(tg, name)(tg.tensor(x)).numpy()


def backward(name, x):
    t = tg.tensor(x, requires_grad=True)
    getattr(tg, name)(t).sum().backward()
    return t.grad.numpy()


SCALES = [1e-30, 1e-6, 0.5, 3.0, 30.0, 1e3, 1e5, 1e7, 3e8, 1e9, 1e30]


@pytest.mark.parametrize("name", ["sin", "cos"])
@pytest.mark.parametrize("scale", SCALES)
def test_sincos_forward_within_half_ulp_and_a_bit(name, scale):
    x = (np.random.default_rng(1).standard_normal(200_000) * scale).astype(np.float32)
    u = ulps(forward(name, x), x.astype(np.float64), REF[name])
    assert u.max() <= 0.6, u.max()   # glibc's sinf: 0.56


@pytest.mark.parametrize("name", ["sin", "cos", "exp"])
def test_gradient_rules_use_the_same_functions(name):
    x = np.random.default_rng(2).uniform(-40, 40, 100_000).astype(np.float32)
    x[:7] = [0.0, -0.0, 1e-40, 5e8, -1e20, 88.0, -100.0]
    u = ulps(backward(name, x), x.astype(np.float64), GRAD[name])
    assert u.max() <= 1.0, u.max()   # one more rounding: g * cos(x) with g = 1


@pytest.mark.parametrize("lo,hi", [(-110.0, -80.0), (-80.0, 80.0), (80.0, 90.0), (-1e-3, 1e-3)])
def test_exp_forward_ulps_including_overflow_and_subnormals(lo, hi):
    x = np.random.default_rng(3).uniform(lo, hi, 200_000).astype(np.float32)
    u = ulps(forward("exp", x), x.astype(np.float64), np.exp)
    assert u.max() <= 0.6, u.max()


@pytest.mark.parametrize("scale", [1e-30, 1e-6, 1e-3, 0.03, 0.045, 0.3, 1.0, 3.0, 9.0, 30.0])
def test_tanh_forward_ulps(scale):
    """Tiny arguments (where expm1 is its polynomial, k = 0), the reduction's range, saturation."""
    x = (np.random.default_rng(6).standard_normal(200_000) * scale).astype(np.float32)
    u = ulps(forward("tanh", x), x.astype(np.float64), np.tanh)
    assert u.max() <= 0.51, u.max()


def test_tanh_expm1_polynomial_error():
    """vmath._EM1 approximates (e^r - 1) / r on |r| <= ln2/2 to 2.4e-10 relative. A mistyped
    coefficient breaks this bound unless its error is far below what a float32 result shows;
    the ulp tests above would see only large ones."""
    from tapegrad.kernels import vmath
    r = np.linspace(-np.log(2) / 2, np.log(2) / 2, 400_001)
    r = r[r != 0]
    p = np.polynomial.polynomial.polyval(r, vmath._EM1)
    assert np.abs(p / (np.expm1(r) / r) - 1).max() < 2.5e-10


SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1.2e-38, 3.4e38, -3.4e38,
                    np.pi / 4, np.pi / 2, np.pi, 88.72283, 88.72284, -87.33654, -103.97, -104.0, -150.0,
                    4e8, -4e8, 3.99e8], np.float32)


@pytest.mark.parametrize("name", ["sin", "cos", "exp", "tanh"])
def test_special_values_match_numpy_bit_for_sign_and_nan(name):
    got = forward(name, SPECIAL)
    want = REF[name](SPECIAL)          # NumPy's float32 loops
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    assert np.array_equal(np.signbit(got[ok]), np.signbit(want[ok])), (SPECIAL[ok], got[ok], want[ok])
    u = ulps(got, SPECIAL.astype(np.float64), REF[name])
    assert u.max(initial=0) <= 0.6


def test_negative_zero_keeps_its_sign_through_sin():
    assert np.signbit(forward("sin", np.array([-0.0], np.float32))[0])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=1, max_size=64))
@pytest.mark.parametrize("name", ["sin", "cos", "exp", "tanh"])
def test_any_float32(name, xs):
    x = np.array(xs, np.float32)
    u = ulps(forward(name, x), x.astype(np.float64), REF[name])
    assert u.max(initial=0) <= 0.6


@pytest.mark.parametrize("name", ["sin", "cos", "exp", "tanh"])
def test_float64_is_libm(name):
    """float64 takes math's functions as before: the same bits as Python's math module (libm)."""
    import math
    x = np.random.default_rng(4).uniform(-50, 50, 10_000)
    got = forward(name, x)
    want = np.array([getattr(math, name)(v) for v in x])
    assert np.array_equal(got, want)


@pytest.mark.parametrize("name", ["sin", "cos", "exp", "tanh"])
def test_parity_with_torch(name):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(5).uniform(-20, 20, 50_000).astype(np.float32)
    want = getattr(torch, name)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(forward(name, x), want, rtol=2e-7, atol=1e-7)
