"""Forked children (kernels/opfn.py's Note [forked children]).

With Numba's OpenMP layer (the default where it loads), a child forked after the parent's
threads ran must start no parallel loop (Numba would terminate it). The fork handler sets
FT[SERIAL] in the child, and its replays run on one thread: large elementwise runs record by
record, the backward's tiles in order, no fused backward, the parallel range's products on
_sgemm. The child must compute the parent's bits. The work below reaches each of those paths:
products in the parallel range (B = W.T and B with contiguous rows, float32 and float64), a
forward run of large elementwise records flushed by item() then its backward (fwd_run_*,
bwd_run_*), and a pending large chain ending in a sum (the fused backward in the parent).
Each check runs in a fresh interpreter (a fork inside pytest's process is not what a user
forks from), once per threading layer.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tapegrad as tg
from tapegrad import config
from tapegrad.kernels import opfn
from tapegrad.kernels import replay_cpu as R

N = (1 << 17) + 5          # above config.PARALLEL_THRESHOLD, with a tail that is no whole vector


def work(tg=tg):
    """Values and gradients through every path Note [forked children] reroutes (one array)."""
    rng = np.random.default_rng(3)
    out = []
    for dt in (tg.float32, tg.float64):
        x = tg.tensor(rng.standard_normal((64, 96)), dtype=dt, requires_grad=True)
        w = tg.tensor(rng.standard_normal((80, 96)), dtype=dt, requires_grad=True)
        u = tg.tensor(rng.standard_normal((80, 72)), dtype=dt, requires_grad=True)
        h = (x @ w.T).tanh()                   # 64 x 80 x 96, B = W.T
        y = h @ u                              # 64 x 72 x 80, B's rows contiguous
        (y * y).sum().backward()
        out += [h, y, x.grad, w.grad, u.grad]
        v = tg.tensor(rng.standard_normal(N), dtype=dt, requires_grad=True)
        s = (v.sin() * (-(v * v)).exp()).sum()
        s.item()                               # flushed: the forward's tile run, then its backward
        s.backward()
        out += [s, v.grad]
        q = tg.tensor(rng.standard_normal(N), dtype=dt, requires_grad=True)
        (q.cos() * q + q.exp()).sum().backward()     # pending: fused in a parent
        out.append(q.grad)
    return np.concatenate([np.asarray(t.detach().numpy(), np.float64).ravel() for t in out])


_SCRIPT = textwrap.dedent("""
    import os, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_fork import work
    from tapegrad import config
    from tapegrad.kernels import opfn, replay_cpu as R
    assert config.THREADING_LAYER == {layer!r}, config.THREADING_LAYER
    parent = work()
    assert opfn.FT[R.SERIAL] == 0
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            got = work()
            flag = int(opfn.FT[R.SERIAL])
            code = 0 if np.array_equal(got, parent) and flag == (config.THREADING_LAYER == "omp") else 4
            os.write(wr, ("flag %d, differ %d" % (flag, int((got != parent).sum()))).encode())
        finally:
            os._exit(code)
    os.close(wr)
    _, status = os.waitpid(pid, 0)
    said = os.read(rd, 200).decode()
    print("child:", said, "status", status)
    again = work()                     # the parent's threads still work after the fork
    assert np.array_equal(again, parent)
    sys.exit(0 if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else 1)
""")


def _layers():
    return ["workqueue"] + (["omp"] if config._omp_loads() else [])


@pytest.mark.parametrize("layer", ["omp", "workqueue"])
def test_forked_child_computes_the_parents_bits(layer):
    """A child forked after the parent's parallel loops ran computes the same values and
    gradients (bit for bit) and exits normally; the parent goes on afterwards."""
    if layer not in _layers():
        pytest.skip("Numba's OpenMP threading layer does not load here")
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, NUMBA_THREADING_LAYER=layer)
    r = subprocess.run([sys.executable, "-c", _SCRIPT.format(tests=here, layer=layer)], env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "child: flag %d, differ 0 status 0" % (layer == "omp") in r.stdout, r.stdout


def test_serial_flag_keeps_the_bits():
    """FT[SERIAL] set in this process (what a forked child has): the same bits as without it, and
    the parallel range's products leave _pgemm for _sgemm only when the products split at all."""
    plain = work()
    opfn.ensure_products(0, config.PAR_GEMM)
    FT = opfn.FT
    saved = int(FT[R.SERIAL])
    FT[R.SERIAL] = 1
    try:
        serial = work()
        if config.PAR_GEMM:
            assert FT[R.SGEMM] and FT[R.SGEMM] != FT[R.PGEMM]
    finally:
        FT[R.SERIAL] = saved
    np.testing.assert_array_equal(serial, plain)
    np.testing.assert_array_equal(work(), plain)


def test_work_matches_numpy():
    """The work the fork test compares is right, not only repeatable: every value and gradient
    against NumPy in float64 (the analytic derivatives)."""
    got = work()
    rng = np.random.default_rng(3)
    at = 0
    for tol in (2e-3, 1e-9):             # float32's block, then float64's
        X, W, U = rng.standard_normal((64, 96)), rng.standard_normal((80, 96)), rng.standard_normal((80, 72))
        V, Q = rng.standard_normal(N), rng.standard_normal(N)
        if tol > 1e-6:                   # the float32 run's inputs are these, rounded
            X, W, U, V, Q = (a.astype(np.float32).astype(np.float64) for a in (X, W, U, V, Q))
        H = np.tanh(X @ W.T)
        Y = H @ U
        dY = 2 * Y
        dpre = (dY @ U.T) * (1 - H * H)
        S = (np.sin(V) * np.exp(-V * V)).sum()
        dV = (np.cos(V) - 2 * V * np.sin(V)) * np.exp(-V * V)
        dQ = -np.sin(Q) * Q + np.cos(Q) + np.exp(Q)
        want = np.concatenate([a.ravel() for a in (H, Y, dpre @ W, dpre.T @ X, H.T @ dY, np.array([S]), dV, dQ)])
        part = got[at:at + want.size]
        at += want.size
        np.testing.assert_allclose(part, want, rtol=tol, atol=tol * max(1.0, np.abs(want).max()) * 1e-2)
    assert at == got.size
