"""tapegrad.autograd: backward, grad, grad modes, the graph facade, Function, anomaly mode."""
import numpy as np

from ..tape.tape import TAPE
from .anomaly_mode import detect_anomaly, set_detect_anomaly  # noqa: F401
from .grad_mode import enable_grad, inference_mode, is_grad_enabled, no_grad, set_grad_enabled  # noqa: F401

_TENSOR = []


def _tensor_cls():
    """tapegrad.tensor.Tensor, imported on first use (tensor.py imports this package). NOTE: an
    import statement inside a function costs ~0.8 us a call, and backward() made four."""
    if not _TENSOR:
        from ..tensor import Tensor
        _TENSOR.append(Tensor)
    return _TENSOR[0]


def _seed(t, gradient, i=0):
    Tensor = _tensor_cls()
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
        raise RuntimeError(f"Mismatch in shape: grad_output[{i}] has a shape of {gradient.shape} and output[{i}] "
                           f"has a shape of {t.shape}.")
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


def _as_list(x, what):
    Tensor = _tensor_cls()
    if isinstance(x, Tensor):
        return [x]
    if x is None:
        return []
    return list(x)


def _prepare(tensors, grad_tensors):
    """(tensors, seeds): torch's checks, in torch's order, before anything runs."""
    tensors = _as_list(tensors, "tensors")
    if grad_tensors is None or not isinstance(grad_tensors, (list, tuple)):
        grad_tensors = [grad_tensors] * len(tensors) if len(tensors) == 1 or grad_tensors is None else \
            [grad_tensors]
    if len(grad_tensors) != len(tensors):
        raise RuntimeError("grad can be implicitly created only for scalar outputs" if not grad_tensors else
                           f"Mismatch in number of gradients: expected {len(tensors)} but got {len(grad_tensors)}")
    for i, t in enumerate(tensors):
        if not t._rg:
            raise RuntimeError(f"element {i} of tensors does not require grad and does not have a grad_fn")
    return tensors, [_seed(t, g, i) for i, (t, g) in enumerate(zip(tensors, grad_tensors))]


def _run(tensors, seeds, inputs, retain_graph, create_graph):
    """Gradients of `tensors` (seeded) w.r.t. `inputs`: a list of NumPy arrays / Tensors (or None
    where an input was not reached). Leaves' .grad are not touched."""
    if create_graph:
        from ._higher import backward_graph
        return backward_graph(tensors, seeds, inputs)
    leaves, capture = {}, {}
    for x in inputs:
        if x._rec >= 0:
            capture[x._rec] = (x._shape, x._dtype.np)
        else:
            s = x._leaf_slot()
            leaves.setdefault(s, np.zeros(TAPE.leaf_nbytes[s], np.uint8))
    roots = [(t._rec, s) for t, s in zip(tensors, seeds) if t._rec >= 0]
    got = {}
    if roots:
        got = TAPE.backward_many([r for r, _ in roots], [s for _, s in roots], bool(retain_graph),
                                 leaves=leaves, only=True, capture=capture)
    reached = got.get("leaves", {})
    out = []
    for x in inputs:
        if x._rec >= 0:
            g = got.get(x._rec)
        else:
            s = x._slot
            g = leaves[s][:x._n * x._dtype.itemsize].view(x._dtype.np).reshape(x._shape) if reached.get(s) else None
        for t, seed in zip(tensors, seeds):   # an output that is itself a leaf input
            if t is x and t._rec < 0:
                g = np.asarray(seed, x._dtype.np).copy() if g is None else g + np.asarray(seed)
        out.append(g)
    return out


def backward(tensors, grad_tensors=None, retain_graph=None, create_graph=False, inputs=None, grad_variables=None):
    """Compute the gradient of `tensors` w.r.t. the graph leaves (torch.autograd.backward)."""
    if grad_variables is not None:
        grad_tensors = grad_variables
    if retain_graph is None:
        retain_graph = create_graph
    tensors, seeds = _prepare(tensors, grad_tensors)
    if inputs is not None:
        inputs = _as_list(inputs, "inputs")
        if not inputs:
            raise RuntimeError("`inputs` argument to `backward()` cannot be empty.")
        for x in inputs:
            if not x._rg:
                raise RuntimeError("One of the differentiated Tensors does not require grad")
    if create_graph and inputs is None:
        from ._higher import backward_graph
        import warnings
        warnings.warn("Using backward() with create_graph=True will create a reference cycle between the parameter "
                      "and its gradient which can cause a memory leak. We recommend using autograd.grad when "
                      "creating the graph to avoid this. If you have to use this function, make sure to reset the "
                      ".grad fields of your parameters to None after use to break the cycle and avoid the leak. "
                      "(Triggered internally at /__w/pytorch/pytorch/torch/csrc/autograd/engine.cpp:1307.)",
                      UserWarning, stacklevel=3)
        for x, g in backward_graph(tensors, seeds, None):
            _accumulate_grad(x, g)
        return
    if inputs is not None:
        grads = _run(tensors, seeds, inputs, retain_graph, create_graph)
        for x, g in zip(inputs, grads):
            if g is not None:
                _accumulate_grad(x, g)
        return
    for t, seed in zip(tensors, seeds):
        if t._rec < 0:  # a leaf: backward just accumulates the seed
            _accumulate_grad(t, np.asarray(seed))
    roots = [(t._rec, s) for t, s in zip(tensors, seeds) if t._rec >= 0]
    if roots:
        TAPE.backward_many([r for r, _ in roots], [s for _, s in roots], bool(retain_graph))


def _accumulate_grad(x, g):
    """x.grad += g (torch's AccumulateGrad), g a NumPy array or a Tensor (create_graph)."""
    from ..tensor import Tensor
    if isinstance(g, Tensor):
        if x._rec >= 0:
            x._gradt = g if x._gradt is None else x._gradt + g
            return
        cur = x.grad
        if cur is None or not (g._rg or cur._rg):
            if cur is None and g._rg:
                x.grad = g
                return
            g = g._values()
        else:
            x.grad = cur + g
            return
    if x._rec >= 0:
        x._accumulate_retained(np.array(g))
        return
    s = x._leaf_slot()
    dst = TAPE.leaf_view(s, x._shape, x._dtype.np)
    if TAPE.leaf_state[s] == 0:
        dst[...] = g
        TAPE.leaf_state[s] = 1
    else:
        dst[...] += g


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False, only_inputs=True,
         allow_unused=None, is_grads_batched=False, materialize_grads=False):
    """Gradients of `outputs` w.r.t. `inputs`, as a tuple (torch.autograd.grad); .grad is not touched."""
    from ..tensor import Tensor, zeros_like
    if materialize_grads and allow_unused is False:
        raise ValueError("Expected allow_unused to be True or not passed when materialize_grads=True, but got: "
                         "allow_unused=False.")
    if allow_unused is None:
        allow_unused = materialize_grads
    if is_grads_batched:
        raise NotImplementedError("tapegrad.autograd.grad: is_grads_batched=True is not supported")
    if retain_graph is None:
        retain_graph = create_graph
    inputs = _as_list(inputs, "inputs")
    if not inputs:
        raise RuntimeError("grad requires non-empty inputs.")
    for x in inputs:
        if not isinstance(x, Tensor):
            raise TypeError(f"grad(): argument 'inputs' must be tuple of Tensors, not {type(x).__name__}")
    outputs = _as_list(outputs, "outputs")
    if grad_outputs is not None and not isinstance(grad_outputs, (list, tuple)):
        grad_outputs = [grad_outputs]
    if grad_outputs is not None and len(grad_outputs) != len(outputs):
        raise RuntimeError(f"grad requires one grad_output per output: expected {len(outputs)} but got "
                           f"{len(grad_outputs)}")
    tensors, seeds = _prepare(outputs, list(grad_outputs) if grad_outputs is not None else None)
    for x in inputs:
        if not x._rg:
            raise RuntimeError("One of the differentiated Tensors does not require grad")
    grads = _run(tensors, seeds, inputs, retain_graph, create_graph)
    out = []
    for x, g in zip(inputs, grads):
        if g is None:
            if materialize_grads:
                out.append(zeros_like(x))
                continue
            if not allow_unused:
                raise RuntimeError("One of the differentiated Tensors appears to not have been used in the graph. "
                                   "Set allow_unused=True if this is the desired behavior.")
            out.append(None)
        elif isinstance(g, Tensor):
            out.append(g)
        else:
            from ..tensor import tensor
            out.append(tensor(g, dtype=x._dtype))
    return tuple(out)


def __getattr__(name):
    # torch.autograd.graph is importable as an attribute (tapegrad imports the facade lazily)
    if name == "graph":
        import importlib
        return importlib.import_module(__name__ + ".graph")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


from . import functional  # noqa: E402,F401
from .function import Function, FunctionCtx, once_differentiable  # noqa: E402,F401
from .gradcheck import GradcheckError, gradcheck, gradgradcheck  # noqa: E402,F401

__all__ = ["backward", "grad", "no_grad", "enable_grad", "set_grad_enabled", "is_grad_enabled", "Function",
           "detect_anomaly", "set_detect_anomaly", "gradcheck", "gradgradcheck", "GradcheckError", "functional"]
