"""tapegrad.autograd: backward, grad modes, the graph facade."""
import numpy as np

from .. import _dtype as D
from .grad_mode import enable_grad, is_grad_enabled, no_grad, set_grad_enabled  # noqa: F401


def _seed(t, gradient):
    from ..tensor import Tensor
    if gradient is None:
        if t._n != 1:
            raise RuntimeError("grad can be implicitly created only for scalar outputs")
        if not t._dtype.is_floating_point:
            raise RuntimeError(f"grad can be implicitly created only for real scalar outputs but got "
                               f"{t._dtype}")
        return np.ones(t._shape, t._dtype.np)
    if not isinstance(gradient, Tensor):
        gradient = Tensor(gradient) if isinstance(gradient, (list, tuple)) else None
    if gradient._shape != t._shape:
        raise RuntimeError(f"Mismatch in shape: grad_output[0] has a shape of {gradient.shape} and output[0] has "
                           f"a shape of {t.shape}.")
    return _LazySeed(gradient, t._dtype.np)


class _LazySeed:
    """An explicit gradient, read only when backward writes it into the root's gradient
    buffer: reading it flushes pending records, which a backward that raises (e.g. a
    second backward through a freed graph) must not do (DESIGN invariant 2)."""
    __slots__ = ("t", "shape", "dtype")

    def __init__(self, t, npdt):
        self.t = t
        self.shape = t._shape
        self.dtype = np.dtype(npdt)

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.t._values(), dtype=dtype or self.dtype)


def backward(tensors, grad_tensors=None, retain_graph=None, create_graph=False, inputs=None):
    """Compute the gradient of `tensors` w.r.t. the graph leaves (torch.autograd.backward)."""
    from ..tape.tape import TAPE
    from ..tensor import Tensor
    if create_graph:
        raise NotImplementedError("create_graph=True is not implemented yet (see the autograd-surface issue)")
    if inputs is not None:
        raise NotImplementedError("backward(inputs=...) is not implemented yet")
    if isinstance(tensors, Tensor):
        tensors, grad_tensors = [tensors], [grad_tensors]
    elif grad_tensors is None:
        grad_tensors = [None] * len(tensors)
    for t, g in zip(tensors, grad_tensors):
        if not t._rg:
            raise RuntimeError("element 0 of tensors does not require grad and does not have a grad_fn")
        seed = _seed(t, g)
        if t._rec < 0:  # a leaf: backward just accumulates the seed
            s = t._leaf_slot()
            dst = TAPE.leaf_view(s, t._shape, t._dtype.np)
            if TAPE.leaf_state[s] == 0:
                dst[...] = seed
                TAPE.leaf_state[s] = 1
            else:
                dst[...] += seed
            continue
        TAPE.backward(t._rec, seed, bool(retain_graph))


def __getattr__(name):
    # torch.autograd.graph is importable as an attribute (tapegrad imports the facade lazily)
    if name == "graph":
        import importlib
        return importlib.import_module(__name__ + ".graph")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["backward", "no_grad", "enable_grad", "set_grad_enabled", "is_grad_enabled"]
