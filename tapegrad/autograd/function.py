"""torch.autograd.Function: user-defined forward and backward.

``MyFn.apply(*args)`` runs ``MyFn.forward(ctx, *args)`` under no_grad, then appends one
escape record whose VJP calls ``MyFn.backward(ctx, *grad_outputs)``: the jitted replay
returns to Python for that record only (DESIGN invariant 5). The record's grad_fn is
named ``MyFnBackward`` and is the ``ctx`` (``y.grad_fn.saved_tensors`` works, as in torch).
Several outputs share one record: each output is a hidden helper record that slices its
gradient into the node's (so every output's grad_fn is the node).
"""
import numpy as np

from .. import _dtype as D
from ..ops.table import OpSpec
from .grad_mode import _STATE as _GRAD, enable_grad, no_grad

_SPECS = {}


def _spec(cls):
    s = _SPECS.get(cls)
    if s is None:
        s = _SPECS[cls] = OpSpec(cls.__name__, "function", cls.__name__ + "Backward", mnemonic=cls.__name__)
    return s


_OUT_SPEC = OpSpec("function_output", "py", "FunctionOutputBackward", mnemonic="output")


def _T():
    import sys
    return sys.modules[__name__.rsplit(".", 2)[0] + ".tensor"]


class FunctionCtx:
    """What forward and backward share (torch: the node itself)."""

    def save_for_backward(self, *tensors):
        for i, t in enumerate(tensors):
            if t is not None and not isinstance(t, _T().Tensor):
                raise TypeError(f"save_for_backward can only save variables, but argument {i} is of type "
                                f"{type(t).__name__}")
        self._saved = tensors

    def save_for_forward(self, *tensors):
        self._saved_fwd = tensors

    @property
    def saved_tensors(self):
        r = getattr(self, "_record", -1)
        if r is not None and r >= 0:
            from ..tape.tape import ROW, SECOND_TIME, TAPE
            i = r - TAPE.base
            if 0 <= i < TAPE.n and (TAPE.buf[i * ROW] >> 4) & 1:
                raise RuntimeError(SECOND_TIME)   # a backward without retain_graph freed them
        return tuple(getattr(self, "_saved", ()))

    def mark_non_differentiable(self, *tensors):
        self._non_diff = {id(t) for t in tensors}

    def mark_dirty(self, *tensors):
        self._dirty = {id(t) for t in tensors}

    def set_materialize_grads(self, value):
        self.materialize_grads = bool(value)


class Function:
    """Base class of user-defined autograd functions (static forward/backward, then ``apply``)."""

    def __init__(self, *args, **kwargs):
        import warnings
        warnings.warn(f"{self.__class__} should not be instantiated. Methods on autograd functions are all static, "
                      f"so you should invoke them on the class itself. Instantiating an autograd function will "
                      f"raise an error in a future version of PyTorch.", DeprecationWarning, stacklevel=2)

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError("You must implement the forward function for custom autograd.Function.")

    @staticmethod
    def setup_context(ctx, inputs, output):
        raise NotImplementedError("setup_context is not implemented.")

    @staticmethod
    def backward(ctx, *grad_outputs):
        raise NotImplementedError("You must implement either the backward or vjp method for your custom "
                                  "autograd.Function to use it with backward mode AD.")

    vjp = backward

    @classmethod
    def apply(cls, *args, **kwargs):
        T = _T()
        ctx = FunctionCtx()
        ctx.materialize_grads = True
        tensor_args = [a for a in args if isinstance(a, T.Tensor)]
        ctx.needs_input_grad = tuple(isinstance(a, T.Tensor) and a._rg for a in args)
        ctx._is_tensor = tuple(isinstance(a, T.Tensor) for a in args)
        custom_setup = cls.setup_context is not Function.setup_context
        with no_grad():
            if custom_setup:
                outputs = cls.forward(*args, **kwargs)
            else:
                outputs = cls.forward(ctx, *args, **kwargs)
        if custom_setup:
            cls.setup_context(ctx, args, outputs)
        single = not isinstance(outputs, tuple)
        outs = (outputs,) if single else outputs
        if not (_GRAD[0] and any(t._rg for t in tensor_args)):
            return outputs
        non_diff = getattr(ctx, "_non_diff", set())
        diff = [i for i, o in enumerate(outs)
                if isinstance(o, T.Tensor) and id(o) not in non_diff and o._dtype.is_floating_point]
        if not diff:
            return outputs
        outs = list(outs)
        for i in diff:   # an output that is an input, or has a history, gets a fresh handle on its storage
            o = outs[i]
            if o._rec >= 0 or o._rg or any(o is a for a in tensor_args):
                outs[i] = o.detach()
        node_out = outs[diff[0]] if len(diff) == 1 else _node_buffer([outs[i] for i in diff])
        _record_node(cls, ctx, args, tensor_args, node_out, [outs[i] for i in diff], outs, diff)
        if len(diff) > 1:
            off = 0
            for i in diff:
                _record_output(node_out, outs[i], off)
                off += outs[i]._n
        return outs[0] if single else tuple(outs)


def _node_buffer(outs):
    T = _T()
    dt = outs[0]._dtype
    for o in outs[1:]:
        dt = D.promote(dt, o._dtype)
    return T._empty((sum(o._n for o in outs),), dt)


def _to_np(g, like_shape, like_dtype, name, i):
    """A gradient cls.backward returned, as NumPy of the input's shape (torch sums a gradient of
    an expanded shape back to it, and rejects any other shape)."""
    T = _T()
    if g is None:
        return None
    if not isinstance(g, T.Tensor):
        raise RuntimeError(f"expected Variable or None (got {type(g).__name__})")
    v = g._values()
    like_shape = tuple(like_shape)
    if v.shape != like_shape:
        try:
            ok = np.broadcast_shapes(like_shape, v.shape) == v.shape
        except ValueError:
            ok = False
        if not ok:
            raise RuntimeError(f"Function {name} returned an invalid gradient at index {i} - got "
                               f"{list(g.shape)} but expected shape compatible with {list(like_shape)}")
        from ..ops.pyops import sum_to
        v = sum_to(v, like_shape)
    return np.array(v, like_dtype, copy=True)


def _call_backward(cls, ctx, grads, create_graph):
    """cls.backward(ctx, *grads) -> its gradients, one per forward argument, checked as torch does."""
    name = cls.__name__ + "Backward"
    mode = enable_grad() if create_graph else no_grad()
    with mode:
        res = cls.backward(ctx, *grads)
    if not isinstance(res, tuple):
        res = (res,)
    n = len(ctx.needs_input_grad)
    if len(res) != n:
        if len(res) > n and all(r is None for r in res[n:]):
            res = res[:n]
        else:
            raise RuntimeError(f"function {name} returned an incorrect number of gradients (expected {n}, got "
                               f"{len(res)})")
    T = _T()
    for i, (r, is_t) in enumerate(zip(res, ctx._is_tensor)):
        if r is not None and not is_t:
            raise RuntimeError(f"function {name} returned a gradient different than None at position {i + 1}, but "
                               f"the corresponding forward input was not a Variable")
        if r is not None and not isinstance(r, T.Tensor):
            raise RuntimeError(f"expected Variable or None (got {type(r).__name__})")
    return res


def _all_grads(grads, kinds, materialize):
    """One gradient per forward output, as torch passes them: the differentiable outputs' own,
    zeros for the other tensor outputs (None without materialize_grads), None for the rest.
    kinds[i]: "diff", (shape, dtype) of another tensor output, or None."""
    T = _T()
    full = []
    it = iter(grads)
    for k in kinds:
        if k == "diff":
            full.append(next(it))
        elif k is not None and materialize:
            full.append(T.zeros(k[0], dtype=k[1]))
        else:
            full.append(None)
    return full


def _record_node(cls, ctx, args, tensor_args, node_out, outs, all_outs, diff):
    """The escape record whose VJP is cls.backward.
    NOTE: its closures hold shapes and dtypes, never the output tensors: the tape keeps the
    record, and an output kept alive through it would keep the record alive forever."""
    from ..ops.pyops import record
    T = _T()
    arg_pos = [i for i, a in enumerate(args) if isinstance(a, T.Tensor)]
    in_meta = [(t._shape, t._dtype.np) for t in tensor_args]
    shapes = [o._shape for o in outs]
    dts = [o._dtype for o in outs]
    kinds = ["diff" if i in diff else ((o._shape, o._dtype) if isinstance(o, T.Tensor) else None)
             for i, o in enumerate(all_outs)]
    sizes = np.cumsum([0] + [o._n for o in outs])
    name = cls.__name__ + "Backward"
    multi = len(outs) > 1

    def split(gv):
        return [gv.reshape(-1)[sizes[k]:sizes[k + 1]].reshape(shapes[k]) for k in range(len(shapes))] \
            if multi else [gv]

    def bwd(g, o, *ivs):
        grads = [T.tensor(np.array(x), dtype=dt) for x, dt in zip(split(g), dts)]
        res = _call_backward(cls, ctx, _all_grads(grads, kinds, ctx.materialize_grads), False)
        return [_to_np(res[p], shape, npdt, name, p) for p, (shape, npdt) in zip(arg_pos, in_meta)]

    def tvjp(grad):
        """create_graph: cls.backward on gradients that carry history, its results as they are."""
        gs = [grad] if not multi else [grad.reshape(-1)[int(sizes[k]):int(sizes[k + 1])].reshape(shapes[k])
                                       for k in range(len(shapes))]
        res = _call_backward(cls, ctx, _all_grads(gs, kinds, ctx.materialize_grads), True)
        return [res[p] for p in arg_pos]

    record(_spec(cls), node_out, tensor_args, lambda *ivs: None, bwd, attrs={"ctx": ctx, "tvjp": tvjp})
    ctx._record = node_out._rec
    _unpin_saved_outputs(ctx, outs)


def _unpin_saved_outputs(ctx, outs):
    """A saved output becomes a tensor over the same storage and history that does not own the
    record (torch's SavedVariable does the same to avoid the cycle node -> ctx -> output -> node)."""
    saved = getattr(ctx, "_saved", ())
    if not saved or not any(any(s is o for o in outs) for s in saved):
        return
    from ._higher import _alias
    fixed = []
    for s in saved:
        if any(s is o for o in outs):
            s = _alias(s._base, s._addr, s._shape, s._stride, s._dtype, s._rec)
        fixed.append(s)
    ctx._saved = tuple(fixed)


def _record_output(node, out, off):
    """A hidden helper record: output `out` of a several-output Function, the slice of the node's
    gradient at `off`."""
    from ..ops.pyops import record
    n, shape = out._n, out._shape

    def bwd(g, o, nv):
        gn = np.zeros(nv.shape, nv.dtype)
        gn[off:off + n] = g.reshape(-1)
        return (gn,)

    def lin(ts, o, ivs):
        return ts[0][off:off + n].reshape(shape)
    record(_OUT_SPEC, out, [node], lambda nv: None, bwd, saves=False, attrs={"hidden": True}, lin=lin)


class _SingleLevelFunction(Function):
    pass


class InplaceFunction(Function):
    def __init__(self, inplace=False):
        self.inplace = inplace


class NestedIOFunction(Function):
    pass


def once_differentiable(fn):
    """The backward runs without recording (its gradients cannot be differentiated again)."""
    import functools

    @functools.wraps(fn)
    def wrapper(ctx, *args):
        with no_grad():
            return fn(ctx, *args)
    return wrapper
