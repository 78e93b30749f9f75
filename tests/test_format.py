"""Tests for tapegrad._format: tensor reprs byte-identical to PyTorch's.

Most tests build a real torch tensor, format the same values with
``format_tensor`` and compare with ``repr(t)``.  They are skipped when torch is
not installed.  A few tests compare with fixed strings and need only NumPy.
"""
import importlib
import importlib.util
import math
import pathlib
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def _load_format_module():
    """Import tapegrad._format; if the package itself cannot be imported
    (e.g. tapegrad/__init__.py is mid-rewrite), load the file directly."""
    try:
        return importlib.import_module("tapegrad._format")
    except Exception:
        path = pathlib.Path(__file__).resolve().parents[1] / "tapegrad" / "_format.py"
        name = "_tapegrad_format_under_test"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module


fmt = _load_format_module()
format_tensor = fmt.format_tensor


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _torch():
    return pytest.importorskip("torch")


def dtype_name(t):
    """'float32' for torch.float32, and so on."""
    return str(t.dtype).removeprefix("torch.")


def grad_suffixes(t):
    """The autograd suffixes torch's _str_intern adds (dtype= is ours to decide)."""
    if t.grad_fn is not None:
        return [f"grad_fn=<{type(t.grad_fn).__name__}>"]
    if t.requires_grad:
        return ["requires_grad=True"]
    return []


def ours(t):
    """format_tensor applied to the values, dtype and autograd state of t."""
    return format_tensor(t.detach().numpy(), dtype_name(t), grad_suffixes(t))


def assert_same(t):
    expected = repr(t)
    got = ours(t)
    assert got == expected, f"\n--- tapegrad ---\n{got}\n--- torch ---\n{expected}"


@pytest.fixture(autouse=True)
def _default_printoptions():
    """Every test starts and ends with default print options on both sides."""
    fmt.set_printoptions(profile="default")
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch.set_printoptions(profile="default")
    yield
    fmt.set_printoptions(profile="default")
    if torch is not None:
        torch.set_printoptions(profile="default")


# ---------------------------------------------------------------------------
# no torch needed: expected strings from the article
# ---------------------------------------------------------------------------


def test_article_pow_vector():
    arr = np.array([1.0, 4.0], dtype=np.float32)
    assert (
        format_tensor(arr, "float32", ["grad_fn=<PowBackward0>"])
        == "tensor([1., 4.], grad_fn=<PowBackward0>)"
    )


def test_article_sign_padding():
    arr = np.array([1.0806046, -2.6145744], dtype=np.float32)
    assert format_tensor(arr, "float32") == "tensor([ 1.0806, -2.6146])"


def test_article_pow_matrix():
    arr = np.ones((2, 2), dtype=np.float32)
    assert (
        format_tensor(arr, "float32", ["grad_fn=<PowBackward0>"])
        == "tensor([[1., 1.],\n        [1., 1.]], grad_fn=<PowBackward0>)"
    )


def test_fixed_strings_without_torch():
    assert format_tensor(np.array(3.5, dtype=np.float32), "float32") == "tensor(3.5000)"
    assert format_tensor(np.array([], dtype=np.float32), "float32") == "tensor([])"
    assert (
        format_tensor(np.zeros((0, 3), dtype=np.int64), "int64")
        == "tensor([], size=(0, 3), dtype=torch.int64)"
    )
    assert (
        format_tensor(np.array([1, 2], dtype=np.int32), "int32")
        == "tensor([1, 2], dtype=torch.int32)"
    )
    assert (
        format_tensor(np.array([True, False]), "bool", ["requires_grad=True"])
        == "tensor([ True, False], requires_grad=True)"
    )
    assert (
        format_tensor(np.array([1.0, math.nan, -math.inf], dtype=np.float32), "float32")
        == "tensor([1., nan, -inf])"
    )
    assert fmt.tensor_str(np.arange(3), "int64") == "[0, 1, 2]"


def test_printoptions_state_without_torch():
    defaults = {
        "precision": 4,
        "threshold": 1000,
        "edgeitems": 3,
        "linewidth": 80,
        "sci_mode": None,
    }
    assert fmt.get_printoptions() == defaults
    with fmt.printoptions(precision=2, sci_mode=True):
        assert fmt.get_printoptions()["precision"] == 2
        assert fmt.get_printoptions()["sci_mode"] is True
        assert format_tensor(np.array([1.5], dtype=np.float32), "float32") == (
            "tensor([1.50e+00])"
        )
    assert fmt.get_printoptions() == defaults
    fmt.set_printoptions(profile="short")
    assert fmt.get_printoptions()["precision"] == 2
    assert fmt.get_printoptions()["edgeitems"] == 2
    fmt.set_printoptions(profile="full")
    assert fmt.get_printoptions()["threshold"] == math.inf
    # like torch: a call without sci_mode resets it to None
    fmt.set_printoptions(sci_mode=False)
    fmt.set_printoptions(precision=3)
    assert fmt.get_printoptions()["sci_mode"] is None


# ---------------------------------------------------------------------------
# against torch: fixed cases
# ---------------------------------------------------------------------------


nan, inf = math.nan, math.inf

# Each entry builds one tensor from (torch, generator); kept as lambdas so that
# the list can be parametrized over without importing torch at collection time.
_FIXED_CASES = [
    # 0-d
    lambda torch, g: torch.tensor(3.5),
    lambda torch, g: torch.tensor(-0.0),
    lambda torch, g: torch.tensor(0.0),
    lambda torch, g: torch.tensor(2.0),
    lambda torch, g: torch.tensor(1e-5),
    lambda torch, g: torch.tensor(1e8),
    lambda torch, g: torch.tensor(nan),
    lambda torch, g: torch.tensor(-inf),
    lambda torch, g: torch.tensor(3.14159, dtype=torch.float64),
    lambda torch, g: torch.tensor(7),
    lambda torch, g: torch.tensor(-7, dtype=torch.int32),
    lambda torch, g: torch.tensor(True),
    # 1-d
    lambda torch, g: torch.tensor([1.0806046, -2.6145744]),
    lambda torch, g: torch.tensor([1.0, 4.0]),
    lambda torch, g: torch.tensor([0.0, 0.0]),
    lambda torch, g: torch.tensor([-0.0, 0.0]),
    lambda torch, g: torch.tensor([1.0, 2.5, -3.25]),
    lambda torch, g: torch.tensor([123456.0, 0.001]),
    lambda torch, g: torch.tensor([1e-5, 1.0]),
    lambda torch, g: torch.tensor([1e8, 1.0]),
    lambda torch, g: torch.tensor([1e9, 2e9]),
    lambda torch, g: torch.tensor([1e-5, 2e-5]),
    lambda torch, g: torch.tensor([1e10, 1.0, 1e-10]),
    lambda torch, g: torch.tensor([1.0, nan, inf, -inf]),
    lambda torch, g: torch.tensor([1.5, nan, inf, -inf]),
    lambda torch, g: torch.tensor([nan, nan]),
    lambda torch, g: torch.tensor([inf, -inf, 0.0]),
    lambda torch, g: torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64),
    lambda torch, g: torch.tensor([1.0, 2.0], dtype=torch.float64),
    lambda torch, g: torch.tensor([1e300, 1e-300], dtype=torch.float64),
    lambda torch, g: torch.tensor([9.99996, 1.0]),
    lambda torch, g: torch.tensor([999.99995, 1.0]),
    lambda torch, g: torch.tensor([-1.0, 1e3, 1e-1]),
    lambda torch, g: torch.tensor([1e4, 1e-1]),
    lambda torch, g: torch.tensor([123456789.0]),
    lambda torch, g: torch.tensor([100000000.0]),
    lambda torch, g: torch.tensor([16777217.0, 1.0], dtype=torch.float64),
    lambda torch, g: torch.randn(10, generator=g),
    lambda torch, g: torch.randn(100, generator=g),
    lambda torch, g: torch.randn(100, generator=g) * 1e4,
    lambda torch, g: torch.randn(37, generator=g, dtype=torch.float64) * 1e-3,
    lambda torch, g: torch.arange(30, dtype=torch.float32),
    lambda torch, g: torch.arange(-50, 50),
    lambda torch, g: torch.arange(100, dtype=torch.int32) * 1000,
    lambda torch, g: torch.tensor([2**62, -(2**62)]),
    lambda torch, g: torch.tensor([True, False, True]),
    lambda torch, g: torch.ones(50, dtype=torch.bool),
    # 2-d .. 4-d
    lambda torch, g: torch.ones(2, 2),
    lambda torch, g: torch.randn(3, 4, generator=g),
    lambda torch, g: torch.randn(5, 17, generator=g),
    lambda torch, g: torch.randn(4, 3, dtype=torch.float64, generator=g) * 1e6,
    lambda torch, g: torch.arange(12).reshape(3, 4),
    lambda torch, g: torch.arange(24, dtype=torch.float32).reshape(2, 3, 4),
    lambda torch, g: torch.randn(2, 3, 4, generator=g),
    lambda torch, g: torch.randn(2, 2, 3, 2, generator=g),
    lambda torch, g: torch.randint(-1000, 1000, (2, 3, 2, 2), generator=g),
    lambda torch, g: torch.randn(3, 4, generator=g) > 0,
    lambda torch, g: torch.tensor([[nan, 1.0], [inf, -2.5]]),
    lambda torch, g: torch.tensor([[1e-8, 1.0], [3.0, 4.0]], dtype=torch.float64),
    # empty
    lambda torch, g: torch.empty(0),
    lambda torch, g: torch.empty(0, dtype=torch.float64),
    lambda torch, g: torch.empty(0, dtype=torch.int64),
    lambda torch, g: torch.empty(0, dtype=torch.bool),
    lambda torch, g: torch.empty(0, 3),
    lambda torch, g: torch.empty(2, 0),
    lambda torch, g: torch.empty(2, 0, dtype=torch.int32),
    lambda torch, g: torch.empty(1, 0, 4, dtype=torch.float64),
    # summarised
    lambda torch, g: torch.randn(2000, generator=g),
    lambda torch, g: torch.arange(2000),
    lambda torch, g: torch.arange(1001, dtype=torch.float32),
    lambda torch, g: torch.arange(1000, dtype=torch.float32),
    lambda torch, g: torch.randn(40, 40, generator=g),
    lambda torch, g: torch.randn(3, 500, 3, generator=g),
    lambda torch, g: torch.randn(10, 10, 11, generator=g) * 1e5,
    lambda torch, g: torch.randn(7, 7, 7, 7, generator=g, dtype=torch.float64),
    lambda torch, g: torch.arange(2000, dtype=torch.int32).reshape(40, 50),
    lambda torch, g: torch.randn(1200, generator=g) > 0,
    lambda torch, g: torch.cat([torch.full((990,), 1.0), torch.tensor([1e-9] * 20)]),
]


@pytest.mark.parametrize("index", range(len(_FIXED_CASES)))
def test_fixed_cases_match_torch(index):
    torch = _torch()
    g = torch.Generator().manual_seed(index)
    assert_same(_FIXED_CASES[index](torch, g))


def test_requires_grad_and_grad_fn_suffixes():
    torch = _torch()
    a = torch.tensor([1.0, 4.0], requires_grad=True)
    assert_same(a)
    assert_same(a**2)
    assert_same(a + 1)
    assert_same(torch.tensor(2.0, requires_grad=True) * 3)
    b = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    assert_same(b)
    assert_same(b + b)
    m = torch.ones(2, 2, requires_grad=True)
    assert_same(m)
    assert_same(m**2)
    assert_same(torch.randn(40, 40, requires_grad=True) + 1)
    assert_same(torch.empty(0, 3, requires_grad=True))
    assert_same(torch.empty(0, 3, dtype=torch.float64, requires_grad=True) * 2)


def test_suffix_wraps_past_linewidth():
    torch = _torch()
    # the last line is long enough that grad_fn must go on its own line
    for n in range(1, 14):
        x = torch.arange(float(n), dtype=torch.float64, requires_grad=True) * 1.5
        assert_same(x)
        assert_same(torch.arange(float(n), requires_grad=True) + 0.25)
        assert_same(torch.arange(float(n), requires_grad=True))


def test_add_backward_suffix_list():
    torch = _torch()
    t = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True) + 1
    assert grad_suffixes(t) == ["grad_fn=<AddBackward0>"]
    assert format_tensor(t.detach().numpy(), "float32", ["grad_fn=<AddBackward0>"]) == repr(t)


def test_tensor_str_is_values_only():
    torch = _torch()
    for t in (torch.randn(3, 4), torch.arange(5), torch.tensor(2.5), torch.empty(0)):
        expected = torch._tensor_str._tensor_str(t, 0)
        assert fmt.tensor_str(t.numpy(), dtype_name(t)) == expected


def test_noncontiguous_and_other_input_dtype():
    torch = _torch()
    t = torch.randn(6, 5).t()
    assert format_tensor(t.numpy(), "float32") == repr(t)
    # float64 array shown as float32 tensor: values are rounded to float32 first
    vals = [0.1, 1 / 3, 2.0000001]
    assert format_tensor(np.array(vals), "float32") == repr(torch.tensor(vals))


# ---------------------------------------------------------------------------
# against torch: print options
# ---------------------------------------------------------------------------

_OPTION_SETS = [
    dict(precision=2),
    dict(precision=0),
    dict(precision=8),
    dict(sci_mode=False),
    dict(sci_mode=True),
    dict(precision=2, sci_mode=False),
    dict(linewidth=40),
    dict(linewidth=200),
    dict(linewidth=5),
    dict(threshold=5),
    dict(threshold=5, edgeitems=1),
    dict(threshold=5, edgeitems=0),
    dict(edgeitems=0),
    dict(profile="short"),
    dict(profile="full"),
    dict(profile="short", precision=6),
]


def _option_tensors():
    torch = _torch()
    g = torch.Generator().manual_seed(1)
    return [
        torch.tensor([1.0806046, -2.6145744]),
        torch.tensor([1.0, 4.0]),
        torch.tensor([1e-5, 1e8, 3.0]),
        torch.tensor([1.0, math.nan, math.inf]),
        torch.tensor(2.25),
        torch.randn(12, generator=g),
        torch.randn(4, 5, generator=g, dtype=torch.float64) * 100,
        torch.randn(2, 3, 4, generator=g),
        torch.arange(20),
        torch.arange(20).reshape(4, 5) > 7,
        torch.randn(1500, generator=g),
        torch.randn(30, 40, generator=g),
        torch.empty(0, 2),
        torch.tensor([1.0, 2.0], requires_grad=True) * 2,
    ]


@pytest.mark.parametrize("options", _OPTION_SETS, ids=[str(o) for o in _OPTION_SETS])
def test_printoptions_match_torch(options):
    torch = _torch()
    tensors = _option_tensors()
    torch.set_printoptions(**options)
    fmt.set_printoptions(**options)
    assert fmt.get_printoptions() == torch._tensor_str.get_printoptions()
    for t in tensors:
        assert_same(t)


def test_printoptions_context_manager_matches_torch():
    torch = _torch()
    t = torch.tensor([1.23456789, 1e-3, 100.0])
    with torch._tensor_str.printoptions(precision=6, sci_mode=True), fmt.printoptions(
        precision=6, sci_mode=True
    ):
        assert_same(t)
    assert fmt.get_printoptions() == torch._tensor_str.get_printoptions()
    assert_same(t)


# ---------------------------------------------------------------------------
# against torch: property-based
# ---------------------------------------------------------------------------

# A float of "varied magnitude": sign * mantissa * 10**exponent, plus specials.
_magnitude_floats = st.one_of(
    st.builds(
        lambda sign, m, e: sign * m * 10.0**e,
        st.sampled_from([1.0, -1.0]),
        st.floats(1.0, 10.0, exclude_max=True),
        st.integers(-12, 12),
    ),
    st.integers(-1000, 1000).map(float),
    st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 0.5, 1e8, 1e-4]),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
)

_small_shapes = st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple)


@st.composite
def _float_arrays(draw):
    shape = draw(_small_shapes)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    n = int(np.prod(shape, dtype=np.int64))
    values = draw(st.lists(_magnitude_floats, min_size=n, max_size=n))
    with np.errstate(over="ignore"):
        arr = np.array(values, dtype=np.float64).astype(dtype).reshape(shape)
    return arr


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_float_arrays(), st.booleans())
def test_hypothesis_small_float_tensors(arr, requires_grad):
    torch = _torch()
    t = torch.from_numpy(arr.copy())
    if requires_grad:
        t.requires_grad_(True)
    assert_same(t)


@settings(max_examples=150, deadline=None)
@given(
    _small_shapes,
    st.sampled_from([np.int64, np.int32, np.bool_]),
    st.integers(0, 2**32 - 1),
    st.integers(0, 18),
)
def test_hypothesis_small_int_tensors(shape, dtype, seed, digits):
    torch = _torch()
    rng = np.random.default_rng(seed)
    if dtype is np.bool_:
        arr = rng.random(shape) > 0.5
    else:
        hi = 10 ** min(digits, 9 if dtype is np.int32 else 18)
        arr = rng.integers(-hi, hi, size=shape, endpoint=True).astype(dtype)
    assert_same(torch.from_numpy(np.ascontiguousarray(arr)))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(1, 40), min_size=1, max_size=4).filter(
        lambda s: 200 <= int(np.prod(s)) <= 40000
    ),
    st.sampled_from([np.float32, np.float64]),
    st.integers(0, 2**32 - 1),
    st.integers(-10, 10),
    st.integers(0, 10),
    st.booleans(),
)
def test_hypothesis_larger_tensors(shape, dtype, seed, exp_lo, exp_span, integral):
    """Bigger shapes (often past the 1000-element threshold) with values
    spread over 10**exp_lo .. 10**(exp_lo + exp_span)."""
    torch = _torch()
    rng = np.random.default_rng(seed)
    exps = rng.uniform(exp_lo, exp_lo + exp_span, size=shape)
    signs = rng.choice([-1.0, 1.0], size=shape)
    arr = signs * 10.0**exps
    if integral:
        arr = np.round(arr)
    arr = arr.astype(dtype)
    assert_same(torch.from_numpy(arr))
