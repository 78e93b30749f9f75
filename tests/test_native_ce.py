"""Native log_softmax and nll_loss records (Note [native nll_loss] in nn/functional.py; kinds 6
and 7 in kernels/gen_cpu.py): cross_entropy of a (N, C) matrix runs inside the jitted replay.
Checked against a NumPy reference (float64), float64 central differences in a random direction,
the NumPy-closure path (TAPEGRAD_NATIVE off) and PyTorch; in a captured step, the one-call
replay is taken, stays bit-identical to eager with new labels each call, and a batch with a
label out of range raises torch's IndexError before anything is updated."""
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tapegrad as tg
import tapegrad.nn.functional as F
from tapegrad import config
from test_capture import ONE_CALL_ON, _mlp, _program, assert_same, assert_twins_same, tensors, twins
from test_native import is_native

nn = tg.nn
IGN = -100


def labels(rng, n, c, ignored):
    y = rng.integers(0, c, n)
    if ignored:
        y[rng.random(n) < 0.3] = IGN
    return y


def reference(x, y, reduction, ignore_index=IGN):
    """(loss, d loss / d x for an upstream gradient of ones) in float64."""
    z = x - x.max(axis=1, keepdims=True)
    lp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    kept = y != ignore_index
    rows, cls = np.arange(len(y)), np.where(kept, y, 0)
    picked = np.where(kept, -lp[rows, cls], 0.0)
    g = np.zeros_like(x)
    g[rows, cls] = np.where(kept, -1.0, 0.0)
    if reduction == "mean":
        loss, g = picked.sum() / kept.sum(), g / kept.sum()
    elif reduction == "sum":
        loss = picked.sum()
    else:
        loss = picked
    return loss, g - np.exp(lp) * g.sum(axis=1, keepdims=True)


def ce(x, y, reduction, lib=F):
    out = lib.cross_entropy(x, y, reduction=reduction)
    return out


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 9), c=st.integers(1, 7), reduction=st.sampled_from(["mean", "sum", "none"]),
       ignored=st.booleans(), dtype=st.sampled_from(["float32", "float64"]), seed=st.integers(0, 2 ** 16))
def test_forward_backward_against_numpy(n, c, reduction, ignored, dtype, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, c)) * 3
    Y = labels(rng, n, c, ignored)
    x = tg.tensor(X, dtype=getattr(tg, dtype), requires_grad=True)
    logp = F.log_softmax(x, 1)
    loss = F.nll_loss(logp, tg.tensor(Y), reduction=reduction)
    assert is_native(logp) and is_native(loss)
    (loss.sum() if reduction == "none" else loss).backward()
    ref, gref = reference(X, Y, reduction)
    tol = 1e-5 if dtype == "float32" else 1e-12
    got = loss.detach().numpy()
    if reduction == "mean" and not (Y != IGN).any():
        assert np.isnan(got)           # no target kept: 0 / 0, as torch
        return
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(x.grad.numpy(), gref, rtol=tol, atol=tol)
    np.testing.assert_allclose(logp.detach().numpy(), X - X.max(1, keepdims=True)
                               - np.log(np.exp(X - X.max(1, keepdims=True)).sum(1, keepdims=True)), rtol=tol, atol=tol)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_central_differences(reduction):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((5, 4))
    Y = np.array([0, 3, IGN, 1, 3])
    V = rng.standard_normal((5, 4))                # a random direction
    R = rng.standard_normal(5) if reduction == "none" else np.ones(())

    def f(arr, grad=False):
        x = tg.tensor(arr, dtype=tg.float64, requires_grad=grad)
        loss = (F.cross_entropy(x, tg.tensor(Y), reduction=reduction) * tg.tensor(R)).sum()
        if grad:
            loss.backward()
            return x.grad.numpy()
        return loss.item()
    g = f(X, True)
    h = 1e-6
    fd = (f(X + h * V) - f(X - h * V)) / (2 * h)
    assert abs(fd - (g * V).sum()) < 1e-7 * max(1.0, abs(fd))


def test_same_as_the_numpy_path(monkeypatch):
    rng = np.random.default_rng(5)
    X, Y = rng.standard_normal((16, 10)).astype(np.float32), labels(rng, 16, 10, True)
    res = []
    for native in (True, False):
        monkeypatch.setattr(config, "NATIVE", native)
        x = tg.tensor(X, requires_grad=True)
        logp = F.log_softmax(x, 1)
        loss = F.nll_loss(logp, tg.tensor(Y))
        assert is_native(loss) == native and is_native(logp) == native
        loss.backward()
        res.append((loss.item(), x.grad.numpy().copy()))
    assert abs(res[0][0] - res[1][0]) <= 1e-6 * abs(res[1][0])
    np.testing.assert_allclose(res[0][1], res[1][1], rtol=1e-5, atol=1e-7)


def test_not_native_where_the_kernel_cannot_read_it():
    x = tg.randn(4, 6, requires_grad=True)
    assert not is_native(F.log_softmax(x.t(), 1))          # not contiguous
    assert not is_native(F.log_softmax(x, 0))              # not over the rows
    assert not is_native(F.log_softmax(tg.randn(2, 3, 4, requires_grad=True), 2))
    y = tg.tensor([0, 1, 2, 3, 4, 5, 0, 1])[::2]           # targets not contiguous
    assert not is_native(F.nll_loss(F.log_softmax(x, 1), y))
    assert not is_native(F.nll_loss(F.log_softmax(x, 1), y.contiguous(), weight=tg.ones(6)))
    assert is_native(F.nll_loss(F.log_softmax(x, 1), y.contiguous()))


def test_torch_parity():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    X, Y = rng.standard_normal((12, 5)).astype(np.float32), labels(rng, 12, 5, True)
    for reduction in ("mean", "sum", "none"):
        a = tg.tensor(X, requires_grad=True)
        b = torch.tensor(X, requires_grad=True)
        la = F.cross_entropy(a, tg.tensor(Y), reduction=reduction)
        lb = torch.nn.functional.cross_entropy(b, torch.tensor(Y), reduction=reduction)
        assert la.grad_fn.name() == lb.grad_fn.name() == "NllLossBackward0"
        assert la.grad_fn.next_functions[0][0].name() == lb.grad_fn.next_functions[0][0].name()
        (la.sum() if reduction == "none" else la).backward()
        (lb.sum() if reduction == "none" else lb).backward()
        np.testing.assert_allclose(la.detach().numpy(), lb.detach().numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-5, atol=1e-7)
    with pytest.raises(IndexError, match="Target 5 is out of bounds."):
        F.cross_entropy(tg.tensor(X), tg.tensor(np.full(12, 5)))


# ----- captured steps ------------------------------------------------------------------------

def _classifier(ignore_index=IGN, reduction="mean"):
    return _mlp(tg.optim.SGD, nn.CrossEntropyLoss(ignore_index=ignore_index, reduction=reduction), 5,
                lr=0.1, momentum=0.9)


def _batches(k, seed, ignored=False, n=8):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((n, 6)).astype(np.float32), labels(rng, n, 5, ignored)) for _ in range(k)]


@pytest.mark.parametrize("one_call", [True, False], ids=["one_call", "python_replay"])
@pytest.mark.parametrize("reduction,ignored", [("mean", False), ("mean", True), ("sum", True)])
def test_captured_classifier_new_labels_bit_identical(one_call, reduction, ignored):
    a, b = twins(_classifier(reduction=reduction))
    step = tg.capture(b.step)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i, args in enumerate(_batches(8, 11, ignored)):
            ra, rb = a.step(*tensors(args)), step(*tensors(args))
            if i == 0:
                prog = _program(step)
                assert (prog.one is not None) == ONE_CALL_ON
                if not one_call:
                    prog.one = None
            assert_same(ra, rb, f"call {i}")
    assert step.stats == {"captured": 1, "replayed": 7, "eager": 0}
    assert_twins_same(a, b)


@pytest.mark.parametrize("one_call", [True, False], ids=["one_call", "python_replay"])
@pytest.mark.parametrize("bad", [5, -1])
def test_captured_bad_label_raises_before_the_update(one_call, bad):
    a, b = twins(_classifier())
    step = tg.capture(b.step)
    good = _batches(4, 12)
    for args in good[:2]:
        a.step(*tensors(args))
        step(*tensors(args))
    if not one_call:
        _program(step).one = None
    x, y = good[2]
    y = y.copy()
    y[3] = bad
    for fn in (a.step, step):
        with pytest.raises(IndexError, match=f"Target {bad} is out of bounds."):
            fn(*tensors((x, y)))
    assert_twins_same(a, b)           # zero_grad ran (as eagerly), nothing else did
    ra, rb = a.step(*tensors(good[3])), step(*tensors(good[3]))
    assert_same(ra, rb)
    assert_twins_same(a, b)
    assert step.stats["captured"] == 1 and step.stats["eager"] == 0


def test_captured_loss_as_the_first_record():
    """The check runs at the record's place; when that is the step's first row, a one-call
    replay copies the arguments in before it (capture.py: after_copies)."""
    step = tg.capture(lambda lp, y: F.nll_loss(lp, y))
    rng = np.random.default_rng(13)
    for i in range(5):
        lp = np.log(rng.dirichlet(np.ones(4), 6)).astype(np.float32)
        y = rng.integers(0, 4, 6)
        want = F.nll_loss(tg.tensor(lp), tg.tensor(y))
        assert_same(want, step(tg.tensor(lp), tg.tensor(y)), f"call {i}")
    assert step.stats == {"captured": 1, "replayed": 4, "eager": 0}
    with pytest.raises(IndexError, match="Target 4 is out of bounds."):
        step(tg.tensor(lp), tg.tensor(np.full(6, 4)))
