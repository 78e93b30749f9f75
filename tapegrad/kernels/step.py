"""A captured step's jitted work in one call (capture.py's Note [one call a step]).

``run_step`` does, in one jitted call, what a replayed step would otherwise do in
several Python-driven ones: copy the arguments into the program's input buffers, run the
forward rows, seed and replay the planned backward, and run the optimizer's update. It
calls the same kernels the Python path calls (``replay_cpu.forward_*``/``backward_*``,
``optim.*_step``), so the arithmetic, and so every bit of the result, is the same.

It handles only what the program's checks at capture time allow (capture.py's
``_one_call``): rows that are jitted or native records, none of them a large elementwise
run, with every op function compiled. Anything else it meets is a bug in those checks,
and it says so (a status below -1) before any later phase runs.
"""
import numpy as np
from numba import carray, njit

from ..config import NJIT, NJIT_INNER
from . import optim as K
from . import replay_cpu as R
from .ptr import f32p, f64p, i8p, i64p, u8p

#: the optimizer kernels run_step can call, by the number it takes
KERNELS = ("", "sgd_step", "adam_step", "rmsprop_step")


@njit(**NJIT_INNER)
def _copies(addr, k):  # pragma: no cover
    """The k copies of the table at addr, rows of (destination, source, bytes)."""
    CP = carray(i64p(addr), (k, 3))
    for r in range(k):
        dst, src, nbytes = CP[r, 0], CP[r, 1], CP[r, 2]
        w = nbytes >> 3
        for j in range(w):
            i64p(dst)[j] = i64p(src)[j]
        for j in range(w << 3, nbytes):
            u8p(dst)[j] = u8p(src)[j]


#: the slots of run_step's argument vector: where each array is (address) and its length
(T_ADDR, T_ROWS, T_COLS, E_ADDR, E_LEN, FT_ADDR, FT_LEN, LA, LS, LN, NLEAF, BASE, CP_ADDR, NCP, LO, HI, BHI,
 G_ADDR, G_LEN, SC_ADDR, SC_LEN, RS_ADDR, NRS, S_ADDR, S_LEN, KIND, P_ADDR, P_ROWS, H_ADDR, H_ROWS, H_COLS,
 U_ADDR, U_LEN, CLEAN, DIRTY, OC_ADDR, NOC, NSLOT) = range(38)


@njit(**NJIT)
def run_step(A, f64s, sgd, adam, rmsprop, packs):  # pragma: no cover
    """One captured step's kernels; A (int64, slots above) says where every array is, because
    each array argument costs a jitted call ~0.1 us to unbox (20 of them were half this call).
    Copies (CP: k rows of destination, source, bytes) first; then tape rows LO..HI-1 forward;
    then, when BHI >= 0, the planned backward (gradient addresses G into the scratch SC, which is
    zeroed) from rows <= BHI, seeded with RS (k rows of: row, elements, float64?) and the float64
    values S one after the other; then optimizer kernel KERNELS[KIND] over (P, la, ls, H, upd);
    last, when every phase ran, the copies OC (rows as CP's: the step's outputs into the fresh
    tensors a replay returns; NOC 0 when Python copies them, capture.py's _fresh).
    CLEAN: the plan's buffers are shared (Note [shared gradient scratch] in kernels/lifetime.py):
    the backward zeroes each one after use, so SC is zeroed only when DIRTY (a backward that
    stopped before its end, or the first one: DIRTY starts at 1).
    Returns (status, done, new): status -1 when every phase ran; below -1, -(row + 2) of the
    row a phase could not run (nothing after that phase ran); 1: KIND's flag is None (the
    optimizer did not run); (done, new) the kernel's.
    f64s, sgd, adam, rmsprop, packs: None, or True when the program has float64 rows / runs that
    optimizer / has a permuted view (forward_*'s packs). Numba prunes a branch on an argument
    that is None before typing, so the kernels of
    a dtype or an optimizer the program does not use are not compiled into this entry point (on
    a cold cache: ~7.5 s for all of them, bench/results note)."""
    T = carray(i64p(A[T_ADDR]), (A[T_ROWS], A[T_COLS]))
    F = carray(f64p(A[T_ADDR]), (A[T_ROWS], A[T_COLS]))
    E = carray(i64p(A[E_ADDR]), A[E_LEN])
    FT = carray(i64p(A[FT_ADDR]), A[FT_LEN])
    la = carray(i64p(A[LA]), A[NLEAF])
    ls = carray(i8p(A[LS]), A[NLEAF])
    ln = carray(i64p(A[LN]), A[NLEAF])
    base = A[BASE]
    _copies(A[CP_ADDR], A[NCP])
    r, hi = A[LO], A[HI]
    while r < hi:
        f64 = (T[r, 0] & 3) == 1
        if f64s is None:
            i = R.forward_f32(T, F, E, FT, r, hi, packs)
        else:
            i = R.forward_f64(T, F, E, FT, r, hi, packs) if f64 else R.forward_f32(T, F, E, FT, r, hi, packs)
        if i == -1:
            break
        if i < -1 or f64s is None or ((T[i, 0] & 3) == 1) == f64:
            return (-(i + 2) if i >= 0 else i), 0, 0     # an escape record or a tile run: not ours
        r = i
    if A[BHI] >= 0:
        gaddr = carray(i64p(A[G_ADDR]), A[G_LEN])
        sc = carray(u8p(A[SC_ADDR]), A[SC_LEN])
        if A[CLEAN] == 0 or A[DIRTY] != 0:
            sc[:] = 0
        A[DIRTY] = 1
        RS = carray(i64p(A[RS_ADDR]), (A[NRS], 3))
        S = carray(f64p(A[S_ADDR]), A[S_LEN])
        o = 0
        for j in range(RS.shape[0]):
            g = gaddr[RS[j, 0]]
            if RS[j, 2]:
                for q in range(RS[j, 1]):
                    f64p(g)[q] += S[o + q]
            else:
                for q in range(RS[j, 1]):
                    f32p(g)[q] += np.float32(S[o + q])
            o += RS[j, 1]
        r = A[BHI]
        while r >= 0:
            f64 = (T[r, 0] & 3) == 1
            if f64s is None:
                i = R.backward_f32(T, F, E, FT, gaddr, la, ls, ln, base, r, 0, A[CLEAN])
            elif f64:
                i = R.backward_f64(T, F, E, FT, gaddr, la, ls, ln, base, r, 0, A[CLEAN])
            else:
                i = R.backward_f32(T, F, E, FT, gaddr, la, ls, ln, base, r, 0, A[CLEAN])
            if i == -1:
                break
            if i < -1 or f64s is None or ((T[i, 0] & 3) == 1) == f64:
                return (-(i + 2) if i >= 0 else i), 0, 0
            r = i
        A[DIRTY] = 0
    kind = A[KIND]
    if kind == 0:
        _copies(A[OC_ADDR], A[NOC])
        return -1, 0, 0
    P = carray(i64p(A[P_ADDR]), (A[P_ROWS], K.NCOL))
    P64 = np.bool_(True)    # (not None: the kernels' float64 branch compiled in; not literal True)
    H = carray(f64p(A[H_ADDR]), (A[H_ROWS], A[H_COLS]))
    upd = carray(i8p(A[U_ADDR]), A[U_LEN])
    if kind == 1 and sgd is not None:
        done, new = K.sgd_step(P, la, ls, H, upd, P64)
    elif kind == 2 and adam is not None:
        done, new = K.adam_step(P, la, ls, H, upd, P64)
    elif kind == 3 and rmsprop is not None:
        done, new = K.rmsprop_step(P, la, ls, H, upd, P64)
    else:
        return 1, 0, 0      # an optimizer this entry was not compiled for
    _copies(A[OC_ADDR], A[NOC])
    return -1, done, new


def entry_point(dispatcher, args):
    """The compiled function `dispatcher` runs for `args`, called without the dispatcher (which
    types every argument at each call: run_step with its six, 0.39 us against 0.17, session 32),
    or the dispatcher itself where Numba has no overload for them yet (compiled at its first
    call) or does not expose one."""
    try:
        sig = tuple(dispatcher.typeof_pyval(a) for a in args)
        return dispatcher.overloads[sig].entry_point
    except (AttributeError, KeyError, TypeError):
        return dispatcher
