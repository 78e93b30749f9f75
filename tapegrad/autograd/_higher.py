"""create_graph=True: the backward pass as ordinary recorded ops, so that it can be
differentiated again (second derivatives, Hessian-vector products).

The fast path (``Tape.backward_many``) replays the tape in one jitted call and writes
plain gradient buffers. Here the same records are walked in reverse in Python, and each
record's VJP is computed with tapegrad's own tensor ops, which append records of their
own:

  * a jitted row runs its op-table formula (``OpSpec.vjp``, derivatives.yaml style:
    ``self: grad * result``) with ``grad``/``self``/``other``/``result`` bound to tensors
    that alias the record's operands and carry their history (a jitted row's operands are
    flat: the tape keeps element counts, not shapes);
  * an escape record that is linear in its float inputs (views, indexing, sum along dims,
    cat, where...) gets one new escape record per input: its forward is the recorded VJP
    (a linear map, NumPy), its own VJP is the op's forward map (``PyRec.lin``): the
    transpose of a transpose. Any order of derivative then works with no rule per op;
  * the others (matmul, addmm, softmax, mse_loss, broadcasting arithmetic) have a rule
    below, in tensor ops.

This path costs Python per record; ``create_graph=False`` never comes here.
"""
import math
import re
import struct

import numpy as np

from .. import _dtype as D
from ..ops.table import BY_OPCODE, PY, OpSpec
from ..storage import ARENA, base_address
from ..tape.tape import ROW, TAPE

_FLOAT = {0: D.float32, 1: D.float64}


def _tensor_mod():
    import sys
    return sys.modules[__name__.rsplit(".", 2)[0] + ".tensor"]   # (tapegrad.tensor the function shadows it)


# ----- operands as tensors with history ----------------------------------------------

class _Buffers:
    """Root buffers the tape keeps alive, to find the one an operand address lies in."""

    def __init__(self):
        bufs = [ARENA.slab] + [e[0] for e in TAPE.keep.values()] + [e[0] for e in TAPE.big.values()]
        bufs += [b for b, _ in ARENA.pool] + [b for b in TAPE.leaf_buf if b is not None]
        self.spans = [(base_address(b), base_address(b) + b.nbytes, b) for b in bufs if b is not None]

    def find(self, addr):
        for lo, hi, b in self.spans:
            if lo <= addr < hi:
                return b
        raise RuntimeError(f"tapegrad internal error: no live buffer holds address {addr:#x}")


def _alias(base, addr, shape, stride, dt, producer):
    """A tensor over existing storage whose history is record `producer` (or none). Its death
    does not release the record: the tensor that owns the record does that."""
    T = _tensor_mod()
    t = T._wrap(base, addr, tuple(shape), tuple(stride), dt)
    t.__class__ = _Alias
    if producer >= 0:
        t._rec = producer
        t._rg = True
    return t


def _leaf(p):
    owner = TAPE.leaf_owner[-p - 2]
    return owner() if owner is not None else None


def _operand(bufs, addr, nelem, dt, p):
    """A jitted row's operand: flat, with the history of its producer code p."""
    if p <= -2:
        leaf = _leaf(p)
        if leaf is not None:
            return leaf if leaf._shape == (nelem,) else leaf.reshape(nelem)
        p = -1
    return _alias(bufs.find(addr), addr, (nelem,), (1,), dt, p)


def _np_operand(bufs, arr, p):
    """An escape record's operand (a NumPy view of it), with the history of producer code p."""
    if p <= -2:
        leaf = _leaf(p)
        if leaf is not None:
            return leaf
        p = -1
    addr = arr.__array_interface__["data"][0]
    isz = arr.itemsize
    return _alias(bufs.find(addr), addr, arr.shape, tuple(s // isz for s in arr.strides),
                  D.from_numpy_dtype(arr.dtype), p)


def sum_to(t, shape):
    """Sum a broadcast gradient tensor back to `shape` (recorded ops)."""
    shape = tuple(shape)
    if t._shape == shape:
        return t
    lead = t.dim() - len(shape)
    if lead > 0:
        t = t.sum(dim=tuple(range(lead)))
    axes = tuple(i for i, d in enumerate(shape) if d == 1 and t._shape[i] != 1)
    if axes:
        t = t.sum(dim=axes, keepdim=True)
    return t if t._shape == shape else t.reshape(shape)


# ----- VJPs as tensor ops ------------------------------------------------------------

_FORMULAS = {}


def formulas(spec):
    """{input name: compiled expression} of an op-table row's ``vjp``."""
    f = _FORMULAS.get(spec.name)
    if f is None:
        f = {}
        for part in spec.vjp.split(";"):
            name, expr = part.split(":", 1)
            f[name.strip()] = compile(expr.strip(), f"<vjp of {spec.name}>", "eval")
        _FORMULAS[spec.name] = f
    return f


def _names(spec):
    if spec.kind == "binary":
        return ("self", "exponent") if spec.name == "pow" else ("self", "other")
    return ("self",)


def _log(c):
    """log of a Python number as the tensor ops have it (-inf at 0, nan below)."""
    return math.log(c) if c > 0 else (-math.inf if c == 0 else math.nan)


# rows whose VJP reads an operand only through a mask: torch's backward op still takes it as an input
_MASKED = {"relu", "abs", "clamp_min", "clamp_max", "maximum", "minimum"}


def eval_vjp(spec, grad, operands, result, c, needs):
    """The row's formulas for the inputs in `needs`, as tensors (None elsewhere)."""
    from .. import functions as F
    T = _tensor_mod()
    names = _names(spec)
    env = {"grad": grad, "result": result, "c": c, "alpha": c, "where": F.where, "math": math, "log": _log}
    for n, t in zip(names, operands):
        # an integer operand (no gradient of its own) enters the formula in the result's dtype
        env[n] = t if t._dtype.is_floating_point or not result._dtype.is_floating_point else t.to(result._dtype)
    code = formulas(spec)
    out = []
    for n, t, need in zip(names, operands, needs):
        if not need:
            out.append(None)
            continue
        g = eval(code[n], env)     # noqa: S307 (the op table's own text)
        if not g._rg and spec.name in _MASKED and (result._rg or any(o._rg for o in operands)):
            # NOTE: a VJP that does not depend on the operands (relu, abs, clamp...) still has them as
            # inputs in torch: its gradient requires grad, and differentiates to zeros
            # (a where() that never picks it: exactly 0, even where the operand is nan or inf)
            dep = result if result._rg else next(o for o in operands if o._rg)
            g = g + F.where(T.zeros(dep._shape, dtype=D.bool_), dep, 0.0).sum()
        out.append(sum_to(g, t._shape))
    return out


def _mm(rec, g, ops, res, needs):
    a, b = ops
    a2 = a.unsqueeze(0) if a.dim() == 1 else a
    b2 = b.unsqueeze(-1) if b.dim() == 1 else b
    g2 = g.unsqueeze(-1) if b.dim() == 1 else g
    if a.dim() == 1:
        g2 = g2.unsqueeze(-2)
    ga = sum_to(g2 @ b2.transpose(-1, -2), a2._shape).reshape(a._shape) if needs[0] else None
    gb = sum_to(a2.transpose(-1, -2) @ g2, b2._shape).reshape(b._shape) if needs[1] else None
    return [ga, gb]


def _addmm(rec, g, ops, res, needs):
    bias, x, w = ops
    return [sum_to(g, bias._shape) if needs[0] else None, g @ w if needs[1] else None,
            g.t() @ x if needs[2] else None]


def _mse(rec, g, ops, res, needs):
    x, t = ops
    d = x - t
    k = 2.0 / (d._n if rec.attrs["reduction"] == "mean" else 1)
    d = d * (g * k)
    return [sum_to(d, x._shape) if needs[0] else None, sum_to(-d, t._shape) if needs[1] else None]


def _softmax(rec, g, ops, res, needs):
    d = rec.attrs["dim"]
    if rec.spec.name == "log_softmax":
        s = g.sum(d, keepdim=True) if res.dim() else g
        return [g - res.exp() * s]
    s = (g * res).sum(d, keepdim=True) if res.dim() else g * res
    return [res * (g - s)]


RULES = {"matmul": _mm, "bmm": _mm, "dot": _mm, "mv": _mm, "addmm": _addmm, "mse_loss": _mse,
         "softmax": _softmax, "log_softmax": _softmax}

_LIN_SPECS = {}


def _linear_spec(spec):
    s = _LIN_SPECS.get(spec.name)
    if s is None:
        stem = re.sub(r"Backward\d*$", "", spec.grad_fn)
        s = _LIN_SPECS[spec.name] = OpSpec(spec.name + "_backward", "py", stem + "BackwardBackward0",
                                           mnemonic=spec.name + "_backward")
    return s


def linear_vjp(rec, j, g):
    """The VJP of linear escape record `rec` w.r.t. its input j, as a new escape record on g:
    forward = the recorded VJP, VJP = the op's own linear map (``rec.lin``)."""
    from ..ops.pyops import record
    T = _tensor_mod()
    ivs, ov, raw, lin = rec.ivs, rec.ov, rec.raw, rec.lin
    shapes = [s for s, _ in rec.ins]
    dts = [np.dtype(d) for _, d in rec.ins]

    def fwd(gv):
        return raw(gv, ov, *ivs)[j]

    def bwd(h, o, gv):
        ts = [h if k == j else (ivs[k] if dts[k].kind != "f" else np.zeros(shapes[k], dts[k]))
              for k in range(len(ivs))]
        return (np.broadcast_to(lin(ts, ov, ivs), gv.shape),)
    out = T._empty(tuple(shapes[j]), D.from_numpy_dtype(dts[j]))
    return record(_linear_spec(rec.spec), out, [g], fwd, bwd, saves=False, lin=True)


# ----- the walk --------------------------------------------------------------------------

def _snapshot(need):
    """(global index, row, float attribute, escape record) of each marked record, last first."""
    base = TAPE.base
    rows = []
    for k in np.nonzero(need)[0][::-1]:
        g = int(k) + base
        row = struct.unpack_from("<7q", TAPE.buf, int(k) * ROW)
        c = struct.unpack_from("<d", TAPE.buf, int(k) * ROW + 64)[0]
        rows.append((g, row, c, TAPE.py.get(g) if (row[0] >> 5) == PY else None))
    return rows


def _producers(row, rec):
    code, n, out, a, b, pa, pb = row
    if rec is not None:
        return list(TAPE.edges[a + 1:a + 1 + TAPE.edges[a]])
    return [pa, pb] if BY_OPCODE[code >> 5].kind == "binary" else [pa]


def _out_shape(g, row, rec):
    return rec.out[0] if rec is not None else (row[1],)


def _record_vjp(bufs, g, row, c, rec, grad, prods):
    """[gradient tensor or None] per input of record g, given its output gradient."""
    code, n, out, a, b, pa, pb = row
    needs = [p != -1 for p in prods]
    if rec is None:
        spec = BY_OPCODE[code >> 5]
        dt = _FLOAT[code & 3]
        bc = (code >> 2) & 3
        if spec.kind == "reduce":
            ops = [_operand(bufs, a, b, dt, pa)]
        else:
            ops = [_operand(bufs, a, 1 if bc & 1 else n, dt, pa)]
            if spec.kind == "binary":
                ops.append(_operand(bufs, b, 1 if bc & 2 else n, dt, pb))
        res = _alias(bufs.find(out), out, (n,), (1,), dt, g)
        return eval_vjp(spec, grad, ops, res, c, needs)
    spec = rec.spec
    tvjp = rec.attrs.get("tvjp")
    if tvjp is not None:     # a custom Function: its backward, run on gradients with history
        return [g_ if need else None for g_, need in zip(tvjp(grad), needs)]
    if rec.lin is not None:
        return [linear_vjp(rec, j, grad) if need and np.dtype(rec.ins[j][1]).kind == "f" else None
                for j, need in enumerate(needs)]
    ops = [_np_operand(bufs, iv, p) for iv, p in zip(rec.ivs, prods)]
    res = _np_operand(bufs, rec.ov, g)
    rule = RULES.get(spec.name)
    if rule is not None:
        return rule(rec, grad, ops, res, needs)
    if spec.kind in ("unary", "binary"):     # the broadcasting / mixed-dtype path of a table row
        return eval_vjp(spec, grad, ops, res, rec.attrs.get("c", 1.0) if rec.attrs else 1.0, needs)
    raise NotImplementedError(f"create_graph=True through {spec.grad_fn} is not supported yet")


def backward_graph(tensors, seeds, inputs):
    """Gradients of `tensors` (seeded) as recorded tensors: for each of `inputs` (None where it
    was not reached), or, with inputs None, [(leaf, gradient)] for every leaf reached."""
    T = _tensor_mod()
    if TAPE.capture is not None:
        TAPE.capture.no("it uses create_graph=True")
    roots = [t._rec for t in tensors if t._rec >= 0]
    G, L = {}, {}         # record -> gradient of its output; leaf slot -> gradient of the leaf
    got = {}
    want = {x._rec for x in inputs if x._rec >= 0} if inputs is not None else set()
    rows = []
    if roots:
        need, _, _ = TAPE.mark_roots(roots)
        rows = _snapshot(need)
        TAPE.flush()
    shapes = {g: _out_shape(g, row, rec) for g, row, c, rec in rows}
    dtypes = {g: (D.from_numpy_dtype(rec.out[1]) if rec is not None else _FLOAT[row[0] & 3])
              for g, row, c, rec in rows}
    for t, seed in zip(tensors, seeds):
        s = seed.t if hasattr(seed, "t") else T.tensor(np.asarray(seed), dtype=t._dtype)
        if t._rec >= 0:
            _add(G, t._rec, s.reshape(shapes[t._rec]) if s._shape != shapes[t._rec] else s)
        else:
            _add(L, t._leaf_slot(), s)
    bufs = _Buffers()
    for g, row, c, rec in rows:
        grad = G.pop(g, None)
        if grad is None:
            continue
        for kind, fn, shape in TAPE.hooks.get(g, {}).values():
            if kind in ("tensor", "pre"):
                r = fn(grad.reshape(shape) if shape else grad) if kind == "tensor" else fn((grad,))
                if kind == "pre" and r is not None:
                    r = r[0]
                if r is not None:
                    grad = r.reshape(grad._shape)
        if g in want:
            got[g] = grad
        prods = _producers(row, rec)
        grads = _record_vjp(bufs, g, row, c, rec, grad, prods)
        for kind, fn, _shape in TAPE.hooks.get(g, {}).values():
            if kind == "post":
                r = fn(tuple(grads), (grad,))
                if r is not None:
                    grads = list(r)
        for p, gj in zip(prods, grads):
            if gj is None or p == -1:
                continue
            if p >= 0:
                if gj._dtype is not dtypes[p]:
                    gj = gj.to(dtypes[p])       # a gradient has its input's dtype
                _add(G, p, gj if gj._shape == shapes[p] else gj.reshape(shapes[p]))
            else:
                leaf = _leaf(p)
                if leaf is not None:
                    if gj._dtype is not leaf._dtype:
                        gj = gj.to(leaf._dtype)
                    _add(L, -p - 2, gj if gj._shape == leaf._shape else gj.reshape(leaf._shape))
    for s, gl in list(L.items()):
        for fn in list(TAPE.leaf_hooks.get(s, {}).values()):
            r = fn(gl)
            if r is not None:
                L[s] = gl = r
    if inputs is None:
        return [(_leaf(-2 - s), gl) for s, gl in L.items() if _leaf(-2 - s) is not None]
    return [got.get(x._rec) if x._rec >= 0 else (L.get(x._slot) if x._slot >= 0 else None) for x in inputs]


def _add(d, k, v):
    cur = d.get(k)
    d[k] = v if cur is None else cur + v


def _make_alias_class():
    T = _tensor_mod()

    class _Alias(T.Tensor):
        __slots__ = ()

        def __del__(self):
            pass
    _Alias.__name__ = _Alias.__qualname__ = "Tensor"
    return _Alias


_Alias = _make_alias_class()
