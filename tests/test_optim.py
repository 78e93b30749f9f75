"""tapegrad.optim: PyTorch's optimizers and schedulers, one jitted call per step.

Oracles: PyTorch itself (same parameters, same gradients, 5 steps), and a NumPy
transcription of PyTorch's documented algorithms (SGD with momentum/Nesterov,
Adam).
"""
import copy
import warnings

import numpy as np
import pytest

import tapegrad
from tapegrad.kernels import optim as K
from tapegrad.tape.tape import TAPE

SHAPES = [(3, 4), (5,), (2, 1, 3)]
STEPS = 5


def _data(seed=0, dtype=np.float32, shapes=SHAPES, steps=STEPS):
    rng = np.random.default_rng(seed)
    p0 = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]
    return p0, grads


def _run(m, cls, kw, p0, grads, none_at=None):
    """`steps` optimizer steps with the given gradients; none_at: {(step, i)} where .grad is None."""
    ps = [m.tensor(p.copy(), requires_grad=True) for p in p0]
    opt = getattr(m.optim, cls)(ps, **kw)
    for k, gs in enumerate(grads):
        for i, (p, g) in enumerate(zip(ps, gs)):
            p.grad = None if none_at and (k, i) in none_at else m.tensor(g.copy())
        opt.step()
    return [p.detach().numpy().copy() for p in ps], opt


CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, weight_decay=0.05)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.3)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("SGD", dict(lr=0.1, momentum=0.8, nesterov=True, weight_decay=0.1, maximize=True)),
    ("Adam", dict(lr=0.05)),
    ("Adam", dict(lr=0.05, betas=(0.8, 0.9), eps=1e-6)),
    ("Adam", dict(lr=0.05, weight_decay=0.1)),
    ("Adam", dict(lr=0.05, amsgrad=True)),
    ("Adam", dict(lr=0.05, maximize=True, amsgrad=True, weight_decay=0.01)),
    ("Adam", dict(lr=0.05, betas=(0.3, 0.999))),        # lerp's other branch (weight 0.7 >= 0.5)
    ("Adam", dict(lr=0.05, weight_decay=0.1, decoupled_weight_decay=True)),
    ("AdamW", dict(lr=0.05)),
    ("AdamW", dict(lr=0.05, weight_decay=0.3, amsgrad=True, maximize=True)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.01, momentum=0.9)),
    ("RMSprop", dict(lr=0.01, centered=True)),
    ("RMSprop", dict(lr=0.01, alpha=0.3, momentum=0.5, centered=True, maximize=True)),
]


def _id(case):
    return case[0] + "-" + ",".join(f"{k}={v}" for k, v in case[1].items())


# ----- parity with PyTorch ---------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_matches_torch_float32(case):
    torch = pytest.importorskip("torch")
    cls, kw = case
    p0, grads = _data()
    mine, opt = _run(tapegrad, cls, kw, p0, grads)
    theirs, topt = _run(torch, cls, kw, p0, grads)
    for a, b in zip(mine, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # the state has PyTorch's keys, values and dtypes
    st, tst = opt.state_dict()["state"], topt.state_dict()["state"]
    assert list(st) == list(tst)
    for k in st:
        assert list(st[k]) == list(tst[k])
        for key in st[k]:
            a, b = st[k][key], tst[k][key]
            assert isinstance(a, tapegrad.Tensor)
            assert str(a.dtype) == str(b.dtype) and tuple(a.shape) == tuple(b.shape)
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", [c for c in CASES if len(c[1]) > 1 or c[0] != "SGD"][::3],
                         ids=[_id(c) for c in [c for c in CASES if len(c[1]) > 1 or c[0] != "SGD"][::3]])
def test_matches_torch_float64(case):
    torch = pytest.importorskip("torch")
    cls, kw = case
    p0, grads = _data(dtype=np.float64)
    mine, _ = _run(tapegrad, cls, kw, p0, grads)
    theirs, _ = _run(torch, cls, kw, p0, grads)
    for a, b in zip(mine, theirs):
        assert a.dtype == np.float64
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cls,kw", [("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", dict(lr=0.05)),
                                    ("RMSprop", dict(lr=0.01, centered=True))])
def test_mixed_dtypes_match_torch(cls, kw):
    """float32 and float64 parameters in one optimizer: the kernel's float64 branch is compiled
    in only when a row is float64 (kernels/optim.py's f64s); each row keeps its own dtype."""
    torch = pytest.importorskip("torch")
    p0, grads = _data()
    p0 = [p.astype(np.float64) if i % 2 else p for i, p in enumerate(p0)]
    grads = [[g.astype(p.dtype) for g, p in zip(gs, p0)] for gs in grads]
    mine, _ = _run(tapegrad, cls, kw, p0, grads)
    theirs, _ = _run(torch, cls, kw, p0, grads)
    for a, b, p in zip(mine, theirs, p0):
        assert a.dtype == p.dtype
        np.testing.assert_allclose(a, b, rtol=1e-5 if p.dtype == np.float32 else 1e-12, atol=1e-6)


@pytest.mark.parametrize("cls,kw", [("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)), ("Adam", dict(lr=0.05)),
                                    ("RMSprop", dict(lr=0.01, centered=True))])
def test_gradients_from_backward_match_torch(cls, kw):
    """Gradients computed by the tape (leaf slots), a small quadratic loss, zero_grad in between."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    A = rng.standard_normal((4, 4)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    w0 = rng.standard_normal(4).astype(np.float32)
    out = []
    for m in (tapegrad, torch):
        w = m.tensor(w0.copy(), requires_grad=True)
        c = m.tensor([0.5], requires_grad=True)
        opt = getattr(m.optim, cls)([w, c], **kw)
        At, bt = m.tensor(A), m.tensor(b)
        for _ in range(STEPS):
            opt.zero_grad()
            r = (At * w).sum(1) - bt
            loss = (r * r).sum() + (c * c * 3.0).sum() + (w * c).sum()
            loss.backward()
            opt.step()
        out.append((w.detach().numpy().copy(), c.detach().numpy().copy()))
    for a, b_ in zip(*out):
        np.testing.assert_allclose(a, b_, rtol=1e-5, atol=1e-6)


# ----- against a NumPy transcription of PyTorch's documented algorithms -------------------

def _np_sgd(p0, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False):
    ps = [p.astype(np.float64) for p in p0]
    bufs = [None] * len(ps)
    for gs in grads:
        for i, g in enumerate(gs):
            g = -g.astype(np.float64) if maximize else g.astype(np.float64)
            if weight_decay:
                g = g + weight_decay * ps[i]
            if momentum:
                bufs[i] = g.copy() if bufs[i] is None else momentum * bufs[i] + (1 - dampening) * g
                g = g + momentum * bufs[i] if nesterov else bufs[i]
            ps[i] = ps[i] - lr * g
    return ps


def _np_adam(p0, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
    b1, b2 = betas
    ps = [p.astype(np.float64) for p in p0]
    m = [np.zeros_like(p) for p in ps]
    v = [np.zeros_like(p) for p in ps]
    vmax = [np.zeros_like(p) for p in ps]
    for t, gs in enumerate(grads, 1):
        for i, g in enumerate(gs):
            g = g.astype(np.float64)
            if weight_decay:
                g = g + weight_decay * ps[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            mhat = m[i] / (1 - b1 ** t)
            vmax[i] = np.maximum(vmax[i], v[i])
            vhat = (vmax[i] if amsgrad else v[i]) / (1 - b2 ** t)
            ps[i] = ps[i] - lr * mhat / (np.sqrt(vhat) + eps)
    return ps


@pytest.mark.parametrize("kw", [dict(lr=0.1), dict(lr=0.1, momentum=0.9), dict(lr=0.1, momentum=0.9, nesterov=True),
                                dict(lr=0.1, momentum=0.9, dampening=0.5, weight_decay=0.1),
                                dict(lr=0.1, momentum=0.5, nesterov=True, maximize=True)])
def test_sgd_matches_numpy_reference(kw):
    p0, grads = _data(seed=1)
    mine, _ = _run(tapegrad, "SGD", kw, p0, grads)
    for a, b in zip(mine, _np_sgd(p0, grads, **kw)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kw", [dict(lr=0.05), dict(lr=0.05, betas=(0.5, 0.9)), dict(lr=0.05, weight_decay=0.1),
                                dict(lr=0.05, amsgrad=True)])
def test_adam_matches_numpy_reference(kw):
    p0, grads = _data(seed=2)
    mine, _ = _run(tapegrad, "Adam", kw, p0, grads)
    for a, b in zip(mine, _np_adam(p0, grads, **kw)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ----- one jitted call per step -------------------------------------------------------------

@pytest.mark.parametrize("cls,kernel", [("SGD", "sgd_step"), ("Adam", "adam_step"), ("AdamW", "adam_step"),
                                        ("RMSprop", "rmsprop_step")])
def test_step_is_one_kernel_call(monkeypatch, cls, kernel):
    ps = [tapegrad.randn(3, requires_grad=True) for _ in range(50)]
    ps.append(tapegrad.randn(2, dtype=tapegrad.float64, requires_grad=True))   # float64 too: still one call
    opt = getattr(tapegrad.optim, cls)(ps, lr=0.01)
    calls = []
    real = getattr(K, kernel)

    def counting(*a):
        calls.append(a[0].shape[0])
        return real(*a)
    monkeypatch.setattr(K, kernel, counting)
    before = [p.detach().numpy().copy() for p in ps]
    for step in range(3):
        for p in ps:
            p.grad = tapegrad.ones_like(p)
        opt.step()
        assert len(calls) == step + 1
    assert calls == [51, 51, 51]
    assert all(not np.array_equal(b, p.detach().numpy()) for b, p in zip(before, ps))


# ----- semantics ----------------------------------------------------------------------------

@pytest.mark.parametrize("cls,kw", [("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", dict(lr=0.1)),
                                    ("RMSprop", dict(lr=0.01, momentum=0.9, centered=True))])
def test_grad_none_is_skipped_like_torch(cls, kw):
    torch = pytest.importorskip("torch")
    p0, grads = _data(seed=4)
    none_at = {(0, 1), (1, 1), (2, 0), (4, 2)}   # param 1 has no grad for its first two steps
    mine, opt = _run(tapegrad, cls, kw, p0, grads, none_at)
    theirs, topt = _run(torch, cls, kw, p0, grads, none_at)
    for a, b in zip(mine, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    if cls != "SGD":
        assert [float(s["step"]) for s in opt.state_dict()["state"].values()] == \
            [float(s["step"]) for s in topt.state_dict()["state"].values()]
    # a parameter that never had a gradient: untouched, no state
    for m in (tapegrad, torch):
        a = m.tensor([1.0, 2.0], requires_grad=True)
        b = m.tensor([3.0], requires_grad=True)
        o = getattr(m.optim, cls)([a, b], **kw)
        a.grad = m.tensor([1.0, 1.0])
        o.step()
        assert b.tolist() == [3.0] and b._version == 0 and a._version == 1
        assert list(o.state_dict()["state"]) == [0]


def test_param_groups_with_different_lr():
    torch = pytest.importorskip("torch")
    p0, grads = _data(seed=5)
    out = []
    for m in (tapegrad, torch):
        ps = [m.tensor(p.copy(), requires_grad=True) for p in p0]
        opt = m.optim.SGD([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.5, "momentum": 0.9}], lr=0.01,
                          momentum=0.5)
        for k, gs in enumerate(grads):
            for p, g in zip(ps, gs):
                p.grad = m.tensor(g)
            opt.step()
            if k == 2:
                opt.param_groups[0]["lr"] = 0.2     # a changed hyperparameter is read at the next step
        out.append([p.detach().numpy().copy() for p in ps])
        assert [g["lr"] for g in opt.param_groups] == [0.2, 0.5]
    for a, b in zip(*out):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_add_param_group_matches_torch():
    torch = pytest.importorskip("torch")
    out = []
    for m in (tapegrad, torch):
        a = m.tensor([1.0, -2.0], requires_grad=True)
        b = m.tensor([0.5], requires_grad=True)
        opt = m.optim.Adam([a], lr=0.1)
        a.grad = m.tensor([1.0, 1.0])
        opt.step()
        opt.add_param_group({"params": [b], "lr": 0.01, "amsgrad": True})
        for _ in range(2):
            a.grad, b.grad = m.tensor([0.5, -1.0]), m.tensor([2.0])
            opt.step()
        out.append((a.tolist(), b.tolist(), repr(opt)))
        with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
            opt.add_param_group({"params": [a]})
    np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-6)
    np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-6)
    assert out[0][2] == out[1][2]


def test_zero_grad_semantics():
    torch = pytest.importorskip("torch")
    for m in (tapegrad, torch):
        w = m.tensor([1.0, 2.0], requires_grad=True)
        opt = m.optim.SGD([w], lr=0.1)
        (w * w).sum().backward()
        g = w.grad
        assert g.tolist() == [2.0, 4.0]
        opt.zero_grad(set_to_none=False)         # zeroed in place: the same tensor, now zeros
        assert w.grad is g and g.tolist() == [0.0, 0.0]
        (w * 3).sum().backward()                 # accumulates into it
        assert w.grad is g and g.tolist() == [3.0, 3.0]
        opt.zero_grad()                          # default: set_to_none=True
        assert w.grad is None
        assert g.tolist() == [3.0, 3.0]          # the old tensor keeps its values
        (w * 2).sum().backward()
        assert w.grad.tolist() == [2.0, 2.0]
        opt.zero_grad(set_to_none=False)
        assert w.grad.tolist() == [0.0, 0.0]
        opt.step()                               # a zero gradient is a step (None is not)
        assert w.tolist() == [1.0, 2.0] and w._version == 1


def test_zero_grad_false_zeroes_an_assigned_grad_in_place():
    w = tapegrad.tensor([1.0, 2.0, 3.0], requires_grad=True)
    arr = np.array([1.0, 1.0, 1.0], np.float32)
    w.grad = tapegrad.from_numpy(arr)
    opt = tapegrad.optim.Adam([w])
    opt.zero_grad(set_to_none=False)
    assert arr.tolist() == [0.0, 0.0, 0.0]       # memory shared, as in PyTorch


def test_state_tensors_share_the_kernels_memory():
    torch = pytest.importorskip("torch")
    out = []
    for m in (tapegrad, torch):
        w = m.tensor([1.0, -1.0, 0.5], requires_grad=True)
        opt = m.optim.Adam([w], lr=0.1)
        w.grad = m.tensor([0.3, 0.2, -0.1])
        opt.step()
        st = opt.state[w]
        ea = st["exp_avg"]
        with m.no_grad():
            ea.mul_(0.5)                          # written in place: the next step reads it
        opt.step()
        out.append((w.tolist(), ea.tolist(), float(st["step"]), st["exp_avg"] is ea))
    np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-6)
    np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-6)
    assert out[0][2:] == out[1][2:] == (2.0, True)


def test_replaced_state_and_parameter_storage_are_picked_up():
    torch = pytest.importorskip("torch")
    out = []
    for m in (tapegrad, torch):
        w = m.tensor([1.0, 2.0], requires_grad=True)
        opt = m.optim.SGD([w], lr=0.1, momentum=0.9)
        w.grad = m.tensor([1.0, 1.0])
        opt.step()
        opt.state[w]["momentum_buffer"] = m.tensor([10.0, -10.0])   # a new state tensor
        opt.step()
        w.data = m.tensor([5.0, 5.0])                               # new storage for the parameter
        opt.step()
        opt.state.clear()                                           # state reset: momentum starts again
        opt.step()
        out.append((w.tolist(), opt.state[w]["momentum_buffer"].tolist()))
    np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-6)
    np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-6)


def test_assigned_state_of_another_dtype_or_layout():
    """A state tensor that the kernel cannot use as it is (float64 for a float32 parameter,
    non-contiguous) is converted when the rows are rebuilt, and the state holds the converted one."""
    torch = pytest.importorskip("torch")
    out = []
    for m in (tapegrad, torch):
        w = m.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
        opt = m.optim.SGD([w], lr=0.1, momentum=0.9)
        w.grad = m.tensor([1.0, 1.0, 1.0, 1.0])
        opt.step()
        opt.state[w]["momentum_buffer"] = m.tensor([2.0, -2.0, 4.0, 8.0], dtype=m.float64)
        opt.step()
        opt.state[w]["momentum_buffer"] = m.tensor([1.0, 0.0, 3.0, 0.0, -2.0, 0.0, 4.0, 0.0])[::2]
        opt.step()
        out.append((w.tolist(), opt.state[w]["momentum_buffer"].tolist()))
    np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-6)
    np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-6)


def test_pending_records_run_before_the_update():
    w = tapegrad.tensor([1.0, 2.0], requires_grad=True)
    with tapegrad.no_grad():
        y = w * 10                          # recorded, not yet run
    opt = tapegrad.optim.SGD([w], lr=1.0)
    w.grad = tapegrad.tensor([1.0, 1.0])
    opt.step()
    assert y.tolist() == [10.0, 20.0]       # computed from the values before the step
    assert (w * 10).tolist() == [0.0, 10.0]  # later ops see the new values


def test_exposed_numpy_view_sees_the_update():
    w = tapegrad.tensor([1.0, 2.0], requires_grad=True)
    view = w.detach().numpy()
    opt = tapegrad.optim.SGD([w], lr=0.5)
    w.grad = tapegrad.tensor([2.0, 2.0])
    opt.step()
    assert view.tolist() == [0.0, 1.0]


@pytest.mark.parametrize("cls,kw", [("SGD", dict(lr=0.1)), ("Adam", dict(lr=0.1)), ("AdamW", dict(lr=0.1)),
                                    ("RMSprop", dict(lr=0.1))])
def test_backward_after_step_raises_torchs_version_error(cls, kw):
    torch = pytest.importorskip("torch")
    msgs = []
    for m in (tapegrad, torch):
        w = m.tensor([1.0, 2.0], requires_grad=True)
        opt = getattr(m.optim, cls)([w], **kw)
        loss = (w * w).sum()
        loss.backward(retain_graph=True)
        opt.step()
        opt.step()
        with pytest.raises(RuntimeError) as e:
            loss.backward()
        msgs.append((str(e.value), w._version))
    assert msgs[0] == msgs[1]


def test_backward_through_matmul_after_step_raises():
    w = tapegrad.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    x = tapegrad.tensor([[1.0], [1.0]], requires_grad=True)
    loss = (w @ x).sum()
    with tapegrad.no_grad():
        w.mul_(2)                            # the same without an optimizer
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


_LEAF_SLOT_REPRO = """
import tapegrad
from tapegrad.tape.tape import TAPE
x = tapegrad.ones(2, requires_grad=True)
t0 = x * 2; del t0                  # record 0: dead
a = x * 3                           # record 1: alive
w = tapegrad.ones(2, requires_grad=True)
(w * 3).sum().backward()
del w                               # w's gradient slot dies after record 1
TAPE.sweep()                        # drops record 0 only: the slot is not free yet
del a
TAPE.sweep()
"""


def test_sweep_after_a_leaf_dies_while_a_graph_lives():
    """Regression (core, Tape._drop kept a not-yet-free leaf slot as a bare int and the next
    sweep raised TypeError): optimizer loops hit it when a parameter dies while a graph lives.
    In a fresh process: that bug corrupted the tape for everything that ran after it."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", _LEAF_SLOT_REPRO], cwd=root, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-800:]


def test_inplace_log_stays_small_in_a_training_loop():
    """Each step logs its in-place writes; entries no backward can hit are dropped,
    so the per-backward version check does not grow between tape sweeps."""
    ps = [tapegrad.randn(8, requires_grad=True) for _ in range(4)]
    x = tapegrad.randn(8)
    opt = tapegrad.optim.Adam(ps, lr=1e-3)
    sizes = []
    for _ in range(300):
        opt.zero_grad()
        loss = sum(((p * x).tanh() * p).sum() for p in ps)
        loss.backward()
        opt.step()
        sizes.append(len(TAPE.inplace_log))
    assert max(sizes) <= 64


def test_version_error_survives_log_pruning():
    """Entries a live graph can still hit are kept while the log is pruned: 40 steps later
    the message still counts every write, as PyTorch's does."""
    torch = pytest.importorskip("torch")
    msgs = []
    for m in (tapegrad, torch):
        w = m.tensor([1.0, 2.0], requires_grad=True)
        v = m.tensor([3.0], requires_grad=True)
        opt = m.optim.SGD([w, v], lr=0.01)
        old = (w * w).sum()                      # saves w; kept alive, never backwarded
        for _ in range(40):
            opt.zero_grad()
            ((w * v).sum() + (v * v).sum()).backward()
            opt.step()
        with pytest.raises(RuntimeError) as e:
            old.backward()
        msgs.append(str(e.value))
        del old, e
    assert msgs[0] == msgs[1]
    assert "is at version 40; expected version 0" in msgs[0]


def test_closure():
    torch = pytest.importorskip("torch")
    out = []
    for m in (tapegrad, torch):
        w = m.tensor([1.0, -3.0], requires_grad=True)
        opt = m.optim.SGD([w], lr=0.1)

        def closure():
            opt.zero_grad()
            loss = (w * w).sum()
            loss.backward()
            return loss
        losses = [opt.step(closure).item() for _ in range(3)]
        out.append((losses, w.tolist()))
    np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-6)
    np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-6)


# ----- state_dict ---------------------------------------------------------------------------

@pytest.mark.parametrize("cls,kw", [("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", dict(lr=0.05, amsgrad=True)),
                                    ("AdamW", dict(lr=0.05)), ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True))])
def test_state_dict_round_trip(cls, kw):
    torch = pytest.importorskip("torch")
    p0, grads = _data(seed=6, steps=6)
    straight, _ = _run(tapegrad, cls, kw, p0, grads)
    # 3 steps, save, load into a fresh optimizer over copies of the parameters, 3 more steps
    ps = [tapegrad.tensor(p.copy(), requires_grad=True) for p in p0]
    opt = getattr(tapegrad.optim, cls)(ps, **kw)
    for gs in grads[:3]:
        for p, g in zip(ps, gs):
            p.grad = tapegrad.tensor(g)
        opt.step()
    sd = copy.deepcopy(opt.state_dict())
    ps2 = [tapegrad.tensor(p.detach().numpy().copy(), requires_grad=True) for p in ps]
    opt2 = getattr(tapegrad.optim, cls)(ps2, lr=123.0)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["lr"] == kw["lr"] and opt2.param_groups[0]["params"] == ps2
    for gs in grads[3:]:
        for p, g in zip(ps2, gs):
            p.grad = tapegrad.tensor(g)
        opt2.step()
    for a, b in zip(straight, ps2):
        np.testing.assert_array_equal(a, b.detach().numpy())
    # torch's structure: {'state': {0: {...}}, 'param_groups': [{..., 'params': [0, 1, 2]}]}
    tps = [torch.tensor(p.copy(), requires_grad=True) for p in p0]
    topt = getattr(torch.optim, cls)(tps, **kw)
    for p, g in zip(tps, grads[0]):
        p.grad = torch.tensor(g)
    topt.step()
    tsd, msd = topt.state_dict(), opt2.state_dict()
    assert msd["param_groups"] == tsd["param_groups"]
    assert list(msd["state"]) == list(tsd["state"]) == [0, 1, 2]
    assert all(list(msd["state"][i]) == list(tsd["state"][i]) for i in range(3))


def test_load_state_dict_from_torch():
    """A torch optimizer's state_dict loads (its tensors are copied into tapegrad tensors)."""
    torch = pytest.importorskip("torch")
    p0, grads = _data(seed=7, steps=4)
    tps = [torch.tensor(p.copy(), requires_grad=True) for p in p0]
    topt = torch.optim.Adam(tps, lr=0.05)
    for k, gs in enumerate(grads):
        if k == 2:
            ps = [tapegrad.tensor(p.detach().numpy().copy(), requires_grad=True) for p in tps]
            opt = tapegrad.optim.Adam(ps)
            opt.load_state_dict(copy.deepcopy(topt.state_dict()))
        for p, g in zip(tps, gs):
            p.grad = torch.tensor(g)
        topt.step()
        if k >= 2:
            for p, g in zip(ps, gs):
                p.grad = tapegrad.tensor(g)
            opt.step()
    for a, b in zip(ps, tps):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert isinstance(opt.state[ps[0]]["exp_avg"], tapegrad.Tensor) and float(opt.state[ps[0]]["step"]) == 4.0


def test_load_state_dict_casts_state_to_the_parameter_dtype():
    torch = pytest.importorskip("torch")
    p0, grads = _data(seed=8, steps=4)
    out = []
    for m in (tapegrad, torch):
        ps64 = [m.tensor(p.astype(np.float64), requires_grad=True) for p in p0]
        opt64 = m.optim.Adam(ps64, lr=0.05)
        for p, g in zip(ps64, grads[0]):
            p.grad = m.tensor(g.astype(np.float64))
        opt64.step()
        ps = [m.tensor(p.copy(), requires_grad=True) for p in p0]
        opt = m.optim.Adam(ps, lr=0.05)
        opt.load_state_dict(copy.deepcopy(opt64.state_dict()))   # float64 state into float32 parameters
        for gs in grads[1:]:
            for p, g in zip(ps, gs):
                p.grad = m.tensor(g)
            opt.step()
        st = opt.state[ps[0]]
        out.append(([p.detach().numpy().copy() for p in ps], str(st["exp_avg"].dtype), str(st["step"].dtype)))
    for a, b in zip(out[0][0], out[1][0]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert out[0][1:] == out[1][1:] == ("torch.float32", "torch.float32")


def test_load_state_dict_errors():
    a = tapegrad.zeros(2, requires_grad=True)
    opt = tapegrad.optim.SGD([a], lr=0.1)
    sd = opt.state_dict()
    opt2 = tapegrad.optim.SGD([{"params": [a]}, {"params": [tapegrad.zeros(1, requires_grad=True)]}], lr=0.1)
    with pytest.raises(ValueError, match="loaded state dict has a different number of parameter groups"):
        opt2.load_state_dict(sd)
    opt3 = tapegrad.optim.SGD([a, tapegrad.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="doesn't match the size of optimizer's group"):
        opt3.load_state_dict(sd)


# ----- errors and repr ----------------------------------------------------------------------

def _err(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        return type(e).__name__, str(e)
    return None


@pytest.mark.parametrize("make", [
    lambda m, p: m.optim.SGD(p, lr=-0.1),
    lambda m, p: m.optim.SGD(p, lr=0.1, momentum=-1),
    lambda m, p: m.optim.SGD(p, lr=0.1, weight_decay=-1),
    lambda m, p: m.optim.SGD(p, lr=0.1, nesterov=True),
    lambda m, p: m.optim.SGD([], lr=0.1),
    lambda m, p: m.optim.SGD(p[0], lr=0.1),
    lambda m, p: m.optim.SGD([1.0], lr=0.1),
    lambda m, p: m.optim.SGD([{"params": {p[0]}}], lr=0.1),
    lambda m, p: m.optim.SGD([p[0] * 2], lr=0.1),
    lambda m, p: m.optim.SGD([{"params": p}, {"params": p}], lr=0.1),
    lambda m, p: m.optim.Adam(p, lr=-1e-3),
    lambda m, p: m.optim.Adam(p, eps=-1.0),
    lambda m, p: m.optim.Adam(p, betas=(1.0, 0.999)),
    lambda m, p: m.optim.Adam(p, betas=(0.9, -0.1)),
    lambda m, p: m.optim.Adam(p, betas=(0, 0.999)),
    lambda m, p: m.optim.AdamW(p, weight_decay=-0.1),
    lambda m, p: m.optim.RMSprop(p, alpha=-0.5),
    lambda m, p: m.optim.RMSprop(p, momentum=-0.5),
], ids=lambda f: "")
def test_errors_match_torch(make):
    torch = pytest.importorskip("torch")
    mine = _err(lambda: make(tapegrad, [tapegrad.zeros(2, requires_grad=True)]))
    theirs = _err(lambda: make(torch, [torch.zeros(2, requires_grad=True)]))
    assert mine is not None and mine == theirs


def test_learning_rate_error_text():
    with pytest.raises(ValueError, match=r"^Invalid learning rate: -0.1$"):
        tapegrad.optim.SGD([tapegrad.zeros(1, requires_grad=True)], lr=-0.1)
    with pytest.raises(ValueError, match=r"^optimizer got an empty parameter list$"):
        tapegrad.optim.Adam([])


@pytest.mark.parametrize("cls,kw", [("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", {}), ("AdamW", dict(amsgrad=True)),
                                    ("RMSprop", dict(centered=True))])
def test_repr_and_defaults_match_torch(cls, kw):
    torch = pytest.importorskip("torch")
    mine = getattr(tapegrad.optim, cls)([tapegrad.zeros(2, requires_grad=True)], **kw)
    theirs = getattr(torch.optim, cls)([torch.zeros(2, requires_grad=True)], **kw)
    assert repr(mine) == repr(theirs)
    assert mine.defaults == theirs.defaults
    assert repr(mine.state) == repr(theirs.state) == "defaultdict(<class 'dict'>, {})"


# ----- lr schedulers ------------------------------------------------------------------------

SCHEDULERS = [
    ("StepLR", dict(step_size=7, gamma=0.5)),
    ("MultiStepLR", dict(milestones=[3, 8, 8, 20], gamma=0.3)),
    ("ExponentialLR", dict(gamma=0.9)),
    ("CosineAnnealingLR", dict(T_max=10)),
    ("CosineAnnealingLR", dict(T_max=10, eta_min=0.01)),
    ("LambdaLR", dict(lr_lambda=lambda e: 1.0 / (1 + e))),
]


@pytest.mark.parametrize("name,kw", SCHEDULERS, ids=[s[0] + str(i) for i, s in enumerate(SCHEDULERS)])
def test_scheduler_values_match_torch(name, kw):
    torch = pytest.importorskip("torch")
    seqs = []
    for m in (tapegrad, torch):
        w = m.tensor([1.0], requires_grad=True)
        v = m.tensor([1.0], requires_grad=True)
        opt = m.optim.SGD([{"params": [w]}, {"params": [v], "lr": 0.3}], lr=0.1)
        sched = getattr(m.optim.lr_scheduler, name)(opt, **kw)
        seq = [(sched.last_epoch, sched.get_last_lr())]
        for _ in range(30):
            w.grad, v.grad = m.tensor([1.0]), m.tensor([1.0])
            opt.step()
            sched.step()
            seq.append((sched.last_epoch, sched.get_last_lr(), [g["lr"] for g in opt.param_groups]))
        seqs.append((seq, w.tolist(), v.tolist(), [g["initial_lr"] for g in opt.param_groups]))
    assert seqs[0][0] == seqs[1][0]            # exactly: the same recursive formulas
    assert seqs[0][3] == seqs[1][3]
    np.testing.assert_allclose(seqs[0][1] + seqs[0][2], seqs[1][1] + seqs[1][2], rtol=1e-5)


def test_scheduler_state_dict_matches_torch():
    torch = pytest.importorskip("torch")
    sds = []
    for m in (tapegrad, torch):
        opt = m.optim.SGD([m.zeros(1, requires_grad=True)], lr=0.1)
        sched = m.optim.lr_scheduler.StepLR(opt, step_size=2)
        for _ in range(3):
            opt.step()
            sched.step()
        sds.append(sched.state_dict())
    assert sds[0] == sds[1]
    opt = tapegrad.optim.SGD([tapegrad.zeros(1, requires_grad=True)], lr=0.1)
    sched = tapegrad.optim.lr_scheduler.StepLR(opt, step_size=2)
    sched.load_state_dict(sds[0])
    assert sched.last_epoch == 3 and sched.get_last_lr() == sds[0]["_last_lr"]


def test_scheduler_step_before_optimizer_step_warns_like_torch():
    torch = pytest.importorskip("torch")
    got = []
    for m in (tapegrad, torch):
        opt = m.optim.SGD([m.zeros(1, requires_grad=True)], lr=0.1)
        sched = m.optim.lr_scheduler.StepLR(opt, step_size=1)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            sched.step()
        got.append([(x.category, str(x.message)) for x in w])
    assert got[0] == got[1]
    assert len(got[0]) == 1 and got[0][0][0] is UserWarning
    assert got[0][0][1].startswith("Detected call of `lr_scheduler.step()` before `optimizer.step()`. ")
    # in the right order: no warning
    opt = tapegrad.optim.SGD([tapegrad.zeros(1, requires_grad=True)], lr=0.1)
    sched = tapegrad.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == 0.05


def test_scheduler_requires_an_optimizer():
    with pytest.raises(TypeError, match="^list is not an Optimizer$"):
        tapegrad.optim.lr_scheduler.StepLR([], step_size=1)
