"""The fused forward+backward of a pending elementwise chain (tape.py, Note [fused backward]).

When backward() meets a loss that has not run yet, the full sum or mean of large
elementwise records that have not run either, both passes run tile by tile in one
kernel. It must give the same bits as the unfused path (forward flushed first, then
the reverse replay), keep every value something can still read, and step aside
whenever something could look (hooks, retain_graph, retained grads)."""
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tapegrad as tg
from tapegrad.tape.tape import SECOND_TIME, TAPE

N = 70_001          # above the tile threshold, not a multiple of the tile


@pytest.fixture
def fused_calls(monkeypatch):
    calls = []
    orig = type(TAPE)._run_fused

    def spy(self, plan, root, seed):
        calls.append(plan[1].copy())      # om: which outputs were written
        return orig(self, plan, root, seed)
    monkeypatch.setattr(type(TAPE), "_run_fused", spy)
    return calls


def data(n=N, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(n).astype(dtype)


def w3(lib, x):
    return (lib.sin(x) * lib.exp(-x * x)).sum()


def run(fn, xn, flush_first):
    """(loss, grad) of fn, fused (flush_first=False) or with the forward run before backward."""
    x = tg.tensor(xn, requires_grad=True)
    loss = fn(tg, x)
    if flush_first:
        TAPE.flush()
    loss.backward()
    return loss.item(), x.grad.numpy().copy()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_w3_fused_is_bit_identical_to_unfused(fused_calls, dtype):
    xn = data(dtype=dtype)
    l0, g0 = run(w3, xn, flush_first=True)
    assert not fused_calls
    l1, g1 = run(w3, xn, flush_first=False)
    assert len(fused_calls) == 1 and not fused_calls[0].any()   # every intermediate was dead
    assert l0 == l1 and np.array_equal(g0, g1)
    x64 = xn.astype(np.float64)
    np.testing.assert_allclose(g1, np.exp(-x64 ** 2) * (np.cos(x64) - 2 * x64 * np.sin(x64)),
                               rtol=1e-5, atol=1e-6)


def test_against_central_differences_in_a_random_direction(fused_calls):
    xn = data(dtype=np.float64)
    _, g = run(w3, xn, flush_first=False)
    assert fused_calls
    d = np.random.default_rng(9).standard_normal(N)
    eps = 1e-6
    f = lambda v: float(np.sum(np.sin(v) * np.exp(-v * v)))   # noqa: E731
    fd = (f(xn + eps * d) - f(xn - eps * d)) / (2 * eps)
    assert abs(fd - g @ d) <= 1e-6 * max(1.0, abs(fd))


def test_parity_with_torch():
    torch = pytest.importorskip("torch")
    xn = data()
    l1, g1 = run(w3, xn, flush_first=False)
    x = torch.tensor(xn, requires_grad=True)
    loss = w3(torch, x)
    loss.backward()
    np.testing.assert_allclose(g1, x.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(l1, loss.item(), rtol=1e-4, atol=1e-3)


def test_live_intermediates_are_written(fused_calls):
    xn = data()
    x = tg.tensor(xn, requires_grad=True)
    s = tg.sin(x)
    e = tg.exp(-x * x)
    (s * e).mean().backward()
    assert list(fused_calls[0]) == [1, 0, 0, 1, 0]      # sin and exp live: written; x*x, neg, mul: not
    np.testing.assert_allclose(s.detach().numpy(), np.sin(xn), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(e.detach().numpy(), np.exp(-xn * xn), rtol=1e-6, atol=1e-7)


def test_a_detached_alias_of_a_dead_intermediate_is_written(fused_calls):
    xn = data()
    x = tg.tensor(xn, requires_grad=True)
    y = tg.sin(x)
    z = y.detach()           # shares y's storage, with no record of its own
    loss = (y * 2.0).sum()
    del y
    loss.backward()
    assert fused_calls and fused_calls[0][0] == 1
    np.testing.assert_allclose(z.numpy(), np.sin(xn), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(x.grad.numpy(), 2 * np.cos(xn), rtol=1e-6, atol=1e-6)


def twice(xn, flush_first):
    """x.grad after two backwards of W3 into one leaf."""
    x = tg.tensor(xn, requires_grad=True)
    for _ in range(2):
        loss = w3(tg, x)
        if flush_first:
            TAPE.flush()
        loss.backward()
    return x.grad.numpy().copy()


def test_grad_accumulates_into_an_existing_grad(fused_calls):
    xn = data()
    want = twice(xn, flush_first=True)
    assert not fused_calls
    got = twice(xn, flush_first=False)
    assert len(fused_calls) == 2
    assert np.array_equal(got, want)       # the second pass adds into .grad exactly as the unfused one
    np.testing.assert_allclose(got, 2 * run(w3, xn, flush_first=True)[1], rtol=1e-6, atol=1e-7)


def test_a_second_backward_raises_like_torch(fused_calls):
    x = tg.tensor(data(), requires_grad=True)
    loss = w3(tg, x)
    loss.backward()
    assert fused_calls
    with pytest.raises(RuntimeError, match=re.escape(SECOND_TIME)):
        loss.backward()


def test_retain_graph_takes_the_unfused_path(fused_calls):
    xn = data()
    x = tg.tensor(xn, requires_grad=True)
    loss = w3(tg, x)
    loss.backward(retain_graph=True)
    loss.backward()
    assert not fused_calls
    assert np.array_equal(x.grad.numpy(), twice(xn, flush_first=True))


def test_hooks_and_retained_grads_take_the_unfused_path(fused_calls):
    xn = data()
    x = tg.tensor(xn, requires_grad=True)
    seen = []
    x.register_hook(lambda g: seen.append(g.numpy().copy()))
    w3(tg, x).backward()
    y = tg.tensor(xn, requires_grad=True)
    h = tg.sin(y)
    h.retain_grad()
    (h * 3.0).sum().backward()
    assert not fused_calls and len(seen) == 1
    np.testing.assert_allclose(h.grad.numpy(), np.full(N, 3.0, np.float32))


def test_a_broadcast_operand_that_needs_grad_is_not_fused(fused_calls):
    xn = data()
    x = tg.tensor(xn, requires_grad=True)
    w = tg.tensor(1.5, requires_grad=True)
    (x * w).sin().sum().backward()
    assert not fused_calls
    np.testing.assert_allclose(w.grad.item(), float(np.sum(np.cos(1.5 * xn.astype(np.float64)) * xn)),
                               rtol=1e-4)


def test_a_constant_broadcast_operand_is_fused(fused_calls):
    xn = data()
    l0, g0 = run(lambda lib, x: (x * lib.tensor(2.5)).tanh().mean(), xn, flush_first=True)
    l1, g1 = run(lambda lib, x: (x * lib.tensor(2.5)).tanh().mean(), xn, flush_first=False)
    assert fused_calls and l0 == l1 and np.array_equal(g0, g1)


def test_small_tensors_are_not_fused(fused_calls):
    run(w3, data(1000), flush_first=False)
    assert not fused_calls


UNARY = ["sin", "cos", "exp", "tanh", "sigmoid", "relu", "neg", "abs", "square"]
BINARY = ["add", "sub", "mul", "maximum", "minimum"]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(UNARY + BINARY), st.integers(0, 10 ** 6)), min_size=1, max_size=7),
       st.sampled_from(["sum", "mean"]), st.booleans())
def test_random_chains_fused_equal_unfused(ops, red, two_leaves):
    """Random chains over one or two leaves: the same loss and gradients, bit for bit."""
    xn = data(N, seed=1) * 0.5
    yn = data(N, seed=2) * 0.5

    def chain(lib, x, y):
        vals = [x, y] if two_leaves else [x]
        for name, pick in ops:
            a = vals[pick % len(vals)]
            if name in BINARY:
                b = vals[(pick // 7) % len(vals)]
                vals.append(getattr(lib, name)(a, b))
            else:
                vals.append(getattr(lib, name)(a))
        return getattr(vals[-1], red)()

    def go(flush_first):
        x = tg.tensor(xn, requires_grad=True)
        y = tg.tensor(yn, requires_grad=True)
        loss = chain(tg, x, y)
        if flush_first:
            TAPE.flush()
        loss.backward()
        return loss.item(), [None if t.grad is None else t.grad.numpy().copy() for t in (x, y)]

    l0, g0 = go(True)
    l1, g1 = go(False)
    assert l0 == l1 or (np.isnan(l0) and np.isnan(l1))
    for a, b in zip(g0, g1):
        assert (a is None) == (b is None)
        if a is not None:
            assert np.array_equal(a, b, equal_nan=True)
