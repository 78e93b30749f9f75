"""C0: start-up and compile latency, measured in fresh Python processes.

Each repetition starts a new interpreter that imports the peer, builds a
tiny graph (``(tanh(x*w + 1) * sin(x)).sum()`` over 3-element tensors) and
calls ``backward()`` once. Reported separately, in four tables:

* import time (``import tapegrad`` / ``torch`` / ``numba`` / ``jax`` / ``autograd``),
* first graph + backward time (recording, the first forward flush and the
  first reverse replay: this is where JIT compilation or cache loading shows),

each with a **warm** cache (the default cache, primed by one untimed run
first) and a **cold** cache (``NUMBA_CACHE_DIR`` pointed at a new, empty
temp directory for every run). The ``njit`` peer is ``import numba`` plus
the first call of a hand-written ``@njit(cache=True)`` gradient, the floor
for a Numba-based package; ``jax`` and ``autograd`` import the package and
its ``numpy`` and take the first ``grad`` of the same function (eager, no
jit). torch, jax and autograd keep no Numba cache: their cold and warm runs
differ only by noise. Children run with ``PYTHONDONTWRITEBYTECODE`` unset, so that
the primed run leaves tapegrad's ``.pyc`` files as a user's would. Process wall time (interpreter start to exit) and the
build/backward split are kept in the JSON rows' ``extra``. tapegrad's
gradients are cross-checked against torch's (computed in this process).
``--smoke`` runs the warm-cache tables only (a cold compile takes too long
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

ID = "C0"
TITLE = "start-up"
PEERS = ("tapegrad", "torch", "njit", "jax", "autograd")
NO_NUMBA_CACHE = ("torch", "jax", "autograd")
NOTES = {"njit": "import numba + first @njit(cache=True) call",
         "jax": "import jax, jax.numpy + first jax.grad call (no jit)",
         "autograd": "import autograd, autograd.numpy + first autograd.grad call"}
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK_DIR = os.path.join(tempfile.gettempdir(), "tapegrad-bench-c0")
TIMEOUT_S = 600

#: the environment as it was before this process imported anything that sets
#: NUMBA_CACHE_DIR (tapegrad.config does, with setdefault); children start from it
_ORIGINAL_ENV = dict(os.environ)

CHILD = r'''
"""Child process of bench C0: prints one JSON line with its timings."""
import json, sys, time
t0 = time.perf_counter()
peer = sys.argv[1]
if peer == "njit":
    import numpy as np
    import numba
    t1 = time.perf_counter()

    @numba.njit(cache=True)
    def grads(x, w):
        gx = np.empty_like(x)
        gw = np.empty_like(w)
        for i in range(x.shape[0]):
            t = np.tanh(x[i] * w[i] + np.float32(1.0))
            s = np.sin(x[i])
            d = (np.float32(1.0) - t * t) * s
            gx[i] = d * w[i] + t * np.cos(x[i])
            gw[i] = d * x[i]
        return gx, gw

    x = np.array([0.5, -1.0, 2.0], np.float32)
    w = np.array([1.5, 0.25, -0.75], np.float32)
    t2 = time.perf_counter()
    gx, gw = grads(x, w)
    g = gx.tolist() + gw.tolist()
    t3 = time.perf_counter()
elif peer in ("jax", "autograd"):
    import importlib
    import numpy as np
    mod = importlib.import_module(peer)
    xnp = importlib.import_module(peer + ".numpy")
    t1 = time.perf_counter()
    x = np.array([0.5, -1.0, 2.0], np.float32)
    w = np.array([1.5, 0.25, -0.75], np.float32)
    f = lambda a: (xnp.tanh(a[0] * a[1] + 1.0) * xnp.sin(a[0])).sum()
    t2 = time.perf_counter()
    gx, gw = mod.grad(f)((x, w))
    g = np.asarray(gx).tolist() + np.asarray(gw).tolist()
    t3 = time.perf_counter()
else:
    import importlib
    tl = importlib.import_module(peer)
    t1 = time.perf_counter()
    x = tl.tensor([0.5, -1.0, 2.0], requires_grad=True)
    w = tl.tensor([1.5, 0.25, -0.75], requires_grad=True)
    y = (tl.tanh(x * w + 1.0) * tl.sin(x)).sum()
    t2 = time.perf_counter()
    y.backward()
    g = x.grad.tolist() + w.grad.tolist()
    t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "build": t2 - t1, "backward": t3 - t2,
                  "first": t3 - t1, "grads": g}))
'''


def _child_script():
    """Write the child script once (same path and mtime: numba's cache key)."""
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
    return path


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
    """One fresh process; returns its timings (plus ``process`` wall time)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, script, peer], cwd=REPO_ROOT, env=_env(peer, cache_dir),
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
        for what, label in (("import", "import"), ("first", "first graph + backward")):
            tables[mode, what] = Table(
                ID, f"{ID} {TITLE}: {label}, {mode} cache",
                {"cache": mode, "graph": "(tanh(x*w+1)*sin(x)).sum(), 3 elements"},
                unit_note="fresh process per repetition" + ("; NUMBA_CACHE_DIR = new empty dir"
                                                            if mode == "cold" else ""))
    ref = _reference(ctx)
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
            grads = {"grads": np.array(runs[0]["grads"])}
            row = checked_row(ctx, where, peer, grads, ref, rtol=1e-4, atol=1e-6)
            if row.status == "ok":
                cold = "no Numba cache (cold = warm)" if mode == "cold" and peer in NO_NUMBA_CACHE else ""
                row.note = "; ".join(n for n in (NOTES.get(peer, ""), cold) if n)
            for t, key in ((t_imp, "import"), (t_first, "first")):
                r = Row(peer, status=row.status, note=row.note, times=[x[key] for x in runs],
                        extra={"runs": runs})
                t.rows.append(r)
    order = [tables[m, w] for m in modes for w in ("import", "first")]
    return order


def _reference(ctx):
    """The tiny graph's gradients computed by torch in this process (None without torch)."""
    torch = ctx.peers.reference_torch()
    if torch is None:
        return None
    x = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    w = torch.tensor([1.5, 0.25, -0.75], requires_grad=True)
    (torch.tanh(x * w + 1.0) * torch.sin(x)).sum().backward()
    return {"grads": np.array(x.grad.tolist() + w.grad.tolist())}


def _importable(peer):
    import importlib.util
    name = {"njit": "numba"}.get(peer, peer)
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
