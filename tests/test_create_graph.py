"""create_graph=True: the backward pass as recorded ops, checked against independent oracles.

1. first order: for every case of tests/test_ops.py that has a gradient (so every op-table row),
   ``grad(..., create_graph=True)`` (the op-table ``vjp`` formulas, the linear escape records' own
   maps, the rules in autograd/_higher.py, all as recorded tensor ops) equals
   ``grad(..., create_graph=False)`` (the jitted replay's rules, checked against finite differences
   and torch in test_ops.py): the table formula is checked against the jitted rule;
2. second order: the Hessian-vector product d/dx <grad_x <f(x), u>, v> through create_graph vs
   float64 central differences of the first-order gradient (the jitted path) along v, and vs torch
   (``torch.autograd.grad(..., create_graph=True)`` twice) for the same call;
   Also: test_ops.py's kinks and special values (relu/abs at 0, clamp at its bounds, ties, NaN) vs
   torch, and that a first-order gradient can be differentiated again wherever torch's can;
3. known examples: (x**3)'' = 6x, sin''' = -cos, the third derivative of every unary row vs torch,
   the Hessian of a small MLP vs ``torch.autograd.functional.hessian``, a WGAN-GP gradient penalty
   backpropagated into the critic;
4. ``backward(create_graph=True)`` (a .grad with a history), grad_outputs that require grad (the
   double-vjp trick for a jvp), vs torch and finite differences;
5. hypothesis: random graphs (tests/test_ops.py's generator), Hessian-vector products vs torch.

The cases, their inputs and calls are test_ops.py's (imported, not rewritten). Expected values never
come from tapegrad's create_graph path: they are NumPy formulas, central differences of the jitted
first-order gradient, or torch. Known bugs are ``xfail(strict=True)``.
"""
import traceback
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tapegrad as tg
from tapegrad.ops.table import OPS
from test_ops import ALL_CASES, KINKS, _arrays, _call, _leaves, _np, _row_of, _run_graph, _run_script, graphs


def _torch():
    return pytest.importorskip("torch")


def _safe(fn, *args, **kw):
    """Call fn; an exception becomes an AssertionError holding no frames (a traceback that keeps
    Tape frames alive keeps NumPy views of the tape's buffer: BufferError in every later test)."""
    err = None
    try:
        return fn(*args, **kw)
    except Exception:
        err = traceback.format_exc()
    raise AssertionError(f"{getattr(fn, '__name__', fn)} raised:\n" + err)


def _grad(*args, **kw):
    return _safe(tg.autograd.grad, *args, **kw)


def _dtype_of(case):
    return "float64" if "float64" in case.dtypes else case.dtypes[0]


def _is_f32(case, dt):
    return dt == "float32" or any(s.dtype == "float32" for s in case.ins) or case.odt == "float32"


# known bugs of the create_graph path: case id -> reason (strict xfail: they fail once fixed); minimal
# reproducers at the end of the file
_MIXED = ("autograd/_higher.py: on the mixed-dtype path the create_graph gradient keeps the result's dtype "
          "instead of the input's (torch casts it back: float32 input -> float32 grad) "
          "(see test_mixed_dtype_gradient_has_the_input_dtype)")
_INTBASE = ("table formula 'grad * result * self.log()' with an int64 base: self.log() is float32, so the "
            "create_graph gradient of int ** float64 is float32-accurate (see test_int_base_pow_precision)")
FIRST_XFAIL = {}
HVP_FD_XFAIL = {}
HVP_TORCH_XFAIL = {k: v for k, v in FIRST_XFAIL.items() if v is not _MIXED}

GRAD_CASES = [c for c in ALL_CASES if c.grad]


def _params(cases, xfails):
    out = []
    for c in cases:
        marks = [pytest.mark.xfail(reason=xfails[c.id], strict=True)] if c.id in xfails else []
        out.append(pytest.param(c, id=c.id, marks=marks))
    return out


# ----- 1. first order: create_graph=True (table formulas as ops) vs create_graph=False (jitted) -------

def test_every_row_has_a_first_order_case():
    """Every op-table row, jitted or escape, is recorded by some case of the first-order test."""
    rows = {c.row for c in GRAD_CASES}
    missing = set(OPS) - rows
    assert not missing, f"op-table rows with no differentiable case in tests/test_ops.py: {sorted(missing)}"
    assert all(OPS[r].kind == "py" or OPS[r].vjp for r in rows if r), "a jitted row without a vjp formula"


def _first_order(case, dt, salt, order):
    """(fast, slow, y): the input gradients of <f(x), u> from the jitted replay and through create_graph."""
    arrays = _arrays(case, dt, salt)
    ts = _leaves(tg, case, arrays)
    y = _call(tg, case, ts)
    if case.row is not None:
        assert _row_of(y) == case.row, f"{case.id} recorded {_row_of(y)!r}, expected {case.row!r}"
    diff = [t for t in ts if t.requires_grad]
    rng = np.random.default_rng(zlib.crc32(f"{case.id}/u".encode()))
    u = tg.tensor(rng.standard_normal(tuple(y.shape)), dtype=y.dtype)
    res = {}
    for cg in order:
        res[cg] = _grad(y, diff, grad_outputs=u, retain_graph=True, create_graph=cg, allow_unused=True)
    return res[False], res[True], diff


@pytest.mark.parametrize("case", _params(GRAD_CASES, FIRST_XFAIL))
def test_first_order_create_graph_matches_jitted(case):
    dt = _dtype_of(case)
    tol = dict(rtol=1e-6, atol=1e-7) if _is_f32(case, dt) else dict(rtol=1e-12, atol=1e-13)
    for salt, order in (("a", (False, True)), ("b", (True, False))):
        fast, slow, diff = _first_order(case, dt, salt, order)
        assert len(fast) == len(slow) == len(diff)
        for i, (a, b, x) in enumerate(zip(fast, slow, diff)):
            assert (a is None) == (b is None), f"input {i}: None-ness differs (jitted {a is None})"
            if a is None:
                continue
            assert tuple(b.shape) == tuple(x.shape) and b.dtype is x.dtype, f"input {i}: {b.shape} {b.dtype}"
            np.testing.assert_allclose(_np(b), _np(a), **tol, err_msg=f"input {i}, order {order}")


# ----- 2. second order: Hessian-vector products vs central differences and torch ----------------------

EPS2 = 1e-6


def _hvp(m, case, arrays, u, v):
    """With module m: (g, hv, s_requires_grad): g = grad_x <f(x), u> (create_graph), hv = grad_x <g, v>."""
    ts = _leaves(m, case, arrays)
    diff = [i for i, t in enumerate(ts) if t.requires_grad]
    xs = [ts[i] for i in diff]
    y = _call(m, case, ts)
    uu = m.tensor(u, dtype=y.dtype)
    gr = (lambda *a, **k: _grad(*a, **k)) if m is tg else m.autograd.grad
    gs = gr(y, xs, grad_outputs=uu, create_graph=True, allow_unused=True)
    s = None
    for i, g in zip(diff, gs):
        if g is not None:
            term = (g * m.tensor(v[i], dtype=g.dtype)).sum()
            s = term if s is None else s + term
    zeros = [np.zeros(arrays[i].shape) for i in diff]
    s_rg = s is not None and s.requires_grad
    if not s_rg:
        return [None if g is None else _np0(g) for g in gs], zeros, False
    hs = gr(s, xs, allow_unused=True)
    return ([None if g is None else _np0(g) for g in gs],
            [z if h is None else _np0(h).astype(np.float64) for z, h in zip(zeros, hs)], True)


def _np0(t):
    """_np, and torch's ZeroTensor (abs's second derivative) as zeros."""
    if getattr(t, "_is_zerotensor", lambda: False)():
        return np.zeros(tuple(t.shape), str(t.dtype).replace("torch.", ""))
    return _np(t)


def _directions(case, arrays):
    rng = np.random.default_rng(zlib.crc32(f"{case.id}/hvp".encode()))
    with tg.no_grad():
        y = _call(tg, case, _leaves(tg, case, arrays, grad=False))
    u = rng.standard_normal(tuple(y.shape))
    v = {i: rng.standard_normal(a.shape).astype(a.dtype) for i, a in enumerate(arrays)}
    return u, v


HVP_FD_CASES = [c for c in GRAD_CASES if c.fd and "float64" in c.dtypes]


@pytest.mark.parametrize("case", _params(HVP_FD_CASES, HVP_FD_XFAIL))
def test_hvp_vs_central_differences(case):
    arrays = _arrays(case, "float64", "hvp")
    u, v = _directions(case, arrays)
    _, hv, _ = _hvp(tg, case, arrays, u, v)
    diff = [i for i, s in enumerate(case.ins) if s.grad and arrays[i].dtype.kind == "f"]

    def jitted_grad(sign):
        xs = [a + sign * EPS2 * v[i] if i in diff else a for i, a in enumerate(arrays)]
        ts = _leaves(tg, case, xs)
        y = _call(tg, case, ts)
        gs = _grad(y, [ts[i] for i in diff], grad_outputs=tg.tensor(u, dtype=y.dtype), allow_unused=True)
        return [np.zeros(xs[i].shape) if g is None else _np(g) for i, g in zip(diff, gs)]
    gp, gm = jitted_grad(1.0), jitted_grad(-1.0)
    for k, (h, a, b) in enumerate(zip(hv, gp, gm)):
        fd = (a - b) / (2 * EPS2)
        scale = max(1.0, float(np.max(np.abs(fd), initial=0.0)))
        np.testing.assert_allclose(h, fd, rtol=1e-5, atol=1e-6 * scale, err_msg=f"H v, input {diff[k]}")


# the 300x300 cases (the replay's tiled path) are checked against central differences above, not here
HVP_TORCH_CASES = [c for c in GRAD_CASES if "big" not in c.id]


@pytest.mark.parametrize("case", _params(HVP_TORCH_CASES, HVP_TORCH_XFAIL))
def test_hvp_matches_torch(case):
    torch = _torch()
    dt = _dtype_of(case)
    arrays = _arrays(case, dt, "hvp")
    u, v = _directions(case, arrays)
    g1, hv, rg = _hvp(tg, case, arrays, u, v)
    tg1, thv, trg = _hvp(torch, case, arrays, u, v)
    f32 = _is_f32(case, dt)
    tol = dict(rtol=1e-4, atol=1e-5) if f32 else dict(rtol=1e-9, atol=1e-11)
    for i, (a, b) in enumerate(zip(g1, tg1)):
        assert (a is None) == (b is None), f"first-order grad {i}: None-ness differs"
        if a is not None:
            np.testing.assert_allclose(a, b, **tol, err_msg=f"first-order grad {i}")
    for i, (a, b) in enumerate(zip(hv, thv)):
        np.testing.assert_allclose(a, b, **tol, err_msg=f"H v, input {i}")


_RG_XFAIL = ("the create_graph VJP of relu (where(result > 0, grad, 0.0)) and abs (grad * self.sign(), sign "
             "eager) does not depend on x: the first-order gradient does not require grad, so differentiating "
             "it again raises, where torch's (threshold_backward / sgn) requires grad and gives zeros")
# one case per row (and the cases that name none)
RG_CASES = [c for k, c in enumerate(GRAD_CASES) if c.row is None or c.row not in {d.row for d in GRAD_CASES[:k]}]
RG_XFAIL = {}


@pytest.mark.parametrize("case", _params(RG_CASES, RG_XFAIL))
def test_first_order_gradient_requires_grad_like_torch(case):
    """Where torch's gradient (create_graph=True) can be differentiated again, tapegrad's can too."""
    torch = _torch()
    dt = _dtype_of(case)
    arrays = _arrays(case, dt, "rg")
    flags = {}
    for m in (tg, torch):
        ts = _leaves(m, case, arrays)
        xs = [t for t in ts if t.requires_grad]
        y = _call(m, case, ts)
        gr = _grad if m is tg else m.autograd.grad
        gs = gr(y, xs, grad_outputs=m.ones(tuple(y.shape), dtype=y.dtype), create_graph=True, allow_unused=True)
        flags[m] = [None if g is None else g.requires_grad for g in gs]
    for i, (a, b) in enumerate(zip(flags[tg], flags[torch])):
        assert a == b or not b, f"input {i}: torch's gradient requires grad, tapegrad's does not"


_RPOW = ("op table rpow_scalar vjp 'grad * result * math.log(c)': math.log raises ValueError (math domain "
         "error) for a base c <= 0, so create_graph=True fails on 0.0 ** x and (-2.0) ** x, where the jitted rule "
         "and torch give 0 / nan (see test_rpow_with_a_non_positive_base)")
KINK_XFAIL = {
    "rpow-0-base": "torch parity at base 0 of 0.0 ** x: torch's second derivative is nan (result * log(0) under its "
                   "mask), tapegrad's 0 (its rpow formula masks base 0 before the log)",
    "pow-tensor-base-0": "torch parity at x = 0, y = 2 of x ** y: torch's d/dy of its masked exponent gradient is nan "
                         "(0 * log(0) in the unselected where branch), tapegrad's is 0 (what the math says: 0 ** y "
                         "is 0 for all y > 0); d/dx agrees (nan)",
}


@pytest.mark.parametrize("label,fn,xv,yv", [
    pytest.param(*k, id=k[0], marks=[pytest.mark.xfail(strict=True, reason=KINK_XFAIL[k[0]])] if k[0] in KINK_XFAIL
                 else []) for k in KINKS])
def test_hvp_at_kinks_and_special_values_matches_torch(label, fn, xv, yv):
    """test_ops.py's kinks (relu and abs at 0, clamp at its bounds, max ties, NaN...): the second
    derivative there is torch's convention, and only torch can say it."""
    torch = _torch()
    res = {}
    rng = np.random.default_rng(zlib.crc32(label.encode()))
    v = [rng.standard_normal(np.shape(xv)), rng.standard_normal(np.shape(yv))]
    for m in (tg, torch):
        x = m.tensor(xv, dtype=m.float64, requires_grad=True)
        y = m.tensor(yv, dtype=m.float64, requires_grad=True)
        gr = _grad if m is tg else m.autograd.grad
        with np.errstate(all="ignore"):
            out = fn(m, x, y)
            if not out.requires_grad:
                return
            gs = gr(out, [x, y], grad_outputs=m.ones(tuple(out.shape), dtype=out.dtype), create_graph=True,
                    allow_unused=True)
            s = None
            for g, vi in zip(gs, v):
                if g is not None:
                    term = (g * m.tensor(vi)).sum()
                    s = term if s is None else s + term
            hs = gr(s, [x, y], allow_unused=True) if s is not None and s.requires_grad else [None, None]
        res[m] = [None if g is None else _np0(g) for g in gs] + \
            [np.zeros(np.shape(a)) if h is None else _np0(h) for a, h in zip((xv, yv), hs)]
    for what, a, b in zip(("grad x", "grad y", "H v x", "H v y"), res[tg], res[torch]):
        assert (a is None) == (b is None), what
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14, err_msg=what)


# ----- 3. known examples ------------------------------------------------------------------------

X4 = np.array([-1.5, -0.3, 0.7, 2.0])


@pytest.mark.parametrize("spelling", [lambda x: x ** 3, lambda x: x.pow(3), lambda x: x * x * x,
                                      lambda x: x.square() * x, lambda x: tg.pow(x, 3.0)],
                         ids=["x**3", "pow(3)", "x*x*x", "square*x", "pow(x,3.0)"])
def test_second_derivative_of_cube_is_6x(spelling):
    x = tg.tensor(X4, dtype=tg.float64, requires_grad=True)
    g, = _grad(spelling(x).sum(), x, create_graph=True)
    assert g.requires_grad and g.grad_fn is not None
    np.testing.assert_allclose(_np(g), 3 * X4 ** 2, rtol=1e-13)
    h, = _grad(g.sum(), x, create_graph=True)
    np.testing.assert_allclose(_np(h), 6 * X4, rtol=1e-13)
    k, = _grad(h.sum(), x, create_graph=True)
    np.testing.assert_allclose(_np(k), np.full(4, 6.0), rtol=1e-13)
    assert not k.requires_grad or np.all(_np(_grad(k.sum(), x, allow_unused=True, materialize_grads=True)[0]) == 0)


def test_derivatives_of_sin_cycle():
    x = tg.tensor(X4, dtype=tg.float64, requires_grad=True)
    f = x.sin()
    expect = [np.cos(X4), -np.sin(X4), -np.cos(X4), np.sin(X4)]
    for k, e in enumerate(expect):
        f, = _grad(f.sum(), x, create_graph=True)
        np.testing.assert_allclose(_np(f), e, rtol=1e-13, atol=1e-15, err_msg=f"derivative {k + 1}")


UNARY_3RD = [c for c in GRAD_CASES if c.row in OPS and OPS[c.row].kind == "unary" and c.ins[0].shape == (2, 3)
             and "big" not in c.id]
UNARY_3RD = [c for k, c in enumerate(UNARY_3RD) if c.row not in {d.row for d in UNARY_3RD[:k]}]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.row) for c in UNARY_3RD])
def test_third_derivative_of_every_unary_row_matches_torch(case):
    """d^k/dx^k f(x), k = 1..3, elementwise (grad of the sum, three times), for one call per unary row."""
    torch = _torch()
    arrays = _arrays(case, "float64", "3rd")
    res = {}
    for m in (tg, torch):
        x, = _leaves(m, case, arrays)
        gr = _grad if m is tg else m.autograd.grad
        f, ds = _call(m, case, [x]), []
        for k in range(3):
            if not f.requires_grad:
                ds.append(np.zeros(arrays[0].shape))
                continue
            f, = gr(f.sum(), x, create_graph=True, allow_unused=True, materialize_grads=True)
            ds.append(_np0(f))
        res[m] = ds
    for k, (a, b) in enumerate(zip(res[tg], res[torch])):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13, err_msg=f"derivative {k + 1}")


def _mlp(m, p, X, t):
    """A scalar function of one flat parameter vector: views of it, matmul, tanh, a squared error."""
    W1 = p[:6].view(3, 2)
    b1 = p[6:8]
    w2 = p[8:10]
    h = (X @ W1 + b1).tanh()
    r = h @ w2 - t
    return (r * r).sum() + 0.1 * (p * p * p).sum()


def test_hessian_of_mlp_matches_torch_functional_hessian():
    torch = _torch()
    rng = np.random.default_rng(1)
    P, X, T = rng.standard_normal(10), rng.standard_normal((5, 3)), rng.standard_normal(5)
    expect = torch.autograd.functional.hessian(
        lambda p: _mlp(torch, p, torch.tensor(X), torch.tensor(T)), torch.tensor(P)).numpy()
    p = tg.tensor(P, dtype=tg.float64, requires_grad=True)
    g, = _grad(_mlp(tg, p, tg.tensor(X), tg.tensor(T)), p, create_graph=True)
    rows = [_np(_grad(g[k], p, retain_graph=True)[0]) for k in range(10)]
    H = np.stack(rows)
    np.testing.assert_allclose(H, expect, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(H, H.T, rtol=1e-10, atol=1e-12)


def _critic(m, x, W1, b1, W2, b2):
    F = m.nn.functional
    return F.linear(F.linear(x, W1, b1).tanh(), W2, b2)


@pytest.mark.parametrize("per_sample", [False, True], ids=["norm", "norm-dim1"])
def test_wgan_gp_gradient_penalty_matches_torch(per_sample):
    torch = _torch()
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal(s) for s in [(4, 3), (5, 3), (5,), (1, 5), (1,)]]
    out = {}
    for m in (tg, torch):
        x, *params = [m.tensor(a, requires_grad=True) for a in arrays]
        d = _critic(m, x, *params)
        gr = _grad if m is tg else m.autograd.grad
        gx, = gr(d.sum(), x, create_graph=True)
        gp = ((gx.norm(dim=1) - 1) ** 2).mean() if per_sample else (gx.norm() - 1) ** 2
        _safe(gp.backward) if m is tg else gp.backward()
        out[m] = [float(gp.detach().item())] + [None if t.grad is None else _np(t.grad) for t in [x] + params]
    for k, (a, b) in enumerate(zip(out[tg], out[torch])):
        assert (a is None) == (b is None), f"item {k}: None-ness differs"
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12,
                                       err_msg=f"item {k} (0: penalty, 1: x, 2..: W1 b1 W2 b2)")


# ----- 4. backward(create_graph=True); grad_outputs that require grad ------------------------------

def test_backward_create_graph_fills_grad_with_a_history():
    torch = _torch()
    rng = np.random.default_rng(3)
    A, W = rng.standard_normal(4), rng.standard_normal((4, 3))
    out = {}
    for m in (tg, torch):
        x, w = m.tensor(A, requires_grad=True), m.tensor(W, requires_grad=True)
        y = ((x @ w).sigmoid() * x.sum()).sum() + (x.sin() * x).sum()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _safe(y.backward, create_graph=True) if m is tg else y.backward(create_graph=True)
        assert x.grad.requires_grad and x.grad.grad_fn is not None, m.__name__
        assert w.grad.requires_grad and w.grad.grad_fn is not None, m.__name__
        first = [_np(x.grad).copy(), _np(w.grad).copy()]
        z = (x.grad * x.grad).sum() + (w.grad.tanh() * w).sum()
        _safe(z.backward) if m is tg else z.backward()     # accumulates into .grad: g + dz/dx
        out[m] = first + [_np(x.grad), _np(w.grad)]
    for k, (a, b) in enumerate(zip(out[tg], out[torch])):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=f"item {k}")


def test_backward_create_graph_warns_like_torch():
    x = tg.tensor([1.0, 2.0], dtype=tg.float64, requires_grad=True)
    with pytest.warns(UserWarning, match="create_graph=True will create a reference cycle"):
        (x * x).sum().backward(create_graph=True)
    np.testing.assert_allclose(_np(x.grad), [2.0, 4.0])


def _vecfn(m, x, W):
    return (x @ W).tanh() * x.sum() + (x[:3] * x[1:]).exp().sum()


def test_double_vjp_gives_a_jvp():
    """jvp by the double-vjp trick: g(u) = J^T u is linear in u, and grad(g, u, v) = J v."""
    torch = _torch()
    rng = np.random.default_rng(4)
    A, W, V = rng.standard_normal(4), rng.standard_normal((4, 3)) * 0.5, rng.standard_normal(4)
    U0 = rng.standard_normal(3)
    out = {}
    for m in (tg, torch):
        x, w = m.tensor(A, requires_grad=True), m.tensor(W)
        y = _vecfn(m, x, w)
        gr = _grad if m is tg else m.autograd.grad
        res = []
        for u0 in (np.zeros(3), U0):           # any u: g is linear in it
            u = m.tensor(u0, requires_grad=True)
            g, = gr(y, x, grad_outputs=u, create_graph=True)
            assert g.requires_grad
            jv, = gr(g, u, grad_outputs=m.tensor(V), retain_graph=True)
            res += [_np(g), _np(jv)]
        out[m] = res
    with tg.no_grad():
        fd = (_np(_vecfn(tg, tg.tensor(A + 1e-6 * V), tg.tensor(W))) -
              _np(_vecfn(tg, tg.tensor(A - 1e-6 * V), tg.tensor(W)))) / 2e-6
    np.testing.assert_allclose(out[tg][1], fd, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(out[tg][3], fd, rtol=1e-6, atol=1e-8)
    for k, (a, b) in enumerate(zip(out[tg], out[torch])):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=f"item {k}")


def test_double_vjp_jvp_differentiated_again():
    """The jvp computed with create_graph=True is itself differentiable w.r.t. x (a second order
    directional derivative), vs torch."""
    torch = _torch()
    rng = np.random.default_rng(5)
    A, W, V = rng.standard_normal(4), rng.standard_normal((4, 3)) * 0.5, rng.standard_normal(4)
    out = {}
    for m in (tg, torch):
        x, w = m.tensor(A, requires_grad=True), m.tensor(W)
        y = _vecfn(m, x, w)
        gr = _grad if m is tg else m.autograd.grad
        u = m.zeros(3, dtype=m.float64, requires_grad=True)
        g, = gr(y, x, grad_outputs=u, create_graph=True)
        jv, = gr(g, u, grad_outputs=m.tensor(V), create_graph=True)
        h, = gr((jv * jv).sum(), x)
        out[m] = _np(h)
    np.testing.assert_allclose(out[tg], out[torch], rtol=1e-10, atol=1e-12)


# ----- 5. random graphs: Hessian-vector products vs torch ----------------------------------------------

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(g=graphs(), seed=st.integers(0, 2 ** 16))
def test_random_graph_hvp_matches_torch(g, seed):
    torch = _torch()
    n_leaves, shapes, steps = g
    rng = np.random.default_rng(seed)
    arrays = [rng.uniform(-1.5, 1.5, shapes[i]) for i in range(n_leaves)]
    consts = {(): rng.uniform(-1, 1, ()), (3,): rng.uniform(-1, 1, (3,))}
    us = {k: rng.standard_normal(s) for k, s in enumerate(shapes)}
    vs = [rng.standard_normal(a.shape) for a in arrays]
    res = {}
    for m in (tg, torch):
        leaves = [m.tensor(a, requires_grad=True) for a in arrays]
        loss = _run_graph(m, leaves, shapes, steps, consts, us)
        gr = _grad if m is tg else m.autograd.grad
        gs = gr(loss, leaves, create_graph=True, allow_unused=True)
        s = None
        for gi, vi in zip(gs, vs):
            if gi is not None:
                term = (gi * m.tensor(vi)).sum()
                s = term if s is None else s + term
        rg = s is not None and s.requires_grad
        hs = gr(s, leaves, allow_unused=True) if rg else [None] * n_leaves
        res[m] = (rg, [None if gi is None else _np(gi) for gi in gs],
                  [np.zeros(a.shape) if h is None else _np0(h) for a, h in zip(arrays, hs)])
    (rg, gs, hs), (trg, tgs, ths) = res[tg], res[torch]
    assert rg == trg, f"<grad, v> requires grad: tapegrad {rg}, torch {trg}"
    for i, (a, b) in enumerate(zip(gs, tgs)):
        assert (a is None) == (b is None), f"leaf {i}: grad None-ness differs"
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11, err_msg=f"grad, leaf {i}")
    for i, (a, b) in enumerate(zip(hs, ths)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11, err_msg=f"H v, leaf {i}")


# ----- bugs found here: minimal reproducers (strict xfail: they fail when fixed) --------------------

# ----- regression: alpha on the broadcasting path (fixed in 6b76a77: pyops.binary_py records attrs={"c": c};
# before, create_graph evaluated the add/sub formula with alpha = 1.0) -------------------------------------

def test_alpha_on_the_broadcasting_path():
    x = tg.tensor([[1.0], [2.0]], dtype=tg.float64, requires_grad=True)      # (2, 1) + (3,): broadcasting
    y = tg.tensor([1.0, 2.0, 3.0], dtype=tg.float64, requires_grad=True)
    for cg in (False, True):
        gx, gy = _grad(tg.add(x, y, alpha=2).sum(), [x, y], create_graph=cg)
        np.testing.assert_array_equal(_np(gy), [4.0, 4.0, 4.0])          # d/dy sum(x + 2y) = 2 * 2 rows
        gx, gy = _grad(tg.sub(x, y, alpha=0.5).sum(), [x, y], create_graph=cg)
        np.testing.assert_array_equal(_np(gy), [-1.0, -1.0, -1.0])


def test_mixed_dtype_gradient_has_the_input_dtype():
    x = tg.tensor([1.0, 2.0], requires_grad=True)                           # float32
    y = tg.tensor([3.0, 4.0], dtype=tg.float64, requires_grad=True)
    for cg in (False, True):
        gx, gy = _grad((x * y).sum(), [x, y], create_graph=cg)
        assert (gx.dtype, gy.dtype) == (tg.float32, tg.float64), (cg, gx.dtype, gy.dtype)


def test_int_base_pow_precision():
    k = tg.tensor([3, 7])
    x = tg.tensor([0.3, 1.1], dtype=tg.float64, requires_grad=True)
    expect = np.array([3, 7]) ** np.array([0.3, 1.1]) * np.log([3.0, 7.0])
    for cg in (False, True):
        g, = _grad((k ** x).sum(), x, create_graph=cg)
        np.testing.assert_allclose(_np(g), expect, rtol=1e-13, err_msg=f"create_graph={cg}")


_SUBSET = """
import tapegrad as tg
x = tg.tensor([1.0, 2.0, 3.0], requires_grad=True)
u = tg.tensor([0.5, 0.0, 0.0], requires_grad=True)
(g,) = tg.autograd.grad(u.sum() + x.sum(), u)      # x is reached but not asked for
assert g.tolist() == [1.0, 1.0, 1.0], g
x = tg.tensor([0.3, -0.8], dtype=tg.float64, requires_grad=True)
u = tg.tensor([0.5, 2.0], dtype=tg.float64, requires_grad=True)
(gi,) = tg.autograd.grad(x.exp(), x, u, create_graph=True)
(g,) = tg.autograd.grad(gi.sum(), u)               # the double-vjp trick (jvp)
assert abs(g[0].item() - 1.3498588075760032) < 1e-12 and abs(g[1].item() - 0.44932896411722156) < 1e-12
print("ok")
"""


def test_grad_wrt_some_leaves_when_others_are_reached():
    """Regression (fixed in 88465dc): autograd.grad w.r.t. some leaves, when the graph reaches another
    leaf through a record, segfaulted in the jitted replay (the unasked leaf's gradient written to
    address 0): grad(u.sum() + x.sum(), u), and so jvp by the double-vjp trick. In a child process."""
    _run_script(_SUBSET)


@pytest.mark.parametrize("base,expect", [(0.0, [0.0, 0.0]), (-2.0, [np.nan, np.nan])], ids=["0", "-2"])
def test_rpow_with_a_non_positive_base(base, expect):
    x = tg.tensor([1.0, 2.0], dtype=tg.float64, requires_grad=True)
    g, = _grad((base ** x).sum(), x, create_graph=True)                  # torch: [0, 0] / [nan, nan]
    np.testing.assert_array_equal(_np(g), expect)
