"""The fast eager fronts of ops/pyops.py (Note [fast escape records]) leave on the tape what
the general path leaves: the same row, the same producer list and native descriptor, the same
escape record (its NumPy forward and VJP give the same bits), the same output tensor, the same
gradients. The general path is the one every other escape op takes (record(), view_op,
binary_general, matmul_general); each case runs both on the same operands and compares.
(Values against NumPy, finite differences and torch: test_ops.py, which now runs the fast
fronts for these ops.)"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tapegrad as torch
from tapegrad.ops import pyops as P
from tapegrad.tape.tape import ROW, TAPE, PyRec

TT = __import__("sys").modules["tapegrad.tensor"]
COLS = ("code", "n", "out", "a", "b", "pa", "pb", "alive")


def _row(r):
    """The row of global record r, by column (the doubles' column last)."""
    i = r - TAPE.base
    ints = np.frombuffer(TAPE.buf, np.int64, 8, i * ROW)
    c = np.frombuffer(TAPE.buf, np.float64, 1, i * ROW + 64)[0]
    return dict(zip(COLS, ints.tolist())), float(c)


def _tail(rowd):
    """The producer list and the native descriptor the row points to in edges."""
    e = rowd["a"]
    k = TAPE.edges[e]
    prods = list(TAPE.edges[e + 1:e + 1 + k])
    nat = None
    if rowd["b"]:
        assert rowd["b"] == e + 1 + k
        nat = list(TAPE.edges[rowd["b"]:rowd["b"] + 64])   # (compared up to the shorter's end below)
    return prods, nat


def _last_record():
    return TAPE.next_index - 1


def _compare(fast, general, run):
    """Run `fast()` and `general()` (each returns its output tensor) and compare what they left."""
    before = TAPE.next_index
    out_f = fast()
    r_f = _last_record() if TAPE.next_index > before else None
    flushed_f = TAPE.flushed == TAPE.next_index
    before = TAPE.next_index
    out_g = general()
    r_g = _last_record() if TAPE.next_index > before else None
    flushed_g = TAPE.flushed == TAPE.next_index
    assert (r_f is None) == (r_g is None)
    assert flushed_f == flushed_g
    for slot in ("_shape", "_stride", "_dtype", "_n", "_contig", "_rg"):
        assert getattr(out_f, slot) == getattr(out_g, slot), slot
    assert type(out_f) is type(out_g)
    assert (out_f._rec >= 0) == (out_g._rec >= 0)
    assert out_f._exposed == out_g._exposed
    if out_f._base is not out_g._base or out_f._addr == out_g._addr:   # a view: the same storage
        assert out_f._addr == out_g._addr and out_f._vc is out_g._vc
    if r_f is None:
        return out_f, out_g
    if out_f._rg:
        assert out_f._rec == r_f and out_g._rec == r_g
    (row_f, c_f), (row_g, c_g) = _row(r_f), _row(r_g)
    assert row_f["out"] == out_f._addr and row_g["out"] == out_g._addr
    for col in ("code", "n", "pa", "pb", "alive"):
        assert row_f[col] == row_g[col], col
    assert c_f == c_g
    assert bool(row_f["b"]) == bool(row_g["b"])
    (prods_f, nat_f), (prods_g, nat_g) = _tail(row_f), _tail(row_g)
    assert prods_f == prods_g
    if nat_f is not None:
        k = min(len(nat_f), len(nat_g))
        assert nat_f[:k] == nat_g[:k]
    rf, rg = TAPE.py[r_f], TAPE.py[r_g]
    assert isinstance(rf, PyRec)
    assert rf.spec is rg.spec
    assert rf.out == rg.out
    assert dict(rf.attrs) == dict(rg.attrs)
    for slot in ("saves", "_spans", "_needs", "_writes", "_vs"):
        assert getattr(rf, slot) == getattr(rg, slot), slot
    assert rf._vo[2:] == rg._vo[2:]
    assert (rf._lin is None) == (rg._lin is None)
    run(rf, rg, out_f)
    return out_f, out_g


def _same_bits(a, b):
    if a is None or b is None:
        assert a is None and b is None
        return
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype
    assert a.tobytes() == b.tobytes()


def _check_numpy_functions(ivs, out_shape, out_dtype, seed):
    """A `run` for _compare: both records' forward, VJP (and linear map) on the same arrays."""
    rng = np.random.default_rng(seed)

    def run(rf, rg, out):
        o_f = np.zeros(out_shape, out_dtype)
        o_g = np.zeros(out_shape, out_dtype)
        if rf._writes:
            rf._fn(o_f, *ivs)
            rg._fn(o_g, *ivs)
        else:
            a, b = rf._fn(*ivs), rg._fn(*ivs)
            if a is not None:
                o_f[...] = a
            if b is not None:
                o_g[...] = b
        _same_bits(o_f, o_g)
        g = rng.standard_normal(out_shape).astype(out_dtype)
        kw = {"needs": rf._needs} if rf._needs is not None else {}
        for x, y in zip(rf.raw(g, o_f, *ivs, **kw), rg.raw(g, o_g, *ivs, **kw)):
            _same_bits(x, y)
        if rf._lin is not None:
            ts = [rng.standard_normal(v.shape).astype(v.dtype) for v in ivs]
            _same_bits(rf._lin(ts, o_f, ivs), rg._lin(ts, o_g, ivs))
    return run


def _leaf(shape, dtype, rg, rng):
    return torch.tensor(rng.standard_normal(shape).astype(dtype), requires_grad=rg)


DTYPES = st.sampled_from([np.float32, np.float64])
DIM = st.integers(1, 5)


@settings(max_examples=40, deadline=None)
@given(r=st.integers(0, 5), c=DIM, dtype=DTYPES, rg=st.booleans(), grad_mode=st.booleans(),
       exposed=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_transpose_matches_view_op(r, c, dtype, rg, grad_mode, exposed, seed):
    rng = np.random.default_rng(seed)
    x = _leaf((r, c), dtype, rg, rng)
    if exposed:
        x.detach().numpy()
    xv = x.detach().numpy().copy()
    with torch.set_grad_enabled(grad_mode):
        out_f, out_g = _compare(lambda: P.t2(x), lambda: P.view_op("permute", x, TT._swap2, perm=TT._PERM2),
                                _check_numpy_functions([xv], (c, r), dtype, seed))
        _compare(lambda: x.T, lambda: P.view_op("permute", x, TT._swap2, perm=TT._PERM2),
                 _check_numpy_functions([xv], (c, r), dtype, seed))      # Tensor.T: the same
    if out_f._rg:
        assert type(out_f.grad_fn).__name__ == type(out_g.grad_fn).__name__ == "PermuteBackward0"


@settings(max_examples=40, deadline=None)
@given(m=DIM, k=DIM, n=DIM, dtype=DTYPES, rga=st.booleans(), rgb=st.booleans(), grad_mode=st.booleans(),
       transposed=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_matmul_matches_general(m, k, n, dtype, rga, rgb, grad_mode, transposed, seed):
    rng = np.random.default_rng(seed)
    a = _leaf((m, k), dtype, rga, rng)
    w = _leaf((n, k), dtype, rgb, rng)
    b = w.T if transposed else _leaf((k, n), dtype, rgb, rng)
    ivs = [a.detach().numpy().copy(), b.detach().numpy()]
    with torch.set_grad_enabled(grad_mode):
        out_f, out_g = _compare(lambda: a @ b, lambda: P.matmul_general(a, b),
                                _check_numpy_functions(ivs, (m, n), dtype, seed))
        if out_f._rg:
            _same_gradients(out_f, out_g, [a, w if transposed else b], rng)


SHAPE_PAIRS = st.sampled_from([((4, 3), (3,)), ((3,), (4, 3)), ((4, 3), (1, 3)), ((4, 1), (1, 3)),
                               ((2, 4, 3), (4, 1)), ((4, 3), (4, 1)), ((5,), (1,)), ((2, 1, 3), (2, 3))])


@settings(max_examples=40, deadline=None)
@given(shapes=SHAPE_PAIRS, name=st.sampled_from(["add", "sub"]), dtype=DTYPES, rgx=st.booleans(),
       rgy=st.booleans(), grad_mode=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_broadcast_add_matches_general(shapes, name, dtype, rgx, rgy, grad_mode, seed):
    rng = np.random.default_rng(seed)
    x = _leaf(shapes[0], dtype, rgx, rng)
    y = _leaf(shapes[1], dtype, rgy, rng)
    out_shape = np.broadcast_shapes(*shapes)
    ivs = [x.detach().numpy().copy(), y.detach().numpy().copy()]
    with torch.set_grad_enabled(grad_mode):      # (x + y of these shapes is binary_py; (5,) + (1,) a jitted row)
        out_f, out_g = _compare(lambda: P.binary_py(name, x, y), lambda: P.binary_general(name, x, y),
                                _check_numpy_functions(ivs, out_shape, dtype, seed))
        if out_f._rg:
            _same_gradients(out_f, out_g, [x, y], rng)


def _same_gradients(out_f, out_g, leaves, rng):
    """Backward through both outputs with one random direction: the same leaf gradients, bit for bit."""
    g = torch.tensor(rng.standard_normal(out_f.shape).astype(out_f.numpy(force=True).dtype))
    grads = []
    for out in (out_f, out_g):
        for t in leaves:
            t.grad = None
        out.backward(g)
        grads.append([None if t.grad is None else t.grad.numpy().copy() for t in leaves])
    for x, y in zip(*grads):
        _same_bits(x, y)


def test_broadcast_error_is_torchs():
    x, y = torch.ones(2, 3), torch.ones(4)
    with pytest.raises(RuntimeError, match=r"The size of tensor a \(3\) must match the size of tensor b \(4\)"):
        x + y
    n = TAPE.next_index
    with pytest.raises(RuntimeError):
        torch.ones(2, 3, requires_grad=True) - torch.ones(2, 2)
    assert TAPE.next_index == n       # nothing recorded by the failing call


# ----- addmm and mse_loss: their fronts against record() with the closures they had before ---------

def _addmm_by_record(bias, x, w):
    """nn.Linear's record as record() made it (closures over the bias's shape)."""
    out = TT._empty((x._shape[0], w._shape[0]), x._dtype)
    bsh = bias._shape

    def fwd(o, bv, xv, wv):
        P._gemm(xv, wv.T, out=o)
        o += bv

    def bwd(g, o, bv, xv, wv, needs=(True, True, True)):
        return (P.sum_to(g, bsh) if needs[0] else None, P._gemm(g, wv) if needs[1] else None,
                P._gemm(g.T, xv) if needs[2] else None)
    fwd.writes_out = True
    bwd.needs_aware = True
    return P.record("addmm", out, [bias, x, w], fwd, bwd, native=P._mm_native(out, x, w, bias))


def _mse_by_record(x, t, reduction):
    """mse_loss's record as record() made it (closures over n, the shapes and the reduction)."""
    xs, ts = x._shape, t._shape
    shape = tuple(np.broadcast_shapes(xs, ts))
    n = int(np.prod(shape))
    out = TT._empty((), P.D.result_type(x, t))

    def fwd(xv, tv):
        d = xv.astype(np.float64) - tv
        r = np.sum(d * d)
        return r / n if reduction == "mean" else r

    def bwd(g, o, xv, tv, needs=(True, True)):
        d = (xv - tv) * (2.0 * g / (n if reduction == "mean" else 1))
        d = np.broadcast_to(d, shape)
        return (P.sum_to(d, xs) if needs[0] else None, P.sum_to(-d, ts) if needs[1] else None)
    bwd.needs_aware = True
    nat = None
    if xs == ts and x._contig and t._contig and P._native_ok(out, [x, t]):
        nat = [3, 0, n, x._addr, t._addr, 1 if reduction == "mean" else 0]
    return P.record("mse_loss", out, [x, t], fwd, bwd, attrs={"reduction": reduction}, native=nat)


@settings(max_examples=40, deadline=None)
@given(m=DIM, k=DIM, n=DIM, dtype=DTYPES, rgs=st.tuples(st.booleans(), st.booleans(), st.booleans()),
       bias2d=st.booleans(), grad_mode=st.booleans(), exposed=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_addmm_matches_record(m, k, n, dtype, rgs, bias2d, grad_mode, exposed, seed):
    rng = np.random.default_rng(seed)
    ivs = [rng.standard_normal(s).astype(dtype) for s in ((1, n) if bias2d else (n,), (m, k), (n, k))]
    # exposed: the third input alone (exposure goes by slab: w's is retired before the others are made)
    w = torch.tensor(ivs[2], requires_grad=rgs[2])
    if exposed:
        w.detach().numpy()
    bias, x = (torch.tensor(v, requires_grad=r) for v, r in zip(ivs[:2], rgs[:2]))
    assert not (TT.is_exposed(bias) or TT.is_exposed(x))
    with torch.set_grad_enabled(grad_mode):
        out_f, out_g = _compare(lambda: P.addmm(bias, x, w), lambda: _addmm_by_record(bias, x, w),
                                _check_numpy_functions(ivs, (m, n), dtype, seed))
        if out_f._rg:
            _same_gradients(out_f, out_g, [bias, x, w], rng)


MSE_SHAPES = st.sampled_from([((4, 3), (4, 3)), ((4, 1), (4, 1)), ((4, 3), (3,)), ((4, 1), (1, 3)), ((5,), (5,)),
                              ((), ()), ((2, 3), ())])


@settings(max_examples=40, deadline=None)
@given(shapes=MSE_SHAPES, reduction=st.sampled_from(["mean", "sum"]), dtypes=st.sampled_from(
       [(np.float32, np.float32), (np.float64, np.float64), (np.float32, np.float64)]),
       rgx=st.booleans(), rgt=st.booleans(), grad_mode=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_mse_loss_matches_record(shapes, reduction, dtypes, rgx, rgt, grad_mode, seed):
    rng = np.random.default_rng(seed)
    x = _leaf(shapes[0], dtypes[0], rgx, rng)
    t = _leaf(shapes[1], dtypes[1], rgt, rng)
    ivs = [x.detach().numpy().copy(), t.detach().numpy().copy()]
    odt = np.result_type(*dtypes)
    with torch.set_grad_enabled(grad_mode):
        out_f, out_g = _compare(lambda: P.mse_loss(x, t, reduction), lambda: _mse_by_record(x, t, reduction),
                                _check_numpy_functions(ivs, (), odt, seed))
        if out_f._rg:
            _same_gradients(out_f, out_g, [x, t], rng)
