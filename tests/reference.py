"""Naive NumPy references for the escape ("py") rows of the op table, keyed by op name.

The jitted rows (unary/binary/reduce) carry their own ``ref`` in ``tapegrad/ops/table.py``;
the escape rows are implemented with NumPy in ``tapegrad/ops/pyops.py``, so these are written
independently and as plainly as possible (loops where a vectorised form would hide the meaning),
the way JAX's ``lax_reference.py`` and stumpy's ``tests/naive.py`` are. Every function takes NumPy
arrays (and the op's Python arguments) and returns a NumPy array.
"""
import itertools

import numpy as np


def _axes(x, dim):
    if dim is None:
        return tuple(range(x.ndim))
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    return tuple(sorted(d % max(x.ndim, 1) for d in dims))


# ----- linear algebra -----------------------------------------------------------------------------

def matmul(a, b):
    """np.matmul written out: (.., n, k) x (.., k, m) with 1-D promotion and batch broadcasting."""
    a1, b1 = a.ndim == 1, b.ndim == 1
    A = a[None, :] if a1 else a
    B = b[:, None] if b1 else b
    batch = np.broadcast_shapes(A.shape[:-2], B.shape[:-2])
    A = np.broadcast_to(A, batch + A.shape[-2:])
    B = np.broadcast_to(B, batch + B.shape[-2:])
    n, k, m = A.shape[-2], A.shape[-1], B.shape[-1]
    out = np.zeros(batch + (n, m), np.result_type(a, b))
    for idx in itertools.product(*(range(s) for s in batch)):
        for i in range(n):
            for j in range(m):
                out[idx + (i, j)] = sum(A[idx + (i, p)] * B[idx + (p, j)] for p in range(k))
    if a1:
        out = out[..., 0, :]
    if b1:
        out = out[..., 0]
    return out


def dot(a, b):
    return np.asarray(sum(a[i] * b[i] for i in range(a.shape[0])), dtype=np.result_type(a, b))


def mv(a, v):
    return np.array([dot(a[i], v) for i in range(a.shape[0])], dtype=np.result_type(a, v))


def bmm(a, b):
    return np.stack([matmul(a[i], b[i]) for i in range(a.shape[0])])


def addmm(bias, x, w):
    """nn.Linear: x @ w.T + bias."""
    return matmul(x, w.T) + bias


# ----- reductions ----------------------------------------------------------------------------------

def sum_dim(x, dim=None, keepdim=False):
    return np.sum(x, axis=_axes(x, dim), keepdims=keepdim)


def mean_dim(x, dim=None, keepdim=False):
    axes = _axes(x, dim)
    cnt = int(np.prod([x.shape[a] for a in axes])) if axes else 1
    return np.sum(x, axis=axes, keepdims=keepdim) / cnt


def max_dim(x, dim, keepdim=False):
    """(values, indices) of torch.max(x, dim): the first index of the maximum along `dim`."""
    d = dim % x.ndim
    idx = np.argmax(x, axis=d)
    vals = np.take_along_axis(x, np.expand_dims(idx, d), axis=d)
    if not keepdim:
        vals = np.squeeze(vals, d)
    else:
        idx = np.expand_dims(idx, d)
    return vals, idx.astype(np.int64)


def min_dim(x, dim, keepdim=False):
    d = dim % x.ndim
    idx = np.argmin(x, axis=d)
    vals = np.take_along_axis(x, np.expand_dims(idx, d), axis=d)
    if not keepdim:
        vals = np.squeeze(vals, d)
    else:
        idx = np.expand_dims(idx, d)
    return vals, idx.astype(np.int64)


def max_all(x):
    return np.asarray(x.max())


def min_all(x):
    return np.asarray(x.min())


# ----- views and shape -----------------------------------------------------------------------------

def view(x, shape):
    return x.reshape(shape)


def unsafe_view(x, shape):
    """reshape of a non-contiguous tensor: a contiguous copy, then a view of it."""
    return np.ascontiguousarray(x).reshape(shape)


def transpose(x, d0, d1):
    return np.swapaxes(x, d0, d1) if x.ndim else x


def permute(x, dims):
    return np.transpose(x, dims)


def t(x):
    return x.T


def squeeze(x):
    return x.reshape(tuple(s for s in x.shape if s != 1))


def squeeze_dim(x, dim):
    d = dim % x.ndim
    return np.squeeze(x, d) if x.shape[d] == 1 else x


def unsqueeze(x, dim):
    return np.expand_dims(x, dim % (x.ndim + 1))


def expand(x, sizes):
    pad = (1,) * (len(sizes) - x.ndim) + x.shape
    target = tuple(d if s == -1 else s for s, d in zip(sizes, pad))
    return np.broadcast_to(x, target)


def select(x, dim, i):
    return np.take(x, i, axis=dim)


def slice(x, dim, start, stop, step=1):  # noqa: A001
    idx = [np.s_[:]] * x.ndim
    idx[dim] = np.s_[start:stop:step]
    return x[tuple(idx)]


def index(x, idx):
    """Advanced indexing: integer arrays (lists) and boolean masks, NumPy's semantics = torch's."""
    return x[idx]


def cat(xs, dim=0):
    return np.concatenate(xs, axis=dim)


def stack(xs, dim=0):
    return np.stack(xs, axis=dim)


def where(cond, x, y):
    return np.where(cond, x, y)


# ----- softmax family, clamp -----------------------------------------------------------------------

def softmax(x, dim):
    e = np.exp(x - np.max(x, axis=dim, keepdims=True))
    return e / np.sum(e, axis=dim, keepdims=True)


def log_softmax(x, dim):
    s = x - np.max(x, axis=dim, keepdims=True)
    return s - np.log(np.sum(np.exp(s), axis=dim, keepdims=True))


def clamp(x, lo=None, hi=None):
    r = x
    if lo is not None:
        r = np.where(r < lo, lo, r)
    if hi is not None:
        r = np.where(r > hi, hi, r)
    return r.astype(x.dtype)


def mse_loss(x, target, reduction="mean"):
    d = (x - target) ** 2
    return np.asarray(d.mean() if reduction == "mean" else d.sum())


# ----- dtype and in-place ----------------------------------------------------------------------------

def to_copy(x, np_dtype):
    return x.astype(np_dtype)


def copy_(dst, src):
    """dst.copy_(src): src broadcast to dst's shape, cast to dst's dtype; returns the new dst."""
    out = dst.copy()
    out[...] = np.broadcast_to(src, dst.shape)
    return out


def index_put(dst, idx, value):
    """dst[idx] = value; returns the new dst."""
    out = dst.copy()
    out[idx] = value
    return out


REFS = {f.__name__: f for f in (
    matmul, dot, mv, bmm, addmm, sum_dim, mean_dim, max_dim, min_dim, max_all, min_all, view, unsafe_view,
    transpose, permute, t, squeeze, squeeze_dim, unsqueeze, expand, select, slice, index, cat, stack, where,
    softmax, log_softmax, clamp, mse_loss, to_copy, copy_, index_put)}
