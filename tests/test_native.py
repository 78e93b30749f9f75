"""Native escape records (ops/pyops.py, Note [native records]): 2-D matmul, nn.Linear's addmm
and mse_loss run inside the jitted replay (BLAS gemm through kernels/blas.py) rather than as
NumPy closures. Checked against a NumPy reference (float64), float64 central differences in a
random direction, the NumPy-closure path itself (TAPEGRAD_NATIVE off) and PyTorch, over operand
layouts gemm reads in place: contiguous, transposed views, column slices (a leading dimension
larger than the row), and dimensions of size 1."""
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tapegrad as tg
import tapegrad.nn.functional as F
from tapegrad import config
from tapegrad.tape.tape import ROW, TAPE

LAYOUTS = ("c", "t", "s")       # contiguous, transposed view, column slice of a wider tensor


def is_native(t):
    """Whether tensor t's record is an escape record with a native descriptor."""
    i = t._rec - TAPE.base
    code, _, _, _, b = struct.unpack_from("<5q", TAPE.buf, i * ROW)
    return (code >> 5) == 1 and b != 0


def operand(lib, arr, layout, dtype, rg):
    """(leaf, operand): the operand has arr's values in `layout`; gradients go to the leaf."""
    kw = {"dtype": getattr(lib, np.dtype(dtype).name), "requires_grad": rg}
    if layout == "t":
        leaf = lib.tensor(np.ascontiguousarray(arr.T), **kw)
        return leaf, leaf.t()
    if layout == "s":
        wide = np.concatenate([arr, np.full((arr.shape[0], 3), 7.0)], axis=1)
        leaf = lib.tensor(wide, **kw)
        return leaf, leaf[:, :arr.shape[1]]
    leaf = lib.tensor(arr, **kw)
    return leaf, leaf


def leaf_grad(leaf, layout, shape):
    g = leaf.grad.numpy()
    return g.T if layout == "t" else (g[:, :shape[1]] if layout == "s" else g)


def build(lib, kind, arrs, layouts, dtype):
    """out of `kind` ('mm', 'linear', 'linear_row': bias of shape (1, n)) and the leaves."""
    pairs = [operand(lib, a, l, dtype, True) for a, l in zip(arrs[:2], layouts)]
    (la, a), (lb, b) = pairs
    if kind == "mm":
        return a @ b, [la, lb], None
    bias = lib.tensor(arrs[2].reshape(1, -1) if kind == "linear_row" else arrs[2],
                      dtype=getattr(lib, np.dtype(dtype).name), requires_grad=True)
    return F.linear(a, b, bias) if lib is tg else lib.nn.functional.linear(a, b, bias), [la, lb], bias


def arrays(kind, m, k, n, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k))
    b = rng.standard_normal((k, n) if kind == "mm" else (n, k))
    return [a, b, rng.standard_normal(n), rng.standard_normal((m, n))]


def loss_of(out, R, lib):
    return (out * lib.tensor(R, dtype=out.dtype)).sum()


def reference(kind, arrs):
    a, b, bias = arrs[:3]
    return a @ b if kind == "mm" else a @ b.T + bias


shapes = st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6))


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(["mm", "linear", "linear_row"]), mkn=shapes,
       layouts=st.tuples(st.sampled_from(LAYOUTS), st.sampled_from(LAYOUTS)),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2 ** 16))
def test_products_forward_backward(kind, mkn, layouts, dtype, seed):
    arrs = arrays(kind, *mkn, seed)
    out, leaves, bias = build(tg, kind, arrs, layouts, dtype)
    assert is_native(out)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out.detach().numpy(), reference(kind, arrs), **tol)
    loss_of(out, arrs[3], tg).backward()
    # VJP of sum(out * R): written out from the product's definition
    a, b, R = arrs[0], arrs[1], arrs[3]
    if kind == "mm":
        want = [R @ b.T, a.T @ R]
    else:
        want = [R @ b, R.T @ a]
    for leaf, layout, arr, w in zip(leaves, layouts, arrs[:2], want):
        np.testing.assert_allclose(leaf_grad(leaf, layout, arr.shape), w, **tol)
    if bias is not None:
        np.testing.assert_allclose(bias.grad.numpy().reshape(-1), R.sum(axis=0), **tol)


@pytest.mark.parametrize("kind", ["mm", "linear"])
@pytest.mark.parametrize("layouts", [("c", "c"), ("t", "s"), ("s", "t")])
def test_products_central_differences(kind, layouts):
    """float64 central differences of sum(out * R) in a random direction, per leaf."""
    arrs = arrays(kind, 4, 3, 5, 7)
    out, leaves, bias = build(tg, kind, arrs, layouts, np.float64)
    assert is_native(out)
    loss_of(out, arrs[3], tg).backward()
    ws = leaves + ([bias] if bias is not None else [])
    grads = [w.grad.numpy().copy() for w in ws]
    rng = np.random.default_rng(1)
    for j, w in enumerate(ws):
        base = w.detach().numpy().copy()
        v = rng.standard_normal(base.shape)
        eps = 1e-6

        def f(vals):
            with tg.no_grad():
                w.copy_(tg.tensor(vals))
                r = loss_of(build_from(kind, ws, layouts), arrs[3], tg).item()
            return r
        fd = (f(base + eps * v) - f(base - eps * v)) / (2 * eps)
        with tg.no_grad():
            w.copy_(tg.tensor(base))
        assert np.isclose(fd, np.sum(grads[j] * v), rtol=1e-6, atol=1e-8)


def build_from(kind, ws, layouts):
    """The same product over existing leaves (for the difference quotients)."""
    ops = []
    for leaf, layout, width in zip(ws[:2], layouts, (None, None)):
        if layout == "t":
            ops.append(leaf.t())
        elif layout == "s":
            ops.append(leaf[:, :leaf.shape[1] - 3])
        else:
            ops.append(leaf)
    if kind == "mm":
        return ops[0] @ ops[1]
    return F.linear(ops[0], ops[1], ws[2])


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mse(reduction, dtype):
    rng = np.random.default_rng(3)
    xa, ta = rng.standard_normal((6, 2)), rng.standard_normal((6, 2))
    kw = {"dtype": getattr(tg, np.dtype(dtype).name), "requires_grad": True}
    x, t = tg.tensor(xa, **kw), tg.tensor(ta, **kw)
    loss = F.mse_loss(x, t, reduction=reduction)
    assert is_native(loss)
    d = xa.astype(dtype).astype(np.float64) - ta.astype(dtype)
    want = np.sum(d * d) / (d.size if reduction == "mean" else 1)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    assert np.isclose(loss.item(), want, rtol=tol)
    (loss * 3.0).backward()
    gx = 3.0 * 2.0 * d / (d.size if reduction == "mean" else 1)
    np.testing.assert_allclose(x.grad.numpy(), gx, rtol=tol * 10, atol=tol)
    np.testing.assert_allclose(t.grad.numpy(), -gx, rtol=tol * 10, atol=tol)


def run_both(fn, monkeypatch):
    """fn() with native records and again with NumPy escape records."""
    got = fn()
    monkeypatch.setattr(config, "NATIVE", False)
    ref = fn()
    monkeypatch.setattr(config, "NATIVE", True)
    return got, ref


def test_same_as_numpy_path(monkeypatch):
    """A two-layer step: loss and every gradient as the NumPy closures compute them."""
    rng = np.random.default_rng(5)
    X, Y = rng.standard_normal((16, 10)).astype(np.float32), rng.standard_normal((16, 1)).astype(np.float32)
    W1, b1 = rng.standard_normal((8, 10)).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    W2, b2 = rng.standard_normal((1, 8)).astype(np.float32), rng.standard_normal(1).astype(np.float32)

    def step():
        ps = [tg.tensor(p, requires_grad=True) for p in (W1, b1, W2, b2)]
        h = tg.relu(F.linear(tg.tensor(X), ps[0], ps[1]))
        out = F.linear(h, ps[2], ps[3])
        loss = F.mse_loss(out, tg.tensor(Y))
        native = is_native(out) and is_native(loss)
        loss.backward()
        return native, loss.item(), [p.grad.numpy().copy() for p in ps]
    (nat, l1, g1), (ref_nat, l2, g2) = run_both(step, monkeypatch)
    assert nat and not ref_nat
    assert np.isclose(l1, l2, rtol=1e-6)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_graph_is_unchanged(monkeypatch):
    """The façade sees the same records as with NumPy escape records: names, next_functions."""
    def graph():
        lin = tg.nn.Linear(4, 2)
        out = lin(tg.randn(3, 4))
        loss = F.mse_loss(out, tg.zeros(3, 2))
        fns = [out.grad_fn, loss.grad_fn]
        return is_native(out), [(f.name(), [type(g).__name__ if g is not None else None
                                             for g, _ in f.next_functions]) for f in fns]
    (nat, got), (ref_nat, ref) = run_both(graph, monkeypatch)
    assert nat and not ref_nat
    assert got == ref and got[0][0] == "AddmmBackward0" and got[1][0] == "MseLossBackward0"


def test_dtype_switch():
    """A float64 product between float32 records: the replay changes entry point at it."""
    rng = np.random.default_rng(2)
    xa, wa = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((4, 2))
    x = tg.tensor(xa, requires_grad=True)
    w = tg.tensor(wa, requires_grad=True)          # float64
    y = (x * 2.0).double() @ w
    assert is_native(y)
    loss = (y.float().sin()).sum()
    loss.backward()
    yv = (xa.astype(np.float64) * 2.0) @ wa
    g = np.cos(yv.astype(np.float32)).astype(np.float64)
    np.testing.assert_allclose(w.grad.numpy(), (xa * 2.0).astype(np.float64).T @ g, rtol=1e-5)
    np.testing.assert_allclose(x.grad.numpy(), 2.0 * (g @ wa.T), rtol=1e-5)


def test_no_grad_and_subset_of_inputs():
    rng = np.random.default_rng(4)
    xa, wa, ba = rng.standard_normal((5, 3)), rng.standard_normal((2, 3)), rng.standard_normal(2)
    x = tg.tensor(xa, requires_grad=True)
    w = tg.tensor(wa, requires_grad=True)
    b = tg.tensor(ba, requires_grad=True)
    with tg.no_grad():
        y0 = F.linear(x, w, b)
    np.testing.assert_allclose(y0.numpy(), xa @ wa.T + ba, rtol=1e-12)
    loss = F.linear(x, w, b).pow(2).sum()
    (gw,) = tg.autograd.grad(loss, [w])
    y = xa @ wa.T + ba
    np.testing.assert_allclose(gw.numpy(), (2 * y).T @ xa, rtol=1e-12)
    assert x.grad is None and w.grad is None and b.grad is None


def test_retain_graph_accumulates_and_hooks_see_the_gradient():
    rng = np.random.default_rng(6)
    xa, wa = rng.standard_normal((4, 3)), rng.standard_normal((3, 2))
    w = tg.tensor(wa, requires_grad=True)
    out = tg.tensor(xa) @ w
    seen = []
    out.register_hook(lambda g: seen.append(g.numpy().copy()))
    loss = out.sum()
    loss.backward(retain_graph=True)
    loss.backward()
    np.testing.assert_allclose(w.grad.numpy(), 2 * xa.T @ np.ones((4, 2)), rtol=1e-12)
    assert len(seen) == 2 and np.all(seen[0] == 1.0)


def test_large_product():
    """W2's first layer: gemm on 128 x 784 x 256 (BLAS threads, large scratch)."""
    rng = np.random.default_rng(8)
    xa = rng.standard_normal((128, 784)).astype(np.float32)
    wa = (rng.standard_normal((256, 784)) * 0.05).astype(np.float32)
    w = tg.tensor(wa, requires_grad=True)
    b = tg.zeros(256, requires_grad=True)
    out = F.linear(tg.tensor(xa), w, b)
    assert is_native(out)
    out.sum().backward()
    np.testing.assert_allclose(out.detach().numpy(), xa.astype(np.float64) @ wa.T.astype(np.float64),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(w.grad.numpy(), np.broadcast_to(xa.sum(axis=0, dtype=np.float64), wa.shape),
                               rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(b.grad.numpy(), np.full(256, 128.0))


def test_not_native_when_gemm_cannot_read_it():
    """A matrix with no unit stride (every other column) stays a NumPy escape record."""
    a = tg.randn(4, 6, requires_grad=True)
    y = a[:, ::2] @ tg.randn(3, 2)
    assert not is_native(y)
    y.sum().backward()
    assert a.grad.shape == (4, 6)


@pytest.mark.parametrize("kind", ["mm", "linear", "linear_row"])
def test_torch_parity(kind):
    torch = pytest.importorskip("torch")
    arrs = arrays(kind, 5, 4, 3, 11)
    for layouts in (("c", "c"), ("t", "s")):
        out, leaves, bias = build(tg, kind, arrs, layouts, np.float32)
        tout, tleaves, tbias = build(torch, kind, arrs, layouts, np.float32)
        assert is_native(out)
        np.testing.assert_allclose(out.detach().numpy(), tout.detach().numpy(), rtol=1e-5, atol=1e-6)
        loss_of(out, arrs[3], tg).backward()
        loss_of(tout, arrs[3], torch).backward()
        for a, b in zip(leaves + [bias], tleaves + [tbias]):
            if a is not None:
                np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-5, atol=1e-6)
    x, t = (np.random.default_rng(1).standard_normal((7, 3)).astype(np.float32) for _ in range(2))
    a, b = tg.tensor(x, requires_grad=True), tg.tensor(t)
    ta, tb = torch.tensor(x, requires_grad=True), torch.tensor(t)
    la, lb = F.mse_loss(a, b), torch.nn.functional.mse_loss(ta, tb)
    la.backward()
    lb.backward()
    assert np.isclose(la.item(), lb.item(), rtol=1e-6)
    np.testing.assert_allclose(a.grad.numpy(), ta.grad.numpy(), rtol=1e-6, atol=1e-7)


VIEWS = {
    "t": lambda x: x.t(),
    "transpose": lambda x: x.transpose(0, 1),
    "permute": lambda x: x.reshape(2, 3, 4).permute(2, 0, 1),
    "slice": lambda x: x[1:, ::2],
    "select": lambda x: x[1],
    "expand": lambda x: x[:1].expand(3, 4),
    "unsqueeze": lambda x: x.unsqueeze(1),
    "view": lambda x: x.view(4, 6),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(VIEWS))
def test_views(name, dtype):
    """A view's backward scatters (adds) its gradient into its input's: checked against the
    view's forward itself, <grad, v> = sum(view(v) * R) for a random direction v (it is linear)."""
    rng = np.random.default_rng(9)
    xa = rng.standard_normal((6, 4)).astype(dtype)
    x = tg.tensor(xa, requires_grad=True)
    y = VIEWS[name](x)
    assert is_native(y)
    R = rng.standard_normal(tuple(y.shape)).astype(dtype)
    (y * tg.tensor(R)).sum().backward()
    for _ in range(3):
        v = rng.standard_normal(xa.shape).astype(dtype)
        with tg.no_grad():
            want = float((VIEWS[name](tg.tensor(v)) * tg.tensor(R)).sum())
        got = float(np.sum(x.grad.numpy().astype(np.float64) * v))
        assert np.isclose(got, want, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)
    torch = pytest.importorskip("torch")
    xt = torch.tensor(xa, requires_grad=True)
    (VIEWS[name](xt) * torch.tensor(R)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=1e-6, atol=1e-6)


BCAST = [((5, 4), (4,)), ((5, 4), (1, 4)), ((5, 1), (1, 4)), ((2, 3, 4), (3, 1)), ((1, 3), (2, 1, 3))]


@pytest.mark.parametrize("op,alpha", [("add", 1.0), ("sub", 1.0), ("add", 2.5), ("sub", -0.5)])
@pytest.mark.parametrize("shapes", BCAST)
def test_broadcast_add_sub(shapes, op, alpha):
    rng = np.random.default_rng(10)
    xa, ya = (rng.standard_normal(s).astype(np.float32) for s in shapes)
    x, y = tg.tensor(xa, requires_grad=True), tg.tensor(ya, requires_grad=True)
    out = getattr(tg, op)(x, y, alpha=alpha)
    assert is_native(out)
    want = xa + alpha * ya if op == "add" else xa - alpha * ya
    np.testing.assert_array_equal(out.detach().numpy(), want)     # NumPy's own rounding
    R = rng.standard_normal(want.shape).astype(np.float32)
    (out * tg.tensor(R)).sum().backward()
    sign = 1.0 if op == "add" else -1.0

    def sum_to(g, shape):
        g = g.astype(np.float64)
        while g.ndim > len(shape):
            g = g.sum(axis=0)
        return g.sum(axis=tuple(i for i, d in enumerate(shape) if d == 1), keepdims=True).reshape(shape)
    np.testing.assert_allclose(x.grad.numpy(), sum_to(R, xa.shape), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y.grad.numpy(), sign * alpha * sum_to(R, ya.shape), rtol=1e-5, atol=1e-5)


def test_rnn_cell_against_torch():
    """W4's cell (two products with transposed weights, a broadcast bias, tanh) over a few steps:
    tapegrad's float32 gradients within atol 1e-6 of torch's float64 ones, and torch's float32
    ones no farther from tapegrad's than from float64 plus that atol."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(12)
    wi, wh = rng.standard_normal((6, 3)).astype(np.float32), rng.standard_normal((6, 6)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    xs = rng.standard_normal((4, 2, 3)).astype(np.float32)
    grads = []
    for lib, dt in ((tg, tg.float32), (torch, torch.float32), (torch, torch.float64)):
        ps = [lib.tensor(a, dtype=dt, requires_grad=True) for a in (wi, wh, b)]
        h = lib.zeros(2, 6, dtype=dt)
        for x_t in xs:
            h = lib.tanh(lib.tensor(x_t, dtype=dt) @ ps[0].T + h @ ps[1].T + ps[2])
        (h * h).sum().backward()
        grads.append([p.grad.numpy().astype(np.float64) for p in ps])
    for a, c, ref in zip(*grads):
        # NOTE: b's gradient sums terms of order 1 into -0.0107 (cancellation): in float32 both
        # libraries are ~1e-6 off float64, in opposite directions on an Intel VM (tapegrad
        # -0.0107115, torch -0.0107100, float64 -0.0107106), so plain parity at atol 1e-6 failed
        np.testing.assert_allclose(a, ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6 + np.abs(c - ref).max())


@pytest.mark.parametrize("m,n", [(128, 256), (7, 10), (33, 1), (1, 40)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_linear_bias_grad_is_the_rows_sum_in_order(m, n, dtype):
    """addmm's bias gradient: each column of G summed in float64, its rows in order, then rounded
    once (the replay's loop, row by row since session 31); and its forward adds the bias once."""
    rng = np.random.default_rng(m * 31 + n)
    x = rng.standard_normal((m, 6)).astype(dtype)
    w = rng.standard_normal((n, 6)).astype(dtype)
    b = rng.standard_normal(n).astype(dtype)
    C = rng.standard_normal((m, n)).astype(dtype)      # the loss (y * C).sum(): G = C exactly
    lin = tg.nn.Linear(6, n, dtype=getattr(tg, dtype))
    with tg.no_grad():
        lin.weight.copy_(tg.tensor(w))
        lin.bias.copy_(tg.tensor(b))
    y = lin(tg.tensor(x))
    (y * tg.tensor(C)).sum().backward()
    want = np.cumsum(C.astype(np.float64), axis=0)[-1].astype(dtype)
    np.testing.assert_array_equal(lin.bias.grad.numpy(), want)
    plain = tg.tensor(x) @ tg.tensor(w).T
    np.testing.assert_array_equal(y.detach().numpy(), plain.numpy() + b)


# Note [first write] (kernels/gen_cpu.py): a product's backward that first reaches a fresh leaf
# writes its gradient instead of zeroing it and adding. Shapes: a small product, one in the
# parallel range, one past PAR_GEMM_MAX (BLAS, beta 0).
_FIRST_WRITE_SHAPES = [(5, 7, 3), (64, 96, 80), (300, 256, 900)]


def _first_write_grads(form, m, k, n, dtype, start):
    """Gradients of x and W for the product `form` after one backward, the leaves' grads
    starting as `start`: None (fresh: the first write), "zeros" (accumulated into zeros),
    "stale" (None after an earlier backward left other values in the buffers)."""
    rng = np.random.default_rng(m + k + n)
    dt = getattr(tg, dtype)
    x = tg.tensor(rng.standard_normal((m, k)), dtype=dt, requires_grad=True)
    wshape = (n, k) if form in ("linear", "x@W.T") else (k, n)
    w = tg.tensor(rng.standard_normal(wshape), dtype=dt, requires_grad=True)
    b = tg.tensor(rng.standard_normal(n), dtype=dt, requires_grad=True)

    def loss():
        y = F.linear(x, w, b) if form == "linear" else x @ w.T if form == "x@W.T" else x @ w
        return (y * y).sum() if form != "linear" else (y.tanh() * 2).sum()
    if start == "stale":
        (loss() * 3).backward()
        x.grad = w.grad = b.grad = None
    elif start == "zeros":
        x.grad, w.grad = tg.zeros_like(x), tg.zeros_like(w)
    loss().backward()
    return x.grad.numpy().copy(), w.grad.numpy().copy()


@pytest.mark.parametrize("m,k,n", _FIRST_WRITE_SHAPES)
@pytest.mark.parametrize("form", ["linear", "x@W.T", "x@W"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_first_write_of_a_fresh_leaf_has_the_accumulated_bits(m, k, n, form, dtype):
    """A fresh leaf's gradient (written by the product) has the bits of the same gradient added
    into zeros, including after a backward left other values in the buffer; and NumPy's values."""
    fresh = _first_write_grads(form, m, k, n, dtype, None)
    zeros = _first_write_grads(form, m, k, n, dtype, "zeros")
    stale = _first_write_grads(form, m, k, n, dtype, "stale")
    uint = np.uint32 if dtype == "float32" else np.uint64
    for a, z, s in zip(fresh, zeros, stale):
        np.testing.assert_array_equal(a.view(uint), z.view(uint))
        np.testing.assert_array_equal(a.view(uint), s.view(uint))
    rng = np.random.default_rng(m + k + n)
    X = rng.standard_normal((m, k))
    W = rng.standard_normal((n, k) if form in ("linear", "x@W.T") else (k, n))
    B = rng.standard_normal(n)
    if form == "linear":
        Y = X @ W.T + B
        G = 2 * (1 - np.tanh(Y) ** 2)
        want = (G @ W, G.T @ X)
    elif form == "x@W.T":
        G = 2 * (X @ W.T)
        want = (G @ W, G.T @ X)
    else:
        G = 2 * (X @ W)
        want = (G @ W.T, X.T @ G)
    tol = 2e-3 if dtype == "float32" else 1e-9
    for a, w_ in zip(fresh, want):
        np.testing.assert_allclose(a, w_, rtol=tol, atol=tol * np.abs(w_).max())
