"""Captured steps: run a whole training step again without running its Python.

    step = tapegrad.capture(train_step)      # train_step(x, y) -> loss (any tensors)
    for x, y in batches:
        loss = step(x, y)                    # 1st call: eager, recorded; later: replayed

When the same step runs again with the same shapes, its tape has the same structure:
the same records, at the same addresses, because storage never moves. The first call
runs ``train_step`` eagerly while the tape logs what happens beside the records
(``Tape.capture``): gradients set to None, each ``backward``, each optimizer update, each
value Python read (``item()``, ``bool()``, ``tolist()``). The step's rows, escape records,
the buffers they address and that log make a *program*: a private tape. A later call
copies the arguments into the program's input buffers and replays it — one jitted
forward call per run of rows, one reverse replay per backward, the optimizer's jitted
update — and returns detached copies of the outputs. Results are bit for bit what the
eager step computes, because the same kernels run on the same rows.

Guards (a changed one falls back to eager, and says why, once):
  * the arguments' shapes and dtypes, the non-tensor arguments, and grad mode;
  * every value the Python read during capture: the replay reads it again after the
    forward and, if it differs, runs the step eagerly (the Python might branch on it).
    Return tensors instead of calling ``item()`` inside the step.
A step that cannot be captured runs eagerly every time (the reason is printed once):
random numbers drawn inside it (dropout, randn), ``autograd.grad`` or hooks inside it,
a backward that reaches records made before the step, reads of values the step did not
compute. Python state the step changes (a learning-rate scheduler stepped inside it, a
Python counter) is not replayed: keep it outside the captured function.
"""
import ctypes
import warnings

import numpy as np

from . import random as _random
from .autograd.grad_mode import _STATE as _GRAD
from .storage import ARENA
from .kernels import opfn as _opfn
from .tape.tape import ROW, TAPE, Tape

__all__ = ["capture", "CapturedStep"]


class _Log:
    """What the tape notes beside its records while a step is being captured."""

    def __init__(self):
        self.events = []      # (kind, record index at the time, payload)
        self.refuse = None    # why the step cannot be replayed

    def add(self, kind, payload):
        self.events.append((kind, TAPE.next_index, payload))

    def read(self, t):
        v = t._view_np()
        self.add("read", (t, v, v.copy()))

    def no(self, why):
        if self.refuse is None:
            self.refuse = why


def _flatten(obj, out):
    from .tensor import Tensor
    if isinstance(obj, Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _flatten(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _flatten(o, out)
    return out


def _rebuild(obj, it):
    from .tensor import Tensor
    if isinstance(obj, Tensor):
        return next(it)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_rebuild(o, it) for o in obj)
    if isinstance(obj, dict):
        return {k: _rebuild(v, it) for k, v in obj.items()}
    return obj


class _Program:
    """A captured step: a private tape holding the step's rows, and the log to replay."""

    def __init__(self, r0, r1, log, inputs, outputs, result):
        self.r0, self.r1 = r0, r1
        t = self.tape = Tape()
        t.buf = bytearray(memoryview(TAPE.buf)[(r0 - TAPE.base) * ROW:(r1 - TAPE.base) * ROW])
        t.n, t.base, t.flushed = r1 - r0, r0, r1
        T, _ = t.cols()
        T[:, 0] &= ~16          # the eager backward freed what it consumed: the program keeps it
        outs = set(T[:, 2].tolist())
        del T, _
        t.edges = TAPE.edges    # escape records' producer lists (the tape only appends to it)
        t.permuted = TAPE.permuted   # (its backward folds the transposes the eager one folds)
        t.py = {g: rec for g, rec in TAPE.py.items() if r0 <= g < r1}
        for name in ("leaf_addr", "leaf_nbytes", "leaf_state", "leaf_buf", "leaf_owner", "leaf_hooks"):
            setattr(t, name, getattr(TAPE, name))    # gradients go to the real leaves' slots
        # the buffers the rows address stay alive as long as the program does
        self.hold = [e[0] for e in TAPE.keep.values() if e[2] + 4096 >= r0 and e[1] < r1]
        self.hold += [e[0] for e in TAPE.big.values() if any(r0 <= g < r1 for g in e[1])]
        self.hold.append(ARENA.slab)
        t.keep = {id(b): [b, r0, r1] for b in self.hold}   # (what TAPEGRAD_DEBUG's address check reads)
        self.inputs = inputs            # the private tensors the step ran on, and their views
        self.outputs = outputs          # tensors the step returned (their storage is the program's)
        self.result = result
        first = min([at for kind, at, _ in log.events if kind in ("backward", "update")], default=r1)
        self.reads = []                 # (view, value): checked after the forward, before any side effect
        for kind, at, payload in log.events:
            if kind == "read":
                t_, view, value = payload
                made = _producer_index(t, t_._addr) if t_._addr in outs else -1
                if made >= first or (made < 0 and at > first):
                    log.no("it reads a value (item(), bool(), numpy()...) that the replay cannot check before "
                           "its backward or update")
                self.reads.append((view, value))
        # hooks run Python that a replay would skip: refuse the step if any can fire in it
        self.slots = _leaf_slots(t)
        if any(TAPE.hooks.get(g) for g in range(r0, r1)) or any(TAPE.leaf_hooks.get(s) for s in self.slots):
            log.no("it uses backward hooks")
        self.first = first
        if any(o._addr not in outs for o in outputs):
            log.no("it returns a tensor the step did not compute")
        t.inputs_cache = {}
        t.frozen = t.cols()
        self.events = [(k, at, (p[0], p[1], t.plan_backward(p[0])) if k == "backward" else p)
                       for k, at, p in log.events if k != "read"]
        if _outside_producers(t, r0):
            log.no("its backward reaches records made before the step")
        self.one = _OneCall.build(self) if log.refuse is None else None

    def run(self, args_np):
        """Replay; returns True, or None when a value the step read has changed (then nothing
        outside the program's own buffers has been written). The outputs are in self.outputs."""
        t = self.tape
        for (_, view), a in zip(self.inputs, args_np):
            np.copyto(view, a, casting="no")
        at = self.r0
        checked = not self.reads
        for kind, pos, payload in self.events:
            if pos > at:
                self._forward(at, pos)
                at = pos
            if not checked and pos >= self.first:
                self._forward(at, self.first)
                at = max(at, self.first)
                if not self._reads_hold():
                    return None
                checked = True
            if kind == "backward":
                roots, seeds, plan = payload
                t.run_plan(plan, roots, seeds)
            else:                       # "update", "call": the optimizer's jitted update, zero_grad
                payload()
        if at < self.r1:
            self._forward(at, self.r1)
        if not checked and not self._reads_hold():
            return None
        return True

    def _forward(self, lo, hi):
        if hi <= lo:
            return
        t = self.tape
        t.flushed, t.n = lo, hi - t.base
        t.flush()
        t.n = self.r1 - t.base

    def _reads_hold(self):
        return all(np.array_equal(view, value, equal_nan=view.dtype.kind == "f") for view, value in self.reads)

    def hooked(self):
        """A leaf the step uses got a hook after the capture."""
        hooks = TAPE.leaf_hooks
        return bool(hooks) and any(hooks.get(s) for s in self.slots)


# Note [one call a step]: a program whose rows are all jitted or native records (no escape
# record Python runs, no large elementwise run, which goes tile by tile in parallel), that
# reads no value and whose optimizers have kernels run_step knows, replays as a list of
# actions: each "call" event (zero_grad, grad = None) stays a Python call; everything between
# two of them -- the argument copies, forward rows, the planned backward and the optimizer
# update -- is one kernels.step.run_step call, in the order the step did them. The same
# kernels run on the same rows as in _Program.run, so results are the same bits; what goes is
# the Python between the kernels (W5a captured: 21 -> ~9 us, bench/results). A call with an
# argument that is not contiguous, and every call under TAPEGRAD_DEBUG (it checks addresses
# before each kernel), take _Program.run instead; so does a program whose backward is seeded
# with an explicit gradient (its values are read at each replay).

class _OneCall:
    """A program's replay as few jitted calls (Note [one call a step])."""

    @classmethod
    def build(cls, prog):
        from . import config
        from .kernels import step as S
        if config.DEBUG or prog.reads:
            return None
        t = prog.tape
        T, _ = t.cols()
        try:
            ops = T[:, 0] >> 5
            if ((ops == 1) & (T[:, 4] == 0)).any():
                return None                       # an escape record: Python runs it
            ew = (ops >= 2) & (ops <= 30)
            if (ew & (T[:, 1] >= config.PARALLEL_THRESHOLD)).any():
                return None                       # a tile run (parallel loops compile only when used)
            for dt in set((T[ops == 1, 0] & 3).tolist()):
                _opfn.ensure(1, dt)
            _opfn.ensure_rows(T[:, 0])
            f64s = True if ((T[:, 0] & 3) == 1).any() else None
        finally:
            del T, _
        acts, cur, at = [], None, prog.r0

        def need(phase):
            """The kernel action to add `phase` (0 forward, 1 backward, 2 update) to: a new one
            when the current one has done that phase or a later one."""
            nonlocal cur
            if cur is None or cur["last"] >= phase:
                cur = {"last": -1, "lo": 0, "hi": 0, "bwd": None, "opt": None}
                acts.append(cur)
            cur["last"] = phase
            return cur

        def forward(hi):
            nonlocal at
            if hi > at:
                a = need(0)
                a["lo"], a["hi"] = at - t.base, hi - t.base
                at = hi

        for kind, pos, payload in prog.events:
            forward(pos)
            if kind == "backward":
                roots, seeds, plan = payload
                plan = t.plan_backward(roots, share=True)   # Note [shared gradient scratch]: its own
                rs, vals = [], []
                for r, sd in zip(roots, seeds):
                    if sd.__class__ is not np.ndarray or sd.dtype.kind != "f":
                        return None     # an explicit gradient (autograd's _LazySeed): read at each replay
                    rs.append((r - t.base, sd.size, sd.dtype == np.float64))
                    vals.append(sd.astype(np.float64).ravel())
                need(1)["bwd"] = (plan, max(roots) - t.base, np.array(rs, np.int64).reshape(-1, 3),
                                  np.concatenate(vals))
            elif kind == "update":
                opt = getattr(payload, "__self__", None)
                name = getattr(opt, "_kernel", None)
                if name not in S.KERNELS[1:]:
                    return None
                need(2)["opt"] = (opt, S.KERNELS.index(name))
            else:                       # "call": zero_grad, grad = None (Python)
                if getattr(payload, "after_copies", False) and not any(isinstance(a, dict) for a in acts):
                    acts.append({"last": 0, "lo": 0, "hi": 0, "bwd": None, "opt": None})   # the copies first
                acts.append(payload)
                cur = None
        forward(prog.r1)
        if not any(isinstance(a, dict) for a in acts):
            acts.append({"last": 0, "lo": 0, "hi": 0, "bwd": None, "opt": None})   # the copies only
        self = cls()
        self.tape, self.S, self.outs = t, S, prog.outputs
        self.ft = None
        self.call = S.run_step
        first = next(i for i, a in enumerate(acts) if isinstance(a, dict))
        self.acts = [self._kernel_args(a, prog.inputs if i == first else ()) if isinstance(a, dict) else a
                     for i, a in enumerate(acts)]
        self.kerns = [a for a in self.acts if isinstance(a, _Kern)]
        kinds = {int(k.A[S.KIND]) for k in self.kerns}
        # the entry point's flags (run_step's docstring): what it compiles in
        self.flags = ((f64s,) + tuple(True if i in kinds else None for i in (1, 2, 3))
                      + (True if t.permuted else None,))
        self.src = self.acts[first].src
        self.dst = None
        last = self.acts[-1]
        if last.__class__ is _Kern and all(o._contig for o in self.outs):
            # the last kernel call copies the outputs into the fresh tensors run() hands out
            oc = np.zeros((max(len(self.outs), 1), 3), np.int64)
            for j, o in enumerate(self.outs):
                oc[j, 1], oc[j, 2] = o._addr, o._n * o._dtype.itemsize
            last.keep.append(oc)
            last.A[S.OC_ADDR], last.A[S.NOC] = oc.ctypes.data, len(self.outs)
            self.dst = memoryview(oc).cast("B").cast("q")   # dst[3 * j]: output j's fresh copy
        return self

    def _kernel_args(self, a, inputs):
        """One run_step call: its argument vector, with every slot that does not change between
        calls filled in (the copies' sources, the arguments' addresses, are set at each call)."""
        S = self.S
        k = _Kern()
        A = k.A = np.zeros(S.NSLOT, np.int64)
        keep = k.keep = []

        def put(slot, arr, n):
            keep.append(arr)
            A[slot], A[slot + 1] = arr.ctypes.data, n

        T, _ = self.tape.frozen
        keep.append(T)
        A[S.T_ADDR], A[S.T_ROWS], A[S.T_COLS] = T.ctypes.data, T.shape[0], T.shape[1]
        A[S.BASE] = self.tape.base
        cp = np.zeros((max(len(inputs), 1), 3), np.int64)      # (a row more: a memoryview needs one)
        for j, (_, view) in enumerate(inputs):
            cp[j] = view.ctypes.data, 0, view.nbytes
        put(S.CP_ADDR, cp, len(inputs))
        k.src = memoryview(cp).cast("B").cast("q")   # k.src[3 * j + 1]: argument j's address
        A[S.LO], A[S.HI], A[S.BHI] = a["lo"], a["hi"], -1
        if a["bwd"] is not None:
            plan, A[S.BHI], RS, seeds = a["bwd"]
            put(S.G_ADDR, plan.gaddr, len(plan.gaddr))
            put(S.SC_ADDR, plan.scratch, len(plan.scratch))
            put(S.RS_ADDR, RS, len(RS))
            put(S.S_ADDR, seeds, len(seeds))
            A[S.CLEAN], A[S.DIRTY] = int(plan.clean), 1
        k.opt, A[S.KIND] = a["opt"] if a["opt"] is not None else (None, 0)
        k.rows = k.H = None
        k.mv = memoryview(A).cast("B").cast("q")
        return k

    def ready(self, args):
        """Whether this call can take the one-call path."""
        for a in args:
            if getattr(a, "_contig", True) is False:
                return False
        return True

    def run(self, args):
        """Replay with the given arguments (checked by ready()); returns the outputs' copies."""
        Tensor, empty, _ = _late()
        if TAPE.flushed < TAPE.next_index:
            TAPE.flush()          # the arguments' values, parameters a pending record writes
        src, j = self.src, 1
        for a in args:
            if isinstance(a, Tensor):
                src[j] = a._addr
                j += 3
        dst = self.dst
        if dst is not None:             # the fresh outputs, which the last kernel call fills
            fresh, j = [], 0
            for like in self.outs:
                o = empty(like._shape, like._dtype)
                dst[j] = o._addr
                fresh.append(o)
                j += 3
        t, S = self.tape, self.S
        if _opfn.FT is not self.ft:
            self.ft = _opfn.FT
            for k in self.kerns:
                k.A[S.FT_ADDR], k.A[S.FT_LEN] = self.ft.ctypes.data, len(self.ft)
        run = self.call
        for act in self.acts:
            if act.__class__ is not _Kern:
                act()               # zero_grad, grad = None
                continue
            mv = act.mv
            opt = act.opt
            if opt is not None:
                c = opt._prepare()
                if c is not act.rows or c.H is not act.H:
                    act.rows, act.H = c, c.H
                    mv[S.P_ADDR], mv[S.P_ROWS] = c.P.ctypes.data, c.P.shape[0]
                    mv[S.H_ADDR], mv[S.H_ROWS], mv[S.H_COLS] = c.H.ctypes.data, c.H.shape[0], c.H.shape[1]
                    mv[S.U_ADDR], mv[S.U_LEN] = c.upd.ctypes.data, len(c.upd)
            # the tape's tables can grow between calls: their addresses, each time (no array views)
            mv[S.LA], mv[S.NLEAF] = t.leaf_addr.buffer_info()
            mv[S.LS] = t.leaf_state.buffer_info()[0]
            mv[S.LN] = t.leaf_nbytes.buffer_info()[0]
            mv[S.E_ADDR], mv[S.E_LEN] = t.edges.buffer_info()
            st, done, new = run(act.A, *self.flags)
            if run is S.run_step:       # compiled now: call it without the dispatcher from now on
                run = self.call = S.entry_point(run, (act.A,) + self.flags)
            if st != -1:
                raise RuntimeError("tapegrad.capture: internal error: the one-call replay " +
                                   (f"stopped at row {-st - 2}" if st < -1 else "has no kernel for the update") +
                                   " (Note [one call a step])")
            if opt is not None:
                opt._finish(c, done, new)
        return fresh if dst is not None else [_fresh(o) for o in self.outs]


class _Kern:
    """One run_step call of a _OneCall: its argument vector A (and a memoryview of it, mv, for
    cheap writes), the arrays A points into (keep), the optimizer whose update it runs and the
    rows (and hyperparameters) A holds for it, the copies' sources (src)."""
    __slots__ = ("A", "mv", "keep", "opt", "rows", "H", "src")


def _producer_index(t, addr):
    """Global index of the last row of private tape t whose output is at addr."""
    T, _ = t.cols()
    idx = np.flatnonzero(T[:, 2] == addr)
    del T, _
    return int(idx[-1]) + t.base if len(idx) else -1


def _leaf_slots(t):
    """The leaf gradient slots the rows of private tape t read."""
    T, _ = t.cols()
    try:
        ops = T[:, 0] >> 5
        jit = ops >= 2
        codes = np.concatenate([T[jit, 5], T[jit, 6]])
        slots = set((-codes[codes <= -2] - 2).tolist())
        edges = t.edges
        for i in np.flatnonzero(ops == 1).tolist():
            e = int(T[i, 3])
            slots.update(-p - 2 for p in edges[e + 1:e + 1 + edges[e]] if p <= -2)
        return sorted(slots)
    finally:
        del T, _


def _outside_producers(t, r0):
    """Whether a row of the step reads the gradient path of a record made before it."""
    T, _ = t.cols()
    try:
        ops = T[:, 0] >> 5
        jit = ops >= 2
        if ((T[jit, 5] >= 0) & (T[jit, 5] < r0)).any() or ((T[jit, 6] >= 0) & (T[jit, 6] < r0)).any():
            return True
        edges = t.edges
        for i in np.flatnonzero(ops == 1).tolist():
            e = int(T[i, 3])
            if any(0 <= edges[e + 1 + j] < r0 for j in range(edges[e])):
                return True
        return False
    finally:
        del T, _


class CapturedStep:
    """``capture(fn)``: see the module docstring."""

    def __init__(self, fn, verbose=True):
        self.fn = fn
        self.verbose = verbose
        self.programs = {}
        self.said = set()
        self.stats = {"captured": 0, "replayed": 0, "eager": 0}
        self._last = None     # Note [replay fast path]

    def _say(self, why):
        if self.verbose and why not in self.said:
            self.said.add(why)
            warnings.warn(f"tapegrad.capture({getattr(self.fn, '__name__', 'step')}): {why}; running eagerly",
                          stacklevel=3)

    def _key(self, args, kwargs):
        """What must be equal for a program to replay: grad mode, the modules' train/eval state,
        the tensor arguments' shapes and dtypes, the other arguments' types and values (None: an
        argument that can't be a key, e.g. a list of tensors)."""
        Tensor, _, MODE_EPOCH = _late()
        parts = [_GRAD[0], MODE_EPOCH[0]]
        for a in (list(args) + sorted(kwargs.items(), key=lambda kv: kv[0])) if kwargs else args:
            if isinstance(a, Tensor):
                parts.append(("T", a._shape, a._dtype.name, a._rg))
            else:
                try:
                    hash(a)
                except TypeError:
                    return None
                parts.append(("V", type(a).__name__, a))
        return tuple(parts)

    # Note [replay fast path]: a loop calls its captured step with new tensors of the same shapes.
    # The last call that replayed in one call (_OneCall) with tensors only keeps what its key read
    # (grad mode, the modules' mode epoch, each argument's shape, dtype and requires_grad) and the
    # program; a call whose arguments match that, all contiguous, with no leaf hook anywhere,
    # replays without building and hashing the key (W5a captured, session 32: ~0.4 us of ~9).
    # Anything else takes the general path below, which decides as before.
    def _fast(self, args):
        last = self._last
        Tensor, _, MODE_EPOCH = _late()
        if len(args) != len(last[3]) or _GRAD[0] != last[1] or MODE_EPOCH[0] != last[2] or TAPE.leaf_hooks:
            return None
        for a, (shape, dt, rg) in zip(args, last[3]):
            if a.__class__ is not Tensor or a._shape != shape or a._dtype is not dt or a._rg != rg or not a._contig:
                return None
        return last[0]

    def __call__(self, *args, **kwargs):
        if self._last is not None and not kwargs:
            prog = self._fast(args)
            if prog is not None and prog.one is not None:   # (None: tests take the Python replay)
                outs = prog.one.run(args)
                self.stats["replayed"] += 1
                return _returned(prog, outs)
        Tensor = _late()[0]
        key = self._key(args, kwargs)
        if key is None:
            self._say("an argument is not hashable (a list of tensors?): pass tensors as positional arguments")
            self.stats["eager"] += 1
            return self.fn(*args, **kwargs)
        prog = self.programs.get(key)
        if prog is not None and prog.hooked():
            self._say("a leaf it uses has a backward hook now")
            self.stats["eager"] += 1
            return self.fn(*args, **kwargs)
        if prog is None:
            if self.programs.get(("refused",) + key):
                self.stats["eager"] += 1
                return self.fn(*args, **kwargs)
            return self._capture(key, args, kwargs)
        one = prog.one
        if one is not None and one.ready(args):
            outs = one.run(args)
            self.stats["replayed"] += 1
            if not kwargs and all(a.__class__ is Tensor for a in args):
                self._last = (prog, key[0], key[1], tuple((a._shape, a._dtype, a._rg) for a in args))
            return _returned(prog, outs)
        if prog.run([a._values() for a in args if isinstance(a, Tensor)]) is None:
            self._say("a value the step read during capture (item(), bool(), tolist()) changed")
            del self.programs[key]
            self.programs[("refused",) + key] = True
            self.stats["eager"] += 1
            return self.fn(*args, **kwargs)
        self.stats["replayed"] += 1
        return _returned(prog, [_fresh(o) for o in prog.outputs])

    def _capture(self, key, args, kwargs):
        from .tensor import Tensor, tensor
        if TAPE.busy or TAPE.hold_rows or TAPE.capture is not None:
            self.stats["eager"] += 1
            return self.fn(*args, **kwargs)
        TAPE.flush()
        # the step runs on private copies of its tensor arguments: later calls copy into them
        inputs, call_args = [], []
        for a in args:
            if isinstance(a, Tensor) and not a._rg:
                c = tensor(a._values(), dtype=a._dtype)
                inputs.append((c, c._view_np()))
                call_args.append(c)
            else:
                if isinstance(a, Tensor):
                    self._say("an argument requires grad (pass data, keep parameters in the step's closure)")
                    self.programs[("refused",) + key] = True
                    self.stats["eager"] += 1
                    return self.fn(*args, **kwargs)
                call_args.append(a)
        log = _Log()
        draws = _random.DRAWS[0]
        r0 = TAPE.next_index
        TAPE.capture = log
        TAPE.hold_rows += 1      # no sweep: the step's rows must stay where they are until copied
        try:
            result = self.fn(*call_args, **kwargs)
            TAPE.flush()
        finally:
            TAPE.hold_rows -= 1
            TAPE.capture = None
        r1 = TAPE.next_index
        self.stats["captured"] += 1
        for (c, _), a in zip(inputs, [a for a in args if isinstance(a, Tensor)]):
            if c._vc is not None and c._vc[0]:      # the step wrote to its argument in place
                log.no("it writes to an argument in place")
                a._values()[...] = c._view_np()     # as the eager call would have left it
                a._version_counter()[0] += c._vc[0]
        if _random.DRAWS[0] != draws:
            log.no("it draws random numbers (dropout, randn...), which a replay would repeat")
        outs = _flatten(result, [])
        if any(isinstance(v, Tensor) for v in kwargs.values()):
            log.no("it takes a tensor as a keyword argument")
        if not any(k in ("backward", "update") for k, _, _ in log.events) and r1 == r0:
            log.no("it records nothing")
        if log.refuse is None:
            prog = _Program(r0, r1, log, inputs, outs, result)   # may still refuse (log.no)
        if log.refuse is None:
            self.programs[key] = prog
            # the outputs' storage is the program's, which every replay rewrites: hand out copies
            return _rebuild(result, iter([tensor(o._values().copy(), dtype=o._dtype) for o in outs]))
        self._say(f"cannot be captured: {log.refuse}")
        self.programs[("refused",) + key] = True
        return result


def _late():
    """(Tensor, _empty, MODE_EPOCH), imported on first use (they import this module's package)."""
    if not _LATE:
        from .nn.module import MODE_EPOCH
        from .tensor import Tensor, _empty
        _LATE.extend((Tensor, _empty, MODE_EPOCH))
    return _LATE


_LATE = []


def _fresh(like):
    """A new tensor holding a copy of the values of the program's output `like` (contiguous: one
    memmove, no NumPy view of the new tensor)."""
    t = _late()[1](like._shape, like._dtype)
    if like._contig:
        ctypes.memmove(t._addr, like._addr, like._n * like._dtype.itemsize)
    else:
        t._view_np()[...] = like._view_np()
    return t


def _returned(prog, outs):
    """What the step returned, rebuilt around `outs`, the fresh copies of prog's outputs."""
    if len(outs) == 1 and prog.result is prog.outputs[0]:
        return outs[0]          # the step returned one tensor
    return _rebuild(prog.result, iter(outs))


def capture(fn=None, *, verbose=True):
    """Capture a training step (decorator or function): see ``tapegrad.capture`` module docs."""
    if fn is None:
        return lambda f: CapturedStep(f, verbose)
    return CapturedStep(fn, verbose)
