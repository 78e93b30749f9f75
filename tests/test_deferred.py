"""tapegrad/_deferred.py (Note [deferred scipy.linalg]): a package whose __init__ runs at its
first use. The generic cases use a package written to a temporary directory, whose
__init__ counts its runs in a sibling module; the SciPy cases run in fresh interpreters,
because this process may have imported scipy.linalg already."""
import itertools
import json
import os
import subprocess
import sys
import textwrap
import threading
import types

import numpy as np
import pytest

from tapegrad import _deferred

_names = itertools.count()


@pytest.fixture
def pkg(tmp_path, monkeypatch):
    """Writes package ``p<n>`` (``__init__`` appends to ``p<n>_log.RUNS``, defines X, Y, __all__,
    imports ``.a``; ``a`` reads the half-built package; ``child`` is a plain submodule) and returns
    (name, log module). ``p<n>_log.FAIL = True`` makes __init__ raise after its first lines."""
    name = f"tgdeferred_p{next(_names)}"
    root = tmp_path / name
    root.mkdir()
    (tmp_path / f"{name}_log.py").write_text("RUNS = []\nFAIL = False\nSEEN = []\nDELAY = 0.0\n")
    (root / "__init__.py").write_text(textwrap.dedent(f"""
        import time
        import {name}_log as _log
        _log.RUNS.append(1)
        time.sleep(_log.DELAY)
        X = 41
        if _log.FAIL:
            raise ValueError("init failed")
        from .a import Y
        __all__ = ["X", "Y"]
        """))
    (root / "a.py").write_text(textwrap.dedent(f"""
        import {name} as _pkg
        import {name}_log as _log
        _log.SEEN.append(getattr(_pkg, "Y", "missing"))
        Y = _pkg.X + 1
        """))
    (root / "child.py").write_text("Z = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, __import__(f"{name}_log")
    for k in [k for k in sys.modules if k == name or k.startswith(name + ".") or k == name + "_log"]:
        del sys.modules[k]


def test_submodules_load_and_init_waits_for_first_attribute(pkg):
    name, log = pkg
    mod = _deferred.defer(name, "child")
    assert sys.modules[name] is mod and type(mod) is _deferred.DeferredPackage
    assert mod.child.Z == 3 and sys.modules[name + ".child"] is mod.child
    assert log.RUNS == [] and "X" not in vars(mod)
    assert not hasattr(mod, "__test__") and log.RUNS == []   # dunder probes (doctest, pytest) do not run it
    assert mod.X == 41 and mod.Y == 42 and log.RUNS == [1]
    assert type(mod) is types.ModuleType and sys.modules[name] is mod
    assert log.SEEN == ["missing"]   # a circular import sees a partly built package, as in a plain import
    assert mod.Y == 42 and log.RUNS == [1]   # once


def test_import_forms_run_init(pkg):
    name, log = pkg
    _deferred.defer(name)
    ns = {}
    exec(f"from {name} import *", ns)
    assert (ns["X"], ns["Y"]) == (41, 42) and log.RUNS == [1]


def test_dir_runs_init(pkg):
    name, log = pkg
    mod = _deferred.defer(name)
    assert {"X", "Y", "a"} <= set(dir(mod)) and log.RUNS == [1]


def test_from_import_of_a_name_runs_init(pkg):
    name, log = pkg
    _deferred.defer(name, "child")
    ns = {}
    exec(f"from {name} import child, X", ns)
    assert ns["X"] == 41 and ns["child"].Z == 3 and log.RUNS == [1]


def test_failed_init_raises_at_the_access_and_is_retried(pkg):
    name, log = pkg
    mod = _deferred.defer(name)
    log.FAIL = True
    with pytest.raises(ValueError, match="init failed"):
        mod.Y
    assert type(mod) is _deferred.DeferredPackage
    with pytest.raises(ValueError, match="init failed"):
        mod.Y
    log.FAIL = False
    assert mod.Y == 42 and log.RUNS == [1, 1, 1] and type(mod) is types.ModuleType


def test_missing_name_after_init_is_attribute_error(pkg):
    name, _ = pkg
    mod = _deferred.defer(name)
    with pytest.raises(AttributeError, match="nope"):
        mod.nope
    assert type(mod) is types.ModuleType


def test_threads_run_init_once(pkg):
    name, log = pkg
    mod = _deferred.defer(name)
    log.DELAY = 0.05
    out, barrier = [], threading.Barrier(8)

    def use():
        barrier.wait()
        out.append(mod.Y)

    threads = [threading.Thread(target=use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == [42] * 8 and log.RUNS == [1]


def test_imported_package_is_left_alone(pkg):
    name, log = pkg
    mod = __import__(name)
    assert log.RUNS == [1]
    assert _deferred.defer(name, "child") is mod and type(mod) is types.ModuleType and mod.child.Z == 3
    assert log.RUNS == [1]


def test_a_plain_module_cannot_be_deferred(tmp_path, monkeypatch):
    (tmp_path / "tgdeferred_plain.py").write_text("A = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match="not a package"):
        _deferred.defer("tgdeferred_plain")
    assert "tgdeferred_plain" not in sys.modules
    with pytest.raises(ImportError):
        _deferred.defer("tgdeferred_absent")


_CHILD = r'''
import json, sys, types
import numpy as np
import tapegrad as torch
x = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
w = torch.tensor([[1.5, 0.25, -0.75], [0.5, 2.0, 1.0]], requires_grad=True)
(w @ x).tanh().sum().backward()
before = "scipy.linalg._basic" in sys.modules
import numba
@numba.njit
def dot(a, b):
    return np.dot(a, b)   # a user's own jitted BLAS call still works
a = np.arange(6.0).reshape(2, 3)
d = dot(a, a.T).tolist()
import scipy.linalg
from scipy.linalg import *
m = np.array([[2.0, 1.0], [1.0, 3.0]])
print(json.dumps(dict(
    before=before, dot=d, dot_ref=(a @ a.T).tolist(),
    inv=scipy.linalg.inv(m).tolist(), inv_ref=np.linalg.inv(m).tolist(), star="inv" in dir(),
    plain=type(scipy.linalg) is types.ModuleType,
    blas=scipy.linalg.cython_blas is sys.modules["scipy.linalg.cython_blas"],
    gemm=scipy.linalg.blas.dgemm(1.0, m, m).tolist(), gemm_ref=(m @ m).tolist(),
    grad=x.grad.tolist())))
'''


def _child(**env):
    e = dict(os.environ, **env)
    r = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, env=e, timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("flag", ["1", "0"])
def test_scipy_linalg_in_a_fresh_process(flag):
    """With the flag on (the default), scipy.linalg's __init__ has not run after a first
    backward with a matrix product; with it off, it has: the test sees both sides. Either
    way SciPy and Numba's BLAS work afterwards, and the gradient is the same."""
    r = _child(TAPEGRAD_DEFER_SCIPY_LINALG=flag)
    assert r["before"] is (flag == "0")
    assert r["dot"] == r["dot_ref"] and r["gemm"] == r["gemm_ref"] and r["star"] and r["plain"] and r["blas"]
    np.testing.assert_allclose(r["inv"], r["inv_ref"], rtol=1e-14)
    wv = [[1.5, 0.25, -0.75], [0.5, 2.0, 1.0]]
    t = np.tanh(np.array(wv) @ np.array([0.5, -1.0, 2.0]))
    np.testing.assert_allclose(r["grad"], (1 - t * t) @ np.array(wv), rtol=1e-5)
