"""The graph facade (DESIGN invariant 6): PyTorch's Node objects, rebuilt from tape rows.

``t.grad_fn`` is a ``Node`` for the record that produced ``t``; its
``next_functions`` follow the record's producer codes: another record's Node,
a leaf's ``AccumulateGrad`` (whose ``.variable`` *is* the leaf tensor), or
``None`` for an input that needs no gradient. Nodes are cached per record
(``y.grad_fn is y.grad_fn``) and per leaf, and never drive the computation.
"""
import struct
import weakref

from ..ops.table import BY_OPCODE, PY
from ..tape.tape import ROW, TAPE

_NODES = weakref.WeakValueDictionary()
_ACC = weakref.WeakValueDictionary()


class Node:
    """A view of one tape record, named like PyTorch's backward node."""
    __slots__ = ("_r", "_name", "__weakref__", "_keep", "_shape")

    def __init__(self, r, name):
        self._r = r
        self._name = name
        if r >= 0:    # a held node keeps its record (and so its graph) alive, as in torch
            TAPE.pins[r] = TAPE.pins.get(r, 0) + 1

    def __del__(self):
        try:
            r = self._r
            if r >= 0:
                c = TAPE.pins.get(r, 0) - 1
                if c > 0:
                    TAPE.pins[r] = c
                else:
                    TAPE.pins.pop(r, None)
        except Exception:  # interpreter shutdown
            pass

    def name(self):
        return self._name

    def __repr__(self):
        rec = TAPE.py.get(self._r) if self._r >= 0 else None
        where = "torch.autograd.function." if rec is not None and rec.spec.kind == "function" else ""
        return f"<{where}{self._name} object at {hex(id(self))}>"

    @property
    def metadata(self):
        return {}

    @property
    def next_functions(self):
        prods = _producers(self._r)
        name = _op_name(self._r)
        if name in _WRAPPED_SCALAR:
            prods = prods + [-1]     # torch wraps the Python number in a tensor: a second input, (None, 0)
        elif name in _NON_DIFF_FIRST:
            prods = prods[1:]        # torch lists only differentiable inputs (where's condition is not one)
        return tuple((_node_for_code(p), 0) for p in prods)

    @property
    def record_index(self):
        """The tape record this node is a view of (tapegrad only)."""
        return self._r

    def register_hook(self, fn):
        """fn(grad_inputs, grad_outputs) after this node's backward; may return new grad_inputs."""
        return _add_hook(self._r, "post", fn, getattr(self, "_shape", None))

    def register_prehook(self, fn):
        """fn(grad_outputs) before this node's backward; may return new grad_outputs."""
        return _add_hook(self._r, "pre", fn, getattr(self, "_shape", None))

    @property
    def requires_grad(self):
        return True

    def __getattr__(self, name):
        # torch's saved values (y.grad_fn._saved_self...), and a custom Function's ctx attributes
        if name.startswith("_saved_") or name.startswith("_raw_saved_"):
            return _saved(self, name.split("_saved_", 1)[1])
        rec = TAPE.py.get(self._r) if self._r >= 0 else None
        ctx = rec.attrs.get("ctx") if rec is not None else None
        if ctx is not None:
            return getattr(ctx, name)
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")


class AccumulateGrad(Node):
    """A leaf's node (torch: ``isinstance(acc, torch.autograd.graph.Node)`` holds)."""
    __slots__ = ("_var",)
    __module__ = "builtins"

    def __init__(self, var):
        self._r = -1
        self._name = "torch::autograd::AccumulateGrad"
        self._var = var

    def name(self):
        return "torch::autograd::AccumulateGrad"

    @property
    def variable(self):
        return self._var

    def register_prehook(self, fn):
        """fn(grad_outputs) before the leaf's gradient is accumulated; may return a replacement."""
        def hook(g):
            r = fn((g,))
            return r[0] if r is not None else None
        return self._var.register_hook(hook)

    def register_hook(self, fn):
        """fn(grad_inputs=(), grad_outputs=(grad,)) when the leaf's gradient arrives."""
        def hook(g):
            fn((), (g,))
        return self._var.register_hook(hook)

    def __getattr__(self, name):
        raise AttributeError(f"'AccumulateGrad' object has no attribute '{name}'")

    @property
    def next_functions(self):
        return ()

    def __repr__(self):
        return f"<AccumulateGrad object at {hex(id(self))}>"


# Rows that take a Python number as their second operand: torch's node (AddBackward0, MulBackward0...)
# has the wrapped number as a second input that needs no gradient.
_WRAPPED_SCALAR = {"add_scalar", "sub_scalar", "mul_scalar", "div_scalar"}
# Rows whose first input is not an input of torch's node.
_NON_DIFF_FIRST = {"where"}


def _op_name(r):
    row = _row(r)
    op = row[0] >> 5
    if op == PY:
        rec = TAPE.py.get(r)
        return rec.spec.name if rec is not None else None
    spec = BY_OPCODE.get(op)
    return spec.name if spec is not None else None


_CLASSES = {}


def _node_class(name):
    """One Python class per PyTorch node name, so that ``type(y.grad_fn).__name__`` is
    'PowBackward0' as in torch (whose node classes are generated per backward formula)."""
    cls = _CLASSES.get(name)
    if cls is None:
        # torch's node classes are C++ types without a module: repr(type(n)) is <class 'PowBackward0'>
        cls = _CLASSES[name] = type(name, (Node,), {"__slots__": (), "__module__": "builtins"})
    return cls


def _row(r):
    i = r - TAPE.base
    return list(struct.unpack_from("<8q", TAPE.buf, i * ROW))


def _producers(r):
    row = _row(r)
    if (row[0] >> 5) == PY:
        e = row[3]
        prods = list(TAPE.edges[e + 1:e + 1 + TAPE.edges[e]])
        return prods
    spec = BY_OPCODE[row[0] >> 5]
    return [row[5], row[6]] if spec.kind == "binary" else [row[5]]


def _visible(r):
    """Hidden helper records (a contiguous copy the user did not ask for) are skipped."""
    while True:
        row = _row(r)
        if (row[0] >> 5) == PY:
            rec = TAPE.py.get(r)
            if rec is not None and rec.attrs.get("hidden"):
                p = _producers(r)[0]
                if p >= 0:
                    r = p
                    continue
                return None, p
        return r, None


def _node_for_code(p):
    if p >= 0:
        r, leaf = _visible(p)
        if r is None:
            return _node_for_code(leaf)
        return node_for_record(r)
    if p <= -2:
        owner = TAPE.leaf_owner[-p - 2]
        t = owner() if owner is not None else None
        if t is None:
            return None
        acc = _ACC.get(id(t))
        if acc is None or acc._var is not t:
            acc = AccumulateGrad(t)
            _ACC[id(t)] = acc
            t._node = acc  # the leaf keeps its node alive (torch: grad_accumulator)
        return acc
    return None


def node_for_record(r):
    r, _ = _visible(r)
    n = _NODES.get(r)
    if n is None:
        row = _row(r)
        op = row[0] >> 5
        spec = TAPE.py[r].spec if op == PY else BY_OPCODE[op]
        n = _node_class(spec.grad_fn)(r, spec.grad_fn)
        _NODES[r] = n
    return n


def _add_hook(r, kind, fn, shape):
    """A node hook on record r: kind "pre" (fn(grad_outputs)) or "post" (fn(grad_inputs, grad_outputs))."""
    from collections import OrderedDict

    from ..utils.hooks import RemovableHandle
    d = TAPE.hooks.setdefault(r, OrderedDict())
    h = RemovableHandle(d)
    d[h.id] = (kind, fn, shape)
    return h


# torch's saved-value names of escape records (attributes other rows do not have)
_PY_SAVED = {"matmul": ("self", "mat2"), "bmm": ("self", "mat2"), "mv": ("self", "vec"), "dot": ("self", "tensor"),
             "addmm": ("mat1", "mat2")}
_PY_SAVED_INPUT = {"addmm": {"mat1": 1, "mat2": 2}}


def _saved(node, what):
    """A saved value of the node's record, as torch's ``grad_fn._saved_<what>`` gives it: the
    tensor itself (a leaf) or a tensor over the saved storage that carries its history; a
    Python number for a saved scalar."""
    r = node._r
    TAPE.flush()
    i = r - TAPE.base
    row = _row(r)
    freed = (row[0] >> 4) & 1
    op = row[0] >> 5

    def no():
        return AttributeError(f"'{node._name}' object has no attribute '_saved_{what}'")

    def second():
        from ..tape.tape import SECOND_TIME
        return RuntimeError(SECOND_TIME)
    if op == PY:
        rec = TAPE.py[r]
        name = rec.spec.name
        names = _PY_SAVED.get(name, ("self", "other"))
        if what == "result" and name not in _PY_SAVED:
            if freed:
                raise second()
            return _tensor_at(rec.ov, r)
        if rec.ivs is None or what not in names:
            raise no()
        if freed:
            raise second()
        k = _PY_SAVED_INPUT.get(name, {}).get(what, names.index(what))
        if k >= len(rec.ivs):
            raise no()
        return _tensor_at(rec.ivs[k], _producers(r)[k])
    spec = BY_OPCODE[op]
    c = struct.unpack_from("<d", TAPE.buf, i * ROW + 64)[0]
    number = int(c) if c == int(c) else c
    code, n = row[0], row[1]
    pa, pb = row[5], row[6]
    if spec.name in ("mul_scalar", "div_scalar"):
        if what == "other":              # torch wraps the Python number in a tensor (freed with the graph)
            if freed:
                raise second()
            from ..tensor import tensor
            return tensor(number)
        if what == "self":
            return None                  # not saved: the number needs no gradient
        raise no()
    if spec.name == "pow_scalar" and what == "exponent":
        return number
    if spec.name == "rpow_scalar":       # number ** tensor (PowBackward2): self is the number
        if what == "self":
            return c
        if what == "exponent":
            if freed:
                raise second()
            return _operand_at(node, row, 0)
        if what != "result":
            raise no()
    names = {"exponent": "other"} if spec.name == "pow" else {}
    key = names.get(what, what)
    if what not in spec.saves and key not in spec.saves:
        raise no()
    if freed:
        raise second()
    if spec.name in ("mul", "div") and key in ("self", "other"):
        # torch saves an operand only where the other one's gradient needs it
        if spec.name == "mul" and (pb if key == "self" else pa) == -1:
            return None
        if spec.name == "div" and key == "self" and pb == -1:
            return None
    if key == "result":
        from ..storage import array_at
        import numpy as np
        npdt = np.float64 if (code & 3) == 1 else np.float32
        shape = getattr(node, "_shape", None) or (n,)
        return _tensor_at(array_at(row[2], n, npdt).reshape(shape), r)
    return _operand_at(node, row, 0 if key == "self" else 1)


def _operand_at(node, row, k):
    """Operand k of a jitted row, shaped like the node's output (or 0-d when broadcast)."""
    import numpy as np
    from ..storage import array_at
    code, n = row[0], row[1]
    spec = BY_OPCODE[code >> 5]
    npdt = np.float64 if (code & 3) == 1 else np.float32
    bc = (code >> 2) & 3
    cnt = row[4] if spec.kind == "reduce" else (1 if bc & (1 << k) else n)
    shape = getattr(node, "_shape", None) or (n,)
    arr = array_at(row[3 + k], cnt, npdt)
    return _tensor_at(arr.reshape(shape) if cnt == n else arr.reshape(() if cnt == 1 else (cnt,)), row[5 + k])


def _tensor_at(arr, p):
    """The saved tensor over NumPy view `arr` of its storage: a leaf is itself; an intermediate
    is a tensor over the same storage with the history of record p; a constant is a copy."""
    if p is not None and p <= -2:
        owner = TAPE.leaf_owner[-p - 2]
        t = owner() if owner is not None else None
        if t is not None:
            return t
    if p is not None and p >= 0:
        from ._higher import _Buffers, _alias
        from .. import _dtype as D
        addr = arr.__array_interface__["data"][0]
        try:
            base = _Buffers().find(addr)
        except RuntimeError:
            base = None
        if base is not None:
            isz = arr.itemsize
            return _alias(base, addr, arr.shape, tuple(s // isz for s in arr.strides),
                          D.from_numpy_dtype(arr.dtype), p)
    from ..tensor import tensor
    import numpy as np
    return tensor(np.array(arr))
