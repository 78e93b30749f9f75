"""Folded transposes (Note [folded transposes] in tapegrad/kernels/lifetime.py): a backward pass
skips the view W.T when a product `x @ W.T` is its only consumer, and the product writes
dW += G.T x into W's gradient itself.

Every case runs three ways: tapegrad as it is (the fold where it applies), tapegrad with the fold
off (a no-op hook on each view keeps it), and PyTorch; each case also says whether the fold must
happen, checked on the marks themselves. Folded and unfolded give the same bits: the small
products' kernel computes each element of G.T x and of (x.T G).T as the same chain of fma
(kernels/smallgemm.py's Note [small gemm], split over the threads or not); BLAS, for products
above config.PAR_GEMM_MAX, does not promise that (OpenBLAS's dgemm differs at m=8 k=3 n=4), so
those are compared to a few units in the last place. A captured step folds as its eager twin does (test_capture.py's
rnn_transposed_adam is bit for bit)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tapegrad as tg
from tapegrad.tape.tape import TAPE

torch = pytest.importorskip("torch")


def _data(seed, shapes, dtype):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


# case name -> (shapes of the leaves, build(lib, leaves) -> (loss, views to check, their fold
# expected), leaves that need no gradient)
def _single(lib, L):
    x, w = L
    v = w.T
    return (x @ v).tanh().sum(), [(v, True)]


def _rnn(lib, L):
    xs, wih, whh, b = L
    h = lib.zeros(4, 5, dtype=xs.dtype)
    views = []
    for t in range(3):
        vi, vh = wih.T, whh.T
        views += [(vi, True), (vh, True)]
        h = lib.tanh(xs[t] @ vi + h @ vh + b)
    return (h * h).sum(), views


def _shared(lib, L):
    x1, x2, w = L
    v = w.T
    return ((x1 @ v) * (x2 @ v)).sum(), [(v, False)]


def _as_a(lib, L):
    x, w = L
    v = w.T                       # (3, 4) @ (4, 2): the view is the product's A
    return (v @ x).sin().sum(), [(v, False)]


def _other_use(lib, L):
    x, w = L
    v = w.T
    return (x @ v).sum() + (v * v).sum(), [(v, False)]


def _nonleaf(lib, L):
    x, p = L
    w = p * 2.0
    v = w.T
    return (x @ v).exp().sum(), [(v, True)]


def _rows_slice(lib, L):
    x, w = L
    v = w[1:].T                   # a view of a view (offset 1 row in w)
    return (x @ v).square().sum(), [(v, True)]


def _of_transpose(lib, L):
    x, q = L
    w = q.T                       # (4, 3) view of a (3, 4) leaf; w.T reads q itself
    v = w.T
    return (x @ v).tanh().sum(), [(v, True)]


def _one_row(lib, L):
    x, w = L
    v = w.T                       # (3, 1): a plain (contiguous) view, left as it is
    return (x @ v).square().sum(), [(v, False)]


def _square(lib, L):
    x, w = L
    v = w.T
    return (x @ v @ v).sum(), [(v, False)]


def _two_products(lib, L):
    x, w = L
    v1, v2 = w.T, w.T             # one view each: both fold
    return ((x @ v1).tanh() + (x @ v2).sigmoid()).sum(), [(v1, True), (v2, True)]


CASES = {
    "single": ([(5, 3), (4, 3)], _single),
    "rnn": ([(3, 4, 3), (5, 3), (5, 5), (5,)], _rnn),
    "shared": ([(5, 3), (5, 3), (4, 3)], _shared),
    "as_A": ([(4, 2), (4, 3)], _as_a),
    "other_use": ([(5, 3), (4, 3)], _other_use),
    "nonleaf": ([(5, 3), (4, 3)], _nonleaf),
    "rows_slice": ([(5, 3), (4, 3)], _rows_slice),
    "of_transpose": ([(5, 3), (3, 4)], _of_transpose),
    "one_row": ([(5, 3), (1, 3)], _one_row),
    "square": ([(5, 4), (4, 4)], _square),
    "two_products": ([(5, 3), (4, 3)], _two_products),
}
NO_GRAD = {"rnn": {0}}            # the inputs x_t
ULPS = {np.float32: 8 * 2.0 ** -23, np.float64: 8 * 2.0 ** -52}   # folded vs unfolded, through BLAS


def _leaves(lib, name, arrs):
    dt = getattr(lib, arrs[0].dtype.name)
    return [lib.tensor(a, dtype=dt, requires_grad=i not in NO_GRAD.get(name, ())) for i, a in enumerate(arrs)]


def _folded(loss, views):
    """Which views a backward from loss folds (the marks the pass would use)."""
    need, _, _ = TAPE.mark_roots([loss._rec], True)
    plain, _, _ = TAPE.mark_roots([loss._rec], False)
    out = []
    for v, _ in views:
        i = v._rec - TAPE.base
        assert plain[i] != 0, "the view is reachable: marked without the fold"
        out.append(need[i] == 0)
    return out


def _tapegrad(name, arrs, fold):
    L = _leaves(tg, name, arrs)
    loss, views = CASES[name][1](tg, L)
    got = _folded(loss, views)
    if not fold:
        for v, _ in views:
            v.register_hook(lambda g: None)    # a hook on the view: the pass keeps it
        assert not any(_folded(loss, views))
    loss.backward()
    return loss.item(), [None if t.grad is None else t.grad.numpy().copy() for t in L], got, [e for _, e in views]


def _torch(name, arrs):
    L = _leaves(torch, name, arrs)
    loss, _ = CASES[name][1](torch, L)
    loss.backward()
    return loss.item(), [None if t.grad is None else t.grad.numpy().copy() for t in L]


def _check(name, arrs):
    v1, g1, folded, expected = _tapegrad(name, arrs, True)
    v0, g0, _, _ = _tapegrad(name, arrs, False)
    assert folded == expected, f"{name}: folded {folded}, expected {expected}"
    vt, gt = _torch(name, arrs)
    assert v1 == v0
    rtol = 1e-4 if arrs[0].dtype == np.float32 else 1e-10
    np.testing.assert_allclose(v1, vt, rtol=rtol)
    for a, b, c in zip(g1, g0, gt):
        assert (a is None) == (b is None) == (c is None)
        if a is not None:
            assert np.array_equal(a, b), f"{name}: the fold changed the bits"
            np.testing.assert_allclose(a, c, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(CASES))
def test_fold_cases(name, dtype):
    _check(name, _data(1, CASES[name][0], dtype))


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 9), k=st.integers(1, 9), n=st.integers(1, 9), steps=st.integers(1, 4),
       seed=st.integers(0, 2**16), f64=st.booleans())
def test_fold_random_rnn(m, k, n, steps, seed, f64):
    """An RNN of random sizes: every W.T folds (but 1-wide ones), the bits are those of the
    unfolded pass."""
    dt = np.float64 if f64 else np.float32
    xs, wih, whh, b = _data(seed, [(steps, m, k), (n, k), (n, n), (n,)], dt)

    def run(lib, fold):
        dtl = getattr(lib, np.dtype(dt).name)
        Wih, Whh, B = (lib.tensor(a, dtype=dtl, requires_grad=True) for a in (wih, whh, b))
        h = lib.zeros(m, n, dtype=dtl)
        views = []
        for t in range(steps):
            vi, vh = Wih.T, Whh.T
            views += [(vi, k > 1 and n > 1), (vh, n > 1)]   # (a 1-wide transpose is a plain view)
            h = lib.tanh(lib.tensor(xs[t], dtype=dtl) @ vi + h @ vh + B)
        loss = (h * h).sum()
        if lib is tg:
            need, _, _ = TAPE.mark_roots([loss._rec], True)
            assert [need[v._rec - TAPE.base] == 0 for v, _ in views] == [e for _, e in views]
            if not fold:
                for v, _ in views:
                    v.register_hook(lambda g: None)
        loss.backward()
        return [t.grad.numpy().copy() for t in (Wih, Whh, B)]

    a, b0, c = run(tg, True), run(tg, False), run(torch, True)
    tol = 1e-4 if dt == np.float32 else 1e-10
    for x, y, z in zip(a, b0, c):
        assert np.array_equal(x, y)
        np.testing.assert_allclose(x, z, rtol=tol, atol=tol * max(1.0, np.abs(z).max()))


def test_retained_view_is_not_folded():
    x, w = _data(2, [(5, 3), (4, 3)], np.float32)
    X, W = tg.tensor(x), tg.tensor(w, requires_grad=True)
    V = W.T
    V.retain_grad()
    (X @ V).tanh().sum().backward()
    Xt, Wt = torch.tensor(x), torch.tensor(w, requires_grad=True)
    Vt = Wt.T
    Vt.retain_grad()
    (Xt @ Vt).tanh().sum().backward()
    np.testing.assert_allclose(V.grad.numpy(), Vt.grad.numpy(), rtol=1e-5)
    np.testing.assert_allclose(W.grad.numpy(), Wt.grad.numpy(), rtol=1e-5)


def test_autograd_grad_of_the_view():
    """autograd.grad with the view among its inputs: its gradient is returned, not folded away."""
    x, w = _data(3, [(5, 3), (4, 3)], np.float32)
    out = []
    for lib in (tg, torch):
        X, W = lib.tensor(x), lib.tensor(w, requires_grad=True)
        V = W.T
        out.append([g.numpy() for g in lib.autograd.grad((X @ V).tanh().sum(), [V, W])])
    for a, b in zip(*out):
        np.testing.assert_allclose(a, b, rtol=1e-5)


def test_create_graph_through_the_view():
    """Second derivatives through x @ W.T (create_graph walks the marks unfolded)."""
    x, w = _data(4, [(5, 3), (4, 3)], np.float64)
    out = []
    for lib in (tg, torch):
        X, W = lib.tensor(x, requires_grad=True), lib.tensor(w, requires_grad=True)
        (gx,) = lib.autograd.grad((X @ W.T).tanh().sum(), [X], create_graph=True)
        (gx * gx).sum().backward()
        out.append(W.grad.numpy())
    np.testing.assert_allclose(out[0], out[1], rtol=1e-9)


def test_retain_graph_twice():
    """A second backward over the same graph folds again and accumulates the same amount."""
    x, w = _data(5, [(5, 3), (4, 3)], np.float32)
    X, W = tg.tensor(x), tg.tensor(w, requires_grad=True)
    loss = (X @ W.T).tanh().sum()
    loss.backward(retain_graph=True)
    once = W.grad.numpy().copy()
    loss.backward()
    np.testing.assert_array_equal(W.grad.numpy(), once + once)


def _fold_large(shapes, exact):
    """The single-view case folded and not, both dtypes: the same bits when `exact`, else a few
    units in the last place apart; torch's values either way."""
    for dtype in (np.float32, np.float64):
        arrs = _data(6, shapes, dtype)
        v1, g1, folded, _ = _tapegrad("single", arrs, True)
        v0, g0, _, _ = _tapegrad("single", arrs, False)
        assert folded == [True]
        _, gt = _torch("single", arrs)
        u = ULPS[dtype]
        for a, b, c in zip(g1, g0, gt):
            if exact:
                np.testing.assert_array_equal(a, b)
            else:
                np.testing.assert_allclose(a, b, rtol=u, atol=u * np.abs(b).max())
            np.testing.assert_allclose(a, c, rtol=1e-4 if dtype == np.float32 else 1e-10,
                                       atol=(1e-4 if dtype == np.float32 else 1e-10) * np.abs(c).max())


def test_fold_parallel_products_same_bits():
    """Products above config.SMALL_GEMM_MAX, within the parallel range (kernels/smallgemm.py's Note
    [parallel gemm]), split one thread's chains over the threads: folded and unfolded give the
    same bits, and torch's values. Without config.PAR_GEMM (a layer other than omp) BLAS keeps them
    (test_smallgemm runs this test under the other layer too)."""
    from tapegrad import config
    assert config.SMALL_GEMM_MAX < 128 * 128 * 80 <= config.PAR_GEMM_MAX
    _fold_large([(128, 128), (80, 128)], config.PAR_GEMM)


def test_fold_through_blas():
    """Products above config.PAR_GEMM_MAX go to BLAS: folded and unfolded agree to a few units in
    the last place (and with torch)."""
    from tapegrad import config
    assert 520 * 512 * 256 > config.PAR_GEMM_MAX
    _fold_large([(520, 512), (256, 512)], False)


def test_captured_step_folds_as_eager():
    """A captured step plans its backward on a private tape: the views fold there too (the same
    rows, the same plan as the eager pass)."""
    rng = np.random.default_rng(7)
    W = tg.tensor(rng.standard_normal((6, 4)).astype(np.float32), requires_grad=True)
    views = []

    def step(x):
        v = W.T
        views.append(v._rec)
        loss = (x @ v).tanh().sum()
        loss.backward()
        return loss

    st = tg.capture(step)
    for i in range(3):
        W.grad = None
        st(tg.tensor(rng.standard_normal((5, 4)).astype(np.float32)))
    progs = [p for k, p in st.programs.items() if k[0] != "refused"]
    assert len(progs) == 1 and st.stats["replayed"] == 2
    prog = progs[0]
    plans = [p[2] for k, _, p in prog.events if k == "backward"]
    assert len(plans) == 1
    v = views[0] - prog.tape.base
    assert plans[0].gaddr[v] == 0, "the captured plan keeps the view"
    assert plans[0].gaddr[v + 1] != 0      # the product
