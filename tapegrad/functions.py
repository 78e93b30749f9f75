"""torch.* functions and the Tensor methods that forward to them.

Every function checks its arguments and dispatches to the jitted rows of the
op table (``tensor.unary`` / ``tensor.binary``) or to an escape record in
``ops/pyops.py``. Methods are attached to ``Tensor`` at the bottom, from the
same functions, so that ``x.exp()`` and ``torch.exp(x)`` are one code path.
"""
import builtins
import collections
import numbers

import numpy as np

from . import _dtype as D
from .ops import pyops as P
from .random import generator
from .tensor import _FLOATS, _JIT_BINARY, Tensor, binary, full, make_unary_front, pow, tensor, unary

__all__ = []


def _export(fn):
    __all__.append(fn.__name__)
    return fn


def _check_tensor(x, fname, pos=1, arg="input"):
    if not isinstance(x, Tensor):
        raise TypeError(f"{fname}(): argument '{arg}' (position {pos}) must be Tensor, not {type(x).__name__}")


# ----- unary rows ----------------------------------------------------------------

def _make_unary(name):
    fn = make_unary_front(name)
    fn.__doc__ = f"torch.{name}: the `{name}` row of the op table."
    return fn


for _n in ("neg", "exp", "log", "sin", "cos", "tanh", "sigmoid", "relu", "abs", "sqrt", "square", "reciprocal"):
    globals()[_n] = _export(_make_unary(_n))
negative = neg  # noqa: F821
absolute = abs  # noqa: F821  (module-level, shadows builtin only here)
__all__ += ["negative", "absolute"]


@_export
def rsqrt(input):
    return reciprocal(sqrt(input))  # noqa: F821


@_export
def log2(input):
    return log(input) * (1.0 / np.log(2.0))  # noqa: F821


@_export
def log10(input):
    return log(input) * (1.0 / np.log(10.0))  # noqa: F821


@_export
def tan(input):
    return sin(input) / cos(input)  # noqa: F821


@_export
def sign(input):
    return P.eager(np.sign, input, dtype=input.dtype)


sgn = sign
__all__.append("sgn")


@_export
def clamp(input, min=None, max=None):  # noqa: A002
    _check_tensor(input, "clamp")
    return P.clamp(input, min, max)


clip = clamp
__all__.append("clip")


@_export
def clamp_min(input, min):  # noqa: A002
    return P.clamp(input, min, None, single=True)


@_export
def clamp_max(input, max):  # noqa: A002
    return P.clamp(input, None, max, single=True)


# ----- binary rows ----------------------------------------------------------------

def _arith(name):
    def fn(input, other, *, alpha=1, out=None):
        if not isinstance(input, Tensor):
            raise TypeError(f"{name}(): argument 'input' (position 1) must be Tensor, not "
                            f"{type(input).__name__}")
        if alpha != 1 and name not in ("add", "sub"):
            raise TypeError(f"{name}() got an unexpected keyword argument 'alpha'")
        return binary(name, input, other, float(alpha))
    fn.__name__ = name
    return fn


add = _export(_arith("add"))
sub = _export(_arith("sub"))
mul = _export(_arith("mul"))
div = _export(_arith("div"))
subtract, multiply, divide, true_divide = sub, mul, div, div
__all__ += ["subtract", "multiply", "divide", "true_divide", "pow"]


@_export
def maximum(input, other):
    _check_tensor(other, "maximum", 2, "other")
    return binary("maximum", input, other)


@_export
def minimum(input, other):
    _check_tensor(other, "minimum", 2, "other")
    return binary("minimum", input, other)


@_export
def rsub(input, other, alpha=1):
    if isinstance(other, Tensor):
        return binary("sub", other, input, float(alpha))
    if input.dtype in _FLOATS and input.is_contiguous():
        return unary("rsub_scalar", input, float(other)) if alpha == 1 else \
            unary("rsub_scalar", input * alpha, float(other))
    return binary("sub", full((), other, dtype=D.promote_scalar(input.dtype, other)), input)


# ----- reductions ---------------------------------------------------------------------

@_export
def sum(input, dim=None, keepdim=False, *, dtype=None):  # noqa: A001
    _check_tensor(input, "sum")
    if dim is None:
        if input.dtype.is_floating_point or dtype is not None:
            return P.reduce_all(input, "sum", dtype)
        return P.sum_dim(input, None, dtype=dtype)
    return P.sum_dim(input, dim, keepdim, dtype)


@_export
def mean(input, dim=None, keepdim=False, *, dtype=None):
    _check_tensor(input, "mean")
    if dim is None:
        return P.reduce_all(input, "mean", dtype)
    return P.sum_dim(input, dim, keepdim, dtype, mean=True)


_MinMax = collections.namedtuple("_MinMax", ["values", "indices"])


class return_types:  # noqa: N801
    class max(_MinMax):  # noqa: N801
        def __repr__(self):
            return f"torch.return_types.max(\nvalues={self.values!r},\nindices={self.indices!r})"

    class min(_MinMax):  # noqa: N801
        def __repr__(self):
            return f"torch.return_types.min(\nvalues={self.values!r},\nindices={self.indices!r})"


def _maxmin(input, dim, keepdim, other, is_max):
    _check_tensor(input, "max" if is_max else "min")
    if isinstance(dim, Tensor):
        other, dim = dim, None
    if other is not None:
        return maximum(input, other) if is_max else minimum(input, other)
    if dim is None:
        return P.maxmin_all(input, is_max)
    v, i = P.maxmin_dim(input, dim, keepdim, is_max)
    return (return_types.max if is_max else return_types.min)(v, i)


@_export
def max(input, dim=None, keepdim=False, *, other=None):  # noqa: A001
    return _maxmin(input, dim, keepdim, other, True)


@_export
def min(input, dim=None, keepdim=False, *, other=None):  # noqa: A001
    return _maxmin(input, dim, keepdim, other, False)


@_export
def amax(input, dim=(), keepdim=False):
    return P.eager(lambda v: np.amax(v, axis=tuple(dim) if isinstance(dim, (tuple, list)) and dim else
                                     (dim if not isinstance(dim, (tuple, list)) else None), keepdims=keepdim), input)


def _arg(input, dim, keepdim, fn):
    def f(v):
        if dim is None:
            return np.asarray(fn(v.reshape(-1)))
        r = fn(v, axis=dim)
        return np.expand_dims(r, dim) if keepdim else r
    return P.eager(f, input, dtype=D.int64)


@_export
def argmax(input, dim=None, keepdim=False):
    return _arg(input, dim, keepdim, np.argmax)


@_export
def argmin(input, dim=None, keepdim=False):
    return _arg(input, dim, keepdim, np.argmin)


@_export
def prod(input, dim=None, keepdim=False, *, dtype=None):
    # differentiable via exp(sum(log|x|)) is wrong at 0; keep it non-differentiable for now
    return P.eager(lambda v: np.prod(v, axis=dim, keepdims=keepdim), input, dtype=input.dtype)


@_export
def var(input, dim=None, unbiased=True, keepdim=False, *, correction=None):
    c = (1 if unbiased else 0) if correction is None else correction
    m = mean(input, dim, keepdim=True)
    d = input - m
    n = input.numel() if dim is None else int(np.prod([input.shape[i] for i in
                                                       (dim if isinstance(dim, (tuple, list)) else (dim,))]))
    return sum(d * d, dim, keepdim=keepdim) / builtins.max(n - c, 0)


@_export
def std(input, dim=None, unbiased=True, keepdim=False, *, correction=None):
    return sqrt(var(input, dim, unbiased, keepdim, correction=correction))  # noqa: F821


@_export
def norm(input, p="fro", dim=None, keepdim=False):
    if p in ("fro", 2):
        return sqrt(sum(input * input, dim, keepdim))  # noqa: F821
    if p == 1:
        return sum(abs(input), dim, keepdim)  # noqa: F821
    raise NotImplementedError(f"norm with p={p!r}")


# ----- linear algebra ------------------------------------------------------------------

@_export
def matmul(input, other):
    _check_tensor(input, "matmul")
    return P.matmul(input, other)


@_export
def mm(input, mat2):
    _check_tensor(input, "mm")
    if input.dim() != 2:
        raise RuntimeError("self must be a matrix")
    if mat2.dim() != 2:
        raise RuntimeError("mat2 must be a matrix")
    return P.matmul(input, mat2)


@_export
def bmm(input, mat2):
    if input.dim() != 3:
        raise RuntimeError(f"batch1 must be a 3D tensor")
    if mat2.dim() != 3:
        raise RuntimeError(f"batch2 must be a 3D tensor")
    return P.matmul(input, mat2)


@_export
def dot(input, other):
    if input.dim() != 1 or other.dim() != 1:
        raise RuntimeError(f"1D tensors expected, but got {input.dim()}D and {other.dim()}D tensors")
    return P.matmul(input, other)


@_export
def mv(input, vec):
    return P.matmul(input, vec)


@_export
def outer(input, vec2):
    return P.matmul(P.unsqueeze(input, 1), P.unsqueeze(vec2, 0))


# ----- shape ---------------------------------------------------------------------------------

@_export
def transpose(input, dim0, dim1):
    return P.transpose(input, dim0, dim1)


swapaxes = transpose
__all__.append("swapaxes")


@_export
def t(input):
    return P.t(input)


@_export
def permute(input, dims):
    return P.permute(input, tuple(dims))


@_export
def reshape(input, shape):
    return P.reshape(input, tuple(shape))


@_export
def flatten(input, start_dim=0, end_dim=-1):
    return P.flatten(input, start_dim, end_dim)


@_export
def squeeze(input, dim=None):
    return P.squeeze(input, dim)


@_export
def unsqueeze(input, dim):
    return P.unsqueeze(input, dim)


@_export
def cat(tensors, dim=0):
    return P.cat(tensors, dim)


concat = concatenate = cat
__all__ += ["concat", "concatenate"]


@_export
def stack(tensors, dim=0):
    return P.stack(tensors, dim)


@_export
def where(condition, input=None, other=None):
    if input is None and other is None:
        return tuple(tensor(i) for i in np.nonzero(condition._values()))
    return P.where(condition, input, other)


@_export
def softmax(input, dim, dtype=None):
    x = input.to(dtype) if dtype is not None else input
    return P.softmax(x, dim)


@_export
def log_softmax(input, dim, dtype=None):
    x = input.to(dtype) if dtype is not None else input
    return P.softmax(x, dim, log=True)


@_export
def clone(input):
    return input.clone()


@_export
def detach(input):
    return input.detach()


@_export
def chunk(input, chunks, dim=0):
    n = input.shape[dim]
    step = -(-n // chunks)
    return tuple(P.getitem(input, (slice(None),) * (dim % input.dim()) + (slice(i, i + step),))
                 for i in range(0, n, step))


@_export
def split(tensor, split_size_or_sections, dim=0):
    n = tensor.shape[dim]
    d = dim % tensor.dim()
    if isinstance(split_size_or_sections, int):
        bounds = list(range(0, n, split_size_or_sections)) + [n]
    else:
        bounds = [0] + list(np.cumsum(split_size_or_sections))
    return tuple(P.getitem(tensor, (slice(None),) * d + (slice(a, b),)) for a, b in zip(bounds[:-1], bounds[1:]))


# ----- comparisons and logic (no gradient) ----------------------------------------------

def _cmp(name, fn):
    def f(input, other):
        if isinstance(other, Tensor) or isinstance(input, Tensor):
            a = input
            b = other
            return P.eager(lambda x, y: fn(x, y), a, b, dtype=D.bool_)
        raise TypeError(f"{name}(): argument 'input' must be Tensor")
    f.__name__ = name
    return _export(f)


eq = _cmp("eq", np.equal)
ne = _cmp("ne", np.not_equal)
lt = _cmp("lt", np.less)
le = _cmp("le", np.less_equal)
gt = _cmp("gt", np.greater)
ge = _cmp("ge", np.greater_equal)
logical_and = _cmp("logical_and", np.logical_and)
logical_or = _cmp("logical_or", np.logical_or)
logical_xor = _cmp("logical_xor", np.logical_xor)
greater, less, greater_equal, less_equal, not_equal = gt, lt, ge, le, ne
__all__ += ["greater", "less", "greater_equal", "less_equal", "not_equal"]


@_export
def logical_not(input):
    return P.eager(np.logical_not, input, dtype=D.bool_)


@_export
def isnan(input):
    return P.eager(np.isnan, input, dtype=D.bool_)


@_export
def isinf(input):
    return P.eager(np.isinf, input, dtype=D.bool_)


@_export
def isfinite(input):
    return P.eager(np.isfinite, input, dtype=D.bool_)


@_export
def equal(input, other):
    return input.shape == other.shape and bool(np.array_equal(input._values(), other._values()))


@_export
def allclose(input, other, rtol=1e-05, atol=1e-08, equal_nan=False):
    return bool(np.allclose(input._values(), other._values(), rtol, atol, equal_nan))


@_export
def isclose(input, other, rtol=1e-05, atol=1e-08, equal_nan=False):
    return P.eager(lambda a, b: np.isclose(a, b, rtol, atol, equal_nan), input, other, dtype=D.bool_)


@_export
def all(input, dim=None):  # noqa: A001
    return P.eager(lambda v: np.all(v, axis=dim), input, dtype=D.bool_)


@_export
def any(input, dim=None):  # noqa: A001
    return P.eager(lambda v: np.any(v, axis=dim), input, dtype=D.bool_)


@_export
def nonzero(input, as_tuple=False):
    idx = np.nonzero(input._values())
    if as_tuple:
        return tuple(tensor(i) for i in idx)
    return tensor(np.stack(idx, axis=1).astype(np.int64))


@_export
def floor(input):
    return P.eager(np.floor, input, dtype=input.dtype)


@_export
def ceil(input):
    return P.eager(np.ceil, input, dtype=input.dtype)


@_export
def round(input, decimals=0):  # noqa: A001
    return P.eager(lambda v: np.round(v, decimals), input, dtype=input.dtype)


# ----- random ----------------------------------------------------------------------------

def _size(size):
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        return tuple(size[0])
    return tuple(size)


def _random(arr, dtype, requires_grad):
    t = tensor(arr, dtype=D.as_dtype(dtype) or D.float32)
    return t.requires_grad_(True) if requires_grad else t


@_export
def randn(*size, dtype=None, device=None, requires_grad=False, generator_=None):
    return _random(generator().standard_normal(_size(size)), dtype, requires_grad)


@_export
def rand(*size, dtype=None, device=None, requires_grad=False):
    return _random(generator().random(_size(size)), dtype, requires_grad)


@_export
def randint(low=0, high=None, size=None, dtype=None, device=None, requires_grad=False):
    if high is None:
        low, high = 0, low
    return tensor(generator().integers(low, high, size=tuple(size)), dtype=D.as_dtype(dtype) or D.int64)


@_export
def randn_like(input, dtype=None, requires_grad=False):
    return randn(*input.shape, dtype=dtype or input.dtype, requires_grad=requires_grad)


@_export
def rand_like(input, dtype=None, requires_grad=False):
    return rand(*input.shape, dtype=dtype or input.dtype, requires_grad=requires_grad)


@_export
def randperm(n, dtype=None):
    return tensor(generator().permutation(n), dtype=D.as_dtype(dtype) or D.int64)


@_export
def normal(mean=0.0, std=1.0, size=None):
    return tensor(generator().normal(mean, std, size=size), dtype=D.float32)


@_export
def typename(obj):
    """torch.typename: 'torch.FloatTensor' for a tensor, 'module.QualName' otherwise."""
    if isinstance(obj, Tensor):
        return obj.type()
    module = getattr(obj, "__module__", "") or ""
    if hasattr(obj, "__qualname__"):
        qualname = obj.__qualname__
    elif hasattr(obj, "__name__"):
        qualname = obj.__name__
    else:
        module = obj.__class__.__module__ or ""
        qualname = obj.__class__.__qualname__
    if module in ("", "builtins"):
        return qualname
    return f"{module}.{qualname}"


# ----- Tensor methods ----------------------------------------------------------------------

def _method(fn):
    def m(self, *a, **k):
        return fn(self, *a, **k)
    m.__name__ = fn.__name__
    m.__doc__ = fn.__doc__
    return m


for _n in ("neg", "exp", "log", "sin", "cos", "tanh", "sigmoid", "relu", "abs", "sqrt", "square", "reciprocal",
           "rsqrt", "log2", "log10", "tan", "sign", "sgn", "clamp", "clip", "clamp_min", "clamp_max", "add", "sub",
           "mul", "div", "maximum", "minimum", "sum", "mean", "max", "min", "amax", "argmax", "argmin", "prod",
           "var", "std", "norm", "matmul", "mm", "bmm", "dot", "mv", "outer", "transpose", "swapaxes", "t",
           "flatten", "squeeze", "unsqueeze", "softmax", "log_softmax", "chunk", "split", "eq", "ne", "lt", "le",
           "gt", "ge", "logical_and", "logical_or", "logical_xor", "logical_not", "isnan", "isinf", "isfinite",
           "equal", "allclose", "isclose", "all", "any", "nonzero", "floor", "ceil", "round", "negative",
           "subtract", "multiply", "divide", "true_divide", "absolute", "greater", "less"):
    setattr(Tensor, _n, _method(globals()[_n]))


def _shape_of(args):
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        return tuple(args[0])
    return tuple(args)


Tensor.pow = lambda self, exponent: pow(self, exponent)
Tensor.permute = lambda self, *dims: P.permute(self, _shape_of(dims))
Tensor.reshape = lambda self, *shape: P.reshape(self, _shape_of(shape))
Tensor.view = lambda self, *shape: (self.to(shape[0]) if len(shape) == 1 and isinstance(shape[0], D.dtype)
                                    else P.view(self, _shape_of(shape)))
Tensor.expand = lambda self, *sizes: P.expand(self, _shape_of(sizes))
Tensor.expand_as = lambda self, other: P.expand(self, other.shape)
Tensor.view_as = lambda self, other: P.view(self, other.shape)
Tensor.reshape_as = lambda self, other: P.reshape(self, other.shape)
Tensor.repeat = lambda self, *sizes: P.eager(lambda v: np.tile(v, _shape_of(sizes)), self, dtype=self.dtype)
Tensor.__getitem__ = lambda self, idx: P.getitem(self, idx)
Tensor.__add__ = _JIT_BINARY["add"]
Tensor.__radd__ = _JIT_BINARY["add"]
Tensor.__sub__ = _JIT_BINARY["sub"]
Tensor.__rsub__ = lambda self, other: rsub(self, other)
Tensor.__mul__ = _JIT_BINARY["mul"]
Tensor.__rmul__ = _JIT_BINARY["mul"]
Tensor.__truediv__ = _JIT_BINARY["div"]
Tensor.__rtruediv__ = lambda self, other: reciprocal(self) * other  # noqa: F821  (torch: MulBackward0 <- ReciprocalBackward0)
Tensor.__pow__ = lambda self, other: pow(self, other)
Tensor.__rpow__ = lambda self, other: pow(other, self)
Tensor.__neg__ = lambda self: unary("neg", self)
Tensor.__pos__ = lambda self: self
Tensor.__abs__ = lambda self: unary("abs", self)
Tensor.__matmul__ = P.matmul     # (self is a Tensor: functions.matmul's check is done)
Tensor.__rmatmul__ = lambda self, other: matmul(tensor(other), self)
Tensor.__eq__ = lambda self, other: eq(self, other)
Tensor.__ne__ = lambda self, other: ne(self, other)
Tensor.__lt__ = lambda self, other: lt(self, other)
Tensor.__le__ = lambda self, other: le(self, other)
Tensor.__gt__ = lambda self, other: gt(self, other)
Tensor.__ge__ = lambda self, other: ge(self, other)
Tensor.__and__ = lambda self, other: logical_and(self, other) if self.dtype is D.bool_ else \
    P.eager(np.bitwise_and, self, other, dtype=self.dtype)
Tensor.__or__ = lambda self, other: logical_or(self, other) if self.dtype is D.bool_ else \
    P.eager(np.bitwise_or, self, other, dtype=self.dtype)
Tensor.__invert__ = lambda self: logical_not(self) if self.dtype is D.bool_ else \
    P.eager(np.invert, self, dtype=self.dtype)
Tensor.__hash__ = lambda self: id(self)
Tensor.masked_fill = lambda self, mask, value: where(mask, full((), value, dtype=self.dtype), self)
Tensor.type_as = lambda self, other: self.to(other.dtype)
Tensor.new_tensor = lambda self, data, dtype=None, requires_grad=False: tensor(
    data, dtype=dtype or self.dtype, requires_grad=requires_grad)
Tensor.new_zeros = lambda self, *size, dtype=None, requires_grad=False: tensor(
    np.zeros(_shape_of(size)), dtype=dtype or self.dtype, requires_grad=requires_grad)
Tensor.new_ones = lambda self, *size, dtype=None, requires_grad=False: tensor(
    np.ones(_shape_of(size)), dtype=dtype or self.dtype, requires_grad=requires_grad)
Tensor.new_full = lambda self, size, fill_value, dtype=None, requires_grad=False: full(
    size, fill_value, dtype=dtype or self.dtype, requires_grad=requires_grad)
Tensor.normal_ = lambda self, mean=0.0, std=1.0: self.copy_(tensor(generator().normal(mean, std, self.shape),
                                                                    dtype=self.dtype))
Tensor.uniform_ = lambda self, a=0.0, b=1.0: self.copy_(tensor(generator().uniform(a, b, self.shape),
                                                                dtype=self.dtype))
Tensor._version = property(lambda self: self._version_counter()[0])
del _n
