"""The tape as a printable program (STYLE habit 5), one line per record:

    %4:f32[2] = mul %2 %3          # MulBackward0

Operands: ``%i`` a record, ``x0``/``w3``... a leaf (its gradient slot, or the
leaf's ``_name`` when it has one), ``c0``... a constant (a tensor that does not
require grad). Jitted rows store only element counts, so shapes are worked out
from the rows: a unary row keeps its input's shape, a binary row takes the
non-broadcast input's, a reduction gives ``()``; escape rows carry theirs.
"""
import re
import struct

from ..ops.table import BY_OPCODE, PY
from .tape import ROW, TAPE

_DT = {0: "f32", 1: "f64", 2: "i64", 3: "bool"}


def _fmt_c(c):
    if c != c or c in (float("inf"), float("-inf")):
        return repr(float(c))
    return repr(float(c)) if c != int(c) or abs(c) >= 1e16 else f"{c:.1f}"


def rows(lo=None, hi=None):
    """Decoded rows (global index, code, n, out, a, b, pa, pb, alive, c) of the tape."""
    tape = TAPE
    lo = tape.base if lo is None else max(lo, tape.base)
    hi = tape.next_index if hi is None else min(hi, tape.next_index)
    for g in range(lo, hi):
        yield (g,) + struct.unpack_from("<8qd", tape.buf, (g - tape.base) * ROW)


def lines(lo=None, hi=None, names=None):
    """Text lines of the records lo..hi-1 (global indices)."""
    tape = TAPE
    names = names or {}
    shape_of, out_at, consts = {}, {}, {}
    out = []

    def leaf(p):
        s = -p - 2
        owner = tape.leaf_owner[s] if s < len(tape.leaf_owner) else None
        t = owner() if owner is not None else None
        nm = names.get(id(t)) if t is not None else None
        nm = nm or (t._name if t is not None and t._name else f"leaf{s}")
        return nm, (t.shape if t is not None else None)

    def operand(p, addr, n):
        if p >= 0:
            return f"%{p}", shape_of.get(p, (n,))
        if p <= -2:
            nm, sh = leaf(p)
            return nm, tuple(sh) if sh is not None else (n,)
        if addr in out_at:                      # a no-grad record's output
            r = out_at[addr]
            return f"%{r}", shape_of.get(r, (n,))
        if addr not in consts:
            consts[addr] = f"c{len(consts)}"
        return consts[addr], (n,)

    for g, code, n, o, a, b, pa, pb, alive, c in rows(lo, hi):
        op = code >> 5
        dt = _DT.get(code & 3, "?")
        if op == PY:
            rec = tape.py.get(g)
            spec = rec.spec if rec is not None else None
            e = a
            prods = list(tape.edges[e + 1:e + 1 + tape.edges[e]])
            args, shape = [], (rec.out[0] if rec is not None else (n,))
            for j, p in enumerate(prods):
                sh = rec.ins[j][0] if rec is not None else None
                if p >= 0:
                    args.append(f"%{p}")
                elif p <= -2:
                    args.append(leaf(p)[0])
                else:
                    args.append("·")           # an input that needs no gradient
            mnem = spec.mnemonic if spec is not None else "py"
            gname = spec.grad_fn if spec is not None else ""
        else:
            spec = BY_OPCODE[op]
            mnem, gname = spec.mnemonic, spec.grad_fn
            bc = (code >> 2) & 3
            sa_name, sa = operand(pa, a, 1 if bc & 1 else n)
            args = [sa_name]
            if spec.kind == "binary":
                sb_name, sb = operand(pb, b, 1 if bc & 2 else n)
                args.append(sb_name)
                shape = sb if bc == 1 else sa
                if spec.name in ("add", "sub") and c != 1.0:
                    args.append(f"alpha={_fmt_c(c)}")
            elif spec.kind == "reduce":
                shape = ()
            else:
                shape = sa
                if spec.name in ("pow_scalar", "rpow_scalar", "add_scalar", "sub_scalar", "rsub_scalar",
                                 "mul_scalar", "div_scalar", "clamp_min", "clamp_max"):
                    args.append(_fmt_c(c))
        shape_of[g] = tuple(shape)
        out_at[o] = g
        needs_grad = any(p != -1 for p in (prods if op == PY else (pa, pb)))
        flag = "" if needs_grad else "  (no grad)"
        if (code >> 4) & 1:
            flag += "  [freed]"
        lhs = f"%{g}:{dt}[{','.join(str(d) for d in shape)}]"
        out.append(f"{lhs} = {mnem} {' '.join(args)}".ljust(40) + f"# {gname}{flag}".rstrip())
    return out


class TapeView:
    """``print(tapegrad.tape())`` lists the live tape; ``tape(t)`` only t's history."""

    def __init__(self, root=None, names=None):
        self.root = root
        self.names = names

    def __str__(self):
        if self.root is not None and self.root._rec >= 0:
            keep = _history(self.root._rec)
            ls = [ln for ln in lines(min(keep), self.root._rec + 1, self.names)
                  if int(ln[1:ln.index(":")]) in keep]
            # a history is numbered from %0 (the global index is Node.record_index)
            order = {g: i for i, g in enumerate(sorted(keep))}
            ls = [re.sub(r"%(\d+)", lambda m: f"%{order.get(int(m.group(1)), m.group(1))}", ln) for ln in ls]
            ls = [_pad(ln) for ln in ls]
        else:
            ls = lines(names=self.names)
        return "\n".join(ls) if ls else "(empty tape)"

    __repr__ = __str__

    def _repr_html_(self):
        import html
        return "<pre>" + html.escape(str(self)) + "</pre>"


def _pad(line):
    code, _, comment = line.partition("# ")
    return (code.rstrip().ljust(39) + " # " + comment) if comment else line


def _history(r):
    """Global indices of the records r depends on (r included)."""
    seen, stack = set(), [r]
    tape = TAPE
    while stack:
        g = stack.pop()
        if g in seen or g < tape.base:
            continue
        seen.add(g)
        code, n, o, a, b, pa, pb = struct.unpack_from("<7q", tape.buf, (g - tape.base) * ROW)
        if code >> 5 == PY:
            prods = tape.edges[a + 1:a + 1 + tape.edges[a]]
        else:
            prods = (pa, pb)
        stack.extend(p for p in prods if p >= 0)
    return seen
