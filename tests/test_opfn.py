"""Op functions (kernels/gen_cpu.py's Note [op functions], kernels/opfn.py): elementwise rules
and the native records' code are compiled one op at a time, the first time a tape runs them,
and the replay resumes where it stopped for one. Checked: only the ops a program uses are
compiled (a fresh process, a fresh cache), and a pass that meets a missing function halfway
(forward, backward, tile runs, the fused pass) gives the same values as one that does not."""
import os
import subprocess
import sys

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.kernels import opfn
from tapegrad.kernels import replay_cpu as R
from tapegrad.ops.table import OPS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_fresh_process_compiles_only_the_ops_it_uses(tmp_path):
    code = ("import tapegrad as tg\n"
            "from tapegrad.kernels import opfn\n"
            "x = tg.tensor([0.5, -1.0, 2.0], requires_grad=True)\n"
            "(x * x + 1.0).sum().backward()\n"
            "print(sorted(opfn._KEEP), x.grad.tolist())\n")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr
    keep, grad = out.stdout.strip().split("] ")
    slots = sorted(int(s) for s in keep.strip("[").split(", "))
    want = sorted(op * 4 + d for op in (OPS["mul"].opcode, OPS["add_scalar"].opcode) for d in (0, 1))
    assert slots == want            # float32 forward and backward of mul and add, nothing else
    assert np.allclose(eval(grad), [1.0, -2.0, 4.0])


@pytest.fixture
def empty_table():
    """The table as a fresh process has it (the functions load from the disk cache again). A fresh
    process has no records waiting either: an earlier test's unflushed records (a Linear's addmm)
    would reach the replay with their kind's slot emptied behind the record path's back (a
    segfault: that kind's READY flag says not made, so nothing refills it), so they run first."""
    from tapegrad.tape.tape import TAPE
    TAPE.flush()
    saved = opfn.FT.copy()
    keep = dict(opfn._KEEP)
    ready = bytes(opfn.READY)
    opfn.FT[:] = 0
    opfn._KEEP.clear()
    opfn.READY[:] = bytes(len(ready))
    yield
    opfn.FT[:] = saved
    opfn._KEEP.clear()
    opfn._KEEP.update(keep)
    opfn.READY[:] = ready


def chain(x, w):
    """Ops in an order whose backward meets each function for the first time halfway."""
    return (tg.tanh(x * w + 1.0) * tg.sin(x) - tg.exp(-x * x) / (w * w + 2.0)).sum()


def run_chain(xn, wn, flush_first, clear=False):
    """(loss, x.grad, w.grad); flush_first: the forward runs before backward (else a large chain
    fuses); clear: the table is emptied between the two, so that the backward meets the misses."""
    x = tg.tensor(xn, requires_grad=True)
    w = tg.tensor(wn, requires_grad=True)
    loss = chain(x, w)
    if flush_first:
        from tapegrad.tape.tape import TAPE
        TAPE.flush()
    if clear:
        opfn.FT[:] = 0
    loss.backward()
    return loss.item(), x.grad.numpy().copy(), w.grad.numpy().copy()


@pytest.mark.parametrize("n", [7, 70_001])          # one record at a time; tile runs and the fused pass
@pytest.mark.parametrize("flush_first,clear", [(False, False), (True, False), (True, True)])
def test_missing_functions_resume_where_they_stopped(empty_table, n, flush_first, clear):
    rng = np.random.default_rng(0)
    xn, wn = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    got = run_chain(xn, wn, flush_first, clear)     # compiles (or loads) as it goes
    assert opfn.FT.any()
    again = run_chain(xn, wn, flush_first)          # every function there from the start
    assert got[0] == again[0]
    for a, b in zip(got[1:], again[1:]):
        np.testing.assert_array_equal(a, b)
    # and against the definition, in float64
    x, w = xn.astype(np.float64), wn.astype(np.float64)
    u, d = x * w + 1.0, w * w + 2.0
    t = np.tanh(u)
    e = np.exp(-x * x)
    gx = (1 - t * t) * w * np.sin(x) + t * np.cos(x) + 2 * x * e / d
    gw = (1 - t * t) * x * np.sin(x) + e * 2 * w / (d * d)
    np.testing.assert_allclose(got[1], gx, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(got[2], gw, rtol=2e-4, atol=2e-5)


def test_missing_native_function_resumes(empty_table):
    """A matrix product (a native record) as the first thing a pass meets."""
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((4, 3)), rng.standard_normal((3, 2))
    A = tg.tensor(a, requires_grad=True)
    B = tg.tensor(b, requires_grad=True)
    (tg.tanh(A @ B)).sum().backward()
    g = 1 - np.tanh(a @ b) ** 2
    np.testing.assert_allclose(A.grad.numpy(), g @ b.T, rtol=1e-12)
    np.testing.assert_allclose(B.grad.numpy(), a.T @ g, rtol=1e-12)
    assert opfn.FT[1 * 4 + 1 * 2] and opfn.FT[1 * 4 + 1 * 2 + 1]     # the float64 native functions


def test_every_elementwise_op_has_its_functions():
    """The generated table names a forward and a backward per dtype for every elementwise row."""
    for spec in OPS.values():
        if spec.kind in ("unary", "binary"):
            names = R.OPFN[spec.opcode]
            assert len(names) == 4 and all(callable(getattr(R, n)) for n in names)


def test_native_kinds_compile_when_first_made(empty_table):
    """Note [native kinds]: a native record's kind gets its functions when its first record is
    made, and only then (a program compiles the kinds it uses); the replay runs them."""
    def slots(kind):
        return opfn.FT[R.NAT + kind * 4 + 2], opfn.FT[R.NAT + kind * 4 + 3]   # float64
    rng = np.random.default_rng(2)
    a, b, t = rng.standard_normal((5, 3)), rng.standard_normal((3, 4)), rng.standard_normal((5, 4))
    A = tg.tensor(a, requires_grad=True)
    B = tg.tensor(b, requires_grad=True)
    y = A @ B                                        # kind 2, a product
    assert all(slots(2)) and not any(slots(1))       # (addmm, kind 1, shares them: not made yet)
    assert not any(slots(3)) and not any(slots(6))
    loss = tg.nn.functional.mse_loss(y, tg.tensor(t))     # kind 3
    assert all(slots(3)) and not any(slots(6))
    loss.backward()
    g = 2 * (a @ b - t) / t.size
    np.testing.assert_allclose(loss.item(), np.mean((a @ b - t) ** 2), rtol=1e-12)
    np.testing.assert_allclose(A.grad.numpy(), g @ b.T, rtol=1e-12)
    np.testing.assert_allclose(B.grad.numpy(), a.T @ g, rtol=1e-12)
