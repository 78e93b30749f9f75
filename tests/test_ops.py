"""Every op checked three ways (STYLE.md section 2 item 9), parametrised over the op table.

1. forward vs a NumPy reference: a row's ``ref`` (``tapegrad/ops/table.py``) for the jitted rows,
   ``tests/reference.py`` (keyed by op name) for the escape rows; float32 and float64;
2. the VJP vs float64 central differences along a random direction: <grad f(x) . u, v> from
   tapegrad's backward (random upstream gradient u) against (f(x + eps v) - f(x - eps v)) / 2eps;
3. parity with PyTorch (skipped when torch is missing): forward values and dtype, input gradients,
   and the grad_fn name, for the same call written once as a function of the module
   (``lambda m, x, y: m.sigmoid(x * y)`` runs with ``m = tapegrad`` and ``m = torch``).

Inputs are drawn away from kinks (abs, relu, clamp, max ties) and domain edges (log, sqrt, pow).
A case names the table row it must record last (checked on the tape), and a test fails when a
jitted row has no case. Known tapegrad bugs are ``xfail(strict=True)``: they fail when fixed.
The end of the file has in-place ops without grad, and a hypothesis test of random graphs.
"""
import dataclasses
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tapegrad as tg
from reference import REFS
from tapegrad.ops.table import BY_OPCODE, OPS, PY

DTYPES = ("float32", "float64")
EPS = 1e-6
FD_RTOL = 1e-4


def _torch():
    return pytest.importorskip("torch")


# ----- cases -----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class In:
    """One input: shape, value domain, dtype (None: the dtype the test is parametrised with)."""
    shape: tuple
    dom: str = "any"       # any: |x| in [0.2, 2], random sign; pos: [0.5, 2]; int: 1..4; bool
    dtype: str = None
    grad: bool = True


@dataclasses.dataclass
class Case:
    id: str
    fn: object                 # fn(m, *tensors) -> tensor, the same call for tapegrad and torch
    ins: tuple                 # In specs
    ref: object = None         # ref(*float64 arrays) -> array
    row: str = None            # the op-table row the output's record must come from
    odt: str = None            # output dtype when it is not the parametrised one
    grad: bool = True          # differentiable: run backward / finite differences
    fd: bool = True            # central differences meaningful (float64 inputs)
    dtypes: tuple = DTYPES
    torch_fn: object = None    # when torch's spelling differs
    name_xfail: str = None     # known grad_fn-name mismatch with torch (reason)
    torch_xfail: str = None    # known value/grad mismatch with torch (reason)
    fd_xfail: str = None       # known VJP bug (reason)
    flaky_xfail: str = None    # a known bug that shows or not depending on earlier tests (non-strict; a
    #                            deterministic strict xfail elsewhere fails when it is fixed)


def _arr(spec, dt, rng):
    dt = spec.dtype or {"bool": "bool", "int": "int64"}.get(spec.dom, dt)
    shape = spec.shape
    if spec.dom == "pos":
        a = rng.uniform(0.5, 2.0, shape)
    elif spec.dom == "any":
        a = rng.uniform(0.2, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
    elif spec.dom == "int":
        a = rng.integers(1, 5, shape)
    elif spec.dom == "bool":
        a = rng.random(shape) > 0.5
    else:
        raise ValueError(spec.dom)
    return np.asarray(a).astype(dt)


def _arrays(case, dt, salt=""):
    rng = np.random.default_rng(zlib.crc32(f"{case.id}/{dt}/{salt}".encode()))
    return [_arr(s, dt, rng) for s in case.ins]


def _leaves(m, case, arrays, grad=True):
    out = []
    for spec, a in zip(case.ins, arrays):
        t = m.tensor(a, dtype=getattr(m, str(a.dtype)) if a.dtype != np.bool_ else m.bool)
        if grad and case.grad and spec.grad and a.dtype.kind == "f":
            t.requires_grad_(True)
            if m is tg and a.nbytes > (1 << 18):
                # WORKAROUND (test_big_leaf_first_use_keeps_its_record): give a big leaf its gradient
                # slot now, not inside the record path of its first op, where the allocation can
                # sweep the tape under the record being appended
                t._leaf_slot()
        out.append(t)
    return out


def _call(m, case, ts):
    fn = case.torch_fn if (case.torch_fn is not None and m is not tg) else case.fn
    return fn(m, *ts)


def _np(t):
    return t.detach().numpy() if hasattr(t, "detach") else np.asarray(t)


def _tol(dtype_name):
    return dict(rtol=1e-5, atol=1e-6) if dtype_name == "float32" else dict(rtol=1e-10, atol=1e-12)


def _backward(y, g=None):
    """tapegrad's y.backward(g); an exception becomes an AssertionError that holds no frames.

    A traceback keeps the frames of ``Tape.backward`` alive, and with them NumPy views of the
    tape's bytearray, so that the tape can never grow again (BufferError in every later test;
    see test_error_in_backward_leaves_the_tape_usable). pytest keeps the last traceback."""
    import traceback
    err = None
    try:
        y.backward(g)
    except Exception:
        err = traceback.format_exc()
    if err is not None:
        raise AssertionError("backward raised:\n" + err)


def _row_of(y):
    """Name of the op-table row whose record produced y (read from the tape)."""
    from tapegrad.autograd.graph import _row
    from tapegrad.tape.tape import TAPE
    op = _row(y._rec)[0] >> 5
    return TAPE.py[y._rec].spec.name if op == PY else BY_OPCODE[op].name


# ----- the jitted rows: unary / binary / reduce ------------------------------------------------------
# row -> [(label, call, c, domain)]; c is the scalar the row's ref takes (exponent, operand, bound).

UNARY = {
    "neg": [("op", lambda m, x: -x, 0.0, "any"), ("fn", lambda m, x: m.neg(x), 0.0, "any")],
    "exp": [("method", lambda m, x: x.exp(), 0.0, "any"), ("fn", lambda m, x: m.exp(x), 0.0, "any")],
    "log": [("method", lambda m, x: x.log(), 0.0, "pos"), ("fn", lambda m, x: m.log(x), 0.0, "pos")],
    "sin": [("fn", lambda m, x: m.sin(x), 0.0, "any")],
    "cos": [("method", lambda m, x: x.cos(), 0.0, "any")],
    "tanh": [("method", lambda m, x: x.tanh(), 0.0, "any"), ("fn", lambda m, x: m.tanh(x), 0.0, "any")],
    "sigmoid": [("fn", lambda m, x: m.sigmoid(x), 0.0, "any"), ("method", lambda m, x: x.sigmoid(), 0.0, "any")],
    "relu": [("method", lambda m, x: x.relu(), 0.0, "any"), ("fn", lambda m, x: m.relu(x), 0.0, "any")],
    "abs": [("method", lambda m, x: x.abs(), 0.0, "any"), ("builtin", lambda m, x: abs(x), 0.0, "any")],
    "sqrt": [("method", lambda m, x: x.sqrt(), 0.0, "pos")],
    "square": [("method", lambda m, x: x.square(), 0.0, "any"), ("fn", lambda m, x: m.square(x), 0.0, "any")],
    "reciprocal": [("method", lambda m, x: x.reciprocal(), 0.0, "any")],
    "pow_scalar": [("x**2.5", lambda m, x: x ** 2.5, 2.5, "pos"), ("x**2", lambda m, x: x ** 2, 2.0, "any"),
                   ("pow3", lambda m, x: x.pow(3), 3.0, "any"), ("x**-1.5", lambda m, x: x ** -1.5, -1.5, "pos"),
                   ("fn0.5", lambda m, x: m.pow(x, 0.5), 0.5, "pos"), ("x**0", lambda m, x: x ** 0, 0.0, "any")],
    "rpow_scalar": [("2.0**x", lambda m, x: 2.0 ** x, 2.0, "any"), ("2**x", lambda m, x: 2 ** x, 2.0, "any"),
                    ("fn", lambda m, x: m.pow(0.5, x), 0.5, "any")],
    "add_scalar": [("x+3", lambda m, x: x + 3, 3.0, "any"), ("3+x", lambda m, x: 3 + x, 3.0, "any"),
                   ("x+2.5", lambda m, x: x + 2.5, 2.5, "any"),
                   ("alpha", lambda m, x: m.add(x, 2, alpha=3), 6.0, "any")],
    "sub_scalar": [("x-3", lambda m, x: x - 3, 3.0, "any"),
                   ("alpha", lambda m, x: m.sub(x, 1.5, alpha=2), 3.0, "any")],
    "rsub_scalar": [("3-x", lambda m, x: 3 - x, 3.0, "any"), ("2.5-x", lambda m, x: 2.5 - x, 2.5, "any"),
                    ("fn", lambda m, x: m.rsub(x, 3), 3.0, "any")],
    "mul_scalar": [("x*3", lambda m, x: x * 3, 3.0, "any"), ("3*x", lambda m, x: 3 * x, 3.0, "any"),
                   ("fn", lambda m, x: m.mul(x, 0.5), 0.5, "any")],
    "div_scalar": [("x/3", lambda m, x: x / 3, 3.0, "any"), ("fn", lambda m, x: m.div(x, 4), 4.0, "any")],
    "clamp_min": [("fn", lambda m, x: m.clamp_min(x, 0.3), 0.3, "any"),
                  ("method", lambda m, x: x.clamp_min(-0.3), -0.3, "any")],
    "clamp_max": [("fn", lambda m, x: m.clamp_max(x, 0.3), 0.3, "any"),
                  ("method", lambda m, x: x.clamp_max(-0.3), -0.3, "any")],
    "clone": [("method", lambda m, x: x.clone(), 0.0, "any"), ("fn", lambda m, x: m.clone(x), 0.0, "any")],
}

BINARY = {
    "add": [("op", lambda m, x, y: x + y, 1.0), ("alpha", lambda m, x, y: m.add(x, y, alpha=2), 2.0)],
    "sub": [("op", lambda m, x, y: x - y, 1.0), ("alpha", lambda m, x, y: m.sub(x, y, alpha=0.5), 0.5)],
    "mul": [("op", lambda m, x, y: x * y, 1.0), ("fn", lambda m, x, y: m.mul(x, y), 1.0)],
    "div": [("op", lambda m, x, y: x / y, 1.0), ("fn", lambda m, x, y: m.div(x, y), 1.0)],
    "pow": [("op", lambda m, x, y: x ** y, 1.0), ("fn", lambda m, x, y: m.pow(x, y), 1.0)],
    "maximum": [("fn", lambda m, x, y: m.maximum(x, y), 1.0), ("max2", lambda m, x, y: m.max(x, y), 1.0)],
    "minimum": [("fn", lambda m, x, y: m.minimum(x, y), 1.0), ("method", lambda m, x, y: x.minimum(y), 1.0)],
}
BINARY_SHAPES = [((2, 3), (2, 3)), ((3, 1), (1, 4)), ((1, 4), (3, 1)), ((2, 3), (3,)), ((3,), (2, 3)),
                 ((), (2, 3)), ((2, 3), ()), ((1,), (2, 3)), ((2, 3), (1, 1)), ((), ())]

REDUCE = {
    "sum": [("method", lambda m, x: x.sum()), ("fn", lambda m, x: m.sum(x))],
    "mean": [("method", lambda m, x: x.mean()), ("fn", lambda m, x: m.mean(x))],
}
REDUCE_SHAPES = [(2, 3), (7,), (), (2, 1, 3)]

_ROW_XFAIL_NAME = {}   # row -> reason: a known grad_fn-name mismatch with torch for every call of the row


def _unary_cases():
    for row, calls in UNARY.items():
        if row not in OPS:
            continue                   # test_every_jitted_row_has_a_case says so
        spec = OPS[row]
        for label, fn, c, dom in calls:
            for shape in ((2, 3), ()):
                yield Case(f"{row}-{label}-{shape}", fn, (In(shape, dom),),
                           ref=(lambda sp, c: lambda x: sp.ref(x, c))(spec, c), row=row,
                           name_xfail=_ROW_XFAIL_NAME.get(row))


def _binary_cases():
    for row, calls in BINARY.items():
        if row not in OPS:
            continue                   # test_every_jitted_row_has_a_case says so
        spec = OPS[row]
        dom = "pos" if row == "pow" else "any"
        for label, fn, c in calls:
            for sx, sy in BINARY_SHAPES:
                yield Case(f"{row}-{label}-{sx}x{sy}", fn, (In(sx, dom), In(sy, "any")),
                           ref=(lambda sp, c: lambda x, y: sp.ref(x, y, c))(spec, c), row=row)


def _reduce_cases():
    for row, calls in REDUCE.items():
        if row not in OPS:
            continue                   # test_every_jitted_row_has_a_case says so
        spec = OPS[row]
        for label, fn in calls:
            for shape in REDUCE_SHAPES:
                yield Case(f"{row}-{label}-{shape}", fn, (In(shape),),
                           ref=(lambda sp: lambda x: np.asarray(sp.ref(x, 0.0)))(spec), row=row)


def _big_cases():
    """The first call of every row on 300x300 elements: above config.PARALLEL_THRESHOLD the replay
    runs elementwise records tile by tile, tiles in parallel (another code path)."""
    big = (300, 300)
    for row, calls in UNARY.items():
        if row in OPS:
            label, fn, c, dom = calls[0]
            yield Case(f"{row}-{label}-big", fn, (In(big, dom),),
                       ref=(lambda sp, c: lambda x: sp.ref(x, c))(OPS[row], c), row=row,
                       name_xfail=_ROW_XFAIL_NAME.get(row))
    for row, calls in BINARY.items():
        if row in OPS:
            label, fn, c = calls[0]
            for sy in (big, ()):
                yield Case(f"{row}-{label}-big-x{sy}", fn, (In(big, "pos" if row == "pow" else "any"), In(sy)),
                           ref=(lambda sp, c: lambda x, y: sp.ref(x, y, c))(OPS[row], c), row=row)
    for row, calls in REDUCE.items():
        if row in OPS:
            yield Case(f"{row}-big", calls[0][1], (In(big),), ref=(lambda sp: lambda x: np.asarray(sp.ref(x, 0.0)))(
                OPS[row]), row=row)
    # a run of elementwise records over the same tiles, with an intermediate used three times
    yield Case("big-chain", lambda m, x, y: _chain(x * y, x, y), (In(big), In(big)),
               ref=lambda x, y: _chain_ref(x * y, x, y), row="mul")


def _chain(p, x, y):
    return (p.sin() + x.exp() * 0.5 - (p * y).tanh()).sigmoid() * p


def _chain_ref(p, x, y):
    return 1 / (1 + np.exp(-(np.sin(p) + np.exp(x) * 0.5 - np.tanh(p * y)))) * p


ROW_CASES = list(_unary_cases()) + list(_binary_cases()) + list(_reduce_cases()) + list(_big_cases())


def test_every_jitted_row_has_a_case():
    """Adding a unary/binary/reduce row to the table without a case here fails."""
    jit = {s.name for s in OPS.values() if s.kind != "py"}
    kinds = {s.kind for s in OPS.values()}
    assert kinds <= {"unary", "binary", "reduce", "py"}, f"new op kind(s) {kinds}: teach test_ops.py"
    covered = set(UNARY) | set(BINARY) | set(REDUCE)
    assert jit - covered == set(), f"rows with no case in tests/test_ops.py: {sorted(jit - covered)}"
    assert covered - jit == set(), f"cases for rows that no longer exist: {sorted(covered - jit)}"
    for s in OPS.values():
        if s.kind != "py":
            assert s.kind == {**{k: "unary" for k in UNARY}, **{k: "binary" for k in BINARY},
                              **{k: "reduce" for k in REDUCE}}[s.name]


def test_every_escape_row_has_a_reference_and_a_case():
    py = {s.name for s in OPS.values() if s.kind == "py"}
    assert py - set(REFS) == set(), f"escape rows with no reference in tests/reference.py: {sorted(py - set(REFS))}"
    rows = {c.row for c in PY_CASES}
    assert py - rows == set(), f"escape rows with no case in tests/test_ops.py: {sorted(py - rows)}"


# ----- the escape rows and other calls ---------------------------------------------------------------

R = REFS
A23, A34, A3, A4, A234 = In((2, 3)), In((3, 4)), In((3,)), In((4,)), In((2, 3, 4))

PY_CASES = [
    # linear algebra
    Case("matmul-2d", lambda m, x, y: x @ y, (A23, A34), lambda x, y: R["matmul"](x, y), row="matmul"),
    Case("matmul-fn", lambda m, x, y: m.matmul(x, y), (A23, A34), lambda x, y: R["matmul"](x, y), row="matmul"),
    Case("mm", lambda m, x, y: m.mm(x, y), (A23, A34), lambda x, y: R["matmul"](x, y), row="matmul"),
    Case("mm-method", lambda m, x, y: x.mm(y), (A23, A34), lambda x, y: R["matmul"](x, y), row="matmul"),
    Case("matmul-2d@2d.T", lambda m, x, y: x @ y.t(), (A23, A23), lambda x, y: R["matmul"](x, y.T), row="matmul"),
    Case("matmul-1d@2d", lambda m, x, y: x @ y, (A3, A34), lambda x, y: R["matmul"](x, y), row="matmul",
         name_xfail="torch records 1-D @ 2-D as mm then squeeze: SqueezeBackward4 on top"),
    Case("mv", lambda m, x, v: m.mv(x, v), (A34, A4), lambda x, v: R["mv"](x, v), row="mv"),
    Case("matmul-2d@1d", lambda m, x, v: x @ v, (A34, A4), lambda x, v: R["mv"](x, v), row="mv"),
    Case("dot", lambda m, x, y: m.dot(x, y), (A4, A4), lambda x, y: R["dot"](x, y), row="dot"),
    Case("matmul-1d@1d", lambda m, x, y: x @ y, (A4, A4), lambda x, y: R["dot"](x, y), row="dot"),
    Case("bmm", lambda m, x, y: m.bmm(x, y), (A234, In((2, 4, 3))), lambda x, y: R["bmm"](x, y), row="bmm"),
    Case("matmul-3d@3d", lambda m, x, y: x @ y, (A234, In((2, 4, 3))), lambda x, y: R["bmm"](x, y), row="bmm",
         name_xfail="torch's matmul of 3-D tensors is expand/reshape/bmm/view: UnsafeViewBackward0 on top"),
    Case("matmul-3d@2d", lambda m, x, y: m.matmul(x, y), (A234, In((4, 2))), lambda x, y: R["matmul"](x, y),
         row="bmm", name_xfail="torch folds 3-D @ 2-D into one mm: UnsafeViewBackward0 on top"),
    Case("matmul-3d@1d", lambda m, x, y: x @ y, (A234, A4), lambda x, y: R["matmul"](x, y), row="bmm",
         name_xfail="torch folds 3-D @ 1-D into one mv: UnsafeViewBackward0 on top"),
    Case("matmul-1d@3d", lambda m, x, y: x @ y, (A4, In((2, 4, 3))), lambda x, y: R["matmul"](x, y), row="bmm",
         name_xfail="torch folds 1-D @ 3-D into one mv: UnsafeViewBackward0 on top"),
    Case("matmul-bcast-batch", lambda m, x, y: x @ y, (In((2, 1, 2, 3)), In((3, 3, 2))),
         lambda x, y: R["matmul"](x, y), row="bmm",
         name_xfail="torch broadcasts batches with expand/reshape: UnsafeViewBackward0 on top"),
    Case("addmm-linear", lambda m, b, x, w: m.nn.functional.linear(x, w, b), (A3, In((2, 4)), In((3, 4))),
         lambda b, x, w: R["addmm"](b, x, w), row="addmm"),
    Case("addmm-linear-1row", lambda m, b, x, w: m.nn.functional.linear(x, w, b), (In((1,)), In((1, 4)), A34),
         lambda b, x, w: R["addmm"](b, x, w), row="addmm"),
    # reductions along dims
    Case("sum-dim1", lambda m, x: x.sum(1), (A234,), lambda x: R["sum_dim"](x, 1), row="sum_dim"),
    Case("sum-dim-neg-keep", lambda m, x: m.sum(x, -1, keepdim=True), (A234,),
         lambda x: R["sum_dim"](x, -1, True), row="sum_dim"),
    Case("sum-dim-tuple", lambda m, x: x.sum((0, 2)), (A234,), lambda x: R["sum_dim"](x, (0, 2)), row="sum_dim"),
    Case("sum-dim-tuple-keep", lambda m, x: x.sum(dim=(0, -1), keepdim=True), (A234,),
         lambda x: R["sum_dim"](x, (0, 2), True), row="sum_dim"),
    Case("sum-dim0-1d", lambda m, x: x.sum(0), (A4,), lambda x: R["sum_dim"](x, 0), row="sum_dim"),
    Case("mean-dim0", lambda m, x: x.mean(0), (A234,), lambda x: R["mean_dim"](x, 0), row="mean_dim"),
    Case("mean-dim-keep", lambda m, x: m.mean(x, 1, keepdim=True), (A23,), lambda x: R["mean_dim"](x, 1, True),
         row="mean_dim"),
    Case("mean-dim-tuple", lambda m, x: x.mean((1, 2)), (A234,), lambda x: R["mean_dim"](x, (1, 2)),
         row="mean_dim"),
    Case("max-dim", lambda m, x: x.max(1).values, (A234,), lambda x: R["max_dim"](x, 1)[0], row="max_dim"),
    Case("max-dim-keep", lambda m, x: m.max(x, -1, keepdim=True)[0], (A23,),
         lambda x: R["max_dim"](x, -1, True)[0], row="max_dim"),
    Case("min-dim", lambda m, x: x.min(0).values, (A23,), lambda x: R["min_dim"](x, 0)[0], row="min_dim"),
    Case("min-dim-keep", lambda m, x: m.min(x, 2, keepdim=True).values, (A234,),
         lambda x: R["min_dim"](x, 2, True)[0], row="min_dim"),
    Case("max-all", lambda m, x: x.max(), (A234,), lambda x: R["max_all"](x), row="max_all"),
    Case("max-all-fn", lambda m, x: m.max(x), (A3,), lambda x: R["max_all"](x), row="max_all"),
    Case("min-all", lambda m, x: m.min(x), (A23,), lambda x: R["min_all"](x), row="min_all"),
    # views and shape
    Case("view", lambda m, x: x.view(3, 2), (A23,), lambda x: R["view"](x, (3, 2)), row="view"),
    Case("view-1", lambda m, x: x.view(-1), (A234,), lambda x: R["view"](x, (-1,)), row="view"),
    Case("reshape", lambda m, x: x.reshape(4, -1), (A234,), lambda x: R["view"](x, (4, 6)), row="view"),
    Case("reshape-fn", lambda m, x: m.reshape(x, (6,)), (A23,), lambda x: R["view"](x, (6,)), row="view"),
    Case("flatten", lambda m, x: x.flatten(), (A234,), lambda x: R["view"](x, (-1,)), row="view"),
    Case("flatten-1", lambda m, x: m.flatten(x, 1), (A234,), lambda x: R["view"](x, (2, 12)), row="view"),
    Case("reshape-noncontig", lambda m, x: x.t().reshape(6), (A23,), lambda x: R["unsafe_view"](x.T, (6,)),
         row="unsafe_view"),
    Case("flatten-noncontig", lambda m, x: x.transpose(0, 2).flatten(), (A234,),
         lambda x: R["unsafe_view"](np.swapaxes(x, 0, 2), (-1,)), row="unsafe_view"),
    Case("transpose", lambda m, x: x.transpose(0, 1), (A23,), lambda x: R["transpose"](x, 0, 1), row="transpose"),
    Case("transpose-fn", lambda m, x: m.transpose(x, -1, 0), (A234,), lambda x: R["transpose"](x, 2, 0),
         row="transpose"),
    Case("permute", lambda m, x: x.permute(2, 0, 1), (A234,), lambda x: R["permute"](x, (2, 0, 1)), row="permute"),
    Case("permute-fn", lambda m, x: m.permute(x, (1, 0, 2)), (A234,), lambda x: R["permute"](x, (1, 0, 2)),
         row="permute"),
    Case(".T", lambda m, x: x.T, (A23,), lambda x: R["permute"](x, (1, 0)), row="permute"),
    Case("t", lambda m, x: x.t(), (A23,), lambda x: R["t"](x), row="t"),
    Case("t-fn", lambda m, x: m.t(x), (A3,), lambda x: R["t"](x), row="t"),
    Case("squeeze", lambda m, x: x.squeeze(), (In((2, 1, 3, 1)),), lambda x: R["squeeze"](x), row="squeeze"),
    Case("squeeze-dim", lambda m, x: x.squeeze(1), (In((2, 1, 3)),), lambda x: R["squeeze_dim"](x, 1),
         row="squeeze_dim"),
    Case("squeeze-dim-noop", lambda m, x: m.squeeze(x, 0), (In((2, 1, 3)),), lambda x: R["squeeze_dim"](x, 0),
         row="squeeze_dim"),
    Case("squeeze-dims-tuple", lambda m, x: x.squeeze((1, 3)), (In((2, 1, 3, 1)),), lambda x: R["squeeze"](x),
         row="squeeze_dim", name_xfail="torch's squeeze(dims tuple) is SqueezeBackward2; no such row"),
    Case("unsqueeze0", lambda m, x: x.unsqueeze(0), (A23,), lambda x: R["unsqueeze"](x, 0), row="unsqueeze"),
    Case("unsqueeze-1", lambda m, x: m.unsqueeze(x, -1), (A23,), lambda x: R["unsqueeze"](x, -1), row="unsqueeze"),
    Case("unsqueeze-scalar", lambda m, x: x.unsqueeze(0), (In(()),), lambda x: R["unsqueeze"](x, 0),
         row="unsqueeze"),
    Case("expand", lambda m, x: x.expand(3, 4), (In((3, 1)),), lambda x: R["expand"](x, (3, 4)), row="expand"),
    Case("expand-new-dims", lambda m, x: x.expand(2, -1, 4), (In((3, 1)),), lambda x: R["expand"](x, (2, -1, 4)),
         row="expand"),
    Case("expand-scalar", lambda m, x: x.expand(2, 3), (In(()),), lambda x: R["expand"](x, (2, 3)), row="expand"),
    Case("expand_as", lambda m, x, y: x.expand_as(y), (A3, In((2, 3), grad=False)),
         lambda x, y: R["expand"](x, (2, 3)), row="expand"),
    # indexing
    Case("select", lambda m, x: x[1], (A23,), lambda x: R["select"](x, 0, 1), row="select"),
    Case("select-dim1", lambda m, x: x[:, 0], (A23,), lambda x: R["select"](x, 1, 0), row="select"),
    Case("select-neg", lambda m, x: x[-1, :, 2], (A234,), lambda x: x[-1, :, 2], row="select"),
    Case("select-then-slice", lambda m, x: x[0, 1:], (A23,), lambda x: x[0, 1:], row="slice"),
    Case("slice-then-select", lambda m, x: x[1:, 0], (A234,), lambda x: x[1:, 0], row="select"),
    Case("select-full-slice", lambda m, x: x[0, 0:4], (A34,), lambda x: x[0, 0:4], row="select"),
    Case("select-ellipsis", lambda m, x: x[..., 1], (A234,), lambda x: x[..., 1], row="select"),
    Case("none-then-select", lambda m, x: x[None, 0], (A23,), lambda x: x[None, 0], row="select"),
    Case("select-then-none", lambda m, x: x[0, None], (A23,), lambda x: x[0, None], row="unsqueeze"),
    Case("slice-all", lambda m, x: x[:], (A23,), lambda x: x[:], row="slice"),
    Case("slice", lambda m, x: x[1:], (A34,), lambda x: R["slice"](x, 0, 1, None), row="slice"),
    Case("slice-step", lambda m, x: x[:, ::2], (A34,), lambda x: R["slice"](x, 1, None, None, 2), row="slice"),
    Case("slice-neg", lambda m, x: x[..., -3:-1], (A234,), lambda x: R["slice"](x, 2, -3, -1), row="slice"),
    Case("index-none", lambda m, x: x[None], (A23,), lambda x: x[None], row="unsqueeze"),
    Case("index-ellipsis-none", lambda m, x: x[..., None], (A23,), lambda x: x[..., None], row="unsqueeze"),
    Case("index-int-tensor", lambda m, x: x[m.tensor([0, 2, 1, 2])], (A34,),
         lambda x: R["index"](x, np.array([0, 2, 1, 2])), row="index"),
    Case("index-list-pair", lambda m, x: x[[0, 1, 1], [2, 0, 2]], (A23,),
         lambda x: R["index"](x, ([0, 1, 1], [2, 0, 2])), row="index"),
    Case("index-dim1", lambda m, x: x[:, [3, 0, 3]], (A34,), lambda x: R["index"](x, (slice(None), [3, 0, 3])),
         row="index"),
    Case("index-bool-mask", lambda m, x: x[x > 0], (A34,), lambda x: R["index"](x, x > 0), row="index"),
    Case("index-const-mask", lambda m, x, k: x[k], (A23, In((2, 3), "bool")), lambda x, k: R["index"](x, k),
         row="index"),
    Case("index-row-mask", lambda m, x: x[m.tensor([True, False, True])], (A34,),
         lambda x: R["index"](x, np.array([True, False, True])), row="index"),
    # joining
    Case("cat0", lambda m, x, y: m.cat([x, y]), (A23, In((1, 3))), lambda x, y: R["cat"]([x, y], 0),
         row="cat"),
    Case("cat1", lambda m, x, y, z: m.cat((x, y, z), dim=1), (A23, In((2, 1)), In((2, 2))),
         lambda x, y, z: R["cat"]([x, y, z], 1), row="cat"),
    Case("cat-neg", lambda m, x, y: m.cat([x, y], -1), (A3, A4), lambda x, y: R["cat"]([x, y], 0), row="cat"),
    Case("stack0", lambda m, x, y: m.stack([x, y]), (A23, A23), lambda x, y: R["stack"]([x, y], 0), row="stack"),
    Case("stack-last", lambda m, x, y, z: m.stack([x, y, z], dim=-1), (A23, A23, A23),
         lambda x, y, z: R["stack"]([x, y, z], -1), row="stack"),
    Case("where", lambda m, x, y: m.where(x > y, x, y), (A23, A23), lambda x, y: R["where"](x > y, x, y),
         row="where"),
    Case("where-bcast", lambda m, x, y: m.where(x > 0, x, y), (A23, A3), lambda x, y: R["where"](x > 0, x, y),
         row="where"),
    Case("where-scalar", lambda m, x: m.where(x > 0, x, 0.0), (A23,), lambda x: R["where"](x > 0, x, 0.0),
         row="where"),
    Case("masked_fill", lambda m, x: x.masked_fill(x < 0, 0.5), (A23,), lambda x: R["where"](x < 0, 0.5, x),
         row="where", name_xfail="torch's masked_fill is MaskedFillBackward0; tapegrad records a where"),
    # softmax family, clamp
    Case("softmax-1", lambda m, x: m.softmax(x, -1), (A34,), lambda x: R["softmax"](x, -1), row="softmax"),
    Case("softmax-0", lambda m, x: x.softmax(0), (A234,), lambda x: R["softmax"](x, 0), row="softmax"),
    Case("log_softmax-1", lambda m, x: m.log_softmax(x, 1), (A34,), lambda x: R["log_softmax"](x, 1),
         row="log_softmax"),
    Case("log_softmax-0", lambda m, x: x.log_softmax(0), (A3,), lambda x: R["log_softmax"](x, 0),
         row="log_softmax"),
    Case("clamp-both", lambda m, x: x.clamp(-0.5, 0.5), (A34,), lambda x: R["clamp"](x, -0.5, 0.5), row="clamp"),
    Case("clamp-fn", lambda m, x: m.clamp(x, min=-1.0, max=0.3), (A34,), lambda x: R["clamp"](x, -1.0, 0.3),
         row="clamp"),
    Case("clip", lambda m, x: x.clip(-0.3, 1.1), (A34,), lambda x: R["clamp"](x, -0.3, 1.1), row="clamp"),
    Case("clamp-min-kw", lambda m, x: x.clamp(min=0.3), (A34,), lambda x: R["clamp"](x, 0.3, None), row="clamp"),
    Case("clamp-max-kw", lambda m, x: m.clamp(x, max=-0.3), (A34,), lambda x: R["clamp"](x, None, -0.3),
         row="clamp"),
    # losses
    Case("mse_loss", lambda m, x, t: m.nn.functional.mse_loss(x, t), (A34, A34), lambda x, t: R["mse_loss"](x, t),
         row="mse_loss"),
    Case("mse_loss-sum", lambda m, x, t: m.nn.functional.mse_loss(x, t, reduction="sum"),
         (A234, In((2, 3, 4), grad=False)), lambda x, t: R["mse_loss"](x, t, "sum"), row="mse_loss"),
    Case("mse_loss-0d", lambda m, x, t: m.nn.functional.mse_loss(x, t), (In(()), In(())),
         lambda x, t: R["mse_loss"](x, t), row="mse_loss"),
    # dtype conversion, in place with grad
    Case("to-float64", lambda m, x: x.to(m.float64) * 2, (In((2, 3), dtype="float32"),),
         lambda x: R["to_copy"](x, np.float64) * 2, odt="float64", dtypes=("float32",), fd=False),
    Case("double", lambda m, x: x.double(), (In((2, 3), dtype="float32"),), lambda x: R["to_copy"](x, np.float64),
         row="to_copy", odt="float64", dtypes=("float32",), fd=False),
    Case("float", lambda m, x: x.float(), (In((2, 3), dtype="float64"),), lambda x: R["to_copy"](x, np.float32),
         row="to_copy", odt="float32", dtypes=("float64",), fd=False),
    Case("copy_", lambda m, x, y: x.clone().copy_(y), (A23, A3), lambda x, y: R["copy_"](x, y), row="copy_"),
    Case("setitem-index", lambda m, x, y: _setitem(x * 1, m.tensor([0, 2]), y), (A34, In((2, 4))),
         lambda x, y: R["index_put"](x, np.array([0, 2]), y), row="index_put"),
    Case("setitem-basic", lambda m, x, y: _setitem(x * 1, 1, y), (A34, A4),
         lambda x, y: R["index_put"](x, 1, y), row="index_put",
         name_xfail="torch writes x[1] = y through a view: CopySlices; tapegrad IndexPutBackward0"),
    Case("setitem-mask", lambda m, x, y: _setitem(x * 1, x > 0, y), (A34, In(())),
         lambda x, y: R["index_put"](x, x > 0, y), row="index_put"),
]


def _setitem(t, idx, v):
    t[idx] = v
    return t


MIXED_CASES = [
    # broadcasting of Python numbers and tensors of other dtypes (py path of the binary rows)
    Case("f32+f64", lambda m, x, y: x + y, (In((2, 3), dtype="float32"), In((2, 3), dtype="float64")),
         lambda x, y: x + y, row="add", odt="float64", dtypes=("float32",), fd=False),
    Case("f64*f32-bcast", lambda m, x, y: x * y, (In((3,), dtype="float64"), In((2, 3), dtype="float32")),
         lambda x, y: x * y, row="mul", odt="float64", dtypes=("float64",), fd=False),
    Case("f32/f64-scalar", lambda m, x, y: x / y, (In((2, 3), dtype="float32"), In((), dtype="float64")),
         lambda x, y: x / y, row="div", odt="float32", dtypes=("float32",), fd=False),
    Case("int*float", lambda m, k, x: k * x, (In((2, 3), "int", dtype="int64"), A23), lambda k, x: k * x,
         row="mul"),
    Case("float-int", lambda m, x, k: x - k, (A23, In((3,), "int", dtype="int64")), lambda x, k: x - k, row="sub"),
    Case("float/int", lambda m, x, k: x / k, (A23, In((2, 3), "int", dtype="int64")), lambda x, k: x / k,
         row="div"),
    Case("int**float", lambda m, k, x: k ** x, (In((2, 3), "int", dtype="int64"), A23), lambda k, x: k ** x,
         row="pow"),
    Case("float**int", lambda m, x, k: x ** k, (In((2, 3), "pos"), In((2, 3), "int", dtype="int64")),
         lambda x, k: x ** k, row="pow"),
    Case("int+2.5", lambda m, k: k + 2.5, (In((2, 3), "int", dtype="int64"),), lambda k: k + 2.5,
         odt="float32", grad=False, dtypes=("float32",)),
    Case("int*int", lambda m, k, j: k * j, (In((2, 3), "int", dtype="int64"), In((3,), "int", dtype="int64")),
         lambda k, j: k * j, odt="int64", grad=False, dtypes=("float32",)),
    Case("int/int", lambda m, k, j: k / j, (In((2, 3), "int", dtype="int64"), In((3,), "int", dtype="int64")),
         lambda k, j: k / j, odt="float32", grad=False, dtypes=("float32",)),
    Case("int-3", lambda m, k: k - 3, (In((2, 3), "int", dtype="int64"),), lambda k: k - 3, odt="int64",
         grad=False, dtypes=("float32",)),
    Case("3-int", lambda m, k: 3 - k, (In((2, 3), "int", dtype="int64"),), lambda k: 3 - k, odt="int64",
         grad=False, dtypes=("float32",)),
    Case("int*2", lambda m, k: k * 2, (In((2, 3), "int", dtype="int64"),), lambda k: k * 2, odt="int64",
         grad=False, dtypes=("float32",)),
    Case("int**2", lambda m, k: k ** 2, (In((2, 3), "int", dtype="int64"),), lambda k: k ** 2, odt="int64",
         grad=False, dtypes=("float32",)),
    Case("int.float()", lambda m, k: k.float() * 0.5, (In((2, 3), "int", dtype="int64"),),
         lambda k: k * 0.5, odt="float32", grad=False, dtypes=("float32",)),
    # Python numbers on the left
    Case("2/x", lambda m, x: 2 / x, (A23,), lambda x: 2 / x, row="mul_scalar"),
    Case("2.5/x-scalar", lambda m, x: 2.5 / x, (In(()),), lambda x: 2.5 / x, row="mul_scalar"),
    Case("2-x", lambda m, x: 2 - x, (A23,), lambda x: 2 - x, row="rsub_scalar"),
    Case("2**x", lambda m, x: 2 ** x, (A23,), lambda x: 2.0 ** x, row="rpow_scalar"),
    Case("x**2", lambda m, x: x ** 2, (A23,), lambda x: x ** 2, row="pow_scalar"),
    Case("2*x+1", lambda m, x: 2 * x + 1, (A23,), lambda x: 2 * x + 1, row="add_scalar"),
    Case("1-x*x-scalar", lambda m, x: 1 - x * x, (In(()),), lambda x: 1 - x * x, row="rsub_scalar"),
    # scalar tensors (0-d) with matrices, both directions, through a longer expression
    Case("0d*mat+mat/0d", lambda m, s, x: s * x + x / s, (In(()), A23), lambda s, x: s * x + x / s, row="add"),
    Case("mat-0d*(1,)", lambda m, x, s, o: (x - s) * o, (A23, In(()), In((1,))), lambda x, s, o: (x - s) * o,
         row="mul"),
]

_EMPTY_XFAIL = ("storage.py Arena.alloc(0) with no current slab returns (None, 0): an empty tensor made "
                "before the first slab or after retire_current() has _base None "
                "(see test_empty_tensor_when_no_slab_is_current)")

# non-contiguous operands, 0-d and empty tensors, chains of views over non-leaves
EDGE_CASES = [
    Case("exp-noncontig", lambda m, x: x.t().exp(), (A23,), lambda x: np.exp(x.T), row="exp"),
    Case("sigmoid-slice", lambda m, x: m.sigmoid(x[:, ::2]), (A34,), lambda x: 1 / (1 + np.exp(-x[:, ::2])),
         row="sigmoid"),
    Case("mul-noncontig", lambda m, x, y: x.t() * y, (A23, In((3, 2))), lambda x, y: x.T * y, row="mul"),
    Case("add-expanded", lambda m, x, y: x.expand(2, 3) + y, (A3, A23), lambda x, y: x + y, row="add"),
    Case("pow-noncontig", lambda m, x: x.t() ** 2.5, (In((2, 3), "pos"),), lambda x: x.T ** 2.5,
         row="pow_scalar"),
    Case("sum-noncontig", lambda m, x: x.t().sum(), (A23,), lambda x: np.sum(x), row="sum"),
    Case("sum-empty", lambda m, x: x.sum(), (In((0, 3)),), lambda x: np.sum(x), row="sum",
         ),
    Case("sum-dim-empty", lambda m, x: x.sum(0), (In((0, 3)),), lambda x: np.sum(x, 0), row="sum_dim",
         ),
    Case("exp-empty", lambda m, x: x.exp(), (In((0, 3)),), lambda x: np.exp(x), row="exp",
         ),
    Case("sum-dim-0d", lambda m, x: x.sum(0), (In(()),), lambda x: x, row="sum_dim"),
    Case("mean-dim-0d", lambda m, x: x.mean(-1), (In(()),), lambda x: x, row="mean_dim"),
    Case("max-dim-0d", lambda m, x: x.max(0).values, (In(()),), lambda x: x, row="max_dim"),
    Case("softmax-0d", lambda m, x: x.softmax(0), (In(()),), lambda x: np.ones_like(x), row="softmax"),
    Case("log_softmax-0d", lambda m, x: x.log_softmax(-1), (In(()),), lambda x: np.zeros_like(x),
         row="log_softmax"),
    Case("view-chain", lambda m, x: ((x * 2).t()[1:].reshape(-1) * 3).unsqueeze(0),
         (A23,), lambda x: ((x * 2).T[1:].reshape(-1) * 3)[None], row="unsqueeze"),
    Case("reuse-branches", lambda m, x: x.sin() * x.exp() + x.t().t() * x.sum(), (A23,),
         lambda x: np.sin(x) * np.exp(x) + x * np.sum(x), row="add"),
]

NOGRAD_CASES = [
    Case("exp-int", lambda m, k: k.exp(), (In((2, 3), "int", dtype="int64"),), lambda k: np.exp(k), odt="float32",
         grad=False, dtypes=("float32",)),
    Case("sqrt-int", lambda m, k: m.sqrt(k), (In((2, 3), "int", dtype="int64"),), lambda k: np.sqrt(k),
         odt="float32", grad=False, dtypes=("float32",)),
    Case("neg-int", lambda m, k: -k, (In((2, 3), "int", dtype="int64"),), lambda k: -k, odt="int64", grad=False,
         dtypes=("float32",)),
    Case("abs-int", lambda m, k: (k - 3).abs(), (In((2, 3), "int", dtype="int64"),), lambda k: np.abs(k - 3),
         odt="int64", grad=False, dtypes=("float32",)),
    Case("sum-int", lambda m, k: k.sum(), (In((2, 3), "int", dtype="int64"),), lambda k: np.sum(k), odt="int64",
         grad=False, dtypes=("float32",)),
    Case("sum-dim-int", lambda m, k: k.sum(1), (In((2, 3), "int", dtype="int64"),), lambda k: np.sum(k, 1),
         odt="int64", grad=False, dtypes=("float32",)),
    Case("sum-bool", lambda m, b: b.sum(), (In((2, 3), "bool"),), lambda b: np.sum(b), odt="int64", grad=False,
         dtypes=("float32",)),
    Case("max-int", lambda m, k: k.max(), (In((2, 3), "int", dtype="int64"),), lambda k: np.max(k), odt="int64",
         grad=False, dtypes=("float32",)),
    Case("matmul-int", lambda m, k, j: k @ j, (In((2, 3), "int", dtype="int64"), In((3, 2), "int", dtype="int64")),
         lambda k, j: R["matmul"](k, j), odt="int64", grad=False, dtypes=("float32",)),
    Case("cat-int", lambda m, k, j: m.cat([k, j]), (In((2, 3), "int", dtype="int64"), In((1, 3), "int", dtype="int64")),
         lambda k, j: R["cat"]([k, j]), odt="int64", grad=False, dtypes=("float32",)),
    Case("where-int", lambda m, k, j: m.where(k > 2, k, j), (In((2, 3), "int", dtype="int64"),
                                                               In((3,), "int", dtype="int64")),
         lambda k, j: R["where"](k > 2, k, j), odt="int64", grad=False, dtypes=("float32",)),
    Case("gt", lambda m, x, y: x > y, (A23, A23), lambda x, y: x > y, odt="bool", grad=False),
    Case("lt-scalar", lambda m, x: x < 0.5, (A23,), lambda x: x < 0.5, odt="bool", grad=False),
    Case("ge-bcast", lambda m, x, y: x.ge(y), (A23, A3), lambda x, y: x >= y, odt="bool", grad=False),
    Case("le-fn", lambda m, x, y: m.le(x, y), (A3, A23), lambda x, y: x <= y, odt="bool", grad=False),
    Case("eq", lambda m, x: x == x * 1, (A23,), lambda x: x == x, odt="bool", grad=False),
    Case("eq-fn", lambda m, x, y: m.eq(x, y), (A23, A23), lambda x, y: x == y, odt="bool", grad=False),
    Case("ne", lambda m, x, y: x != y, (A23, A3), lambda x, y: x != y, odt="bool", grad=False),
    Case("gt-int", lambda m, k: k > 2, (In((2, 3), "int", dtype="int64"),), lambda k: k > 2, odt="bool",
         grad=False, dtypes=("float32",)),
    Case("argmax", lambda m, x: x.argmax(), (A234,), lambda x: np.asarray(np.argmax(x)), odt="int64", grad=False),
    Case("argmax-dim", lambda m, x: m.argmax(x, 1), (A234,), lambda x: np.argmax(x, 1), odt="int64", grad=False),
    Case("argmax-keep", lambda m, x: x.argmax(-1, keepdim=True), (A23,), lambda x: np.argmax(x, -1)[:, None],
         odt="int64", grad=False),
    Case("argmin-dim", lambda m, x: x.argmin(0), (A23,), lambda x: np.argmin(x, 0), odt="int64", grad=False),
    Case("argmin", lambda m, x: m.argmin(x), (A23,), lambda x: np.asarray(np.argmin(x)), odt="int64",
         grad=False),
    Case("max-dim-indices", lambda m, x: x.max(1).indices, (A234,), lambda x: R["max_dim"](x, 1)[1],
         odt="int64", grad=False),
    Case("max-dim-indices-keep", lambda m, x: m.max(x, 0, keepdim=True)[1], (A23,),
         lambda x: R["max_dim"](x, 0, True)[1], odt="int64", grad=False),
    Case("min-dim-indices", lambda m, x: x.min(-1)[1], (A234,), lambda x: R["min_dim"](x, -1)[1], odt="int64",
         grad=False),
]

ALL_CASES = ROW_CASES + PY_CASES + MIXED_CASES + EDGE_CASES + NOGRAD_CASES


def _params(cases, with_dtype=True, marker=None):
    out = []
    for c in cases:
        marks = []
        reason = getattr(c, marker) if marker else None
        if reason:
            marks.append(pytest.mark.xfail(reason=reason, strict=True))
        elif c.flaky_xfail:
            marks.append(pytest.mark.xfail(reason=c.flaky_xfail, strict=False))
        if with_dtype:
            out += [pytest.param(c, dt, id=f"{c.id}-{dt}", marks=marks) for dt in c.dtypes]
        else:
            out.append(pytest.param(c, id=c.id, marks=marks))
    return out


# ----- oracle 1: forward vs NumPy --------------------------------------------------------------------

@pytest.mark.parametrize("case,dt", _params([c for c in ALL_CASES if c.ref is not None]))
def test_forward_vs_numpy(case, dt):
    arrays = _arrays(case, dt)
    ts = _leaves(tg, case, arrays)
    y = _call(tg, case, ts)
    odt = case.odt or dt
    assert y.dtype is getattr(tg, odt), f"dtype {y.dtype}, expected torch.{odt}"
    ref = np.asarray(case.ref(*[a.astype(np.float64) if a.dtype.kind == "f" else a for a in arrays]))
    got = _np(y)
    assert got.shape == ref.shape
    if odt in DTYPES:
        np.testing.assert_allclose(got, ref, **_tol(odt))
    else:
        np.testing.assert_array_equal(got, ref.astype(got.dtype))
    if case.row is not None and case.grad:
        assert y.requires_grad
        assert _row_of(y) == case.row, f"{case.id} recorded row {_row_of(y)!r}, expected {case.row!r}"
    # the inputs were only read
    for t, a in zip(ts, arrays):
        np.testing.assert_array_equal(_np(t), a)


# ----- oracle 2: VJP vs float64 central differences --------------------------------------------------

def _fd_check(case, arrays, fn_tg):
    """<J^T u, v> from backward vs the central difference of <f(x), u> along v (all float64)."""
    rng = np.random.default_rng(zlib.crc32(f"{case.id}/fd".encode()))
    ts = _leaves(tg, case, arrays)
    y = fn_tg(ts)
    assert y.dtype is tg.float64
    u = rng.standard_normal(tuple(y.shape))
    _backward(y, tg.tensor(u, dtype=tg.float64))
    diff = [i for i, t in enumerate(ts) if t.requires_grad]
    assert diff, "no differentiable input"
    vs = {i: rng.standard_normal(arrays[i].shape) for i in diff}
    analytic = 0.0
    for i in diff:
        g = ts[i].grad
        if g is not None:
            assert tuple(g.shape) == arrays[i].shape
            analytic += float(np.sum(g.numpy() * vs[i]))

    def f(sign):
        xs = [a + sign * EPS * vs[i] if i in vs else a for i, a in enumerate(arrays)]
        with tg.no_grad():
            return float(np.sum(_np(fn_tg(_leaves(tg, case, xs, grad=False))) * u))
    numeric = (f(1.0) - f(-1.0)) / (2 * EPS)
    assert abs(analytic - numeric) <= FD_RTOL * max(abs(analytic), abs(numeric)) + 1e-7, \
        f"{case.id}: backward gives {analytic!r}, central differences {numeric!r}"


@pytest.mark.parametrize("case", _params([c for c in ALL_CASES if c.grad and c.fd and "float64" in c.dtypes],
                                         with_dtype=False, marker="fd_xfail"))
def test_vjp_vs_central_differences(case):
    arrays = _arrays(case, "float64", "fd")
    _fd_check(case, arrays, lambda ts: _call(tg, case, ts))


# ----- oracle 3: parity with PyTorch -----------------------------------------------------------------

def _both(case, dt, salt=""):
    torch = _torch()
    arrays = _arrays(case, dt, salt)
    out = {}
    for m in (tg, torch):
        ts = _leaves(m, case, arrays)
        out[m] = (ts, _call(m, case, ts))
    return arrays, out[tg], out[torch]


@pytest.mark.parametrize("case,dt", _params(ALL_CASES, marker="torch_xfail"))
def test_values_and_grads_match_torch(case, dt):
    torch = _torch()
    arrays, (ts, y), (tts, ty) = _both(case, dt)
    assert str(y.dtype) == str(ty.dtype)
    assert tuple(y.shape) == tuple(ty.shape)
    tol = _tol(str(ty.dtype).replace("torch.", "")) if ty.dtype.is_floating_point else None
    if tol:
        np.testing.assert_allclose(_np(y), _np(ty), **tol)
    else:
        np.testing.assert_array_equal(_np(y), _np(ty))
    assert y.requires_grad == ty.requires_grad
    if not ty.requires_grad:
        return
    u = np.random.default_rng(7).standard_normal(tuple(ty.shape))
    _backward(y, tg.tensor(u, dtype=y.dtype))
    ty.backward(torch.tensor(u, dtype=ty.dtype))
    for i, (t, tt) in enumerate(zip(ts, tts)):
        if tt.grad is None:
            assert t.grad is None, f"input {i}: torch has no grad, tapegrad has one"
            continue
        assert t.grad is not None, f"input {i}: no grad"
        assert str(t.grad.dtype) == str(tt.grad.dtype)
        # a float32 output makes every gradient float32-accurate (torch casts it back to float64)
        f32 = torch.float32 in (tt.dtype, ty.dtype)
        gt = dict(rtol=1e-4, atol=1e-5) if f32 else dict(rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(_np(t.grad), _np(tt.grad), **gt, err_msg=f"grad of input {i}")


@pytest.mark.parametrize("case", _params([c for c in ALL_CASES if c.grad], with_dtype=False,
                                         marker="name_xfail"))
def test_grad_fn_name_matches_torch(case):
    _torch()
    _, (ts, y), (tts, ty) = _both(case, case.dtypes[0])
    assert y.grad_fn.name() in (type(ty.grad_fn).__name__, ty.grad_fn.name())


# ----- kinks, ties and special values: the conventions at the points the oracles above avoid -------
# (no finite differences here: the derivative does not exist or is infinite; torch is the oracle)

_NAN_XFAIL = ("kernels/elementwise.py maximum_b/minimum_b: where one operand is NaN, torch passes grad to "
              "both (where(x == z, g/2, g).masked_fill_(x < z, 0)); the jitted rule gives the NaN side 0")

KINKS = [
    ("maximum-ties", lambda m, x, y: m.maximum(x, y), [1., 2., 3., -1.], [1., 0., 3., -1.]),
    ("minimum-ties", lambda m, x, y: m.minimum(x, y), [1., 2., 3., -1.], [1., 0., 3., -1.]),
    ("maximum-bcast-ties", lambda m, x, y: m.maximum(x, y), [[1., 2.], [3., 1.]], [1., 1.]),
    ("minimum-bcast-ties", lambda m, x, y: m.minimum(y, x), [[1., 2.], [3., 1.]], [1., 1.]),
    ("max-all-ties", lambda m, x, y: x.max() * y.sum(), [3., 1., 3., 2.], [1.]),
    ("min-all-ties", lambda m, x, y: m.min(x) * y.sum(), [[1., 1.], [1., 2.]], [2.]),
    ("max-dim-ties", lambda m, x, y: x.max(1).values * y, [[2., 2., 1.], [0., 5., 5.]], [1., 3.]),
    ("max-dim-ties-indices", lambda m, x, y: x.max(1).indices, [[2., 2., 1.], [0., 5., 5.]], [1.]),
    ("relu-0", lambda m, x, y: x.relu() * y, [0., -1., 2.], [1., 2., 3.]),
    ("abs-0", lambda m, x, y: x.abs() * y, [0., -1., 2.], [1., 2., 3.]),
    ("clamp-at-bounds", lambda m, x, y: x.clamp(-1., 1.) * y, [-1., 1., 0., 2.], [1., 2., 3., 4.]),
    ("clamp-min-kw-at-bound", lambda m, x, y: x.clamp(min=0.) * y, [0., 1., -1.], [1., 2., 3.]),
    ("clamp_min-at-bound", lambda m, x, y: m.clamp_min(x, 0.) * y, [0., 1., -1.], [1., 2., 3.]),
    ("clamp_max-at-bound", lambda m, x, y: m.clamp_max(x, 1.) * y, [1., 0., 2.], [1., 2., 3.]),
    ("clamp-lo>hi", lambda m, x, y: x.clamp(1., -1.) * y, [-2., 0., 2.], [1., 2., 3.]),
    ("pow-scalar-at-0", lambda m, x, y: (x ** 2 + x ** 0 + x ** 3.5) * y, [0., 1., 2.], [1., 1., 1.]),
    ("sqrt-pow0.5-at-0", lambda m, x, y: x.sqrt() + x ** 0.5 * y, [0., 4.], [1., 1.]),
    ("pow-tensor-base-0", lambda m, x, y: x ** y, [0., 0., 1., 2.], [2., 0., 0., 0.5]),
    ("pow-negative-base", lambda m, x, y: x ** y, [-2., -1.5], [2., 3.]),
    ("rpow-0-base", lambda m, x, y: 0.0 ** x * y, [0., 1., 2.], [1., 1., 1.]),
    ("log-0", lambda m, x, y: x.log() * y, [0., 1.], [1., 1.]),
    ("div-by-0", lambda m, x, y: x / y, [1., -1., 0.], [0., 0., 0.]),
    ("reciprocal-0", lambda m, x, y: x.reciprocal() * y, [0., -0.], [1., 1.]),
    ("sigmoid-tails", lambda m, x, y: x.sigmoid() * y, [-100., 100., -30., 30.], [1., 1., 1., 1.]),
    ("tanh-tails", lambda m, x, y: x.tanh() * y, [-30., 30.], [1., 1.]),
    ("exp-overflow", lambda m, x, y: x.exp() * y, [1000., -1000.], [1., 1.]),
    ("softmax-large", lambda m, x, y: x.softmax(0) * y, [1000., 1001., 1002.], [1., 2., 3.]),
    ("log_softmax-large", lambda m, x, y: x.log_softmax(-1) * y, [1000., 1001., -1000.], [1., 2., 3.]),
    ("where-nan-branch", lambda m, x, y: m.where(x > 0, x.sqrt(), y), [4., -1.], [0., 0.]),
    ("nan-propagates", lambda m, x, y: (x * y).sum() + (x - y).exp().sum(), [float("nan"), 1.], [1., 2.]),
    ("maximum-nan-bcast", lambda m, x, y: m.maximum(x, y), [[float("nan"), 1.], [3., float("nan")]], [1., 2.]),
    ("minimum-nan-bcast", lambda m, x, y: m.minimum(y, x), [[float("nan"), 1.], [3., float("nan")]], [1., 2.]),
    ("maximum-nan", lambda m, x, y: m.maximum(x, y), [float("nan"), 1.], [1., float("nan")]),
    ("minimum-nan", lambda m, x, y: m.minimum(x, y), [float("nan"), 1.], [1., float("nan")]),
]


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("label,fn,xv,yv", [
    pytest.param(*k.values, id=k.values[0], marks=k.marks) if hasattr(k, "marks") else pytest.param(*k, id=k[0])
    for k in KINKS])
def test_kinks_and_special_values_match_torch(label, fn, xv, yv, dt):
    torch = _torch()
    res = {}
    for m in (tg, torch):
        x = m.tensor(xv, dtype=getattr(m, dt), requires_grad=True)
        y = m.tensor(yv, dtype=getattr(m, dt), requires_grad=True)
        with np.errstate(all="ignore"):
            out = fn(m, x, y)
            if out.requires_grad:
                u = m.ones(out.shape, dtype=out.dtype)
                _backward(out, u) if m is tg else out.backward(u)
        res[m] = [_np(out)] + [None if t.grad is None else _np(t.grad) for t in (x, y)]
    tol = _tol(dt)
    for what, a, b in zip(("value", "grad x", "grad y"), res[tg], res[torch]):
        assert (a is None) == (b is None), what
        if a is not None:
            assert a.dtype == b.dtype, what
            np.testing.assert_allclose(a, b, **tol, err_msg=what)


# ----- in place, without grad: values vs NumPy (and torch) ------------------------------------------

INPLACE = [
    # id, fn(m, x, y) mutating x and returning it, NumPy reference on copies, y's shape
    ("add_", lambda m, x, y: x.add_(y), lambda x, y: x + y, (2, 3)),
    ("add_-alpha", lambda m, x, y: x.add_(y, alpha=2), lambda x, y: x + 2 * y, (2, 3)),
    ("add_-bcast", lambda m, x, y: x.add_(y), lambda x, y: x + y, (3,)),
    ("add_-scalar", lambda m, x, y: x.add_(2.5), lambda x, y: x + 2.5, (3,)),
    ("sub_", lambda m, x, y: x.sub_(y), lambda x, y: x - y, (2, 3)),
    ("sub_-scalar-alpha", lambda m, x, y: x.sub_(1.5, alpha=2), lambda x, y: x - 3.0, (3,)),
    ("mul_", lambda m, x, y: x.mul_(y), lambda x, y: x * y, (1, 3)),
    ("mul_-scalar", lambda m, x, y: x.mul_(-3), lambda x, y: x * -3, (3,)),
    ("div_", lambda m, x, y: x.div_(y), lambda x, y: x / y, (2, 3)),
    ("div_-scalar", lambda m, x, y: x.div_(4), lambda x, y: x / 4, (3,)),
    ("iadd", lambda m, x, y: _iadd(x, y), lambda x, y: x + y, (3,)),
    ("imul-scalar", lambda m, x, y: _imul(x, 0.5), lambda x, y: x * 0.5, (3,)),
    ("zero_", lambda m, x, y: x.zero_(), lambda x, y: np.zeros_like(x), (3,)),
    ("fill_", lambda m, x, y: x.fill_(1.5), lambda x, y: np.full_like(x, 1.5), (3,)),
    ("fill_-tensor", lambda m, x, y: x.fill_(y[0]), lambda x, y: np.full_like(x, y[0]), (3,)),
    ("copy_", lambda m, x, y: x.copy_(y), lambda x, y: R["copy_"](x, y), (2, 3)),
    ("copy_-bcast", lambda m, x, y: x.copy_(y), lambda x, y: R["copy_"](x, y), (3,)),
    ("copy_-int", lambda m, x, y: x.copy_(m.tensor([1, 2, 3])), lambda x, y: R["copy_"](x, np.array([1, 2, 3])),
     (3,)),
    ("setitem-int", lambda m, x, y: _setitem(x, 0, 5.0), lambda x, y: R["index_put"](x, 0, 5.0), (3,)),
    ("setitem-slice", lambda m, x, y: _setitem(x, (slice(None), 1), y[:2]),
     lambda x, y: R["index_put"](x, (slice(None), 1), y[:2]), (3,)),
    ("setitem-row-tensor", lambda m, x, y: _setitem(x, 1, y), lambda x, y: R["index_put"](x, 1, y), (3,)),
    ("setitem-mask", lambda m, x, y: _setitem(x, x > 0, 0.0), lambda x, y: R["index_put"](x, x > 0, 0.0), (3,)),
    ("setitem-int-arrays", lambda m, x, y: _setitem(x, (m.tensor([0, 1]), m.tensor([2, 0])), 7.0),
     lambda x, y: R["index_put"](x, ([0, 1], [2, 0]), 7.0), (3,)),
    ("setitem-ellipsis", lambda m, x, y: _setitem(x, ..., y), lambda x, y: R["index_put"](x, ..., y), (3,)),
    ("view-add_", lambda m, x, y: _ret(x, x[1].add_(y)), lambda x, y: R["index_put"](x, 1, x[1] + y), (3,)),
    ("t-mul_", lambda m, x, y: _ret(x, x.t().mul_(2)), lambda x, y: x * 2, (3,)),
    ("pending-then-add_", lambda m, x, y: (x * 2).add_(y), lambda x, y: x * 2 + y, (2, 3)),
    ("chain", lambda m, x, y: x.mul_(2).add_(y).sub_(1).div_(y), lambda x, y: (x * 2 + y - 1) / y, (2, 3)),
]


def _iadd(x, y):
    x += y
    return x


def _imul(x, v):
    x *= v
    return x


def _ret(x, _):
    return x


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("label,fn,ref,yshape", INPLACE, ids=[c[0] for c in INPLACE])
def test_inplace_without_grad(label, fn, ref, yshape, dt):
    rng = np.random.default_rng(zlib.crc32(label.encode()))
    xa = (rng.uniform(0.2, 2, (2, 3)) * rng.choice([-1, 1], (2, 3))).astype(dt)
    ya = rng.uniform(0.5, 2, yshape).astype(dt)
    expect = np.asarray(ref(xa.astype(np.float64), ya.astype(np.float64)))
    x, y = tg.tensor(xa), tg.tensor(ya)
    before = x.data_ptr()
    r = fn(tg, x, y)
    got = _np(r)
    assert r.dtype is getattr(tg, dt)
    np.testing.assert_allclose(got, expect, **_tol(dt))
    if label != "pending-then-add_":
        assert r is x and x.data_ptr() == before
        np.testing.assert_allclose(_np(x), expect, **_tol(dt))
    np.testing.assert_array_equal(_np(y), ya)       # the other operand is untouched
    try:
        import torch
    except ImportError:
        return
    tx, ty = torch.tensor(xa), torch.tensor(ya)
    np.testing.assert_allclose(got, fn(torch, tx, ty).numpy(), **_tol(dt))


@pytest.mark.parametrize("label,fn,expect", [
    ("int-add_", lambda m, k: k.add_(2), [[3, 4, 5], [6, 7, 8]]),
    ("int-add_-tensor", lambda m, k: k.add_(m.tensor([1, 0, -1])), [[2, 2, 2], [5, 5, 5]]),
    ("int-mul_", lambda m, k: k.mul_(3), [[3, 6, 9], [12, 15, 18]]),
    ("int-setitem", lambda m, k: _setitem(k, (1, 2), 0), [[1, 2, 3], [4, 5, 0]]),
    ("int-fill_", lambda m, k: k.fill_(7), [[7] * 3] * 2),
    ("int-zero_", lambda m, k: k.zero_(), [[0] * 3] * 2),
    ("int-copy_-float", lambda m, k: k.copy_(m.tensor([1.7, -2.2, 3.9])), [[1, -2, 3], [1, -2, 3]]),
])
def test_inplace_integer(label, fn, expect):
    k = tg.tensor([[1, 2, 3], [4, 5, 6]])
    r = fn(tg, k)
    assert r is k and k.dtype is tg.int64
    assert k.tolist() == expect


def test_inplace_int_with_float_raises_like_torch():
    k = tg.tensor([1, 2, 3])
    with pytest.raises(RuntimeError, match="result type Float can't be cast to the desired output type Long"):
        k.add_(1.5)


# ----- random graphs: tapegrad vs torch (and central differences) ------------------------------------

SHAPES = [(), (3,), (2, 3)]
UNARY_G = ["tanh", "sin", "sigmoid", "gauss"]          # gauss: exp(-x*x)
BINARY_G = ["add", "sub", "mul", "div1p"]              # div1p: a / (1 + b*b)


def _bshape(a, b):
    try:
        return tuple(np.broadcast_shapes(a, b))
    except ValueError:
        return None


def _mm_shape(a, b):
    if len(a) == 2 and len(b) == 1 and a[1] == b[0]:
        return (a[0],)
    if len(a) == 1 and len(b) == 1 and a == b:
        return ()
    if len(a) == 1 and len(b) == 2 and a[0] == b[0]:
        return (b[1],)
    if len(a) == 2 and len(b) == 2 and a[1] == b[0]:
        return (a[0], b[1])
    return None


@st.composite
def graphs(draw):
    n_leaves = draw(st.integers(1, 3))
    shapes = [draw(st.sampled_from(SHAPES)) for _ in range(n_leaves)]
    steps = []
    for _ in range(draw(st.integers(3, 8))):
        k = len(shapes)
        i = draw(st.integers(0, k - 1))
        kind = draw(st.sampled_from(["unary", "binary", "binary", "const", "reduce", "matmul"]))
        step = None
        if kind == "unary":
            step = ("unary", draw(st.sampled_from(UNARY_G)), i)
            shape = shapes[i]
        elif kind == "binary":
            ok = [j for j in range(k) if _bshape(shapes[i], shapes[j]) is not None]
            j = draw(st.sampled_from(ok))     # j == i is allowed: x*x, x - x
            step = ("binary", draw(st.sampled_from(BINARY_G)), i, j)
            shape = _bshape(shapes[i], shapes[j])
        elif kind == "const":
            cs = draw(st.sampled_from([s for s in [(), (3,)] if _bshape(shapes[i], s) is not None] or [()]))
            step = ("const", draw(st.sampled_from(["add", "mul"])), i, cs, draw(st.booleans()))
            shape = _bshape(shapes[i], cs)
        elif kind == "reduce":
            if shapes[i] and draw(st.booleans()):
                d = draw(st.integers(-len(shapes[i]), len(shapes[i]) - 1))
                keep = draw(st.booleans())
                step = ("sum_dim", i, d, keep)
                s = list(shapes[i])
                if keep:
                    s[d] = 1
                else:
                    del s[d]
                shape = tuple(s)
            else:
                step = ("mean", i)
                shape = ()
        else:
            ok = [(j, tr) for j in range(k) for tr in (False, True)
                  if _mm_shape(shapes[i], shapes[j][::-1] if tr else shapes[j]) is not None]
            if ok:
                j, tr = draw(st.sampled_from(ok))
                step = ("matmul", i, j, tr)
                shape = _mm_shape(shapes[i], shapes[j][::-1] if tr else shapes[j])
            else:
                step = ("unary", "tanh", i)
                shape = shapes[i]
        read = draw(st.sampled_from([None, None, "item", "repr", "sum-item"]))
        steps.append((step, read))
        shapes.append(shape)
    return n_leaves, shapes, steps


def _run_graph(m, leaves, shapes, steps, consts, us):
    """Interpret a drawn graph with module m; returns the loss."""
    nodes = list(leaves)
    used = [False] * (len(leaves) + len(steps))
    for step, read in steps:
        kind = step[0]
        if kind == "unary":
            _, op, i = step
            x = nodes[i]
            y = (-x * x).exp() if op == "gauss" else getattr(m, op)(x)
            used[i] = True
        elif kind == "binary":
            _, op, i, j = step
            a, b = nodes[i], nodes[j]
            y = {"add": lambda: a + b, "sub": lambda: a - b, "mul": lambda: a * b,
                 "div1p": lambda: a / (1 + b * b)}[op]()
            used[i] = used[j] = True
        elif kind == "const":
            _, op, i, cs, left = step
            c = m.tensor(consts[cs], dtype=nodes[i].dtype)
            x = nodes[i]
            y = (c + x if left else x + c) if op == "add" else (c * x if left else x * c)
            used[i] = True
        elif kind == "sum_dim":
            _, i, d, keep = step
            y = nodes[i].sum(d, keepdim=keep)
            used[i] = True
        elif kind == "mean":
            y = nodes[step[1]].mean()
            used[step[1]] = True
        else:
            _, i, j, tr = step
            b = nodes[j]
            y = nodes[i] @ (b.t() if tr else b)
            used[i] = used[j] = True
        if read == "item" and y.numel() == 1:
            y.item()
        elif read == "repr":
            repr(y)
        elif read == "sum-item":
            float(y.detach().sum())
        nodes.append(y)
    # every node that feeds nothing contributes, so several branches meet in the loss
    sinks = [k for k in range(len(leaves), len(nodes)) if not used[k]]
    loss = None
    for k in sinks:
        term = (nodes[k] * m.tensor(us[k], dtype=nodes[k].dtype)).sum()
        loss = term if loss is None else loss + term
    return loss


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(g=graphs(), seed=st.integers(0, 2 ** 16), dtype=st.sampled_from(DTYPES))
def test_random_graphs_match_torch(g, seed, dtype):
    torch = _torch()
    n_leaves, shapes, steps = g
    rng = np.random.default_rng(seed)
    arrays = [rng.uniform(-1.5, 1.5, shapes[i]).astype(dtype) for i in range(n_leaves)]
    consts = {(): rng.uniform(-1, 1, ()), (3,): rng.uniform(-1, 1, (3,))}
    us = {k: rng.standard_normal(s) for k, s in enumerate(shapes)}
    grads = {}
    for m in (tg, torch):
        leaves = [m.tensor(a, requires_grad=True) for a in arrays]
        loss = _run_graph(m, leaves, shapes, steps, consts, us)
        _backward(loss) if m is tg else loss.backward()
        grads[m] = (float(loss.detach().item()), [None if t.grad is None else _np(t.grad) for t in leaves])
    (lv, gs), (tlv, tgs) = grads[tg], grads[torch]
    tol = dict(rtol=2e-4, atol=2e-5) if dtype == "float32" else dict(rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(lv, tlv, **tol)
    for i, (a, b) in enumerate(zip(gs, tgs)):
        assert (a is None) == (b is None), f"leaf {i}: grad None-ness differs"
        if a is not None:
            np.testing.assert_allclose(a, b, **tol, err_msg=f"leaf {i}")
    if dtype == "float64" and seed % 4 == 0:
        # a quarter of the float64 graphs also against central differences
        v = [rng.standard_normal(a.shape) for a in arrays]

        def f(sign):
            with tg.no_grad():
                leaves = [tg.tensor(a + sign * EPS * vi, dtype=tg.float64) for a, vi in zip(arrays, v)]
                return _run_graph(tg, leaves, shapes, steps, consts, us).item()
        numeric = (f(1.0) - f(-1.0)) / (2 * EPS)
        analytic = float(sum(np.sum(gi * vi) for gi, vi in zip(gs, v) if gi is not None))
        assert abs(analytic - numeric) <= FD_RTOL * max(abs(analytic), abs(numeric)) + 1e-7


# ----- engine bugs found by these tests (fixed in the core; kept as regression tests) --------------

def test_empty_tensor_when_no_slab_is_current():
    a = tg.ones(3)
    a.numpy()                        # hands the current slab to NumPy: Arena.retire_current()
    e = tg.zeros(0, 3, requires_grad=True)
    assert e._base is not None
    y = e.exp().sum()
    _backward(y)
    assert y.item() == 0.0 and e.grad.shape == (0, 3)


@pytest.mark.parametrize("value", [np.float64(1.5), np.int32(3), [np.float64(1.5), np.float64(2.0)]],
                         ids=["np.float64", "np.int32", "list-of-np.float64"])
def test_tensor_of_numpy_scalar_keeps_its_dtype(value):
    torch = _torch()
    assert str(tg.tensor(value).dtype) == str(torch.tensor(value).dtype)


_KEEP_TRACEBACK = """
import tapegrad as tg
x = tg.tensor([1., 2., 3.], requires_grad=True)
y = (x * x).sum()
y.backward()
try:
    y.backward()                    # PyTorch's "backward through the graph a second time" error
except RuntimeError as e:
    saved = e                       # a notebook (sys.last_traceback) or pytest keeps the traceback
for i in range(10000):              # the tape has to grow
    z = x * 2
print("ok")
"""

_VJP_ERROR = """
import sys
import tapegrad as tg
from tapegrad.ops import pyops as P
T = sys.modules["tapegrad.tensor"]
from tapegrad.tape.tape import TAPE

def failing_vjp(x):                 # an escape record whose VJP raises (as dot's did: 0-d grad)
    out = T._empty(x._shape, x._dtype)
    def bwd(g, o, xv):
        raise ValueError("VJP failed")
    return P.record("clone", out, [x], lambda xv: xv, bwd)

x = tg.tensor([1., 2.], requires_grad=True)
try:
    failing_vjp(x).sum().backward()
except ValueError as e:
    saved = e                       # keeps Tape._py_backward's frame and its `ls` (a view of leaf_state)
keep = []
for i in range(2000):
    try:
        a = tg.tensor([1.0, 2.0], requires_grad=True)
        keep.append(a)
        (a * a).sum().backward()    # new_leaf_slot: leaf_addr grows, leaf_state.append raises BufferError
    except BufferError:
        pass
del saved
for i in range(200):                # slots >= len(leaf_state): the jitted backward writes out of bounds
    b = tg.tensor([1.0, 2.0, 3.0], requires_grad=True)
    keep.append(b)
    (b * b).sum().backward()
assert len(TAPE.leaf_addr) == len(TAPE.leaf_state), (len(TAPE.leaf_addr), len(TAPE.leaf_state))
print("ok")
"""


@pytest.mark.parametrize("script", [_KEEP_TRACEBACK, _VJP_ERROR], ids=["second-backward", "vjp-error"])
def test_error_in_backward_leaves_the_tape_usable(script):
    _run_script(script)


def _run_script(script):
    """Run a repro in a fresh interpreter: these bugs leave the process's tape broken, or crash it."""
    import os
    import subprocess
    import sys
    root = os.path.join(os.path.dirname(__file__), "..")
    env = dict(os.environ, PYTHONPATH=os.path.abspath(root))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=root,
                       env=env)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-2000:])


_BIG_LEAF = """
import tapegrad as tg
from tapegrad.tape.tape import TAPE

def step(dt, binary):
    x = tg.ones((300, 300), dtype=dt, requires_grad=True)   # > SLAB_BYTES / 4: an own, pooled buffer
    if binary:
        z = tg.full((300, 300), 3.0, dtype=dt, requires_grad=True)
        y = x * z
    else:
        y = -x
    assert y._rec == TAPE.base + TAPE.n - 1, "y's record is not the one just appended"
    assert y.grad_fn.name() == ("MulBackward0" if binary else "NegBackward0")
    (y * 1.0).sum().backward()
    assert float(x.grad.sum()) == (270000.0 if binary else -90000.0)

step(tg.float32, False)
step(tg.float64, False)
step(tg.float32, True)              # x's slot allocation reuses a pooled buffer: Arena._big -> Tape.sweep
print("ok")
"""


def test_big_leaf_first_use_keeps_its_record():
    _run_script(_BIG_LEAF)
