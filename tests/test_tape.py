"""The tape as a program: golden printouts, lifetime, and the debug address check."""
import numpy as np
import pytest

import tapegrad as torch
from tapegrad.tape.tape import TAPE


def test_article_000_tape_golden():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    x._name = "x"
    z = torch.sin(x ** 2)
    assert str(torch.tape(z)) == (
        "%0:f32[2] = pow x 2.0                   # PowBackward0\n"
        "%1:f32[2] = sin %0                      # SinBackward0")


def test_mixed_graph_golden():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    w = torch.ones(2, 3, requires_grad=True)
    names = {id(x): "x", id(w): "w"}
    y = x ** 2
    z = torch.sin(y) * 3 + y
    q = (w.T @ z).sum()
    assert str(torch.tape(q, names)) == "\n".join([
        "%0:f32[2] = pow x 2.0                   # PowBackward0",
        "%1:f32[2] = sin %0                      # SinBackward0",
        "%2:f32[2] = mul %1 3.0                  # MulBackward0",
        "%3:f32[2] = add %2 %0                   # AddBackward0",
        "%4:f32[3,2] = permute w                 # PermuteBackward0",
        "%5:f32[3] = mv %4 %3                    # MvBackward0",
        "%6:f32[] = sum %5                       # SumBackward0"])


def test_node_is_a_view_of_its_record():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = x * x
    assert y.grad_fn.record_index == y._rec
    assert y.grad_fn is y.grad_fn


def test_no_grad_records_are_marked():
    a = torch.ones(3)
    b = a * 2
    line = str(torch.tape()).splitlines()[-1]
    assert line.endswith("# MulBackward0  (no grad)")
    assert b.tolist() == [2.0, 2.0, 2.0]


def test_freed_records_after_backward():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = (x ** 2).sum()
    y.backward()
    assert "[freed]" in str(torch.tape(y)).splitlines()[0]


# NOTE: the two lifetime tests run in a fresh process: a non-leaf tensor that an earlier test left alive
# (pytest keeps the frames of failed and xfailed tests) pins every later row (tests/test_storage.py,
# test_long_lived_non_leaf_does_not_pin_the_tape), which is not what these tests are about.
_FLOOR = """
import tapegrad as torch
from tapegrad.tape.tape import TAPE
w = torch.randn(4, 3, requires_grad=True)
floor = None
for step in range(3000):
    x = torch.randn(5, 4)
    loss = torch.tanh(x @ w).sum()
    loss.backward()
    if step == 100:
        TAPE.sweep()
        floor = len(TAPE)
TAPE.sweep()
assert len(TAPE) <= max(floor, 64), (len(TAPE), floor)
"""

_FLAT = """
import tapegrad as torch
from tapegrad.tape.tape import TAPE
a = torch.ones(16)
with torch.no_grad():
    for _ in range(3 * 4096):
        a = a * 1.0 + 0.0
TAPE.sweep()
assert len(TAPE) < 4096, len(TAPE)
assert a.tolist() == [1.0] * 16
"""


def _fresh(code):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def test_tape_returns_to_floor():
    _fresh(_FLOOR)


def test_no_grad_loop_stays_flat():
    _fresh(_FLAT)


def test_debug_check_catches_a_bad_address():
    from tapegrad.tape.debug import check_addresses
    x = torch.tensor([1.0, 2.0])
    y = x * 3  # noqa: F841  (pending record)
    T, _ = TAPE.cols()
    i = TAPE.n - 1
    assert check_addresses(TAPE, T, i, i + 1)
    bad = T.copy()
    bad[i, 3] = 16  # an address no buffer covers
    with pytest.raises(AssertionError, match="outside every live buffer"):
        check_addresses(TAPE, bad, i, i + 1)
    del T


def test_debug_mode_runs_a_graph(tmp_path):
    import subprocess
    import sys
    code = ("import tapegrad as torch\n"
            "x = torch.tensor([1.0, 2.0], requires_grad=True)\n"
            "z = torch.sin(x ** 2).sum(); z.backward(); print(x.grad.tolist())\n")
    env = dict(__import__("os").environ, TAPEGRAD_DEBUG="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    g = eval(out.stdout.strip())
    assert np.allclose(g, 2 * np.array([1.0, 2.0]) * np.cos(np.array([1.0, 4.0])), rtol=1e-5)


def test_a_training_loop_keeps_few_escape_records():
    """A backward sweeps first once 64 escape records are held (Tape.backward_many's NOTE): a
    training loop's dead step graphs go while young, and the tape stays short."""
    import gc
    from tapegrad.tape import tape as tape_mod
    model = torch.nn.Linear(10, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(100, 10), torch.randn(100, 1)
    # the bound doubles while escape records are live: an earlier test's big graph leaves it high
    gc.collect()
    TAPE.sweep()
    TAPE.py_sweep_at = tape_mod._PY_SWEEP
    lens = []
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        lens.append(len(TAPE.py))
    del loss
    gc.collect()
    assert max(lens[50:]) <= 2 * tape_mod._PY_SWEEP + 8, max(lens)


def test_mark_is_typed_without_literals():
    """mark_all calls replay_cpu.mark with `left` typed int64: from `left = 0`, Numba also
    compiled a mark for Literal[int](0) on every cold first backward (~0.5 s of C0 cold).
    Typing mark_all afresh (its cached code would skip typing) shows which marks it asks for."""
    from numba import njit, types
    from tapegrad.kernels import lifetime, replay_cpu as R
    fresh = njit(cache=False)(lifetime.mark_all.py_func)
    fresh.compile((types.int64[:, ::1], types.int64[::1], types.int64[::1], types.int64, types.int64[::1]))
    literal = [sig for sig in R.mark.signatures if any(isinstance(a, types.Literal) for a in sig)]
    assert R.mark.signatures and not literal, R.mark.signatures
