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
    __slots__ = ("_r", "_name", "__weakref__", "_keep")

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
        raise NotImplementedError("Node.register_hook is not implemented yet")


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
