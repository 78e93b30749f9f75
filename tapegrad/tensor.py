"""The Tensor handle and the op front end (record-then-flush, DESIGN invariant 2).

An op call checks its inputs and infers the output's shape and dtype (raising
PyTorch's error *before* anything is recorded), allocates the output in the
arena, appends one tape record and returns. Values are computed when Python
needs them (repr, item, numpy, backward...), by one jitted call over all
pending records (``Tape.flush``).

Two record paths:
  jit   float32/float64, contiguous operands of the output's shape or of one
        element: one row of the op table, run by the generated replay.
  py    everything else (broadcasting, views, matmul, reductions along dims,
        indexing, integer dtypes): an escape record whose forward and VJP are
        NumPy calls (``ops/pyops.py``), one Python step per record.
"""
import math
import numbers
import struct
import warnings
import weakref

import numpy as np

from . import _dtype as D
from . import config
from ._format import format_tensor
from . import autograd as _autograd   # (its own imports of this module are late)
from .autograd.grad_mode import _STATE as _GRAD
from .ops import pyops as P
from .ops.table import OPS
from .storage import ARENA, EXPOSED, base_address as _base_address, root_of, view as _view
from .tape.tape import ALIVE as _ALIVE, PACK as _PACK, ROW as _ROW, TAPE

_OP = {name: spec.opcode for name, spec in OPS.items()}
_FLOATS = (D.float32, D.float64)


class Size(tuple):
    """torch.Size: a tuple with torch's repr."""

    def __repr__(self):
        return "torch.Size([" + ", ".join(str(d) for d in self) + "])"

    def numel(self):
        n = 1
        for d in self:
            n *= d
        return n


def _contig_strides(shape):
    st, acc = [], 1
    for d in reversed(shape):
        st.append(acc)
        acc *= max(d, 1)
    return tuple(reversed(st))


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


class Tensor:
    """A view of storage that never moves, plus autograd bookkeeping.

    ``_base`` (uint8 root buffer kept alive), ``_addr`` (address of element 0),
    ``_shape``/``_stride`` (elements), ``_rec`` (global index of the record that
    made it when it requires grad and is not a leaf, else -1), ``_slot`` (a
    leaf's gradient slot, -1 until first used), ``_exposed`` (NumPy may touch
    the storage at any moment: records reading or writing it run at once).
    """
    __slots__ = ("_base", "_addr", "_shape", "_stride", "_dtype", "_n", "_contig", "_rec", "_rg",
                 "__dict__", "__weakref__")
    __array_priority__ = 1000
    # cold fields live in __dict__ only once set (creating a tensor sets just the slots above)
    _gradt = None      # .grad (leaves: cached view of the slot buffer; non-leaves: retained grad)
    _np = None         # cached NumPy view of the storage
    _vc = None         # version counter, a one-element list shared by views (made on first use)
    _exposed = False   # NumPy may read/write this storage at any moment: run its records at once
    _retain = False
    _node = None       # cached grad_fn Node / AccumulateGrad
    _hooks = None
    _name = None
    _slot = -1         # a leaf's gradient slot (tape.py), made when the leaf is first used

    # ----- construction --------------------------------------------------------
    def __new__(cls, *args, **kwargs):
        # torch.Tensor(2, 3) -> uninitialised (zeros here) float tensor; torch.Tensor([1, 2]) -> data
        self = object.__new__(cls)
        if args and not all(isinstance(a, numbers.Integral) for a in args):
            data = args[0]
            src = tensor(data, dtype=D.float32)
            self._init_from(src)
        else:
            shape = tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list, Size)) else args
            self._init_alloc(tuple(int(s) for s in shape), D.float32)
        return self

    def __init__(self, *args, **kwargs):
        pass

    def _init_alloc(self, shape, dt):
        n = _numel(shape)
        self._base, self._addr = ARENA.alloc(n * dt.itemsize)
        self._shape = shape
        self._stride = _contig_strides(shape)
        self._dtype = dt
        self._n = n
        self._contig = True
        self._rec = -1
        self._rg = False

    def _init_from(self, src):
        for s in Tensor.__slots__[:-2]:
            setattr(self, s, getattr(src, s))
        self.__dict__.update(src.__dict__)
        src._rec = -1  # ownership of the record moves to self
        src._slot = -1

    def __del__(self):
        try:
            r = self._rec
            if r >= 0:   # inline Tape.release: this runs for every dying intermediate
                i = r - TAPE.base
                if i >= 0:
                    TAPE.buf[i * _ROW + _ALIVE] = 0
            if self._slot >= 0:
                TAPE.free_leaf_slot(self._slot)
        except Exception:  # interpreter shutdown
            pass

    # ----- storage -------------------------------------------------------------
    def _view_np(self):
        """NumPy view of the storage (no flush)."""
        a = self._np
        if a is None:
            a = self._np = _view(self._base, self._addr, self._shape, self._stride, self._dtype.np)
        return a

    def _version_counter(self):
        vc = self._vc
        if vc is None:
            vc = self._vc = [0]
        return vc

    def _read(self):
        """Flush pending records: Python is about to see this tensor's value."""
        if TAPE.flushed < TAPE.next_index:
            TAPE.flush()
        if TAPE.capture is not None:
            TAPE.capture.read(self)    # a captured step's replay must check it

    def _values(self):
        """Flush pending records, then the NumPy view."""
        self._read()
        return self._view_np()

    # ----- properties ----------------------------------------------------------
    @property
    def shape(self):
        return Size(self._shape)

    def size(self, dim=None):
        if dim is None:
            return Size(self._shape)
        return self._shape[_wrap_dim(dim, len(self._shape))]

    def dim(self):
        return len(self._shape)

    ndimension = dim

    @property
    def ndim(self):
        return len(self._shape)

    def numel(self):
        return self._n

    nelement = numel

    @property
    def dtype(self):
        return self._dtype

    @property
    def device(self):
        return _CPU

    @property
    def is_cuda(self):
        return False

    @property
    def layout(self):
        return "torch.strided"

    def stride(self, dim=None):
        if dim is None:
            return self._stride
        return self._stride[_wrap_dim(dim, len(self._shape))]

    def is_contiguous(self):
        return self._contig

    def is_floating_point(self):
        return self._dtype.is_floating_point

    def element_size(self):
        return self._dtype.itemsize

    def data_ptr(self):
        return self._addr

    @property
    def requires_grad(self):
        return self._rg

    @requires_grad.setter
    def requires_grad(self, v):
        if v and self._rec < 0 and not self._dtype.is_floating_point:
            raise RuntimeError("only Tensors of floating point and complex dtype can require gradients")
        self.requires_grad_(v)

    def requires_grad_(self, requires_grad=True):
        if self._rec >= 0:
            if not requires_grad:
                raise RuntimeError("you can only change requires_grad flags of leaf variables. If you want to use "
                                   "a computed variable in a subgraph that doesn't require differentiation use "
                                   "var_no_grad = var.detach().")
            return self
        if requires_grad and not self._dtype.is_floating_point:
            raise RuntimeError("only Tensors of floating point dtype can require gradients")
        self._rg = bool(requires_grad)
        return self

    @property
    def is_leaf(self):
        return self._rec < 0

    @property
    def grad_fn(self):
        if self._rec < 0:
            return None
        n = self._node
        if n is None or n._r != self._rec:
            from .autograd.graph import node_for_record
            n = self._node = node_for_record(self._rec)
            if n._r == self._rec:
                n._shape = self._shape
        return n

    @property
    def grad(self):
        if self._rec >= 0:
            if not self._retain:
                warnings.warn(
                    "The .grad attribute of a Tensor that is not a leaf Tensor is being accessed. Its .grad "
                    "attribute won't be populated during autograd.backward(). If you indeed want the .grad field "
                    "to be populated for a non-leaf Tensor, use .retain_grad() on the non-leaf Tensor. If you "
                    "access the non-leaf Tensor by mistake, make sure you access the leaf Tensor instead. See "
                    "github.com/pytorch/pytorch/pull/30531 for more information. (Triggered internally at "
                    "/__w/pytorch/pytorch/build/aten/src/ATen/core/TensorBody.h:493.)", UserWarning, stacklevel=2)
            return self._gradt
        s = self._slot
        if s < 0 or TAPE.leaf_state[s] == 0:
            return None
        g = self._gradt
        if g is None:
            g = _wrap(TAPE.leaf_buf[s], TAPE.leaf_addr[s], self._shape, _contig_strides(self._shape), self._dtype)
            self._gradt = g
        return g

    @grad.setter
    def grad(self, value):
        if self._rec >= 0:
            self._gradt = value
            return
        if value is None:
            if TAPE.capture is not None:
                TAPE.capture.add("call", lambda: setattr(self, "grad", None))
            s = self._slot
            if s >= 0:
                if self._gradt is not None:
                    TAPE.renew_leaf_buffer(s)   # the old grad tensor may still be held
                else:
                    TAPE.leaf_state[s] = 0
            self._gradt = None
            return
        if not isinstance(value, Tensor):
            raise TypeError(f"assigned grad expected to be a Tensor or None but got grad of type "
                            f"{type(value).__name__}")
        if value._shape != self._shape:
            raise RuntimeError("assigned grad has data of a different size")
        if value._dtype is not self._dtype:
            raise RuntimeError("assigned grad has data of a different type")
        if not value._contig:
            value = value.contiguous()
        s = self._leaf_slot()
        TAPE.leaf_addr[s] = value._addr
        TAPE.leaf_buf[s] = value._base
        TAPE.leaf_state[s] = 1
        self._gradt = value

    def _leaf_slot(self):
        s = self._slot
        if s < 0:
            s = self._slot = TAPE.new_leaf_slot(self._n * self._dtype.itemsize, self)
        return s

    def retain_grad(self):
        if not self._rg:
            raise RuntimeError("can't retain_grad on Tensor that has requires_grad=False")
        if self._rec >= 0 and not self._retain:
            self._retain = True
            TAPE.retained[self._rec] = weakref.ref(self)   # weak: retain_grad must not pin the tape
        return None

    @property
    def retains_grad(self):
        return self._retain

    def _accumulate_retained(self, g):
        if self._gradt is None:
            self._gradt = from_numpy(g)
        else:
            self._gradt._values()[...] += g

    @property
    def data(self):
        return self.detach()

    @data.setter
    def data(self, other):
        if (other._shape != self._shape or other._dtype is not self._dtype) and self._slot >= 0:
            # the gradient slot has the old size: give the leaf a new one on next use
            TAPE.leaf_hold.pop(self._slot, None)
            TAPE.free_leaf_slot(self._slot)
            self._slot = -1
            self._gradt = None
        self._base, self._addr, self._shape, self._stride = other._base, other._addr, other._shape, other._stride
        self._dtype, self._n, self._contig, self._np = other._dtype, other._n, other._contig, None

    @property
    def T(self):
        if len(self._shape) == 2:      # a matrix's transpose (x @ W.T): ops/pyops.py's fast path
            return P.t2(self)
        return self.permute(*reversed(range(self.dim())))

    @property
    def mT(self):
        return self.transpose(-2, -1)

    # ----- conversion ----------------------------------------------------------
    def numpy(self, force=False):
        if self._rg and not force:
            raise RuntimeError("Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy() "
                               "instead.")
        a = self._values()
        _expose(self)
        return a

    def __array__(self, dtype=None, copy=None):
        if self._rg:
            raise RuntimeError("Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy() "
                               "instead.")
        a = self._values()
        if dtype is None or a.dtype == dtype:
            _expose(self)
        return a.astype(dtype) if dtype is not None else a

    def item(self):
        if self._n != 1:
            raise RuntimeError(f"a Tensor with {self._n} elements cannot be converted to Scalar")
        code = self._dtype.code
        base = self._base
        if code <= 1 and self._np is None and base.dtype is _U8:
            # a float in an arena slab (loss.item() of a training loop): read its bytes, no NumPy view
            self._read()
            return _ITEM[code](base, self._addr - _base_address(base))[0]
        return self._values().reshape(-1)[0].item()

    def tolist(self):
        return self._values().tolist()

    def __float__(self):
        if self._n != 1:
            raise ValueError("only one element tensors can be converted to Python scalars")
        return float(self.item())

    def __int__(self):
        if self._n != 1:
            raise ValueError("only one element tensors can be converted to Python scalars")
        return int(self.item())

    def __index__(self):
        if self._dtype.is_floating_point or self._n != 1:
            raise TypeError("only integer tensors of a single element can be converted to an index")
        return int(self.item())

    def __bool__(self):
        if self._n != 1:
            raise RuntimeError("Boolean value of Tensor with more than one value is ambiguous")
        return bool(self.item())

    def __len__(self):
        if not self._shape:
            raise TypeError("len() of a 0-d tensor")
        return self._shape[0]

    def __iter__(self):
        if not self._shape:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self._shape[0]))

    def __hash__(self):
        return id(self)

    def __repr__(self, *, tensor_contents=None):
        suffixes = []
        if self._rec >= 0:
            suffixes.append(f"grad_fn=<{self.grad_fn.name()}>")
        elif self._rg:
            suffixes.append("requires_grad=True")
        return format_tensor(self._values(), self._dtype.name, suffixes)

    __str__ = __repr__

    def __format__(self, spec):
        if self._n == 1 and not self._shape:
            return format(self.item(), spec)
        return object.__format__(self, spec) if spec else repr(self)

    def __reduce_ex__(self, proto):
        return (_rebuild, (self._values().copy(), self._rg))

    def __deepcopy__(self, memo):
        t = from_numpy(self._values().copy())
        t._rg = self._rg
        return t

    # ----- autograd ------------------------------------------------------------
    def backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None):
        if (gradient is None and not retain_graph and not create_graph and inputs is None and self._rec >= 0
                and self._n == 1 and self._dtype.code <= 1):
            # loss.backward(): what autograd.backward's checks come to for a float scalar
            TAPE.backward_many([self._rec], [np.ones(self._shape, self._dtype.np)], False)
            return
        _autograd.backward(self, gradient, retain_graph, create_graph, inputs)

    def detach(self):
        t = _wrap(self._base, self._addr, self._shape, self._stride, self._dtype)
        t._vc = self._version_counter()
        if self._exposed:
            t._exposed = True
        return t

    def detach_(self):
        if self._rec >= 0:
            TAPE.release(self._rec)
            self._rec = -1
        self._rg = False
        return self

    def register_hook(self, hook):
        """hook(grad) when this tensor's gradient is computed; it may return a replacement.
        A leaf's hooks see its whole gradient of a backward, before it is accumulated."""
        if not self._rg:
            raise RuntimeError("cannot register a hook on a tensor that doesn't require gradient")
        from collections import OrderedDict

        from .utils.hooks import RemovableHandle
        if self._rec < 0:
            d = TAPE.leaf_hooks.setdefault(self._leaf_slot(), OrderedDict())
            h = RemovableHandle(d)
            d[h.id] = hook
            return h
        d = TAPE.hooks.setdefault(self._rec, OrderedDict())
        h = RemovableHandle(d)
        d[h.id] = ("tensor", hook, self._shape)
        return h

    # ----- device / dtype ------------------------------------------------------
    def to(self, *args, **kwargs):
        dt = kwargs.get("dtype")
        for a in args:
            if isinstance(a, D.dtype):
                dt = a
            elif isinstance(a, Tensor):
                dt = a._dtype
            elif isinstance(a, str) or isinstance(a, device):
                _check_device(a)
        _check_device(kwargs.get("device"))
        if dt is None or dt is self._dtype:
            return self
        return P.to_dtype(self, dt)

    def cpu(self):
        return self

    def cuda(self, *a, **k):
        raise AssertionError("Torch not compiled with CUDA enabled")

    def float(self):
        return self.to(D.float32)

    def double(self):
        return self.to(D.float64)

    def long(self):
        return self.to(D.int64)

    def int(self):
        return self.to(D.int32)

    def bool(self):
        return self.to(D.bool_)

    def type(self, dtype=None):
        if dtype is None:
            return {"float32": "torch.FloatTensor", "float64": "torch.DoubleTensor", "int64": "torch.LongTensor",
                    "int32": "torch.IntTensor", "bool": "torch.BoolTensor"}[self._dtype.name]
        return self.to(dtype)

    def contiguous(self):
        if self._contig:
            return self
        return P.contiguous(self)

    def clone(self):
        return _unary("clone", self, 0.0) if self._contig and self._dtype in _FLOATS else P.clone(self)

    # ----- in-place ------------------------------------------------------------
    def _check_inplace(self):
        if self._rg and self._rec < 0 and _GRAD[0]:
            raise RuntimeError("a leaf Variable that requires grad is being used in an in-place operation.")

    def zero_(self):
        return self.fill_(0)

    def fill_(self, value):
        self._check_inplace()
        if isinstance(value, Tensor):
            value = value.item()
        return P.fill_(self, value)

    def copy_(self, src, non_blocking=False):
        self._check_inplace()
        return P.copy_(self, src)

    # NOTE: every in-place method checks the leaf rule first, so that nothing is recorded before it raises
    def add_(self, other, alpha=1):
        self._check_inplace()
        return self.copy_(self.add(other, alpha=alpha)) if not _trivial_inplace(self, other) else \
            P.inplace(self, "add", other, alpha)

    def sub_(self, other, alpha=1):
        self._check_inplace()
        return self.copy_(self.sub(other, alpha=alpha)) if not _trivial_inplace(self, other) else \
            P.inplace(self, "sub", other, alpha)

    def mul_(self, other):
        self._check_inplace()
        return self.copy_(self.mul(other)) if not _trivial_inplace(self, other) else P.inplace(self, "mul", other)

    def div_(self, other):
        self._check_inplace()
        return self.copy_(self.div(other)) if not _trivial_inplace(self, other) else P.inplace(self, "div", other)

    def clamp_(self, min=None, max=None):
        self._check_inplace()
        return self.copy_(self.clamp(min, max))

    def __setitem__(self, idx, value):
        if self._rg and self._rec < 0 and _GRAD[0]:
            raise RuntimeError("a view of a leaf Variable that requires grad is being used in an in-place operation.")
        P.setitem(self, idx, value)

    __iadd__ = add_
    __isub__ = sub_
    __imul__ = mul_
    __itruediv__ = div_


def _trivial_inplace(t, other):
    """In-place ops that need no autograd bookkeeping run directly on storage."""
    return not t._rg and not (isinstance(other, Tensor) and other._rg) or not _GRAD[0]


class device:
    def __init__(self, type="cpu", index=None):
        if isinstance(type, device):
            type = type.type
        self.type = str(type).split(":")[0]
        self.index = index
        if self.type not in ("cpu", "cuda"):
            raise RuntimeError(f"Expected one of cpu, cuda, ... device type at start of device string: {type}")

    def __repr__(self):
        return f"device(type='{self.type}')" if self.index is None else \
            f"device(type='{self.type}', index={self.index})"

    def __str__(self):
        return self.type

    def __eq__(self, other):
        return str(self) == str(other)

    def __hash__(self):
        return hash(self.type)


_CPU = device("cpu")


def _check_device(d):
    if d is None:
        return
    t = d.type if isinstance(d, device) else str(d).split(":")[0]
    if t == "cuda":
        raise AssertionError("Torch not compiled with CUDA enabled")   # torch's CPU build raises this type
    if t != "cpu":
        device(t)


# EXPOSED (storage.py): ids of root buffers that NumPy can read or write at any moment (DESIGN
# invariant 2): a record touching such storage runs before its op returns. Exposure is per storage,
# not per Tensor object: `np.asarray(t)`, `t[0].numpy()` or `t.detach().numpy()` expose t's memory.
# It lives in storage.py because a big buffer reused from the pool is no longer exposed.


def _expose(t):
    t._exposed = True
    b = t._base
    k = id(b)
    if k not in EXPOSED:
        EXPOSED.add(k)
        weakref.finalize(b, EXPOSED.discard, k)
        if b is ARENA.slab:
            ARENA.retire_current()   # new tensors must not land in memory NumPy may write


def is_exposed(t):
    return t._exposed or (bool(EXPOSED) and id(t._base) in EXPOSED)


def _rebuild(arr, rg):
    t = from_numpy(arr)
    t._rg = rg
    return t


def _wrap(base, addr, shape, stride, dt):
    """A leaf Tensor over existing storage."""
    t = object.__new__(Tensor)
    t._base = base
    t._addr = addr
    t._shape = shape
    t._stride = stride
    t._dtype = dt
    t._n = _numel(shape)
    t._contig = stride == _contig_strides(shape) or t._n <= 1
    t._rec = -1
    t._rg = False
    return t


_STRIDES = {}


def _strides_of(shape):
    st = _STRIDES.get(shape)
    if st is None:
        st = _STRIDES[shape] = _contig_strides(shape)
    return st


def _empty(shape, dt, n=-1):
    """A fresh contiguous tensor (zeroed memory) in the arena."""
    if n < 0:
        n = 1
        for d in shape:
            n *= d
    t = _new(Tensor)
    ar = ARENA
    off = ar.off
    nb = (n * dt.itemsize + 63) & ~63
    if off + nb <= ar.size and nb <= _QUARTER:   # inline bump allocation (Arena.alloc: 64-byte aligned)
        ar.off = off + nb
        t._base = ar.slab
        t._addr = ar.addr + off
    else:
        t._base, t._addr = _alloc(n * dt.itemsize)
    t._shape = shape
    st = _STRIDES.get(shape)
    t._stride = st if st is not None else _strides_of(shape)
    t._dtype = dt
    t._n = n
    t._contig = True
    t._rec = -1
    t._rg = False
    return t


_new = object.__new__
_U8 = np.dtype(np.uint8)
_ITEM = (struct.Struct("=f").unpack_from, struct.Struct("=d").unpack_from)   # by dtype code (float32, float64)
_alloc = ARENA.alloc


_PERM2 = (1, 0)


def _swap2(v):
    return np.transpose(v, _PERM2)


def _wrap_dim(dim, ndim):
    n = max(ndim, 1)
    if not -n <= dim < n:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-n}, {n - 1}], but got {dim})")
    return dim % n


# ----- the record path --------------------------------------------------------

def _producer(t):
    """Producer code of an input that requires grad (see tape.py). A leaf is
    held by the tape while records use it (released by Tape.sweep)."""
    r = t._rec
    if r >= 0:
        return r
    s = t._slot
    if s < 0:
        s = t._slot = TAPE.new_leaf_slot(t._n * t._dtype.itemsize, t)
    hold = TAPE.leaf_hold
    if s not in hold:
        hold[s] = t
    return -2 - s


def _keep(t):
    b = t._base
    if b is not ARENA.slab:
        TAPE.keep_alive(b)


def _segment_start(tape):
    """Every 4096 records: a new keep-alive segment, and maybe a lifetime sweep."""
    tape.last_kept = None
    tape.maybe_sweep()


def _record(opcode, bc, out, a, b_addr, pa, pb, c, rg):
    """Append one jitted record; out becomes its result (the general path)."""
    tape = TAPE
    if not tape.next_index & 4095:
        _segment_start(tape)
    r = tape.append((opcode << 5) | (bc << 2) | out._dtype.code, out._n, out._addr, a, b_addr, pa, pb,
                    1 if rg else 0, c)
    if rg:
        out._rec = r
        out._rg = True
    if r - tape.flushed >= config.FLUSH_BOUND:
        tape.flush()
    return out


def _make_jit_unary(name):
    """The record path of one unary row, specialised (opcode as a constant).
    Written out inline: it is the per-op cost of scalar workloads (W1)."""
    opc = _OP[name] << 5

    def rec(x, c):
        dt = x._dtype
        n = x._n
        out = _new(Tensor)
        ar = ARENA
        nb = (n * dt.itemsize + 15) & ~15
        off = ar.off
        if off + nb <= ar.size and nb <= _QUARTER:   # inline bump allocation (Arena.alloc)
            ar.off = off + nb
            base = out._base = ar.slab
            addr = out._addr = ar.addr + off
        else:
            base, addr = out._base, out._addr = _alloc(nb, False)   # the record writes every element
        out._shape = x._shape
        out._stride = x._stride
        out._dtype = dt
        out._n = n
        out._contig = True
        tape = TAPE
        rg = x._rg and _GRAD[0]
        if rg:
            pa = x._rec
            if pa < 0:
                pa = _producer(x)   # may allocate a leaf slot (and so sweep): before the index is taken
        i = tape.n
        if not (tape.base + i) & 4095:
            _segment_start(tape)
            i = tape.n   # a sweep may have moved the base
        if (i + 1) * _ROW > len(tape.buf):
            tape.grow()
        r = tape.base + i
        b = x._base
        if b is not base and b is not tape.last_kept:
            tape.keep_alive(b)
        if rg:
            _PACK(tape.buf, i * _ROW, opc | dt.code, n, addr, x._addr, 0, pa, -1, 1, c)
            out._rec = r
            out._rg = True
        else:
            _PACK(tape.buf, i * _ROW, opc | dt.code, n, addr, x._addr, 0, -1, -1, 0, c)
            out._rec = -1
            out._rg = False
        tape.n = i + 1
        if x._exposed or r - tape.flushed >= _FLUSH_BOUND or (EXPOSED and id(b) in EXPOSED):
            tape.flush()
        return out
    rec.__name__ = "_record_" + name
    return rec


def _unary(name, x, c):
    """A jitted unary record (x: float, contiguous)."""
    return _JIT_UNARY[name](x, c)


def make_unary_front(name):
    """torch.<name>(x): the jitted record when x is a contiguous float tensor."""
    rec = _JIT_UNARY[name]

    def fn(input):
        if type(input) is Tensor and input._contig and input._dtype.code <= 1:
            return rec(input, 0.0)
        return unary(name, input)
    fn.__name__ = fn.__qualname__ = name
    return fn


_FLUSH_BOUND = config.FLUSH_BOUND
_QUARTER = config.SLAB_BYTES >> 2   # larger tensors get a buffer of their own (Arena.alloc)


def unary(name, x, c=0.0):
    """Front end of the unary rows: dtype rules, then the jit or the py path."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}(): argument 'input' (position 1) must be Tensor, not {type(x).__name__}")
    if x._dtype in _FLOATS and x._contig:
        return _unary(name, x, c)
    return P.unary_py(name, x, c)


_SCALAR_OPS = {"add": "add_scalar", "sub": "sub_scalar", "mul": "mul_scalar", "div": "div_scalar"}


def _make_jit_binary(name):
    """The record path of one binary row, specialised like _make_jit_unary."""
    opc = _OP[name] << 5

    def op(x, y, c=1.0):
        if type(y) is not Tensor and not isinstance(y, Tensor):   # a Parameter takes the jitted row too
            return _binary_other(name, x, y, c)
        dt = x._dtype
        if y._dtype is not dt or dt.code > 1 or not x._contig or not y._contig:
            return P.binary_py(name, x, y, c)
        xs = x._shape
        ys = y._shape
        if xs == ys:
            shape, bc, n = xs, 0, x._n
        elif y._n == 1 and len(ys) <= len(xs):
            shape, bc, n = xs, 2, x._n
        elif x._n == 1 and len(xs) <= len(ys):
            shape, bc, n = ys, 1, y._n
        else:
            return P.binary_py(name, x, y, c)
        out = _new(Tensor)
        ar = ARENA
        nb = (n * dt.itemsize + 15) & ~15
        off = ar.off
        if off + nb <= ar.size and nb <= _QUARTER:   # inline bump allocation (Arena.alloc)
            ar.off = off + nb
            base = out._base = ar.slab
            addr = out._addr = ar.addr + off
        else:
            base, addr = out._base, out._addr = _alloc(nb, False)   # the record writes every element
        out._shape = shape
        out._stride = x._stride if bc != 1 else y._stride
        out._dtype = dt
        out._n = n
        out._contig = True
        tape = TAPE
        rg = (x._rg or y._rg) and _GRAD[0]
        if rg:   # producers first: a new leaf slot may sweep the tape before the index is taken
            # (_producer, written out for a leaf the tape already holds: W1's every other operand)
            if x._rg:
                pa = x._rec
                if pa < 0:
                    s = x._slot
                    pa = -2 - s if s >= 0 and s in tape.leaf_hold else _producer(x)
            else:
                pa = -1
            if y._rg:
                pb = y._rec
                if pb < 0:
                    s = y._slot
                    pb = -2 - s if s >= 0 and s in tape.leaf_hold else _producer(y)
            else:
                pb = -1
        i = tape.n
        if not (tape.base + i) & 4095:
            _segment_start(tape)
            i = tape.n   # a sweep may have moved the base
        if (i + 1) * _ROW > len(tape.buf):
            tape.grow()
        r = tape.base + i
        b = x._base
        if b is not base and b is not tape.last_kept:
            tape.keep_alive(b)
        b = y._base
        if b is not base and b is not tape.last_kept:
            tape.keep_alive(b)
        if rg:
            _PACK(tape.buf, i * _ROW, opc | (bc << 2) | dt.code, n, addr, x._addr, y._addr, pa, pb, 1, c)
            out._rec = r
            out._rg = True
        else:
            _PACK(tape.buf, i * _ROW, opc | (bc << 2) | dt.code, n, addr, x._addr, y._addr, -1, -1, 0, c)
            out._rec = -1
            out._rg = False
        tape.n = i + 1
        if (x._exposed or y._exposed or r - tape.flushed >= _FLUSH_BOUND
                or (EXPOSED and (id(x._base) in EXPOSED or id(b) in EXPOSED))):
            tape.flush()
        return out
    op.__name__ = "_record_" + name
    return op


def _binary_other(name, x, y, c):
    """binary(x, y) where y is not a Tensor: a Python number, or a NumPy array."""
    if isinstance(y, Tensor):
        return P.binary_py(name, x, y, c)
    if isinstance(y, (numbers.Number, np.number, np.bool_)):
        return _binary_scalar(name, x, y, c)
    if isinstance(y, np.ndarray):
        return _JIT_BINARY[name](x, tensor(y), c)
    raise TypeError(f"{name}(): argument 'other' (position 2) must be Tensor or Number, not {type(y).__name__}")


def binary(name, x, y, c=1.0):
    """Front end of the binary rows (x a Tensor; y a Tensor or a Python number)."""
    return _JIT_BINARY[name](x, y, c)


def _binary_scalar(name, x, v, alpha):
    """tensor op python-number: the scalar rows (add_scalar, mul_scalar...)."""
    dt = D.promote_scalar(x._dtype, v)
    if dt is not x._dtype or dt.code > 1 or not x._contig:
        return P.binary_py(name, x, full((), v, dtype=dt if D.scalar_kind(v) != "f" or dt.is_floating_point
                                          else D.float32), alpha, scalar=True)
    if name in ("add", "sub"):
        return _unary(name + "_scalar", x, float(v) * alpha)
    if name == "mul":
        return _unary("mul_scalar", x, float(v))
    if name == "div":
        return _unary("div_scalar", x, float(v))
    if name == "pow":
        return pow(x, v)
    return P.binary_py(name, x, full((), v, dtype=dt), alpha, scalar=True)


def pow(input, exponent):  # noqa: A001
    if isinstance(exponent, Tensor):
        if not isinstance(input, Tensor):
            if exponent._dtype in _FLOATS and exponent._contig and isinstance(input, numbers.Real):
                return unary("rpow_scalar", exponent, float(input))
            input = full((), input, dtype=exponent._dtype)
        return binary("pow", input, exponent)
    if not isinstance(exponent, numbers.Number):
        raise TypeError(f"pow(): argument 'exponent' must be Number or Tensor, not {type(exponent).__name__}")
    if input._dtype in _FLOATS or isinstance(exponent, float):
        if input._dtype not in _FLOATS:
            input = input.to(D.float32)
        return unary("pow_scalar", input, float(exponent))
    return P.unary_py("pow_scalar", input, exponent)


# ----- creation ----------------------------------------------------------------

def _infer_dtype(data):
    if isinstance(data, Tensor):
        return data._dtype
    if isinstance(data, (np.ndarray, np.generic)):   # NumPy arrays and scalars keep their dtype
        return D.from_numpy_dtype(data.dtype)
    if isinstance(data, (bool, np.bool_)):
        return D.bool_
    if isinstance(data, (int, np.integer)):
        return D.int64
    if isinstance(data, (float, np.floating)):
        return D.float32
    if isinstance(data, (list, tuple)):
        kinds = set()
        f64 = []

        def walk(v):
            if isinstance(v, (list, tuple)):
                for e in v:
                    walk(e)
            elif isinstance(v, Tensor):
                kinds.add(v._dtype._kind)
            else:
                kinds.add(D.scalar_kind(v))
                if isinstance(v, np.float64):
                    f64.append(v)
        walk(data)
        if "f" in kinds or not kinds:
            return D.float64 if f64 else D.float32   # torch: a NumPy float64 scalar keeps the list float64
        return D.int64 if "i" in kinds else D.bool_
    raise TypeError(f"Could not infer dtype of {type(data).__name__}")


def _to_array(data):
    if isinstance(data, Tensor):
        return data._values()
    if isinstance(data, (list, tuple)):
        return np.array([_to_array(d) if isinstance(d, (Tensor, list, tuple)) else d for d in data])
    return np.asarray(data)


def _check_ragged(data, dim=0):
    """torch's error for nested sequences of uneven length (NumPy's is different)."""
    if not isinstance(data, (list, tuple)) or not data:
        return
    first = data[0]
    if isinstance(first, (list, tuple)):
        n = len(first)
        for e in data:
            if not isinstance(e, (list, tuple)):
                raise TypeError(f"'{type(first).__name__}' object cannot be interpreted as an integer")
            if len(e) != n:
                raise ValueError(f"expected sequence of length {n} at dim {dim + 1} (got {len(e)})")
            _check_ragged(e, dim + 1)
    elif any(isinstance(e, (list, tuple)) for e in data):
        raise TypeError(f"'{type(next(e for e in data if isinstance(e, (list, tuple)))).__name__}' object cannot "
                        f"be interpreted as an integer")


def _check_requires_grad_dtype(requires_grad, dt):
    if requires_grad and not dt.is_floating_point:
        raise RuntimeError("Only Tensors of floating point and complex dtype can require gradients")


def tensor(data, dtype=None, device=None, requires_grad=False, pin_memory=False):
    _check_device(device)
    dtype = D.as_dtype(dtype)
    _check_ragged(data)
    dt = dtype or _infer_dtype(data)
    _check_requires_grad_dtype(requires_grad, dt)
    try:
        arr = _to_array(data)
    except ValueError as e:
        raise ValueError(str(e)) from None
    if arr.dtype == object:
        raise TypeError("can't convert np.ndarray of type numpy.object_. The only supported types are: float64, "
                        "float32, float16, complex64, complex128, int64, int32, int16, int8, uint64, uint32, "
                        "uint16, uint8, and bool.")
    t = _empty(tuple(arr.shape), dt)
    if t._n:
        t._view_np()[...] = arr
    if requires_grad:
        t.requires_grad_(True)
    return t


def as_tensor(data, dtype=None, device=None):
    if isinstance(data, Tensor) and (dtype is None or data._dtype is D.as_dtype(dtype)):
        return data
    if isinstance(data, np.ndarray) and dtype is None:
        return from_numpy(data)
    return tensor(data, dtype=dtype)


def from_numpy(arr):
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"expected np.ndarray (got {type(arr).__name__})")
    dt = D.from_numpy_dtype(arr.dtype)
    root, addr, strides = root_of(arr)
    t = _wrap(root, addr, tuple(arr.shape), strides, dt)
    t._np = arr
    _expose(t)
    return t


def _shape_args(size):
    if len(size) == 1 and isinstance(size[0], (tuple, list, Size)):
        size = tuple(size[0])
    for s in size:
        if not isinstance(s, (numbers.Integral, np.integer)) or isinstance(s, bool):
            raise TypeError(f"empty(): argument 'size' must be tuple of ints, but found element of type "
                            f"{type(s).__name__} at pos 0")
        if s < 0:
            raise RuntimeError(f"Trying to create tensor with negative dimension {s}: {list(size)}")
    return tuple(int(s) for s in size)


def _filled(shape, value, dtype, requires_grad):
    _check_requires_grad_dtype(requires_grad, dtype)
    t = _empty(shape, dtype)
    if value != 0 and t._n:
        t._view_np()[...] = value
    if requires_grad:
        t.requires_grad_(True)
    return t


def zeros(*size, dtype=None, device=None, requires_grad=False):
    _check_device(device)
    return _filled(_shape_args(size), 0, D.as_dtype(dtype) or D.float32, requires_grad)


def ones(*size, dtype=None, device=None, requires_grad=False):
    _check_device(device)
    return _filled(_shape_args(size), 1, D.as_dtype(dtype) or D.float32, requires_grad)


def empty(*size, dtype=None, device=None, requires_grad=False):
    return zeros(*size, dtype=dtype, device=device, requires_grad=requires_grad)


def full(size, fill_value, dtype=None, device=None, requires_grad=False):
    _check_device(device)
    dt = D.as_dtype(dtype) or (_infer_dtype(fill_value) if not isinstance(fill_value, Tensor) else fill_value._dtype)
    return _filled(_shape_args((size,)) if isinstance(size, (tuple, list, Size)) else _shape_args((size,)),
                   fill_value, dt, requires_grad)


def zeros_like(t, dtype=None, requires_grad=False, device=None):
    return zeros(t._shape, dtype=dtype or t._dtype, requires_grad=requires_grad)


def ones_like(t, dtype=None, requires_grad=False, device=None):
    return ones(t._shape, dtype=dtype or t._dtype, requires_grad=requires_grad)


def full_like(t, fill_value, dtype=None, requires_grad=False, device=None):
    return full(t._shape, fill_value, dtype=dtype or t._dtype, requires_grad=requires_grad)


def empty_like(t, dtype=None, requires_grad=False, device=None):
    return zeros_like(t, dtype=dtype, requires_grad=requires_grad)


def arange(start, end=None, step=1, dtype=None, device=None, requires_grad=False):
    if end is None:
        start, end = 0, start
    vals = [start, end, step]
    vals = [v.item() if isinstance(v, Tensor) else v for v in vals]
    if vals[2] == 0:
        raise RuntimeError("step must be nonzero")
    fl = any(isinstance(v, float) for v in vals)
    dt = D.as_dtype(dtype) or (D.float32 if fl else D.int64)
    n = max(0, math.ceil((vals[1] - vals[0]) / vals[2]))
    arr = vals[0] + vals[2] * np.arange(n, dtype=np.float64 if fl or dt.is_floating_point else np.int64)
    t = tensor(arr, dtype=dt)
    return t.requires_grad_(True) if requires_grad else t


def linspace(start, end, steps, dtype=None, device=None, requires_grad=False):
    dt = D.as_dtype(dtype) or D.float32
    arr = np.linspace(start, end, steps, dtype=np.float64)
    # torch computes the second half from the end to keep it symmetric
    if steps > 1:
        step = (end - start) / (steps - 1)
        half = steps // 2
        idx = np.arange(steps)
        arr = np.where(idx < half, start + step * idx, end - step * (steps - 1 - idx))
    t = tensor(arr.astype(dt.np), dtype=dt)
    return t.requires_grad_(True) if requires_grad else t


def eye(n, m=None, dtype=None, device=None, requires_grad=False):
    t = tensor(np.eye(n, m if m is not None else n), dtype=D.as_dtype(dtype) or D.float32)
    return t.requires_grad_(True) if requires_grad else t


_JIT_UNARY = {s.name: _make_jit_unary(s.name) for s in OPS.values() if s.kind == "unary"}
_JIT_BINARY = {s.name: _make_jit_binary(s.name) for s in OPS.values() if s.kind == "binary"}
