"""Import the peers a run asked for, each only when it is importable.

Peers: ``tapegrad`` (the subject), ``torch`` (eager), ``micrograd`` (W1),
``numpy`` (hand-written forward+backward, the no-autograd floor), ``njit``
(hand-written Numba loops, the compiled floor), and ``jax`` / ``autograd``
(listed when installed, not implemented yet). ``Peers.get(name)`` returns
``(module, None)`` or ``(None, reason)``; a missing optional peer is a
"skipped (not installed)" row, never a failure. tapegrad failing to import
is a failure (``Peers.tapegrad_error``), because it is what the suite tests.
"""
import importlib
import importlib.util
import math
import sys

ALL = ("tapegrad", "torch", "micrograd", "numpy", "njit", "jax", "autograd")
NOT_IMPLEMENTED = ("jax", "autograd")
NOT_INSTALLED = "skipped (not installed)"


def _load_tapegrad():
    tg = importlib.import_module("tapegrad")
    missing = [a for a in ("tensor", "tanh", "sin", "exp", "no_grad", "float32") if not hasattr(tg, a)]
    if missing:
        raise AttributeError(f"tapegrad has no attribute {', '.join(missing)} (package not ready?)")
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


_LOADERS = {
    "tapegrad": _load_tapegrad,
    "torch": lambda: importlib.import_module("torch"),
    "micrograd": _load_micrograd,
    "numpy": lambda: importlib.import_module("numpy"),
    "njit": lambda: importlib.import_module("numba"),
}


class Peers:
    """The peers selected with ``--peers`` and their import state (cached)."""

    def __init__(self, selected=ALL):
        unknown = [p for p in selected if p not in ALL]
        if unknown:
            raise ValueError(f"unknown peer(s) {unknown}; choose from {', '.join(ALL)}")
        self.selected = tuple(p for p in ALL if p in selected)
        self._cache = {}
        self.tapegrad_error = None   # the exception text when tapegrad does not import

    def wanted(self, name):
        return name in self.selected

    def get(self, name):
        """``(module, None)`` when usable, else ``(None, reason)``."""
        if name in self._cache:
            return self._cache[name]
        if name in NOT_IMPLEMENTED:
            found = importlib.util.find_spec(name) is not None
            res = (None, "skipped (installed; no bench implementation yet)" if found else NOT_INSTALLED)
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
