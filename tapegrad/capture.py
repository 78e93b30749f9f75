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
        t.py = {g: rec for g, rec in TAPE.py.items() if r0 <= g < r1}
        for name in ("leaf_addr", "leaf_nbytes", "leaf_state", "leaf_buf", "leaf_owner", "leaf_hooks"):
            setattr(t, name, getattr(TAPE, name))    # gradients go to the real leaves' slots
        # the buffers the rows address stay alive as long as the program does
        self.hold = [e[0] for e in TAPE.keep.values() if e[2] + 4096 >= r0 and e[1] < r1]
        self.hold += [e[0] for e in TAPE.big.values() if any(r0 <= g < r1 for g in e[1])]
        self.hold.append(ARENA.slab)
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

    def run(self, args_np):
        """Replay; returns the outputs' values, or None when a value the step read has changed
        (then nothing outside the program's own buffers has been written)."""
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
        return [o._view_np() for o in self.outputs]

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

    def __call__(self, *args, **kwargs):
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
        vals = prog.run([a._values() for a in args if isinstance(a, Tensor)])
        if vals is None:
            self._say("a value the step read during capture (item(), bool(), tolist()) changed")
            del self.programs[key]
            self.programs[("refused",) + key] = True
            self.stats["eager"] += 1
            return self.fn(*args, **kwargs)
        self.stats["replayed"] += 1
        outs = [_fresh(v, o) for v, o in zip(vals, prog.outputs)]
        if len(outs) == 1 and prog.result is prog.outputs[0]:
            return outs[0]          # the step returned one tensor
        return _rebuild(prog.result, iter(outs))

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


def _fresh(values, like):
    """A new tensor holding a copy of `values`, the values of the program's output `like`
    (contiguous: one memmove, no NumPy view of the new tensor)."""
    t = _late()[1](values.shape, like._dtype)
    if like._contig:
        ctypes.memmove(t._addr, like._addr, like._n * like._dtype.itemsize)
    else:
        t._view_np()[...] = values
    return t


def capture(fn=None, *, verbose=True):
    """Capture a training step (decorator or function): see ``tapegrad.capture`` module docs."""
    if fn is None:
        return lambda f: CapturedStep(f, verbose)
    return CapturedStep(fn, verbose)
