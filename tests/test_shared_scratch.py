"""Note [shared gradient scratch] (kernels/lifetime.py): a one-call captured step lays its
gradient buffers out so that a buffer freed by its record's backward is taken by a later one,
and the backward zeroes each gradient after reading it.

Checked: random captured graphs (fan-out, products by transposes of leaves and of non-leaf
matrices, reductions) replay bit for bit like the same step run eagerly, call after call; an RNN's
shared scratch is a small fraction of one buffer per record; the scratch is all zero after each
replay; a scratch left dirty (DIRTY set) is zeroed before the next backward.
"""
import warnings

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import tapegrad as tg
from tapegrad import config
from tapegrad.kernels import step as S

ONE_CALL_ON = not config.DEBUG


def _one(cs):
    progs = [p for k, p in cs.programs.items() if k[0] != "refused"]
    assert len(progs) == 1
    return progs[0].one


def _scratch(one):
    k = next(k for k in one.kerns if k.A[S.BHI] >= 0)
    sc = next(a for a in k.keep if a.ctypes.data == k.A[S.SC_ADDR])
    return k, sc


def _graph(P, x, prog):
    """A graph over the parameters P and input x: each step of `prog` applies an op to values
    picked (by index) from all the values so far, so intermediates fan out."""
    vals = [x @ P[2]]                      # (so that the loss requires grad)
    W = P[1] * 0.5                         # a non-leaf W, multiplied by its transposes below
    for op, i, j in prog:
        a, b = vals[i % len(vals)], vals[j % len(vals)]
        if op == 0:
            v = tg.tanh(a @ P[0].T)          # a leaf's transpose (folded)
        elif op == 1:
            v = a @ W.T
        elif op == 2:
            v = a * b
        elif op == 3:
            v = a + b
        elif op == 4:
            v = tg.tanh(a) - b * 0.25
        else:
            v = a @ P[2]
        vals.append(v)
    tot = vals[-1].sum()
    for v in vals[:-1:3]:
        tot = tot + (v * v).sum() * 0.01
    return tot


def _run(prog, n, seed, calls=3):
    rng = np.random.default_rng(seed)
    init = [rng.uniform(-0.4, 0.4, (n, n)).astype(np.float32) for _ in range(3)]
    xs = [rng.standard_normal((3, n)).astype(np.float32) for _ in range(calls)]
    res = {}
    for mode in ("eager", "captured"):
        P = [tg.tensor(w, requires_grad=True) for w in init]
        opt = tg.optim.SGD(P, lr=0.01)

        def step(x):
            opt.zero_grad()
            loss = _graph(P, x, prog)
            loss.backward()
            opt.step()
            return loss
        f = tg.capture(step) if mode == "captured" else step
        out = []
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for x in xs:
                out.append(f(tg.tensor(x)).item())
        res[mode] = (out, [p.detach().numpy().copy() for p in P], f)
    return res


@settings(max_examples=30, deadline=None)
@given(prog=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 50), st.integers(0, 50)), min_size=1, max_size=14),
       n=st.integers(2, 9), seed=st.integers(0, 2**16))
def test_random_graphs_one_call_same_bits(prog, n, seed):
    res = _run(prog, n, seed)
    (le, pe, _), (lc, pc, cs) = res["eager"], res["captured"]
    assert le == lc
    for a, b in zip(pe, pc):
        np.testing.assert_array_equal(a, b)
    assert cs.stats == {"captured": 1, "replayed": 2, "eager": 0}
    if ONE_CALL_ON:
        one = _one(cs)
        assert one is not None
        _, sc = _scratch(one)
        assert not sc.any()             # every buffer zeroed after use


def _rnn_step(P, opt):
    def step(h, *xs):
        opt.zero_grad()
        for x in xs:
            h = tg.tanh(x @ P[0].T + h @ P[1].T + P[2])
        loss = (h * h).sum()
        loss.backward()
        opt.step()
        return loss
    return step


def _rnn_data(steps=12, seed=0):
    rng = np.random.default_rng(seed)
    P0 = [rng.uniform(-0.3, 0.3, s).astype(np.float32) for s in ((16, 8), (16, 16), (16,))]
    xs = [rng.standard_normal((4, 8)).astype(np.float32) for _ in range(steps)]
    return P0, xs


def test_rnn_scratch_is_small_and_left_zero():
    if not ONE_CALL_ON:
        return
    P0, xs = _rnn_data()
    P = [tg.tensor(p, requires_grad=True) for p in P0]
    opt = tg.optim.SGD(P, lr=0.01)
    cs = tg.capture(_rnn_step(P, opt))
    X = [tg.tensor(x) for x in xs]
    for _ in range(3):
        cs(tg.zeros(4, 16), *X)
    one = _one(cs)
    k, sc = _scratch(one)
    per_record = 4 * 16 * 4                # a 4 x 16 float32 gradient
    # (small enough that the global tape's escape records stay under its sweep bound: test_tape)
    # one buffer per record: five a step (two products, two adds, tanh), 60 here
    assert sc.nbytes < 8 * per_record + 1024, sc.nbytes
    assert not sc.any()


def test_dirty_scratch_is_zeroed_first():
    if not ONE_CALL_ON:
        return
    P0, xs = _rnn_data(steps=6, seed=1)
    res = {}
    for mode in ("clean", "dirty"):
        P = [tg.tensor(p, requires_grad=True) for p in P0]
        opt = tg.optim.SGD(P, lr=0.01)
        cs = tg.capture(_rnn_step(P, opt))
        X = [tg.tensor(x) for x in xs]
        out = [cs(tg.zeros(4, 16), *X).item() for _ in range(2)]
        if mode == "dirty":
            k, sc = _scratch(_one(cs))
            sc[:] = 0x3f               # as a backward that stopped half way would leave it
            k.A[S.DIRTY] = 1
        out += [cs(tg.zeros(4, 16), *X).item() for _ in range(2)]
        res[mode] = (out, [p.detach().numpy().copy() for p in P])
    assert res["clean"][0] == res["dirty"][0]
    for a, b in zip(res["clean"][1], res["dirty"][1]):
        np.testing.assert_array_equal(a, b)
