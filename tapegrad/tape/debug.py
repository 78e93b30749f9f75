"""TAPEGRAD_DEBUG=1: check every address of a tape range against live buffers
before a jitted call (DESIGN invariant 4: raw addresses skip bounds checks)."""
from ..storage import ARENA, base_address, byte_span


def _live_spans(tape, extra=()):
    bufs = [ARENA.slab] + [e[0] for e in tape.keep.values()] + [e[0] for e in tape.big.values()]
    bufs += [b for b in tape.leaf_buf if b is not None] + list(extra)
    spans = []
    for b in bufs:
        if b is None:
            continue
        lo = base_address(b)
        spans.append((lo, lo + b.nbytes))
    spans.sort()
    return spans


def _inside(spans, addr, nbytes):
    for lo, hi in spans:
        if lo <= addr and addr + nbytes <= hi:
            return True
    return False


def check_addresses(tape, T, lo, hi, gaddr=None, extra=()):
    """Raise AssertionError naming the first record whose operand lies outside every live buffer."""
    from ..ops.table import BY_OPCODE, PY
    spans = _live_spans(tape, extra + ((tape._scratch,) if getattr(tape, "_scratch", None) is not None else ()))
    for i in range(lo, hi):
        code, n = int(T[i, 0]), int(T[i, 1])
        op = code >> 5
        if op == PY and int(T[i, 4]):
            _check_native(tape, spans, i, int(T[i, 2]), int(T[i, 4]), code, gaddr)
            continue
        if op == PY or op == 0:
            continue
        isz = 4 if (code & 3) == 0 else 8
        spec = BY_OPCODE[op]
        bc = (code >> 2) & 3
        checks = [("out", int(T[i, 2]), n)]
        if spec.kind == "reduce":
            checks.append(("a", int(T[i, 3]), int(T[i, 4])))
        else:
            checks.append(("a", int(T[i, 3]), 1 if bc & 1 else n))
            if spec.kind == "binary":
                checks.append(("b", int(T[i, 4]), 1 if bc & 2 else n))
        if gaddr is not None and gaddr[i]:
            checks.append(("grad", int(gaddr[i]), n))
        for what, addr, cnt in checks:
            if cnt == 0:
                continue   # an empty operand reads nothing
            if not _inside(spans, addr, cnt * isz):
                raise AssertionError(f"TAPEGRAD_DEBUG: record %{i + tape.base} ({spec.name}) operand {what} at "
                                     f"{addr:#x} ({cnt} x {isz} bytes) is outside every live buffer")
    return True


def _check_native(tape, spans, i, out, d, code, gaddr):
    """A native escape record's operands (its descriptor in ``edges``, kernels/gen_cpu.py)."""
    E = tape.edges
    kind = E[d]
    isz = 4 if (code & 3) == 0 else 8
    if kind == 3:
        N = E[d + 2]
        checks = [("out", out, 1), ("x", E[d + 3], N), ("t", E[d + 4], N)]
    elif kind == 4:
        checks = [("out", out, E[d + 2])]
    elif kind == 5:
        N, nd = E[d + 2], E[d + 6]
        shape = E[d + 7:d + 7 + nd]
        checks = [("out", out, N), ("x", E[d + 3], byte_span(shape, E[d + 7 + nd:d + 7 + 2 * nd], 1)),
                  ("y", E[d + 4], byte_span(shape, E[d + 7 + 2 * nd:d + 7 + 3 * nd], 1))]
    elif kind == 6:
        RC = E[d + 2] * E[d + 3]
        checks = [("out", out, RC), ("x", E[d + 4], RC)]
    elif kind == 7:
        N = E[d + 2]
        checks = [("out", out, N if E[d + 1] == 0 else 1), ("x", E[d + 4], N * E[d + 3]),
                  ("targets", E[d + 5], N * 8 // isz)]     # (int64: in elements of the float dtype)
    else:
        m, k, n = E[d + 2], E[d + 3], E[d + 4]
        bshape = (n, k) if kind == 1 else (k, n)
        checks = [("out", out, m * n), ("a", E[d + 5], byte_span((m, k), (E[d + 6], E[d + 7]), 1)),
                  ("b", E[d + 8], byte_span(bshape, (E[d + 9], E[d + 10]), 1))]   # (elements: itemsize 1)
        if kind == 1:
            checks.append(("bias", E[d + 11], byte_span((n,), (E[d + 12],), 1)))
    if gaddr is not None and gaddr[i]:
        checks.append(("grad", int(gaddr[i]), checks[0][2]))
    spans = sorted(spans + _held(tape.py.get(i + tape.base)))
    for what, addr, cnt in checks:
        if not _inside(spans, addr, cnt * isz):
            raise AssertionError(f"TAPEGRAD_DEBUG: record %{i + tape.base} (native {kind}) operand {what} at "
                                 f"{addr:#x} ({cnt} x {isz} bytes) is outside every live buffer")


def _held(rec):
    """Byte spans of the NumPy arrays an escape record's forward reads and writes (its inputs
    and output: they may lie outside the arena, as from_numpy's do, and the record keeps them)."""
    import numpy as np
    try:
        from numpy.lib.array_utils import byte_bounds
    except ImportError:       # NumPy < 2
        byte_bounds = np.byte_bounds
    out = []
    if rec is None:
        return out
    arrays = rec.held_arrays()
    for a in arrays:
        if isinstance(a, np.ndarray):
            out.append(byte_bounds(a))
    return out
