"""The op functions' table (gen_cpu.py's Note [op functions]).

``FT[op * 4 + dtype * 2 + direction]`` is the address of the compiled forward (direction 0)
or backward (1) function of elementwise op `op` for float32 (dtype 0) or float64 (1), or 0
while it has not been compiled in this process; op 1 (the escape records' opcode) holds the
native records' entry points, which call their kind's functions at FT[NAT + 4 kind + 2 dtype +
direction], compiled when the first record of that kind is made (Note [native kinds] in
kernels/gen_cpu.py). The replay returns ``-(r + 2)`` when it meets
record r whose function is 0; the tape then calls ``ensure_rows`` and resumes there. Each
function is a ``numba.cfunc`` cached on disk (config.CFUNC): compiled once per machine, loaded from the
cache after that (a few ms). Only the ops a program uses are compiled.
"""
import os

import numba
import numpy as np
from numba import types

from .. import config
from . import replay_cpu as R

FT = np.zeros(256, np.int64)
_KEEP = {}          # table index -> the cfunc object (its code lives as long as it does)
_SIG = (types.void(*([types.int64] * 6 + [types.float64])),
        types.void(*([types.int64] * 11 + [types.float64])))
#: the native records' backward and the products (Note [gemm by address] in kernels/gen_cpu.py)
_SIG12 = types.void(*([types.int64] * 12 + [types.float64]))


_NATIVE = ("_nat_fwd_f32", "_nat_bwd_f32", "_nat_fwd_f64", "_nat_bwd_f64")
#: a native record's kind -> the name of its functions (Note [native kinds] in kernels/gen_cpu.py)
_KINDS = {1: "prod", 2: "prod", 3: "mse", 4: "view", 5: "bcast", 6: "logsm", 7: "nll"}
#: READY[2 * kind + dtype]: that kind's functions are in the table (kind 0: the parallel products)
READY = bytearray(16)
_BY_NAME = {}       # cfunc by function name (kinds 1 and 2 share theirs)


def _compile(j, name, sig):
    if not FT[j]:
        fn = _BY_NAME.get(name)
        if fn is None:
            fn = _BY_NAME[name] = numba.cfunc(sig, **config.CFUNC)(getattr(R, name))
        _KEEP[j] = fn
        FT[j] = fn.address


def ensure_native(kind, dt):
    """Compile (or load) the functions of native records of `kind` for dtype dt (0 float32, 1
    float64): called when such a record is made, before any replay can meet it (the native
    records' entry points, ensure(1, dt), call them by address: Note [native kinds])."""
    fam, suf = _KINDS[kind], ("f32", "f64")[dt]
    _compile(R.NAT + kind * 4 + dt * 2, f"_natf_{fam}_{suf}", _SIG[0])
    _compile(R.NAT + kind * 4 + dt * 2 + 1, f"_natb_{fam}_{suf}", _SIG12)
    READY[2 * kind + dt] = 1


def ensure_products(dt, par):
    """The products' op functions for dtype dt, and with `par` the parallel ones (FT[PGEMM + dt]:
    Note [parallel gemm] in kernels/smallgemm.py), which a product above config.SMALL_GEMM_MAX
    may call; READY[dt] (kind 0) says they were asked for, so that ensure(1, dt) compiles them
    again into a table that was emptied. Compiled only when asked: a cold first step of small
    products does not compile the parallel loops (5.0 s against 8.1 s, session 31)."""
    _compile(R.GEMM + dt, ("_gemm_f32", "_gemm_f64")[dt], _SIG12)
    if par:
        # cached code that calls a parallel loop from a function that is not one links to the
        # layer's symbols: loaded before the layer is up, LLVM aborts the process ("Symbol not
        # found: allocate_sched"). config starts omp's threads at import; any other layer
        # (tests ask for these functions under workqueue) starts here. Idempotent, cheap.
        from numba.np.ufunc.parallel import _launch_threads
        _launch_threads()
        _compile(R.PGEMM + dt, ("_pgemm_f32", "_pgemm_f64")[dt], _SIG12)
        _compile(R.SGEMM + dt, ("_sgemm_f32", "_sgemm_f64")[dt], _SIG12)   # a forked child's
        READY[dt] = 1


def ensure(op, dt):
    """Compile (or load) both functions of op for dtype dt (0 float32, 1 float64); op 1 (the
    escape records' opcode): the native records' (ops/pyops.py's Note [native records]), and
    the products they call (FT[GEMM + dt]: Note [gemm by address] in kernels/gen_cpu.py)."""
    if op == 1:
        ensure_products(dt, READY[dt])
        for kind in _KINDS:     # the kinds already made (their slots are empty if the table was)
            if READY[2 * kind + dt]:
                ensure_native(kind, dt)
    for d in (0, 1):
        name = (_NATIVE if op == 1 else R.OPFN[op])[dt * 2 + d]
        _compile(op * 4 + dt * 2 + d, name, _SIG12 if op == 1 and d == 1 else _SIG[d])


def ensure_rows(codes, stopped=0):
    """Both functions of every elementwise op among the record codes `codes` (int64 array), and
    the native records' when `stopped`, the code of the record the replay stopped at, is an
    escape record's (only a native one stops it for this)."""
    if (stopped >> 5) == 1:
        ensure(1, int(stopped) & 1)
    lo, hi = R.UNARY[0], R.BINARY[1]
    ops = codes >> 5
    sel = (ops >= lo) & (ops <= hi)
    for key in np.unique(ops[sel] * 2 + (codes[sel] & 1)).tolist():
        ensure(key >> 1, key & 1)


# Note [forked children]
# ~~~~~~~~~~~~~~~~~~~~~~
# GNU OpenMP is not fork-safe: a child forked from a process that started its threads cannot run
# a parallel region (its thread pool is the parent's), and Numba's omp layer terminates such a
# child at its first parallel loop ("Terminating: fork() called from a process already using
# GNU OpenMP"). With config.THREADING_LAYER "omp" (the default where Numba can load it), a fork
# handler sets FT[SERIAL] in every child (grandchildren inherit it). Its replays then call no
# parallel loop: a run of large elementwise records goes record by record (fwd_run_*), the
# backward's tiles in order (bwd_run_*), the tape does not fuse a backward (fused_* is a parallel
# loop), and _gemm_at gives the parallel range's products to _sgemm_* (FT[SGEMM + dtype]: one
# thread's small_gemm, compiled beside _pgemm_* in the parent, so that the child compiles
# nothing). Every element is the same chain of operations as on the threads, so the child
# computes its parent's bits, on one thread. (Workqueue, the default before session 32, starts
# its threads again in a child, and TBB is fork-safe: no flag for them.)

def _forked():
    FT[R.SERIAL] = 1


if config.THREADING_LAYER == "omp" and hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)
