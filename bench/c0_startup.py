"""C0: start-up and compile latency, measured in fresh Python processes.

BENCHMARKS.md's C0: each repetition starts a new interpreter that imports the peer, builds W5a
(article 001: ``nn.Linear(10, 1)``, ``nn.MSELoss()``, ``optim.SGD(lr=0.01)``, the batch of 100
rows and the initial parameters of ``w5_article_loops.make_data``, read from a file) and runs one
training step (``zero_grad(); loss_fn(model(x), y).backward(); step(); loss.item()``). Reported
separately, in four tables:

* import time (``import tapegrad`` / ``torch`` / ``numba`` / ``jax`` / ``autograd``),
* first W5a step time (building the model and the step: recording, the first forward flush,
  the first reverse replay and the first SGD update: this is where JIT compilation or cache
  loading shows; reading the data file is not timed),

each with a **warm** cache (the default cache, primed by one untimed run
first) and a **cold** cache (``NUMBA_CACHE_DIR`` pointed at a new, empty
temp directory for every run). The ``njit`` peer is ``import numba`` plus
the first call of a hand-written ``@njit(cache=True)`` step (forward, gradient, update), the
floor for a Numba-based package; ``jax`` and ``autograd`` import the package and
its ``numpy`` and take the first ``value_and_grad`` of the same loss (eager, no
jit) and the update. torch, jax and autograd keep no Numba cache: their cold and warm runs
differ only by noise. Children run with ``PYTHONDONTWRITEBYTECODE`` unset, so that
the primed run leaves tapegrad's ``.pyc`` files as a user's would. Process wall time
(interpreter start to exit) and the build/step split are kept in the JSON rows' ``extra``.
Every peer's loss and parameters after the step are cross-checked against a float64 NumPy
step from the same data (rtol 1e-4). Until session 28 C0 timed a tiny graph,
``(tanh(x*w + 1) * sin(x)).sum()`` and one ``backward()``, instead (results before
2026-12-06). ``--smoke`` runs the warm-cache tables only (a cold compile takes too long
for CI).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from .harness import Row, Table, checked_row, loud
from .w5_article_loops import LR, make_data

ID = "C0"
TITLE = "start-up"
PEERS = ("tapegrad", "torch", "njit", "jax", "autograd")
NO_NUMBA_CACHE = ("torch", "jax", "autograd")
NOTES = {"njit": "import numba + first call of a hand-written @njit(cache=True) step",
         "jax": "import jax, jax.numpy + first jax.value_and_grad call (no jit)",
         "autograd": "import autograd, autograd.numpy + first autograd.value_and_grad call"}
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK_DIR = os.path.join(tempfile.gettempdir(), "tapegrad-bench-c0")
TIMEOUT_S = 600

#: the environment as it was before this process imported anything that sets
#: NUMBA_CACHE_DIR (tapegrad.config does, with setdefault); children start from it
_ORIGINAL_ENV = dict(os.environ)

CHILD = r"""
"Child process of bench C0: prints one JSON line with its timings."
import json, sys, time
t0 = time.perf_counter()
peer, data_path = sys.argv[1], sys.argv[2]
if peer == "njit":
    import numpy as np
    import numba
else:
    import importlib
    mod = importlib.import_module(peer)
    xnp = importlib.import_module(peer + ".numpy") if peer in ("jax", "autograd") else None
    import numpy as np
t1 = time.perf_counter()
with np.load(data_path) as f:                  # the batch and the initial parameters (untimed)
    X, Y, W0, B0, lr = f["x"], f["y"], f["weight"], f["bias"], float(f["lr"])
t1b = time.perf_counter()
if peer == "njit":
    @numba.njit(cache=True)
    def step(X, Y, W, b, lr):
        n = X.shape[0]
        gW = np.zeros_like(W)
        gb = np.zeros_like(b)
        loss = np.float32(0.0)
        for i in range(n):
            o = b[0]
            for j in range(X.shape[1]):
                o += X[i, j] * W[0, j]
            d = o - Y[i, 0]
            loss += d * d
            for j in range(X.shape[1]):
                gW[0, j] += np.float32(2.0) * d * X[i, j] / n
            gb[0] += np.float32(2.0) * d / n
        W -= np.float32(lr) * gW
        b -= np.float32(lr) * gb
        return loss / n

    W, b = W0.copy(), B0.copy()
    t2 = time.perf_counter()
    loss = float(step(X, Y, W, b, lr))
    out = [loss] + W.ravel().tolist() + b.tolist()
elif peer in ("jax", "autograd"):
    grad = mod.value_and_grad if peer == "jax" else importlib.import_module("autograd").value_and_grad
    f = lambda p: xnp.mean((xnp.dot(X, p[0].T) + p[1] - Y) ** 2)
    t2 = time.perf_counter()
    v, (gW, gb) = grad(f)((W0, B0))
    W, b = W0 - lr * np.asarray(gW), B0 - lr * np.asarray(gb)
    out = [float(v)] + np.asarray(W).ravel().tolist() + np.asarray(b).tolist()
else:                                          # tapegrad / torch: article 001's loop, one step
    nn, optim = mod.nn, mod.optim
    x, y = mod.tensor(X), mod.tensor(Y)
    model = nn.Linear(10, 1)
    model.weight = nn.Parameter(mod.tensor(W0))
    model.bias = nn.Parameter(mod.tensor(B0))
    loss_fn = nn.MSELoss()
    optimizer = optim.SGD(model.parameters(), lr=lr)
    t2 = time.perf_counter()
    optimizer.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    out = [loss.item()] + np.ravel(model.weight.tolist()).tolist() + model.bias.tolist()
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "build": t2 - t1b, "step": t3 - t2,
                  "first": t3 - t1b, "result": out, "init": W0.ravel().tolist() + B0.tolist()}))
"""


def _child_script():
    """Write the child script and W5a's data once (same path and mtime: numba's cache key)."""
    os.makedirs(WORK_DIR, exist_ok=True)
    path = os.path.join(WORK_DIR, "c0_child.py")
    try:
        with open(path) as f:
            same = f.read() == CHILD
    except OSError:
        same = False
    if not same:
        with open(path, "w") as f:
            f.write(CHILD)
    x, y, init = make_data("W5a")
    data = os.path.join(WORK_DIR, "c0_w5a.npz")
    np.savez(data, x=x, y=y, weight=init["weight"], bias=init["bias"], lr=LR)
    return path, data


def _env(peer, cache_dir):
    env = dict(_ORIGINAL_ENV)
    # Python's bytecode cache is part of a warm start, as Numba's is: a user's interpreter writes
    # .pyc files, and pip wrote the peers' at install. With PYTHONDONTWRITEBYTECODE set (as in
    # some sandboxes) tapegrad, installed editable, compiled its sources in every child: 0.22 s
    # of a 0.8 s import (session 23)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    elif peer == "njit" and "NUMBA_CACHE_DIR" not in env:
        env["NUMBA_CACHE_DIR"] = os.path.join(WORK_DIR, "njit-cache")
    return env


def run_child(script, peer, cache_dir=None):
    """One fresh process; returns its timings (plus ``process`` wall time). ``script``: the
    child's path and its data file's."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *script[:1], peer, *script[1:]], cwd=REPO_ROOT, env=_env(peer, cache_dir),
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    wall = time.perf_counter() - t0
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child process for {peer} exited {proc.returncode}:\n"
                           f"{proc.stderr.strip()[-4000:]}")
    out = json.loads(lines[-1])
    out["process"] = wall
    return out


def _runs(script, peer, mode, reps, prime=True):
    """``reps`` timed runs; warm mode first primes the cache with one untimed run."""
    if mode == "warm":
        if prime:
            run_child(script, peer)
        return [run_child(script, peer) for _ in range(reps)]
    runs = []
    for _ in range(reps):
        d = tempfile.mkdtemp(prefix="tapegrad-bench-cold-")
        try:
            runs.append(run_child(script, peer, cache_dir=d))
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return runs


def run(ctx):
    script = _child_script()
    reps = {"warm": ctx.reps(full=5, quick=2), "cold": ctx.reps(full=3, quick=1)}
    # a cold compile of tapegrad takes tens of seconds: --smoke measures the warm cache only
    modes = ("warm",) if ctx.smoke else ("warm", "cold")
    if ctx.smoke:
        print("(C0 --smoke: warm cache only; the cold-cache compile is measured in full and --quick runs)")
    tables = {}
    for mode in modes:
        for what, label in (("import", "import"), ("first", "first W5a step")):
            tables[mode, what] = Table(
                ID, f"{ID} {TITLE}: {label}, {mode} cache",
                {"cache": mode, "graph": "W5a: Linear(10, 1) + MSELoss + SGD, batch 100, "
                                         "one step (build + zero_grad/forward/backward/step/item)"},
                unit_note="fresh process per repetition" + ("; NUMBA_CACHE_DIR = new empty dir"
                                                            if mode == "cold" else ""))
    ref = _reference(script[1])
    for peer in PEERS:
        if not ctx.peers.wanted(peer):
            continue
        if not _importable(peer):
            for t in tables.values():
                t.rows.append(Row(peer, status="skipped", note="skipped (not installed)"))
            continue
        for mode in modes:
            where = f"{ID} {mode} cache"
            t_imp, t_first = tables[mode, "import"], tables[mode, "first"]
            try:
                # torch, jax and autograd have no Numba cache to prime: --smoke saves their untimed run
                runs = _runs(script, peer, mode, reps[mode], prime=not (ctx.smoke and peer in NO_NUMBA_CACHE))
            except Exception as exc:  # noqa: BLE001 - report, keep the suite running
                msg = f"{type(exc).__name__}: {exc}"
                loud(f"{where}: peer {peer} failed: {msg}")
                ctx.fail(where, peer, msg)
                for t in (t_imp, t_first):
                    t.rows.append(Row(peer, status="ERROR", note=msg.splitlines()[-1][:200],
                                      extra={"error": msg}))
                continue
            got = {"loss, parameters after the step": np.array(runs[0]["result"])}
            row = checked_row(ctx, where, peer, got, ref, rtol=1e-4, atol=1e-6, ref_name="float64 NumPy")
            if row.status == "ok":
                cold = "no Numba cache (cold = warm)" if mode == "cold" and peer in NO_NUMBA_CACHE else ""
                row.note = "; ".join(n for n in (NOTES.get(peer, ""), cold) if n)
            for t, key in ((t_imp, "import"), (t_first, "first")):
                r = Row(peer, status=row.status, note=row.note, times=[x[key] for x in runs],
                        extra={"runs": runs})
                t.rows.append(r)
    order = [tables[m, w] for m in modes for w in ("import", "first")]
    return order


def _reference(data_path):
    """W5a's first loss and parameters after one SGD step, in float64 NumPy from the same data."""
    with np.load(data_path) as f:
        x, y, w, b, lr = (f[k].astype(np.float64) for k in ("x", "y", "weight", "bias", "lr"))
    r = x @ w.T + b - y                         # (100, 1) residuals
    g = 2.0 * r / r.size                        # d mean(r^2) / d r
    w1, b1 = w - lr * (g.T @ x), b - lr * g.sum(0)
    return {"loss, parameters after the step": np.concatenate([[np.mean(r * r)], w1.ravel(), b1])}


def _importable(peer):
    import importlib.util
    name = {"njit": "numba"}.get(peer, peer)
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
