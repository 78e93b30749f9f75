"""Import the peers a run asked for, each only when it is importable.

Peers: ``tapegrad`` (the subject), ``tapegrad.capture`` (the same step under
``tapegrad.capture``, recorded once and replayed; the module is tapegrad, see
``captured.py``), ``torch`` (eager), ``torch.compile``
(the module is torch; the workloads compile their model or loss function),
``micrograd`` (W1), ``numpy`` (hand-written forward+backward, the no-autograd
floor), ``njit`` (hand-written Numba loops, the compiled floor), ``jax``
(``jax.jit`` of ``value_and_grad``; the module is jax with ``jax.numpy`` and
``jax.lax`` loaded) and ``autograd`` (HIPS autograd, with ``autograd.numpy``
loaded). ``Peers.get(name)`` returns ``(module, None)`` or ``(None, reason)``;
a missing optional peer is a "skipped (not installed)" row, never a failure,
and so is a peer left out of this run (``excluded``: torch.compile in
``--smoke``). tapegrad failing to import is a failure
(``Peers.tapegrad_error``), because it is what the suite tests.
"""
import importlib
import math
import sys

ALL = ("tapegrad", "tapegrad.capture", "torch", "torch.compile", "micrograd", "numpy", "njit", "jax", "autograd")
#: peers whose first call traces and compiles: its time is reported apart (``harness.note_first_call``)
COMPILING = ("torch.compile", "jax")
NOT_INSTALLED = "skipped (not installed)"


def _load_tapegrad():
    tg = importlib.import_module("tapegrad")
    missing = [a for a in ("tensor", "tanh", "sin", "exp", "no_grad", "float32") if not hasattr(tg, a)]
    if missing:
        raise AttributeError(f"tapegrad has no attribute {', '.join(missing)} (package not ready?)")
    return tg


def _load_tapegrad_capture():
    tg = _load_tapegrad()
    if not hasattr(tg, "capture"):
        raise ImportError("tapegrad has no capture")
    return tg


def _load_micrograd():
    from micrograd.engine import Value
    if not hasattr(Value, "tanh"):
        Value.tanh = _micrograd_tanh
    # micrograd's topological sort is recursive: one frame per node of the chain
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 100_000))
    return importlib.import_module("micrograd.engine")


def _micrograd_tanh(self):
    """tanh for micrograd's Value, as added in the micrograd lecture."""
    from micrograd.engine import Value
    x = self.data
    t = (math.exp(2 * x) - 1) / (math.exp(2 * x) + 1)
    out = Value(t, (self,), "tanh")

    def _backward():
        self.grad += (1 - t ** 2) * out.grad
    out._backward = _backward
    return out


def _load_torch_compile():
    torch = importlib.import_module("torch")
    if not hasattr(torch, "compile"):
        raise ImportError(f"torch {torch.__version__} has no torch.compile")
    return torch


def _load_jax():
    jax = importlib.import_module("jax")
    importlib.import_module("jax.numpy")
    importlib.import_module("jax.lax")
    return jax


def _load_autograd():
    autograd = importlib.import_module("autograd")
    importlib.import_module("autograd.numpy")
    return autograd


_LOADERS = {
    "tapegrad": _load_tapegrad,
    "tapegrad.capture": _load_tapegrad_capture,
    "torch": lambda: importlib.import_module("torch"),
    "torch.compile": _load_torch_compile,
    "jax": _load_jax,
    "autograd": _load_autograd,
    "micrograd": _load_micrograd,
    "numpy": lambda: importlib.import_module("numpy"),
    "njit": lambda: importlib.import_module("numba"),
}


class Peers:
    """The peers selected with ``--peers`` and their import state (cached)."""

    def __init__(self, selected=ALL, excluded=None):
        unknown = [p for p in selected if p not in ALL]
        if unknown:
            raise ValueError(f"unknown peer(s) {unknown}; choose from {', '.join(ALL)}")
        self.selected = tuple(p for p in ALL if p in selected)
        self._cache = {}
        self.excluded = dict(excluded or {})   # peer -> reason it is skipped in this run
        self.tapegrad_error = None   # the exception text when tapegrad does not import

    def wanted(self, name):
        return name in self.selected

    def get(self, name):
        """``(module, None)`` when usable, else ``(None, reason)``."""
        if name in self._cache:
            return self._cache[name]
        if name in self.excluded:
            res = (None, self.excluded[name])
        else:
            try:
                res = (_LOADERS[name](), None)
            except ImportError as exc:
                if name == "tapegrad":
                    self.tapegrad_error = f"{type(exc).__name__}: {exc}"
                    res = (None, f"ERROR: import failed: {exc}")
                else:
                    res = (None, NOT_INSTALLED)
            except Exception as exc:  # noqa: BLE001 - a broken peer must not stop the suite
                if name == "tapegrad":
                    self.tapegrad_error = f"{type(exc).__name__}: {exc}"
                res = (None, f"ERROR: import failed: {type(exc).__name__}: {exc}")
        self._cache[name] = res
        return res

    def reference_torch(self):
        """torch for the cross-check reference, even when it is not a timed peer."""
        try:
            return importlib.import_module("torch")
        except ImportError:
            return None
