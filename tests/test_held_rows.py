"""A loop that keeps every step's loss (`losses.append(loss)`) keeps those rows on the tape.
What a step costs must not grow with them: the in-place log's prune reads only the rows after
its low-water mark (Note [prune low-water mark]), and a backward's marks and gradient addresses
come from one zeroed pair the tape keeps (Note [backward's zeroed arrays]). Timing is measured
in bench/ (and in the closing notes); these tests check the mechanisms and that no answer
changes."""
import numpy as np
import pytest

import tapegrad


def _tape():
    import sys
    return sys.modules["tapegrad.tape.tape"].TAPE


def _loop(m, steps, hold, w, v, opt):
    for _ in range(steps):
        opt.zero_grad()
        loss = ((w * v).sum() + (v * v).sum())
        loss.backward()
        opt.step()
        hold.append(loss)


_PRUNE_SCAN = """
import sys
import tapegrad
from tapegrad.kernels import lifetime
Tape = sys.modules["tapegrad.tape.tape"].Tape
tape = sys.modules["tapegrad.tape.tape"].TAPE
scanned, inside = [], []
real, prune = lifetime.sweep, Tape.prune_inplace_log

def spy(T, *args):
    if inside:
        scanned.append((T.shape[0], tape.n))
    return real(T, *args)

def spy_prune(self):
    inside.append(1)
    try:
        return prune(self)
    finally:
        inside.pop()

lifetime.sweep, Tape.prune_inplace_log = spy, spy_prune
w = tapegrad.tensor([1.0, 2.0], requires_grad=True)
v = tapegrad.tensor([3.0, 4.0], requires_grad=True)
opt = tapegrad.optim.SGD([w, v], lr=0.01)
held = []
for _ in range(300):
    opt.zero_grad()
    loss = (w * v).sum() + (v * v).sum()
    loss.backward()
    opt.step()
    held.append(loss)
print(scanned)
"""


def test_prune_reads_only_rows_after_its_low_water_mark():
    """With 300 held losses on the tape, each prune of the in-place log reads the rows since
    the previous one, not the whole tape (before: every prune ran the lifetime sweep over
    every row: 190 -> 365 us a W5a step after 30k held steps). In a fresh process: a graph
    an earlier test left alive and unbackwarded would hold the mark at its rows."""
    import ast
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", _PRUNE_SCAN], cwd=root, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-800:]
    scanned = ast.literal_eval(r.stdout.strip().splitlines()[-1])
    late = [s for s in scanned if s[1] >= 600]      # prunes with at least 600 rows on the tape
    assert late, scanned[-5:]
    assert max(s[0] for s in late) <= 200, late[-5:]


@pytest.mark.parametrize("made", ["before", "between"])
def test_version_error_with_held_losses(made):
    """A graph made before, or between, runs of held-loss steps that write the parameters in
    place still raises PyTorch's version-counter error, with PyTorch's message (the prune's
    low-water mark stops at the first row a write can still hit)."""
    torch = pytest.importorskip("torch")
    msgs = []
    for m in (tapegrad, torch):
        w = m.tensor([1.0, 2.0], requires_grad=True)
        v = m.tensor([3.0], requires_grad=True)
        opt = m.optim.SGD([w, v], lr=0.01)
        held = []
        if made == "before":
            old = (w * w).sum()
        _loop(m, 60, held, w, v, opt)
        if made == "between":
            old = (w * w).sum()
        _loop(m, 60, held, w, v, opt)
        with pytest.raises(RuntimeError) as e:
            old.backward()
        msgs.append(str(e.value))
        del old, e, held
    assert msgs[0] == msgs[1]


def _pool_is_zero(tape):
    z = tape._zeros
    assert z is not None, "a backward kept the zeroed pair"
    assert not z[0].any() and not z[1].any()


def test_backward_gives_back_its_arrays_zeroed():
    """Each way out of a backward leaves the tape's (need, gaddr) pair all zero: a normal pass,
    a freed graph's error, a pass from a hook that runs another backward, a long graph that grows
    the pair. The gradients match PyTorch's."""
    torch = pytest.importorskip("torch")
    tape = _tape()
    got = {}
    for m in (tapegrad, torch):
        x = m.tensor(np.linspace(-1, 1, 6), requires_grad=True)
        w = m.tensor(np.linspace(0.5, 2, 6), requires_grad=True)
        y = (x * w).tanh().sum()
        y.backward(retain_graph=True)
        if m is tapegrad:
            _pool_is_zero(tape)
        y.backward()
        with pytest.raises(RuntimeError):
            y.backward()
        if m is tapegrad:
            _pool_is_zero(tape)
        inner = []
        h = (x * x).exp()
        def hook(g):
            with m.enable_grad():       # (a pass runs with grad mode off, as torch's)
                inner.append(m.autograd.grad((w * w * w).sum(), w)[0])
            return g * 2
        h.register_hook(hook)
        (h * w).sum().backward()
        z = x
        for _ in range(3000):                   # longer than the pair: it grows
            z = z * 1.0001
        z.sum().backward()
        if m is tapegrad:
            _pool_is_zero(tape)
            assert len(tape._zeros[0]) >= tape.n
        got[m.__name__] = (x.grad.detach().numpy().copy(), w.grad.detach().numpy().copy(),
                           inner[0].detach().numpy().copy())
    for a, b in zip(got["tapegrad"], got["torch"]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
