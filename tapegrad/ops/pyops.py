"""Escape records: ops whose forward and VJP run as NumPy, one Python step per record.

Each builder checks its inputs (PyTorch's errors, before anything is
recorded), allocates the output, and appends an escape record with
``record(...)``. The replay returns to Python for such a record only.

Views (transpose, permute, reshape of contiguous storage, expand, basic
indexing, squeeze/unsqueeze) allocate nothing: the output shares the input's
storage, and a record is appended only when the view takes part in autograd.
"""
import numbers
import struct
from types import MappingProxyType

import numpy as np

from .. import _dtype as D
from .. import config
from ..autograd.grad_mode import _STATE as _GRAD
from ..kernels import blas as _blas
from ..kernels import opfn as _opfn
from ..kernels import replay_cpu as _replay
from ..storage import byte_span
from ..tape.tape import _NO_ATTRS, PACK as _PACK_ROW, ROW, TAPE, PyRec
from .table import BY_OPCODE, OPS, PY as _PY, OpSpec

_NAT_READY = _opfn.READY

_new_rec = object.__new__


_TMOD = []


def _T():
    """The tensor module (imported late: it imports this one)."""
    if not _TMOD:
        import sys
        _TMOD.append(sys.modules[__name__.rsplit(".", 2)[0] + ".tensor"])
    return _TMOD[0]


# ----- the record helper ---------------------------------------------------------

def record(name, out, ins, fwd, bwd=None, saves=True, attrs=None, grad=True, lin=None, native=None):
    """Append an escape record computing `out` from tensors `ins`.

    fwd(*in_np) -> array written into out (or None if fwd wrote it itself);
    bwd(g, out_np, *in_np) -> one gradient (or None) per input;
    lin: the op is linear in its float inputs (its VJP is then linear too, and create_graph
    differentiates it without a rule of its own): True when fwd is that linear map, else
    lin(tangents, out_np, in_np) -> the map applied to tangents;
    native: the record's descriptor for the jitted replay (Note [native records])."""
    T = _T()
    rg = False
    if grad and bwd is not None and _GRAD[0]:
        for t in ins:
            if t._rg:
                rg = True
                break
    prods = [T._producer(t) if (rg and t._rg) else -1 for t in ins]
    needs = tuple(p != -1 for p in prods) if getattr(bwd, "needs_aware", False) else None
    # (skip gradients no input asks for: matmul's big ones)
    spec = OPS[name] if isinstance(name, str) else name
    # spans (for the version check) are made from the operands when a backward first asks
    rec = PyRec.numpy(spec, fwd, bwd, ins, out, attrs, saves, True if (rg and saves) else None,
                      lin if rg else None, needs)
    r = TAPE.append_py(rec, out._n, out._dtype.code & 3, out._addr, prods, grad=rg, native=native)
    if rg:
        out._rec = r
        out._rg = True
    exposed = T.is_exposed
    if exposed(out):
        TAPE.flush()
    else:
        for t in ins:
            if exposed(t):
                TAPE.flush()
                break
    return out


# Note [fast escape records]: the eager fronts of a matrix's transpose (x @ W.T), a 2-D matmul
# and a broadcast add/sub of two float tensors (h + b) are most of a small model's escape
# records (W4: 500 of its 700 a step). record() above serves every op (any number of inputs,
# grad or not, a closure per call) and took ~60% of their cost (~40 Python calls each for a
# transpose, 10-18 us on the Intel VM). _record12 is record() for one or two inputs with a
# VJP, its PyRec.numpy and Tape.append_py written out: the same record, the same row, the same
# tape state, in fewer steps; the fronts pass module-level NumPy functions, not new closures.
# tests/test_fast_escape.py compares what both paths leave on the tape.

def _record12(spec, out, a, b, fn, vjp, saves, lin, native, attrs=None, c=None):
    """record(spec, out, [a], [a, b] or [a, b, c], fn, vjp, saves, attrs, lin=lin, native=native)
    (b None: one input; c: a third, after b), for a VJP that is not needs-aware unless it says so
    (see record())."""
    T = _TMOD[0] if _TMOD else _T()
    rg = _GRAD[0] and (a._rg or (b is not None and b._rg) or (c is not None and c._rg))
    producer = T._producer
    if rg:
        pa = (a._rec if a._rec >= 0 else producer(a)) if a._rg else -1
        if b is None:
            prods = [pa]
        else:
            prods = [pa, (b._rec if b._rec >= 0 else producer(b)) if b._rg else -1]
            if c is not None:
                prods.append((c._rec if c._rec >= 0 else producer(c)) if c._rg else -1)
        needs = tuple([p != -1 for p in prods]) if vjp.__dict__.get("needs_aware") else None
    else:
        prods = [-1] if b is None else [-1, -1] if c is None else [-1, -1, -1]
        needs = None if not vjp.__dict__.get("needs_aware") else (False,) * len(prods)
    # PyRec.numpy, written out
    rec = _new_rec(PyRec)
    rec.spec, rec._f, rec._b, rec._ins = spec, None, None, None
    odt = out._dtype
    rec.out = (out._shape, odt.np)
    rec.attrs = attrs or _NO_ATTRS
    rec.saves = saves
    rec._spans = True if (rg and saves) else None
    rec._ivs = rec._ov = None
    rec._lin, rec.raw = (lin if rg else None), vjp
    rec._fn, rec._needs = fn, needs
    rec._writes = fn.__dict__.get("writes_out", False)
    if b is None:
        rec._vs = (a._base, a._addr, a._shape, a._stride, a._dtype.np)
    elif c is None:
        rec._vs = (a._base, a._addr, a._shape, a._stride, a._dtype.np, b._base, b._addr, b._shape, b._stride,
                   b._dtype.np)
    else:
        rec._vs = (a._base, a._addr, a._shape, a._stride, a._dtype.np, b._base, b._addr, b._shape, b._stride,
                   b._dtype.np, c._base, c._addr, c._shape, c._stride, c._dtype.np)
    rec._vo = (out._base, out._addr, out._shape, out._stride, odt.np)
    # Tape.append_py and Tape.append, written out
    if native and not _NAT_READY[2 * native[0] + (odt.code & 1)]:
        _opfn.ensure_native(native[0], odt.code & 1)    # (Note [native kinds] in kernels/gen_cpu.py)
    tape = TAPE
    edges = tape.edges
    e = len(edges)
    np_ = len(prods)
    edges.append(np_)
    edges.extend(prods)
    if native:
        edges.extend(native)
    i = tape.n
    if (i + 1) * ROW > len(tape.buf):
        tape.grow()
    _PACK_ROW(tape.buf, i * ROW, (_PY << 5) | (odt.code & 3), out._n, out._addr, e, e + 1 + np_ if native else 0,
              -1, -1, 1 if rg else 0, 0.0)
    tape.n = i + 1
    r = tape.base + i
    tape.py[r] = rec
    if tape.anomaly_stacks:
        tape.capture_stacks(r, r + 1)
    if rg:
        out._rec = r
        out._rg = True
    exposed = T.is_exposed
    if exposed(out) or exposed(a) or (b is not None and exposed(b)) or (c is not None and exposed(c)):
        tape.flush()
    return out


def sum_to(g, shape):
    """Sum a broadcast gradient back to `shape` (PyTorch's sum_to_size)."""
    shape = tuple(shape)
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    if lead:
        g = g.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, d in enumerate(shape) if d == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


def broadcast_shapes(a, b):
    if a == b:
        return a
    try:
        return np.broadcast_shapes(a, b)
    except ValueError:
        # torch's message names the first mismatching (right-aligned) dimension
        n = max(len(a), len(b))
        pa, pb = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
        for i in range(n - 1, -1, -1):
            if pa[i] != pb[i] and pa[i] != 1 and pb[i] != 1:
                raise RuntimeError(f"The size of tensor a ({pa[i]}) must match the size of tensor b ({pb[i]}) "
                                   f"at non-singleton dimension {i}") from None
        raise


# ----- elementwise via NumPy (broadcasting, mixed dtypes, integers) ----------------

_NP_UNARY_FLOAT = {"exp", "log", "sin", "cos", "tanh", "sigmoid", "sqrt", "reciprocal", "rpow_scalar"}


def _np_rule_b(name):
    """Vectorised VJP of a unary row from its scalar rule (np.vectorize: the
    rare non-contiguous or mixed-dtype path)."""
    from ..kernels import elementwise as E
    fn = getattr(E, OPS[name].rule + "_b")
    return np.vectorize(fn, otypes=[np.float64])


def unary_py(name, x, c=0.0):
    T = _T()
    dt = x._dtype
    if not dt.is_floating_point and name in _NP_UNARY_FLOAT:
        return T.unary(name, to_dtype(x, D.float32, hidden=True), c)
    if name == "clone" and not x._contig:
        return clone(x)
    if not x._contig and dt.is_floating_point:
        return T.unary(name, contiguous(x, hidden=True), c)
    ref = OPS[name].ref
    out = T._empty(x._shape, dt)
    bwd = None
    if dt.is_floating_point:
        vb = _np_rule_b(name)

        def bwd(g, o, xv):
            return (vb(xv, o, g, c),)
    return record(name, out, [x], lambda xv: ref(xv, c), bwd, attrs={"c": c})


_NP_BINARY_B = {
    "add": lambda x, z, y, g, c: (g, g * c),
    "sub": lambda x, z, y, g, c: (g, -g * c),
    "mul": lambda x, z, y, g, c: (g * z, g * x),
    "div": lambda x, z, y, g, c: (g / z, -g * x / (z * z)),
    "pow": lambda x, z, y, g, c: (np.where(z == 0, 0.0, g * z * np.power(x, z - 1)),
                                  np.where((x == 0) & (z >= 0), 0.0, g * y * np.log(np.where(x > 0, x, np.nan)))),
    # PyTorch: where(self == other, grad / 2, grad).masked_fill_(self < other, 0): a NaN passes grad to both
    "maximum": lambda x, z, y, g, c: (np.where(x == z, g / 2, np.where(x < z, 0.0, g)),
                                      np.where(x == z, g / 2, np.where(x > z, 0.0, g))),
    "minimum": lambda x, z, y, g, c: (np.where(x == z, g / 2, np.where(x > z, 0.0, g)),
                                      np.where(x == z, g / 2, np.where(x < z, 0.0, g))),
}


def jit_record_grads_np(tape, P, i):
    """The two input gradients of jitted binary record i (physical) whose inputs are the same
    tensor (``x * x``), computed in NumPy from the operands at the record's addresses: the
    jitted replay would add both into the one buffer they share."""
    from ..storage import array_at
    code, n, out, a, b = struct.unpack_from("<5q", tape.buf, i * ROW)
    spec = BY_OPCODE[code >> 5]
    npdt = np.float64 if (code & 3) == 1 else np.float32
    c = struct.unpack_from("<d", tape.buf, i * ROW + 64)[0]
    na, nb = (1 if (code >> 2) & 1 else n), (1 if (code >> 2) & 2 else n)
    x, z, y = array_at(a, na, npdt), array_at(b, nb, npdt), array_at(out, n, npdt)
    g = tape._grad_view(P, i, (n,), npdt)
    with np.errstate(all="ignore"):
        gx, gz = _NP_BINARY_B[spec.name](x, z, y, g, c)
    return [sum_to(np.broadcast_to(gx, (n,)), (na,)).astype(npdt), sum_to(np.broadcast_to(gz, (n,)), (nb,)).astype(npdt)]


def result_dtype(name, x, y, scalar=False):
    dt = D.promote_scalar(x._dtype, y.item()) if scalar else D.result_type(x, y)
    if name == "div" and not dt.is_floating_point:
        dt = D.float32
    return dt


def _bcast_pair(name):
    """The NumPy forward and VJP of _bcast_add's record for op `name` (add or sub, alpha 1),
    made once at import (module-level functions, not a closure per call)."""
    ref, vjp = OPS[name].ref, _NP_BINARY_B[name]

    def fwd(xv, yv):
        with np.errstate(all="ignore"):
            return ref(xv, yv, 1.0)

    def bwd(g, o, xv, yv):
        with np.errstate(all="ignore"):
            gx, gy = vjp(xv, yv, o, g, 1.0)
        shape = o.shape
        return sum_to(np.broadcast_to(gx, shape), xv.shape), sum_to(np.broadcast_to(gy, shape), yv.shape)
    return fwd, bwd


_add_fwd, _add_bwd = _bcast_pair("add")
_sub_fwd, _sub_bwd = _bcast_pair("sub")
_C1 = MappingProxyType({"c": 1.0})   # (shared by the records: read only)
# (shapes of x and y) -> (broadcast shape, the native descriptor's tail), for the fast path below
_BCAST_FAST = {}


def _bcast_add(name, x, y):
    """x + y or x - y (alpha 1) of two contiguous float tensors of one dtype that broadcast:
    binary_py's record, through _record12 (Note [fast escape records])."""
    key = (x._shape, y._shape)
    hit = _BCAST_FAST.get(key)
    if hit is None:
        shape = tuple(broadcast_shapes(x._shape, y._shape))      # (raises PyTorch's error)
        sh, (sx, sy) = _coalesce(shape, _grad_strides(x._shape, shape), _grad_strides(y._shape, shape))
        hit = _memo(_BCAST_FAST, key, (shape, [len(sh)] + sh + sx + sy))
    shape, tail = hit
    T = _TMOD[0] if _TMOD else _T()
    out = T._empty(shape, x._dtype)
    nat = None
    if out._n and x._n and y._n and config.NATIVE:
        nat = [5, 1 if name == "sub" else 0, out._n, x._addr, y._addr, _F64_ONE] + tail
    if name == "add":
        return _record12(OPS["add"], out, x, y, _add_fwd, _add_bwd, True, None, nat, _C1)
    return _record12(OPS["sub"], out, x, y, _sub_fwd, _sub_bwd, True, None, nat, _C1)


def binary_py(name, x, y, c=1.0, scalar=False):
    """Broadcasting / mixed-dtype / integer path of the binary rows."""
    if (c == 1.0 and not scalar and (name == "add" or name == "sub") and x._dtype is y._dtype
            and x._dtype.code <= 1 and x._contig and y._contig):
        return _bcast_add(name, x, y)
    return binary_general(name, x, y, c, scalar)


def binary_general(name, x, y, c=1.0, scalar=False):
    """binary_py without the fast path (every case; tests compare the two)."""
    T = _T()
    shape = tuple(broadcast_shapes(x._shape, y._shape))
    dt = result_dtype(name, x, y, scalar)
    if name in ("add", "sub") and dt is D.bool_ and name == "sub":
        raise RuntimeError("Subtraction, the `-` operator, with two bool tensors is not supported. Use the `^` "
                           "or `logical_xor()` operator instead.")
    ref = OPS[name].ref
    out = T._empty(shape, dt)
    npdt = dt.np
    xs, ys = x._shape, y._shape

    def fwd(xv, yv):
        with np.errstate(all="ignore"):
            return ref(xv.astype(npdt, copy=False), yv.astype(npdt, copy=False), c)

    bwd = None
    if dt.is_floating_point:
        vjp = _NP_BINARY_B[name]

        def bwd(g, o, xv, yv):
            with np.errstate(all="ignore"):
                gx, gy = vjp(xv.astype(npdt, copy=False), yv.astype(npdt, copy=False), o, g, c)
            gx = sum_to(np.broadcast_to(gx, shape), xs)
            gy = sum_to(np.broadcast_to(gy, shape), ys)
            return gx, gy
    nat = None
    if name in ("add", "sub") and x._contig and y._contig and _native_ok(out, [x, y]):
        key = (x._shape, y._shape)
        tail = _BCAST_TAILS.get(key)
        if tail is None:
            sh, (sx, sy) = _coalesce(shape, _grad_strides(x._shape, shape), _grad_strides(y._shape, shape))
            tail = _memo(_BCAST_TAILS, key, [len(sh)] + sh + sx + sy)
        nat = [5, 1 if name == "sub" else 0, out._n, x._addr, y._addr, _F64_ONE if c == 1.0 else _f64_bits(c)]
        nat += tail
    return record(name, out, [x, y], fwd, bwd, attrs={"c": c}, native=nat)


def to_dtype(x, dt, hidden=False):
    T = _T()
    out = T._empty(x._shape, dt)
    bwd = (lambda g, o, xv: (g,)) if dt.is_floating_point and x._dtype.is_floating_point else None
    return record("to_copy", out, [x], lambda xv: xv, bwd, saves=False, attrs={"hidden": hidden}, lin=True)


def contiguous(x, hidden=False):
    T = _T()
    out = T._empty(x._shape, x._dtype)
    return record("clone", out, [x], lambda xv: xv, lambda g, o, xv: (g,), saves=False, lin=True,
                  attrs={"hidden": hidden})


def clone(x):
    return contiguous(x)


# ----- views -------------------------------------------------------------------------

def _view_out(x, res):
    """A Tensor over the same storage as x, described by NumPy view `res` of x."""
    T = _T()
    isz = x._dtype.itemsize
    addr = res.__array_interface__["data"][0]
    t = T._wrap(x._base, addr, tuple(res.shape), tuple(s // isz for s in res.strides), x._dtype)
    t._vc = x._version_counter()
    t._exposed = x._exposed
    return t


def view_op(name, x, vf, bwd=None, perm=None):
    """Apply NumPy view function `vf` to x's storage; record for autograd. perm: the view is
    x's dimensions in this order (transposes: its native descriptor without _fake)."""
    if perm is not None:            # a permutation of x's dimensions: its shape and strides, without NumPy
        sh, st = x._shape, x._stride
        out = _T()._wrap(x._base, x._addr, tuple([sh[i] for i in perm]), tuple([st[i] for i in perm]), x._dtype)
        out._vc = x._version_counter()
        out._exposed = x._exposed
    else:
        out = _view_out(x, vf(x._view_np()))
    if x._rg and _GRAD[0]:
        shape = x._shape
        if bwd is None:
            def bwd(g, o, xv):
                gx = np.zeros(shape, g.dtype)
                vf(gx)[...] = g
                return (gx,)
        record(name, out, [x], lambda xv: None, bwd, saves=False, lin=lambda ts, o, ivs: vf(ts[0]),
               native=_view_native(out, x, vf, perm))
        if perm is not None:
            TAPE.permuted = True
    return out


def _t2_fwd(xv):
    return None


def _t2_bwd(g, o, xv):
    gx = np.zeros(xv.shape, g.dtype)
    np.transpose(gx, (1, 0))[...] = g
    return (gx,)


def _t2_lin(ts, o, ivs):
    return np.transpose(ts[0], (1, 0))


def t2(x):
    """x.T of a 2-D tensor: view_op("permute", x, _swap2, perm=(1, 0)) through _record12 (Note
    [fast escape records])."""
    T = _TMOD[0] if _TMOD else _T()
    (r, c), (s0, s1) = x._shape, x._stride
    out = _new_rec(T.Tensor)
    out._base = x._base
    out._addr = x._addr
    out._shape = shape = (c, r)
    out._stride = (s1, s0)
    out._dtype = dt = x._dtype
    n = out._n = x._n
    out._contig = (s0 == 1 and s1 == (r if r > 1 else 1)) or n <= 1
    out._rec = -1
    out._rg = False
    vc = x._vc
    if vc is None:
        vc = x._vc = [0]
    out._vc = vc
    out._exposed = x._exposed
    if x._rg and _GRAD[0]:
        nat = None
        if n and config.NATIVE and dt.code <= 1:
            key = (x._shape, _PERM10)
            tail = _PERM_TAILS.get(key)
            if tail is None:
                tail = _view_native(out, x, None, _PERM10)[4:]
            nat = [4, 0, n, 0] + tail
        _record12(_PERMUTE, out, x, None, _t2_fwd, _t2_bwd, False, _t2_lin, nat)
        TAPE.permuted = True
    return out


_PERM10 = (1, 0)
_PERMUTE = OPS["permute"]


def transpose(x, d0, d1):
    T = _T()
    n = x.dim()
    a, b = T._wrap_dim(d0, n), T._wrap_dim(d1, n)
    if n == 0:
        return view_op("transpose", x, lambda v: v)
    perm = list(range(n))
    perm[a], perm[b] = b, a
    return view_op("transpose", x, lambda v: np.swapaxes(v, a, b), perm=perm)


def t(x):
    if x.dim() > 2:
        raise RuntimeError(f"t() expects a tensor with <= 2 dimensions, but self is {x.dim()}D")
    return view_op("t", x, lambda v: v.T, perm=list(range(x.dim()))[::-1])


def permute(x, dims):
    T = _T()
    n = x.dim()
    if len(dims) != n:
        raise RuntimeError(f"permute(sparse_coo): number of dimensions in the tensor input does not match the "
                           f"length of the desired ordering of dimensions i.e. input.dim() = {n} is not equal to "
                           f"len(dims) = {len(dims)}")
    dims = tuple(T._wrap_dim(d, n) for d in dims)
    if len(set(dims)) != n:
        raise RuntimeError("permute(): duplicate dims are not allowed.")
    return view_op("permute", x, lambda v: np.transpose(v, dims), perm=list(dims))


def _infer_shape(shape, n):
    shape = list(shape)
    neg = [i for i, s in enumerate(shape) if s == -1]
    if len(neg) > 1:
        raise RuntimeError("only one dimension can be inferred")
    known = 1
    for s in shape:
        if s != -1:
            if s < 0:
                raise RuntimeError(f"invalid shape dimension {s}")
            known *= s
    if neg:
        if known == 0 or n % known:
            raise RuntimeError(f"shape '{list(shape)}' is invalid for input of size {n}")
        shape[neg[0]] = n // known
    elif known != n:
        raise RuntimeError(f"shape '{list(shape)}' is invalid for input of size {n}")
    return tuple(shape)


def view(x, shape):
    shape = _infer_shape(shape, x._n)
    if not x._contig:
        raise RuntimeError("view size is not compatible with input tensor's size and stride (at least one "
                           "dimension spans across two contiguous subspaces). Use .reshape(...) instead.")
    return view_op("view", x, lambda v: v.reshape(shape), lambda g, o, xv: (g.reshape(xv.shape),))


def reshape(x, shape):
    shape = _infer_shape(shape, x._n)
    if x._contig:
        return view_op("view", x, lambda v: v.reshape(shape), lambda g, o, xv: (g.reshape(xv.shape),))
    c = contiguous(x)
    return view_op("unsafe_view", c, lambda v: v.reshape(shape), lambda g, o, xv: (g.reshape(xv.shape),))


def expand(x, sizes):
    sizes = tuple(sizes)
    n = len(sizes)
    if n < x.dim():
        raise RuntimeError(f"expand(torch.FloatTensor{{{list(x._shape)}}}, size={list(sizes)}): the number of "
                           f"sizes provided ({n}) must be greater or equal to the number of dimensions in the "
                           f"tensor ({x.dim()})")
    pad = (1,) * (n - x.dim()) + x._shape
    target = []
    for i, (s, d) in enumerate(zip(sizes, pad)):
        if s == -1:
            s = d
        if d != 1 and s != d:
            raise RuntimeError(f"The expanded size of the tensor ({s}) must match the existing size ({d}) at "
                               f"non-singleton dimension {i}.  Target sizes: {list(sizes)}.  Tensor sizes: "
                               f"{list(x._shape)}")
        target.append(s)
    target = tuple(target)
    shape = x._shape
    return view_op("expand", x, lambda v: np.broadcast_to(v, target), lambda g, o, xv: (sum_to(g, shape),))


def squeeze(x, dim=None):
    T = _T()
    if dim is None:
        return view_op("squeeze", x, lambda v: v.reshape(tuple(s for s in v.shape if s != 1)),
                       lambda g, o, xv: (g.reshape(xv.shape),))
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    ds = {T._wrap_dim(d, x.dim()) for d in dims}
    shape = tuple(s for i, s in enumerate(x._shape) if not (i in ds and s == 1))
    return view_op("squeeze_dim", x, lambda v: v.reshape(shape), lambda g, o, xv: (g.reshape(xv.shape),))


def unsqueeze(x, dim):
    T = _T()
    d = T._wrap_dim(dim, x.dim() + 1)
    return view_op("unsqueeze", x, lambda v: np.expand_dims(v, d), lambda g, o, xv: (g.reshape(xv.shape),))


def flatten(x, start_dim=0, end_dim=-1):
    T = _T()
    if x.dim() == 0:
        return reshape(x, (1,))
    s, e = T._wrap_dim(start_dim, x.dim()), T._wrap_dim(end_dim, x.dim())
    if s > e:
        raise RuntimeError("flatten() has invalid args: start_dim cannot come after end_dim")
    if s == e:
        return x   # torch returns the input itself (no view, no grad_fn)
    shape = x._shape[:s] + (int(np.prod(x._shape[s:e + 1])),) + x._shape[e + 1:]
    return reshape(x, shape)


# ----- indexing ------------------------------------------------------------------------

def _np_index(idx):
    T = _T()
    if isinstance(idx, tuple):
        return tuple(_np_index(i) for i in idx)
    if isinstance(idx, T.Tensor):
        if idx._dtype.is_floating_point:
            raise IndexError("tensors used as indices must be long, int, byte or bool tensors")
        return idx._values()
    if isinstance(idx, list):
        return np.asarray([_np_index(i) if isinstance(i, T.Tensor) else i for i in idx])
    return idx


def _is_basic(idx):
    items = idx if isinstance(idx, tuple) else (idx,)
    return all(isinstance(i, (numbers.Integral, slice, type(None), type(Ellipsis))) and not isinstance(i, bool)
               for i in items)


def _fix_msg(e, ndim=None):
    msg = str(e)
    if ndim is not None and msg.startswith("too many indices for array"):
        return f"too many indices for tensor of dimension {ndim}"   # torch's wording
    return msg.replace("for axis", "for dimension")


def _view_name(items, shape):
    """The row of torch's top node for a basic index: the last op it records, in index order
    (select for an int, unsqueeze for None, slice for a slice that changes its dim; a full slice
    records nothing). x[...] and x[:, 0:n] are AliasBackward0 in torch, which has no row: slice."""
    n_used = sum(1 for i in items if i is not None and i is not Ellipsis)
    dim, name = 0, "slice"
    for it in items:
        if it is Ellipsis:
            dim += len(shape) - n_used
        elif it is None:
            name = "unsqueeze"
        elif isinstance(it, slice):
            if it.indices(shape[dim]) != (0, shape[dim], 1):
                name = "slice"
            dim += 1
        else:
            name = "select"
            dim += 1
    return name


def getitem(x, idx):
    T = _T()
    nidx = _np_index(idx)
    if _is_basic(nidx):
        if x.dim() == 0 and nidx not in ((), Ellipsis, None) and not isinstance(nidx, type(None)):
            if not (isinstance(nidx, tuple) and all(i is None or i is Ellipsis for i in nidx)):
                raise IndexError("invalid index of a 0-dim tensor. Use `tensor.item()` in Python or "
                                 "`tensor.item<T>()` in C++ to convert a 0-dim tensor to a number")
        try:
            x._view_np()[nidx]
        except IndexError as e:
            raise IndexError(_fix_msg(e, x.dim())) from None
        items = nidx if isinstance(nidx, tuple) else (nidx,)
        name = "slice" if isinstance(nidx, slice) else _view_name(items, x._shape)
        # NOTE: an all-integer index gives NumPy a scalar *copy*; a trailing Ellipsis keeps a 0-d view
        vidx = items if any(i is Ellipsis for i in items) else items + (Ellipsis,)
        return view_op(name, x, lambda v: v[vidx])
    try:
        probe = np.empty(x._shape, np.bool_)[nidx]     # the shape only (the values are read by the record)
    except IndexError as e:
        raise IndexError(_fix_msg(e, x.dim())) from None
    out = T._empty(tuple(probe.shape), x._dtype)
    shape = x._shape

    def bwd(g, o, xv):
        gx = np.zeros(shape, g.dtype)
        np.add.at(gx, nidx, g)
        return (gx,)
    return record("index", out, [x], lambda xv: xv[nidx], bwd, lin=True)


def setitem(x, idx, value):
    T = _T()
    nidx = _np_index(idx)
    if x.dim() == 0 and _is_basic(nidx) and not all(i is None or i is Ellipsis for i in
                                                     (nidx if isinstance(nidx, tuple) else (nidx,))):
        raise IndexError("invalid index of a 0-dim tensor. Use `tensor.item()` in Python or "
                         "`tensor.item<T>()` in C++ to convert a 0-dim tensor to a number")
    try:
        np.empty(x._shape, np.bool_)[nidx]   # the index first: torch's IndexError before the value is converted
    except IndexError as e:
        raise IndexError(_fix_msg(e, x.dim())) from None
    if not isinstance(value, T.Tensor):
        value = T.tensor(value, dtype=x._dtype) if not isinstance(value, np.ndarray) else T.from_numpy(value)
    try:
        np.broadcast_to(np.empty(value._shape), np.empty(x._shape)[nidx].shape)
    except IndexError as e:
        raise IndexError(_fix_msg(e, x.dim())) from None
    except ValueError:
        if _is_basic(nidx):   # torch copies into a view (copy_): expand's error, raised before anything is recorded
            expand(value, np.empty(x._shape)[nidx].shape)
        raise RuntimeError(f"shape mismatch: value tensor of shape {list(value._shape)} cannot be broadcast to "
                           f"indexing result of shape {list(np.empty(x._shape)[nidx].shape)}") from None
    x._version_counter()[0] += 1
    def lin(ts, o, ivs):
        r = np.array(ts[0], copy=True)
        r[nidx] = ts[1]
        return r
    _inplace_record("index_put", x, [value], lambda xv, vv: _assign(xv, nidx, vv), _setitem_bwd(nidx, x, value), lin)


def _assign(xv, nidx, vv):
    xv[nidx] = vv


def _setitem_bwd(nidx, x, value):
    vshape = value._shape

    def bwd(g, o, vv):
        gx = g.copy()
        gv = sum_to(np.broadcast_to(g[nidx], np.empty(o.shape)[nidx].shape), vshape)
        gx[nidx] = 0
        return gx, gv
    return bwd


def _inplace_record(name, x, others, fwd_inplace, bwd, lin=None):
    """A record that writes x's own storage; x's history moves onto it."""
    T = _T()
    rg = _GRAD[0] and (x._rg or any(o._rg for o in others)) and bwd is not None
    ins = [x] + list(others)
    ivs = [t._view_np() for t in ins]

    def f():
        fwd_inplace(*ivs)

    def b(g):
        return bwd(g, ivs[0], *ivs[1:])

    prods = [T._producer(t) if (rg and t._rg) else -1 for t in ins]
    old = x._rec
    _log_inplace(x)
    r = TAPE.pyrecord(OPS[name], f, b, [(t._shape, t._dtype.np) for t in ins], (x._shape, x._dtype.np),
                      x._n, x._dtype.code & 3, x._addr, prods, None, True, grad=rg)
    if rg:
        rec = TAPE.py[r]
        rec.ivs, rec.ov, rec.lin = ivs, ivs[0], lin
        rec.raw = lambda g, o, *iv: bwd(g, o, *iv[1:])
        x._rec = r
        x._rg = True
        if old >= 0:
            TAPE.release(old)
    if T.is_exposed(x) or any(T.is_exposed(t) for t in others):
        TAPE.flush()
    return x


def _log_inplace(x):
    """Remember that x's storage changes from the next record on, so that a
    backward through a record that saved it raises PyTorch's version error."""
    TAPE.log_inplace([inplace_span(x)])


def inplace_span(x):
    """(first byte, end byte, version counter, shape, dtype name) of x's storage: an
    in-place log entry without its record index (optimizers precompute these)."""
    lo = x._addr
    return (lo, lo + byte_span(x._shape, x._stride, x._dtype.itemsize), x._version_counter(), x._shape,
            x._dtype.name)


def fill_(x, value):
    x._version_counter()[0] += 1

    def f(xv):
        xv[...] = value
    return _inplace_record("copy_", x, [], f, (lambda g, o: (np.zeros_like(g),)) if x._rg else None,
                           lambda ts, o, ivs: np.zeros_like(o))


def copy_(x, src):
    T = _T()
    if not isinstance(src, T.Tensor):
        src = T.tensor(src)
    try:
        np.broadcast_shapes(src._shape, x._shape)
        if np.broadcast_shapes(src._shape, x._shape) != x._shape:
            raise ValueError
    except ValueError:
        raise RuntimeError(f"The size of tensor a ({x._shape[-1] if x._shape else 1}) must match the size of "
                           f"tensor b ({src._shape[-1] if src._shape else 1}) at non-singleton dimension "
                           f"{max(x.dim() - 1, 0)}") from None
    x._version_counter()[0] += 1
    xshape, sshape = x._shape, src._shape

    def f(xv, sv):
        np.copyto(xv, np.broadcast_to(sv, xv.shape), casting="unsafe")

    def bwd(g, o, sv):
        return np.zeros_like(g), sum_to(g, sshape)
    return _inplace_record("copy_", x, [src], f, bwd if x._dtype.is_floating_point else None,
                           lambda ts, o, ivs: np.broadcast_to(ts[1], o.shape))


def inplace(x, name, other, alpha=1):
    """In-place arithmetic that needs no autograd bookkeeping: a no-grad record into x's storage."""
    T = _T()
    x._version_counter()[0] += 1
    if isinstance(other, T.Tensor):
        shape = tuple(broadcast_shapes(x._shape, other._shape))
        if shape != x._shape:
            raise RuntimeError(f"output with shape {list(x._shape)} doesn't match the broadcast shape "
                               f"{list(shape)}")
        ref = OPS[name].ref
        c = float(alpha)

        def f(xv, ov):
            np.copyto(xv, ref(xv, ov, c), casting="unsafe")
        return _inplace_record("copy_", x, [other], f, None)
    v = other * alpha if name in ("add", "sub") else other
    if not x._dtype.is_floating_point and isinstance(v, float):
        raise RuntimeError(f"result type Float can't be cast to the desired output type {_long_name(x._dtype)}")
    ops = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.true_divide}

    def f2(xv):
        np.copyto(xv, ops[name](xv, v), casting="unsafe")
    return _inplace_record("copy_", x, [], f2, None)


def _long_name(dt):
    return {"int64": "Long", "int32": "Int", "bool": "Bool", "float32": "Float", "float64": "Double"}[dt.name]


# ----- reductions ------------------------------------------------------------------------

def _dims(x, dim):
    T = _T()
    if dim is None:
        return tuple(range(x.dim()))
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    axes = tuple(sorted({T._wrap_dim(d, x.dim()) for d in dims}))
    return axes if x.dim() else ()   # a 0-d tensor takes dim 0 / -1 and has no axis to reduce


def sum_dim(x, dim=None, keepdim=False, dtype=None, mean=False, whole=False):
    """sum/mean along dims; `whole`: the fallback of reduce_all (torch's SumBackward0/MeanBackward0)."""
    T = _T()
    axes = _dims(x, dim)
    if mean and not x._dtype.is_floating_point:
        raise RuntimeError(f"mean(): could not infer output dtype. Input dtype must be either a floating point "
                           f"or complex dtype. Got: {_long_name(x._dtype)}")
    odt = D.as_dtype(dtype) or (x._dtype if x._dtype.is_floating_point else D.int64)
    shape = tuple(1 if i in axes else s for i, s in enumerate(x._shape)) if keepdim else \
        tuple(s for i, s in enumerate(x._shape) if i not in axes)
    out = T._empty(shape, odt)
    xshape = x._shape
    cnt = int(np.prod([x._shape[i] for i in axes])) if axes else 1

    def fwd(xv):
        r = np.sum(xv, axis=axes, keepdims=keepdim, dtype=np.float64 if odt.is_floating_point else None)
        return r / cnt if mean else r

    def bwd(g, o, xv):
        gg = g if keepdim else np.expand_dims(g, axes) if axes else g
        gx = np.broadcast_to(gg, xshape)
        return ((gx / cnt) if mean else gx,)
    name = ("mean" if mean else "sum") if whole else ("mean_dim" if mean else "sum_dim")
    return record(name, out, [x], fwd, bwd, saves=False, lin=True)


def reduce_all(x, name, dtype=None):
    """sum()/mean() over all elements: jitted for contiguous floats."""
    T = _T()
    if name == "mean" and not x._dtype.is_floating_point:
        return sum_dim(x, None, mean=True)
    if dtype is not None and D.as_dtype(dtype) is not x._dtype:
        x = to_dtype(x, D.as_dtype(dtype))
    if x._dtype.code > 1 or not x._contig or x._n == 0:
        return sum_dim(x, None, mean=(name == "mean"), dtype=dtype, whole=True)
    out = T._empty((), x._dtype)
    if x._base is not T.ARENA.slab:
        TAPE.keep_alive(x._base)
    rg = x._rg and _GRAD[0]
    T._record(OPS[name].opcode, 0, out, x._addr, x._n, T._producer(x) if rg else -1, -1, 0.0, rg)
    if T.is_exposed(x):
        TAPE.flush()
    return out


def maxmin_dim(x, dim, keepdim, is_max):
    T = _T()
    d = T._wrap_dim(dim, x.dim())
    if x._n == 0:
        raise IndexError(f"{'max' if is_max else 'min'}(): Expected reduction dim {d} to have non-zero size.")
    xv = x._values()
    idx = np.argmax(xv, axis=d) if is_max else np.argmin(xv, axis=d) if x.dim() else np.array(0)
    if x.dim() == 0:
        idx = np.array(0)
    if keepdim and x.dim():
        idx = np.expand_dims(idx, d)
    ind = T.tensor(np.asarray(idx, np.int64))
    shape = tuple(idx.shape)
    out = T._empty(shape, x._dtype)
    xshape = x._shape
    nd = x.dim()   # NOTE: the closures below must not capture x: the tape would keep the leaf alive

    def fwd(xv):
        if nd == 0:
            return xv
        ii = idx if keepdim else np.expand_dims(idx, d)
        r = np.take_along_axis(xv, ii, axis=d)
        return r if keepdim else np.squeeze(r, d)

    def bwd(g, o, xv):
        gx = np.zeros(xshape, g.dtype)
        if nd == 0:
            return (g,)
        ii = idx if keepdim else np.expand_dims(idx, d)
        gg = g if keepdim else np.expand_dims(g, d)
        np.put_along_axis(gx, ii, gg, axis=d)
        return (gx,)
    v = record("max_dim" if is_max else "min_dim", out, [x], fwd, bwd, lin=True)
    return v, ind


def maxmin_all(x, is_max):
    T = _T()
    if x._n == 0:
        raise RuntimeError(f"{'max' if is_max else 'min'}(): Expected reduction dim to be specified for "
                           f"input.numel() == 0. Specify the reduction dim with the 'dim' argument.")
    out = T._empty((), x._dtype)
    shape = x._shape

    def fwd(xv):
        return xv.max() if is_max else xv.min()

    def bwd(g, o, xv):
        # NOTE: PyTorch's max()/min() over all elements splits the gradient evenly among ties
        mask = (xv == o)
        return (np.where(mask, g / mask.sum(), 0.0).reshape(shape),)
    def lin(ts, o, ivs):
        mask = ivs[0] == o
        return np.sum(np.where(mask, ts[0], 0.0)) / mask.sum()
    return record("max_all" if is_max else "min_all", out, [x], fwd, bwd, lin=lin)


# ----- linear algebra --------------------------------------------------------------------

def _mm_shapes(a, b):
    sa, sb = a._shape, b._shape
    if len(sa) == 2 and len(sb) == 2 and sa[1] == sb[0]:
        return (sa[0], sb[1]), "matmul"       # (the usual case first)
    if a.dim() == 0 or b.dim() == 0:
        raise RuntimeError(f"both arguments to matmul need to be at least 1D, but they are {a.dim()}D and "
                           f"{b.dim()}D")
    if a.dim() == 1 and b.dim() == 1:
        if a._shape[0] != b._shape[0]:
            raise RuntimeError(f"inconsistent tensor size, expected tensor [{a._shape[0]}] and src "
                               f"[{b._shape[0]}] to have the same number of elements, but got {a._shape[0]} and "
                               f"{b._shape[0]} elements respectively")
        return (), "dot"
    if a.dim() == 2 and b.dim() == 2:
        if a._shape[1] != b._shape[0]:
            raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({a._shape[0]}x{a._shape[1]} and "
                               f"{b._shape[0]}x{b._shape[1]})")
        return (a._shape[0], b._shape[1]), "matmul"
    if a.dim() == 2 and b.dim() == 1:
        if a._shape[1] != b._shape[0]:
            raise RuntimeError(f"size mismatch, got input ({a._shape[0]}), mat ({a._shape[0]}x{a._shape[1]}), "
                               f"vec ({b._shape[0]})")
        return (a._shape[0],), "mv"
    if a.dim() == 1 and b.dim() == 2:
        if a._shape[0] != b._shape[0]:
            raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied (1x{a._shape[0]} and "
                               f"{b._shape[0]}x{b._shape[1]})")
        return (b._shape[1],), "matmul"
    sa = a._shape if a.dim() > 1 else (1,) + a._shape
    sb = b._shape if b.dim() > 1 else b._shape + (1,)
    if sa[-1] != sb[-2]:
        raise RuntimeError(f"Expected size for first two dimensions of batch2 tensor to be: "
                           f"[{sb[0] if len(sb) > 2 else 1}, {sa[-1]}] but got: [{sb[0] if len(sb) > 2 else 1}, "
                           f"{sb[-2]}].")
    batch = broadcast_shapes(sa[:-2], sb[:-2])
    shape = tuple(batch) + (sa[-2], sb[-1])
    if a.dim() == 1:
        shape = shape[:-2] + shape[-1:]
    if b.dim() == 1:
        shape = shape[:-1]
    return shape, "bmm"


def matmul(a, b):
    T = _T()
    if not isinstance(b, T.Tensor):
        raise TypeError(f"matmul(): argument 'other' (position 2) must be Tensor, not {type(b).__name__}")
    if a._dtype is not b._dtype:
        raise RuntimeError(f"expected m1 and m2 to have the same dtype, but got: {_cname(a._dtype)} != "
                           f"{_cname(b._dtype)}")
    sa, sb = a._shape, b._shape
    if len(sa) == 2 and len(sb) == 2 and sa[1] == sb[0]:   # (Note [fast escape records])
        out = T._empty((sa[0], sb[1]), a._dtype)
        return _record12(_MATMUL, out, a, b, _mm2_fwd, _mm2_bwd, True, None, _mm_native(out, a, b))
    return matmul_general(a, b)


def matmul_general(a, b):
    """matmul without the 2-D fast path (every case, operands checked; tests compare the two)."""
    T = _T()
    shape, name = _mm_shapes(a, b)
    out = T._empty(shape, a._dtype)
    ash, bsh = a._shape, b._shape

    def fwd(o, av, bv):
        if o.ndim:
            _gemm(av, bv, out=o)
        else:
            o[...] = np.matmul(av, bv)
    fwd.writes_out = True

    def bwd(g, o, av, bv, needs=(True, True)):
        a2 = av[None, :] if av.ndim == 1 else av
        b2 = bv[:, None] if bv.ndim == 1 else bv
        g2 = g
        if bv.ndim == 1:
            g2 = np.expand_dims(g2, -1)
        if av.ndim == 1:   # after the line above: dot's 0-d g has become (1,), then (1, 1)
            g2 = np.expand_dims(g2, -2)
        ga = sum_to(_gemm(g2, np.swapaxes(b2, -1, -2)), a2.shape).reshape(ash) if needs[0] else None
        gb = sum_to(_gemm(np.swapaxes(a2, -1, -2), g2), b2.shape).reshape(bsh) if needs[1] else None
        return ga, gb
    bwd.needs_aware = True
    nat = _mm_native(out, a, b) if a.dim() == 2 and b.dim() == 2 else None
    return record(name, out, [a, b], fwd, bwd, native=nat)


def _mm2_fwd(o, av, bv):
    _gemm(av, bv, out=o)


def _mm2_bwd(g, o, av, bv, needs=(True, True)):
    return (_gemm(g, np.swapaxes(bv, -1, -2)) if needs[0] else None,
            _gemm(np.swapaxes(av, -1, -2), g) if needs[1] else None)


_mm2_fwd.writes_out = True
_mm2_bwd.needs_aware = True
_MATMUL = OPS["matmul"]


# Note [native records]: a matrix product (2-D matmul, nn.Linear's addmm) and mse_loss stay
# escape records, with their grad_fn, saved tensors and NumPy closures (which hooks, anomaly
# mode, create_graph and the printer use), but the jitted replay runs them itself from a
# descriptor after their producer list in ``edges`` (layout in kernels/gen_cpu.py): BLAS gemm
# through SciPy's address (kernels/blas.py), the bias and the loss in loops. A training step of
# small layers (W5) is then one jitted call forward and one backward, not one Python round trip
# per product. A record gets a descriptor only when every operand is a float tensor of the
# output's dtype, non-empty, and each matrix has one unit stride (what gemm can read).
_I32 = 1 << 31


def _gemm_strides(t):
    """(s0, s1) of a 2-D tensor that gemm can read (one unit stride, the other its leading
    dimension), or None. The free stride of a size-1 dimension is normalised the way the
    replay's _cm_layout (kernels/gen_cpu.py) reads it: the two must agree."""
    (r, c), (s0, s1) = t._shape, t._stride
    if not (0 < r < _I32 and 0 < c < _I32 and 0 <= s0 < _I32 and 0 <= s1 < _I32):
        return None
    if c == 1:
        s1 = 1
    if r == 1 and s1 != 1:
        s0 = 1
    if s1 == 1 and (r == 1 or s0 >= c):
        return (s0, s1)
    if s0 == 1 and (c == 1 or s1 >= r):
        return (s0, s1)
    return None


def _native_ok(out, ins):
    dt = out._dtype
    if not config.NATIVE or dt.code > 1:      # (codes 0, 1: float32, float64)
        return False
    for t in ins:
        if t._dtype is not dt or t._n <= 0:
            return False
    return True


def _f64_bits(c):
    """A float's bits as an int64 (a descriptor holds only int64s; the kernel reads them back as a double)."""
    return int(np.float64(c).view(np.int64))


_F64_ONE = _f64_bits(1.0)
# the coalesced dimensions of a broadcast (by operand shapes) and of a permutation (by input shape
# and order): they depend on shapes only, and working them out took half a broadcast's record
_BCAST_TAILS = {}
_PERM_TAILS = {}


def _memo(table, key, value):
    if len(table) >= 4096:      # (shapes of a long-running program with ever-new shapes: start over)
        table.clear()
    table[key] = value
    return value


def _fake(shape):
    """A contiguous int8 array of `shape` over one byte (only its strides and offsets are read):
    view functions applied to it give a view's element offset and strides in the contiguous
    layout of its input, which is its input's gradient's layout."""
    st = _T()._contig_strides(shape)
    return np.lib.stride_tricks.as_strided(np.zeros(1, np.int8), shape, st)


def _grad_strides(shape, out_shape):
    """Element strides of a contiguous operand of `shape` broadcast to `out_shape`."""
    st = _T()._contig_strides(shape)
    lead = len(out_shape) - len(shape)
    return [0] * lead + [0 if d == 1 and o != 1 else s for d, o, s in zip(shape, out_shape[lead:], st)]


def _view_native(out, x, vf, perm=None):
    """The descriptor (kind 4) of a view of x: where each of its elements lies in x's gradient."""
    if not _native_ok(out, [x]) or out._n == 0:
        return None
    if perm is not None:
        key = (x._shape, tuple(perm))
        tail = _PERM_TAILS.get(key)
        if tail is None:
            st = _T()._contig_strides(x._shape)
            sh, (vs,) = _coalesce([x._shape[i] for i in perm], [st[i] for i in perm])
            tail = _memo(_PERM_TAILS, key, [len(sh)] + sh + vs)
        return [4, 0, out._n, 0] + tail
    f = _fake(x._shape)
    v = vf(f)
    if v.shape != out._shape or not np.may_share_memory(v, f) or v.ndim > 16:
        return None
    off = v.__array_interface__["data"][0] - f.__array_interface__["data"][0]
    sh, (vs,) = _coalesce(list(v.shape), list(v.strides))
    return [4, 0, out._n, off, len(sh)] + sh + vs


def _coalesce(shape, *strides):
    """(shape, strides...) with size-1 dimensions dropped and neighbours merged where every
    operand steps through them as one (the usual loop coalescing), padded to two dimensions:
    the replay's strided loops take a two-level path for those (kernels/gen_cpu.py)."""
    dims = [(d, [st[i] for st in strides]) for i, d in enumerate(shape) if d != 1]
    out = []
    for d, st in dims:
        if out and all(p == q * d for p, q in zip(out[-1][1], st)):
            out[-1] = (out[-1][0] * d, st)
        else:
            out.append((d, st))
    while len(out) < 2:
        out.insert(0, (1, [0] * len(strides)))
    return [d for d, _ in out], [[st[k] for _, st in out] for k in range(len(strides))]


def _gemm_fn(dt):
    return _blas.address("f" if dt.itemsize == 4 else "d")


def _gemm(a, b, out=None):
    """a @ b as the jitted replay computes a native record's product (kernels/smallgemm.py's Note
    [small gemm]: the same bits), for the NumPy closures that hooks, anomaly mode and the printer
    run; np.matmul for what the replay leaves to BLAS and for what no native record computes."""
    dt = a.dtype
    if a.ndim != 2 or b.ndim != 2 or b.dtype != dt or dt.kind != "f" or dt.itemsize not in (4, 8):
        return np.matmul(a, b, out=out)
    (m, k), n = a.shape, b.shape[1]
    if not 0 < m * n * k <= config.PAR_GEMM_MAX:    # (R.matmul_* leaves larger k to BLAS itself)
        return np.matmul(a, b, out=out)
    isz = dt.itemsize
    as0, as1 = a.strides[0] // isz, a.strides[1] // isz
    bs0, bs1 = b.strides[0] // isz, b.strides[1] // isz
    if min(as0, as1, bs0, bs1) < 0 or not (bs1 == 1 or n == 1 or bs0 == 1 or k == 1) or \
            any(st % isz for st in a.strides + b.strides):
        return np.matmul(a, b, out=out)
    o = out if out is not None and out.flags.c_contiguous and out.dtype == dt else np.empty((m, n), dt)
    code = 0 if isz == 4 else 1
    par = config.PAR_GEMM and m * n * k > config.SMALL_GEMM_MAX
    if not _opfn.FT[_replay.GEMM + code] or (par and not _opfn.READY[code]):
        _opfn.ensure_products(code, par)
    mm = _replay.matmul_f32 if isz == 4 else _replay.matmul_f64
    mm(_opfn.FT.ctypes.data, _gemm_fn(D.from_numpy_dtype(dt)), m, n, k, a.ctypes.data, as0, as1, b.ctypes.data,
       bs0, bs1, o.ctypes.data)
    if out is not None and o is not out:
        out[...] = o
        return out
    return o


_GEMM_FN = {}      # itemsize -> gemm's address (0 without SciPy: then it is asked again)


def _mm_native(out, a, b, bias=None):
    """The descriptor of out = a @ b (kind 2), or of out = a @ b.T + bias (kind 1), or None."""
    dt = out._dtype
    if not config.NATIVE or dt.code > 1 or a._dtype is not dt or b._dtype is not dt or a._n <= 0 or b._n <= 0:
        return None     # (_native_ok, spelt out)
    if bias is not None and (bias._dtype is not dt or bias._n <= 0):
        return None
    sa, sb = _gemm_strides(a), _gemm_strides(b)
    fn = _GEMM_FN.get(dt.itemsize) or _GEMM_FN.setdefault(dt.itemsize, _gemm_fn(dt))
    if sa is None or sb is None or not fn:
        return None
    m, k = a._shape
    n = b._shape[1] if bias is None else b._shape[0]
    if config.PAR_GEMM and config.SMALL_GEMM_MAX < m * n * k <= config.PAR_GEMM_MAX and not _NAT_READY[dt.code & 1]:
        _opfn.ensure_products(dt.code & 1, True)    # (R._gemm_at may pick them: Note [parallel gemm])
    if bias is None:
        return [2, fn, m, k, n, a._addr, sa[0], sa[1], b._addr, sb[0], sb[1]]
    if bias._n != n or bias.dim() not in (1, 2) or (bias.dim() == 2 and bias._shape[0] != 1):
        return None
    return [1, fn, m, k, n, a._addr, sa[0], sa[1], b._addr, sb[0], sb[1], bias._addr,
            bias._stride[-1] if n > 1 else 0]


def _cname(dt):
    return {"float32": "float", "float64": "double", "int64": "long int", "int32": "int", "bool": "bool"}[dt.name]


def addmm(bias, x, w_t_src, transpose_w=True):
    """x @ W.T + bias in one record (nn.Linear's AddmmBackward0)."""
    T = _T()
    w = w_t_src
    if x.dim() != 2 or w.dim() != 2 or x._shape[1] != w._shape[1]:
        a0, a1 = (x._shape + (1,))[:2] if x.dim() >= 2 else (1, x._shape[0])
        raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({a0}x{a1} and "
                           f"{w._shape[1] if w.dim() == 2 else w._shape[0]}x{w._shape[0]})")
    if x._dtype is not w._dtype:
        raise RuntimeError(f"mat1 and mat2 must have the same dtype, but got {_long_name(x._dtype)} and "
                           f"{_long_name(w._dtype)}")
    out = T._empty((x._shape[0], w._shape[0]), x._dtype)
    return _record12(_ADDMM, out, bias, x, _addmm_fwd, _addmm_bwd, True, None, _mm_native(out, x, w, bias), c=w)


def _addmm_fwd(o, bv, xv, wv):
    _gemm(xv, wv.T, out=o)
    o += bv


def _addmm_bwd(g, o, bv, xv, wv, needs=(True, True, True)):
    return (sum_to(g, bv.shape) if needs[0] else None, _gemm(g, wv) if needs[1] else None,
            _gemm(g.T, xv) if needs[2] else None)


_addmm_fwd.writes_out = True
_addmm_bwd.needs_aware = True
_ADDMM = OPS["addmm"]


def mse_loss(x, t, reduction):
    """((x - t) ** 2).mean() / .sum() in one record (PyTorch's MseLossBackward0)."""
    T = _T()
    xs, ts = x._shape, t._shape
    if xs == ts and x._dtype is t._dtype:
        dt = x._dtype
    else:
        broadcast_shapes(xs, ts)        # (torch's error for shapes that do not broadcast)
        dt = D.result_type(x, t)
    out = T._empty((), dt)
    mean = reduction == "mean"
    nat = None
    if xs == ts and x._contig and t._contig and _native_ok(out, [x, t]):
        nat = [3, 0, x._n, x._addr, t._addr, 1 if mean else 0]
    return _record12(_MSE, out, x, t, _mse_fwd_mean if mean else _mse_fwd_sum, _mse_bwd_mean if mean else _mse_bwd_sum,
                     True, None, nat, _MSE_MEAN if mean else _MSE_SUM)


# (mse_loss's NumPy functions: module-level, Note [fast escape records]; n is the number of
# elements of the broadcast shape, which x - t has)
def _mse_fwd_mean(xv, tv):
    d = xv.astype(np.float64) - tv
    return np.sum(d * d) / d.size


def _mse_fwd_sum(xv, tv):
    d = xv.astype(np.float64) - tv
    return np.sum(d * d)


def _mse_bwd(g, xv, tv, needs, mean):
    d = xv - tv
    d = d * (2.0 * g / (d.size if mean else 1))
    return (sum_to(d, xv.shape) if needs[0] else None, sum_to(-d, tv.shape) if needs[1] else None)


def _mse_bwd_mean(g, o, xv, tv, needs=(True, True)):
    return _mse_bwd(g, xv, tv, needs, True)


def _mse_bwd_sum(g, o, xv, tv, needs=(True, True)):
    return _mse_bwd(g, xv, tv, needs, False)


_mse_bwd_mean.needs_aware = _mse_bwd_sum.needs_aware = True
_MSE = OPS["mse_loss"]
_MSE_MEAN, _MSE_SUM = {"reduction": "mean"}, {"reduction": "sum"}


# ----- joining ---------------------------------------------------------------------------

def cat(tensors, dim=0):
    T = _T()
    tensors = list(tensors)
    if not tensors:
        raise RuntimeError("torch.cat(): expected a non-empty list of Tensors")
    ref = tensors[0]
    d = T._wrap_dim(dim, ref.dim())
    for i, t in enumerate(tensors):
        if t.dim() != ref.dim():
            raise RuntimeError(f"Tensors must have same number of dimensions: got {ref.dim()} and {t.dim()}")
        for k in range(ref.dim()):
            if k != d and t._shape[k] != ref._shape[k]:
                raise RuntimeError(f"Sizes of tensors must match except in dimension {d}. Expected size "
                                   f"{ref._shape[k]} but got size {t._shape[k]} for tensor number {i} in the list.")
    dt = ref._dtype
    for t in tensors[1:]:
        dt = D.promote(dt, t._dtype)
    shape = list(ref._shape)
    shape[d] = sum(t._shape[d] for t in tensors)
    out = T._empty(tuple(shape), dt)
    sizes = np.cumsum([t._shape[d] for t in tensors])[:-1]

    def fwd(*vs):
        return np.concatenate(vs, axis=d)

    def bwd(g, o, *vs):
        return tuple(np.split(g, sizes, axis=d))
    return record("cat", out, tensors, fwd, bwd, saves=False, lin=True)


def stack(tensors, dim=0):
    T = _T()
    tensors = list(tensors)
    if not tensors:
        raise RuntimeError("stack expects a non-empty TensorList")
    for i, t in enumerate(tensors):
        if t._shape != tensors[0]._shape:
            raise RuntimeError(f"stack expects each tensor to be equal size, but got {list(tensors[0]._shape)} at "
                               f"entry 0 and {list(t._shape)} at entry {i}")
    d = T._wrap_dim(dim, tensors[0].dim() + 1)
    dt = tensors[0]._dtype
    for t in tensors[1:]:
        dt = D.promote(dt, t._dtype)
    shape = list(tensors[0]._shape)
    shape.insert(d, len(tensors))
    out = T._empty(tuple(shape), dt)

    def fwd(*vs):
        return np.stack(vs, axis=d)

    def bwd(g, o, *vs):
        return tuple(np.take(g, i, axis=d) for i in range(len(vs)))
    return record("stack", out, tensors, fwd, bwd, saves=False, lin=True)


def where(cond, x, y):
    T = _T()
    if not isinstance(x, T.Tensor):
        x = T.full((), x, dtype=y._dtype if isinstance(y, T.Tensor) else D.float32)
    if not isinstance(y, T.Tensor):
        y = T.full((), y, dtype=x._dtype)
    if cond._dtype is not D.bool_:
        raise RuntimeError(f"where expected condition to be a boolean tensor, but got a tensor with dtype "
                           f"{_long_name(cond._dtype)}")
    shape = tuple(broadcast_shapes(broadcast_shapes(cond._shape, x._shape), y._shape))
    dt = D.result_type(x, y)
    out = T._empty(shape, dt)
    xs, ys = x._shape, y._shape

    def fwd(cv, xv, yv):
        return np.where(cv, xv, yv)

    def bwd(g, o, cv, xv, yv):
        return None, sum_to(np.where(cv, g, 0.0), xs), sum_to(np.where(cv, 0.0, g), ys)
    return record("where", out, [cond, x, y], fwd, bwd, lin=True)


# ----- softmax family, clamp ---------------------------------------------------------------

def softmax(x, dim, log=False):
    T = _T()
    d = T._wrap_dim(dim, x.dim())
    if not x._dtype.is_floating_point:
        x = to_dtype(x, D.float32, hidden=True)
    out = T._empty(x._shape, x._dtype)

    def fwd(xv):
        if xv.ndim == 0:
            return np.zeros_like(xv) if log else np.ones_like(xv)
        m = np.max(xv, axis=d, keepdims=True)
        e = xv - m
        if log:
            return e - np.log(np.sum(np.exp(e), axis=d, keepdims=True))
        e = np.exp(e)
        return e / np.sum(e, axis=d, keepdims=True)

    def bwd(g, o, xv):
        ax = d if o.ndim else None
        if log:
            return (g - np.exp(o) * np.sum(g, axis=ax, keepdims=o.ndim > 0),)
        return (o * (g - np.sum(g * o, axis=ax, keepdims=o.ndim > 0)),)
    nat = None          # (Note [native records]: the rows of a contiguous matrix, a classifier's loss)
    if log and d == 1 and len(x._shape) == 2 and x._contig and _native_ok(out, [x]):
        nat = [6, 0, x._shape[0], x._shape[1], x._addr]
    return record("log_softmax" if log else "softmax", out, [x], fwd, bwd, attrs={"dim": d}, native=nat)


def clamp(x, lo, hi, single=False):
    """clamp(x, lo, hi). `single`: torch.clamp_min / clamp_max (the jitted rows, ClampMinBackward0 /
    ClampMaxBackward0); x.clamp(min=...) with one bound is still clamp in PyTorch (ClampBackward1)."""
    T = _T()
    if lo is None and hi is None:
        raise RuntimeError("torch.clamp: At least one of 'min' or 'max' must not be None")
    if isinstance(lo, T.Tensor) or isinstance(hi, T.Tensor):
        r = x
        if lo is not None:
            r = T.maximum(r, lo if isinstance(lo, T.Tensor) else T.full((), lo, dtype=x._dtype))
        if hi is not None:
            r = T.minimum(r, hi if isinstance(hi, T.Tensor) else T.full((), hi, dtype=x._dtype))
        return r
    if single and hi is None:
        return T.unary("clamp_min", x, float(lo)) if x._dtype.is_floating_point else _clamp_np(x, lo, hi)
    if single and lo is None:
        return T.unary("clamp_max", x, float(hi)) if x._dtype.is_floating_point else _clamp_np(x, lo, hi)
    return _clamp_np(x, lo, hi)


def _clamp_np(x, lo, hi):
    T = _T()
    out = T._empty(x._shape, x._dtype)

    def fwd(xv):
        r = xv
        if lo is not None:
            r = np.where(r < lo, lo, r)  # nan propagates
        if hi is not None:
            r = np.where(r > hi, hi, r)
        if lo is not None and hi is not None and lo > hi:
            r = np.full_like(xv, hi)
        return r

    def bwd(g, o, xv):
        m = np.ones(xv.shape, bool)
        if lo is not None:
            m &= xv >= lo
        if hi is not None:
            m &= xv <= hi
        return (np.where(m, g, 0.0),)
    def lin(ts, o, ivs):
        return bwd(ts[0], o, ivs[0])[0]   # the mask of the bounds: its own transpose
    return record("clamp", out, [x], fwd, bwd if x._dtype.is_floating_point else None, lin=lin)


# ----- non-differentiable (computed at once, output never requires grad) -------------------

_EAGER = OpSpec("eager", "py", "NotDifferentiable", mnemonic="eager")


def eager(fn, *tensors, dtype=None):
    """`fn` over NumPy values into a new tensor, computed at once (comparisons, rounding, argmax...:
    outputs of a data-independent shape that never require grad). The computation is also kept
    as a no-grad record that has already run, so that a captured step (tapegrad.capture) replays it."""
    T = _T()
    if TAPE.flushed < TAPE.next_index:
        TAPE.flush()
    pos = [i for i, t in enumerate(tensors) if isinstance(t, T.Tensor)]
    ts = [tensors[i] for i in pos]
    consts = [None if isinstance(t, T.Tensor) else t for t in tensors]
    r = np.asarray(fn(*[t._view_np() if isinstance(t, T.Tensor) else t for t in tensors]))
    if dtype is not None:
        npdt = dtype.np
    elif r.dtype == np.float64 and all(t._dtype is not D.float64 for t in ts):
        npdt = np.dtype(np.float32)
    else:
        npdt = r.dtype
    out = T._empty(tuple(r.shape), D.from_numpy_dtype(np.dtype(npdt)))
    if out._n:
        out._view_np()[...] = r

    def fwd(*ivs):
        args = list(consts)
        for k, i in enumerate(pos):
            args[i] = ivs[k]
        return np.asarray(fn(*args)).astype(npdt, copy=False)
    at = TAPE.next_index
    if TAPE.flushed == at:
        record(_EAGER, out, ts, fwd, None)
        if TAPE.flushed == at:
            TAPE.flushed = TAPE.next_index     # it ran above
    return out
