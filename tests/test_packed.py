"""The forward's packed transposes (Note [packed transposes] in kernels/gen_cpu.py): a small
product x @ W.T copies W.T into rows; one forward call packs each W.T once and reuses it.

The cache itself is checked through its jitted helpers on a synthetic descriptor (packs are
B.T in rows, a second request reuses the pack, a write over B's bytes drops it, a write beside
it does not, the slots run out cleanly, packs survive the array's growth). Through tapegrad:
forwards that multiply by the same transposes many times (distinct W of one shape, views of one
W with other shapes, nn.functional.linear, more W than slots, W changed in place between
products) give the bits of the same computation with the transposes made contiguous
beforehand (the unpacked path), values within float32 rounding of NumPy in float64, and
torch's where torch is installed.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

import tapegrad as tg
from tapegrad.kernels import replay_cpu as R

try:
    import torch as _torch
except ImportError:       # pragma: no cover
    _torch = None


@njit
def _pack(E, d, PK):
    return R._packed_bt_f32(E, d, PK)


@njit
def _overwrite(PK, lo, nbytes):
    R._overwritten(PK, lo, nbytes)


def _descriptor(A, B):
    """A native mm descriptor (kind 2) for A @ B, B given by its element strides."""
    m, k = A.shape
    n = B.shape[1]
    return np.array([2, 0, m, k, n, A.ctypes.data, A.strides[0] // 4, A.strides[1] // 4,
                     B.ctypes.data, B.strides[0] // 4, B.strides[1] // 4], np.int64)


def _packed(addr, k, n):
    return np.ctypeslib.as_array((np.ctypeslib.ctypes.c_float * (k * n)).from_address(addr)).reshape(k, n).copy()


def test_pack_reuse_and_drop():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((4, 6)).astype(np.float32)
    W = rng.standard_normal((5, 6)).astype(np.float32)
    E = _descriptor(A, W.T)
    PK = np.empty(0, np.int64)
    p1, PK = _pack(E, 0, PK)
    assert p1 != 0
    np.testing.assert_array_equal(_packed(p1, 6, 5), W.T)
    W[1, 2] = 100.0                     # written behind the cache's back: the pack is reused, stale
    p2, PK = _pack(E, 0, PK)
    assert p2 == p1 and _packed(p2, 6, 5)[2, 1] != 100.0
    _overwrite(PK, W.ctypes.data + W.nbytes, 64)       # beside W: kept
    assert _pack(E, 0, PK)[0] == p1 and _packed(p1, 6, 5)[2, 1] != 100.0
    _overwrite(PK, W.ctypes.data + 4 * 7, 4)           # one element of W: dropped, packed again
    p3, PK = _pack(E, 0, PK)
    np.testing.assert_array_equal(_packed(p3, 6, 5), W.T)
    _overwrite(PK, W.ctypes.data - 8, 12)              # the first element, from before W
    W[0, 0] = -3.0
    np.testing.assert_array_equal(_packed(_pack(E, 0, PK)[0], 6, 5), W.T)


def test_pack_only_transposed_small_products():
    rng = np.random.default_rng(1)
    A = rng.standard_normal((4, 6)).astype(np.float32)
    B = rng.standard_normal((6, 5)).astype(np.float32)
    assert _pack(_descriptor(A, B), 0, np.empty(0, np.int64))[0] == 0          # rows contiguous
    col = rng.standard_normal((1, 6)).astype(np.float32)
    assert _pack(_descriptor(A, col.T), 0, np.empty(0, np.int64))[0] == 0      # n == 1
    big_a = np.zeros((256, 64), np.float32)
    big_w = np.zeros((64, 64), np.float32)
    assert _pack(_descriptor(big_a, big_w.T), 0, np.empty(0, np.int64))[0] == 0  # past SMALL_GEMM_MAX (not packed)


def test_slots_run_out_and_growth_keeps_packs():
    rng = np.random.default_rng(2)
    A = rng.standard_normal((2, 30)).astype(np.float32)
    Ws = [rng.standard_normal((20 + i, 30)).astype(np.float32) for i in range(R.PACKS + 2)]
    PK = np.empty(0, np.int64)
    addrs = []
    for W in Ws:
        p, PK = _pack(_descriptor(A, W.T), 0, PK)
        addrs.append(p)
    assert all(a != 0 for a in addrs[:R.PACKS]) and addrs[R.PACKS:] == [0, 0]
    for W in Ws[:R.PACKS]:            # after the array grew: every pack still W.T, found again
        p, PK = _pack(_descriptor(A, W.T), 0, PK)
        np.testing.assert_array_equal(_packed(p, 30, W.shape[0]), W.T)
    _overwrite(PK, Ws[3].ctypes.data, 4)      # a dropped slot is reused by a transpose that fits
    p, PK = _pack(_descriptor(A, Ws[-1][:20].T), 0, PK)
    assert p != 0
    np.testing.assert_array_equal(_packed(p, 30, 20), Ws[-1][:20].T)


# ----- through tapegrad ---------------------------------------------------------------------

def _rnn(P, xs, h, transposes):
    """h = tanh(x @ W_ih.T + h @ W_hh.T) with the transposes as views (packed in the forward) or
    as contiguous tensors made beforehand (the product then reads rows: nothing to pack)."""
    w_ih, w_hh = transposes(P[0]), transposes(P[1])
    for x in xs:
        h = tg.tanh(x @ w_ih + h @ w_hh)
    return (h * h).sum()


def _views(W):
    return W.T


def _contiguous(W):
    return W.T.contiguous()


def _np_rnn(Wih, Whh, xs, h):
    for x in xs:
        h = np.tanh(x @ Wih.T + h @ Whh.T)
    return h


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 9), hidden=st.integers(2, 40), inp=st.sampled_from([0, 3, 17]),
       steps=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_rnn_packed_same_bits_as_contiguous(batch, hidden, inp, steps, seed):
    inp = inp or hidden          # 0: W_ih and W_hh of one shape (the cache must tell them apart)
    rng = np.random.default_rng(seed)
    Wih = rng.uniform(-0.5, 0.5, (hidden, inp)).astype(np.float32)
    Whh = rng.uniform(-0.5, 0.5, (hidden, hidden)).astype(np.float32)
    xs = rng.standard_normal((steps, batch, inp)).astype(np.float32)
    h0 = rng.standard_normal((batch, hidden)).astype(np.float32)
    out = {}
    for name, how in (("views", _views), ("contiguous", _contiguous)):
        P = [tg.tensor(Wih, requires_grad=True), tg.tensor(Whh, requires_grad=True)]
        loss = _rnn(P, [tg.tensor(x) for x in xs], tg.tensor(h0), how)
        loss.backward()
        out[name] = (loss.item(), P[0].grad.numpy().copy(), P[1].grad.numpy().copy())
    assert out["views"][0] == out["contiguous"][0]
    np.testing.assert_array_equal(out["views"][1], out["contiguous"][1])
    np.testing.assert_array_equal(out["views"][2], out["contiguous"][2])
    h = _np_rnn(Wih.astype(np.float64), Whh.astype(np.float64), xs.astype(np.float64), h0.astype(np.float64))
    ref = float((h * h).sum())
    assert abs(out["views"][0] - ref) <= 1e-4 * max(1.0, abs(ref))


def test_views_of_one_w_with_other_shapes():
    """W.T, W[:, :k].T and W[:m].T start at one address: each is packed as itself."""
    rng = np.random.default_rng(3)
    W0 = rng.standard_normal((12, 10)).astype(np.float32)
    x0 = rng.standard_normal((3, 10)).astype(np.float32)
    W, x = tg.tensor(W0), tg.tensor(x0)
    ys = []
    for _ in range(2):
        ys += [x @ W.T, x[:, :7] @ W[:, :7].T, x @ W[:5].T]
    ref = [x0 @ W0.T, x0[:, :7] @ W0[:, :7].T, x0 @ W0[:5].T] * 2
    for y, r in zip(ys, ref):
        np.testing.assert_allclose(y.numpy(), r, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ys[0].numpy(), ys[3].numpy())


def test_linear_repeated_same_bits():
    rng = np.random.default_rng(4)
    W0 = rng.standard_normal((8, 6)).astype(np.float32)
    b0 = rng.standard_normal(8).astype(np.float32)
    xs = rng.standard_normal((5, 4, 6)).astype(np.float32)
    res = {}
    for name in ("linear", "contiguous"):
        W, b = tg.tensor(W0, requires_grad=True), tg.tensor(b0, requires_grad=True)
        WT = W.T.contiguous()
        tot = 0
        for x in xs:
            y = tg.nn.functional.linear(tg.tensor(x), W, b) if name == "linear" else tg.tensor(x) @ WT + b
            tot = tot + (y * y).sum()
        tot.backward()
        res[name] = (tot.item(), W.grad.numpy().copy(), b.grad.numpy().copy())
    assert res["linear"][0] == pytest.approx(res["contiguous"][0], rel=1e-6)
    np.testing.assert_allclose(res["linear"][1], res["contiguous"][1], rtol=1e-5, atol=1e-5)
    ref = sum(float(((x @ W0.T + b0) ** 2).sum()) for x in xs.astype(np.float64))
    assert res["linear"][0] == pytest.approx(ref, rel=1e-5)


def test_more_transposes_than_slots():
    rng = np.random.default_rng(5)
    W0 = [rng.standard_normal((6, 6)).astype(np.float32) for _ in range(R.PACKS + 3)]
    x0 = rng.standard_normal((2, 6)).astype(np.float32)
    Ws = [tg.tensor(w) for w in W0]
    h, ref = tg.tensor(x0), x0.astype(np.float64)
    for _ in range(2):
        for W, w in zip(Ws, W0):
            h = tg.tanh(h @ W.T)
            ref = np.tanh(ref @ w.T.astype(np.float64))
    np.testing.assert_allclose(h.numpy(), ref, rtol=1e-5, atol=1e-6)


def test_w_changed_in_place_between_products():
    """An in-place write between two products of one W.T: the second sees the new W."""
    rng = np.random.default_rng(6)
    W0 = rng.standard_normal((7, 5)).astype(np.float32)
    x0 = rng.standard_normal((3, 5)).astype(np.float32)
    W, x = tg.tensor(W0.copy()), tg.tensor(x0)
    y1 = x @ W.T
    W.mul_(2.0)
    y2 = x @ W.T
    W[0, 0] = 50.0
    y3 = x @ W.T
    W2 = 2 * W0
    W3 = W2.copy()
    W3[0, 0] = 50.0
    for y, w in ((y1, W0), (y2, W2), (y3, W3)):
        np.testing.assert_allclose(y.numpy(), x0 @ w.T, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(_torch is None, reason="torch not installed")
def test_rnn_like_torch():
    rng = np.random.default_rng(7)
    Wih = rng.uniform(-0.3, 0.3, (16, 8)).astype(np.float32)
    Whh = rng.uniform(-0.3, 0.3, (16, 16)).astype(np.float32)
    xs = rng.standard_normal((12, 4, 8)).astype(np.float32)
    h0 = np.zeros((4, 16), np.float32)
    got = {}
    for lib in (tg, _torch):
        P = [lib.tensor(Wih, requires_grad=True), lib.tensor(Whh, requires_grad=True)]
        h = lib.tensor(h0)
        for x in xs:
            h = lib.tanh(lib.tensor(x) @ P[0].T + h @ P[1].T)
        loss = (h * h).sum()
        loss.backward()
        got[lib.__name__] = (loss.item(), P[0].grad.numpy(), P[1].grad.numpy())
    a, b = got["tapegrad"], got["torch"]
    assert a[0] == pytest.approx(b[0], rel=1e-5)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a[2], b[2], rtol=1e-4, atol=1e-5)
