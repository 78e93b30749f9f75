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
        return f"<{self._name} object at {hex(id(self))}>"

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
        return _add_hook(self._r, "post", fn, None)

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
    from collections import OrderedDict

    from ..utils.hooks import RemovableHandle
    d = TAPE.hooks.setdefault(r, OrderedDict())
    h = RemovableHandle(d)
    d[h.id] = (kind, fn, shape)
    return h


_SCALAR_SAVED = {"pow_scalar": "exponent", "mul_scalar": "other", "div_scalar": "other"}
_SAVED_ALIASES = {"mat2": "other", "vec": "other", "tensor": "other", "mat1": "self", "input": "self"}


def _saved(node, what):
    """A saved value of the node's record, as torch's ``grad_fn._saved_<what>`` gives it."""
    r = node._r
    TAPE.flush()
    i = r - TAPE.base
    row = _row(r)
    if (row[0] >> 4) & 1:
        from ..tape.tape import SECOND_TIME
        raise RuntimeError(SECOND_TIME)
    op = row[0] >> 5
    what = _SAVED_ALIASES.get(what, what)
    if op == PY:
        rec = TAPE.py[r]
        names = ("self", "other", "third")
        if what == "result":
            return _value(rec.ov, r, None)
        if rec.ivs is None or what not in names[:len(rec.ivs)]:
            raise AttributeError(f"'{node._name}' object has no attribute '_saved_{what}'")
        k = names.index(what)
        return _value(rec.ivs[k], _producers(r)[k], None)
    spec = BY_OPCODE[op]
    c = struct.unpack_from("<d", TAPE.buf, i * ROW + 64)[0]
    if what == "self" and spec.name in ("mul_scalar", "div_scalar"):
        return None       # torch: self is not saved when the other factor needs no gradient
    if _SCALAR_SAVED.get(spec.name) == what:     # the Python number of x * 2, x ** 2
        v = int(c) if c == int(c) else c
        if what == "exponent":
            return v
        from ..tensor import tensor
        return tensor(v)
    if what not in spec.saves:
        raise AttributeError(f"'{node._name}' object has no attribute '_saved_{what}'")
    from ..storage import array_at
    import numpy as np
    code, n = row[0], row[1]
    npdt = np.float64 if (code & 3) == 1 else np.float32
    shape = getattr(node, "_shape", None) or (n,)
    if what == "result":
        return _value(array_at(row[2], n, npdt).reshape(shape), r, None)
    k = 0 if what == "self" else 1
    bc = (code >> 2) & 3
    cnt = row[4] if spec.kind == "reduce" else (1 if bc & (1 << k) else n)
    p = row[5 + k]
    arr = array_at(row[3 + k], cnt, npdt)
    return _value(arr.reshape(shape) if cnt == n else arr.reshape(() if cnt == 1 else (cnt,)), p, None)


def _value(arr, p, _):
    """The saved operand: the leaf itself when it is one, else a copy of its values."""
    if p is not None and p <= -2:
        owner = TAPE.leaf_owner[-p - 2]
        t = owner() if owner is not None else None
        if t is not None:
            return t
    from ..tensor import tensor
    import numpy as np
    return tensor(np.array(arr))
