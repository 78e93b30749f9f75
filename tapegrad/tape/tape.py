"""The Wengert tape: flat columns of integers (DESIGN invariants 2, 3, 5, 7).

One record per op, appended in program order as one packed 72-byte row
(``struct.pack_into`` into a preallocated bytearray: 116 ns a row, measured
against 293 ns for ``array('q').extend`` of 7 ints and 239 ns for a list plus
conversion at flush; ``np.frombuffer`` gives the jitted replay a 2-D int64
view for free). Columns:

    code   opcode << 5 | consumed << 4 | bcast << 2 | dtype
    n      number of output elements
    out    address of the output values
    a, b   addresses of the inputs (reduce rows: b = the input's element count;
           escape rows: a = offset of the row's producer list in ``edges``)
    pa, pb producers of a and b: global record index (>= 0), -1 for a
           constant, -2 - slot for a leaf's gradient slot
    alive  1 while the record's output tensor lives (cleared by Tensor.__del__)
    c      float64 attribute (an exponent, a scalar operand), column 8 as bits

Records are numbered globally; physical row = global index - ``base``. A
record stays while its output tensor lives (``alive``), a later live record
reads it, or a held grad_fn Node pins it; ``sweep`` finds them in one jitted
pass, cuts off the dead prefix that already ran (``_drop``) and releases what
dead records elsewhere hold (``_release_dead``), so that the tape's length
returns to its floor in long loops.

Leaves that require grad get a *slot*: ``leaf_addr[slot]`` is the address of
the leaf's gradient buffer and ``leaf_state[slot]`` 0 when ``.grad`` is None
(the jitted replay zeroes the buffer on first use and sets 1).
"""
import re
import struct
import sys
import traceback
import weakref
from array import array
from types import MappingProxyType

import numba
import numpy as np

from .. import config
from ..autograd.grad_mode import _STATE as _GRAD
from ..kernels import lifetime as _lifetime
from ..kernels import opfn as _opfn
from ..kernels import replay_cpu as R
from ..ops.table import BY_OPCODE, NCOL, OPS, PY
from ..storage import ARENA, base_address, byte_span, view

_PKG_DIR = __import__("os").path.dirname(__import__("os").path.dirname(__file__))
ROW = NCOL * 8
_NO_RECORDS = np.zeros(0, np.int64)
_FEW_SLABS = 4    # slabs the sweep lets go of by their padded range only (_release_dead)
ALIVE = 7 * 8             # byte offset of the alive flag in a row
PACK = struct.Struct("<8qd").pack_into
_Q = struct.Struct("<q")
_NO_EDGES = np.zeros(1, np.int64)
_NO_PINS = np.zeros(0, np.int64)
_NO_USED = np.zeros(0, np.uint8)   # (a liveness pass over a suffix reads no leaf slots)
SECOND_TIME = ("Trying to backward through the graph a second time (or directly access saved tensors after "
               "they have already been freed). Saved intermediate values of the graph are freed when you call "
               ".backward() or autograd.grad(). Specify retain_graph=True if you need to backward through the "
               "graph a second time or if you need to access saved tensors after calling backward.")
_HAS_SAVES = np.zeros(64, np.int8)
for _s in OPS.values():
    if _s.kind != "py" and _s.saves:
        _HAS_SAVES[_s.opcode] = 1
_HAS_SAVES[PY] = 1
_REDUCE = (R.SUM, R.MEAN)
_ELEM = (R.UNARY[0], R.BINARY[1])   # the opcodes of the elementwise rows
_FUSE_MAX = 64            # pending records a fused backward takes at most (Note [fused backward])
_PY_SWEEP = 64            # escape records (of any age) that make a backward sweep first (backward_many's NOTE)
_DEAD_REFS = 5            # references to a dead own buffer in _fusion_plan: pool tuple, tape.big, dict, local, arg


class PyRec:
    """An escape record: forward and VJP in NumPy (ops/pyops.py).

    ``fwd()`` fills the output; ``bwd(g_np)`` returns one gradient (or None) per input.
    ``ins``: (shape, NumPy dtype) of each input; ``out``: the output's.

    Two kinds are made. ``PyRec(spec, fwd, bwd, ...)`` holds closures ``fwd()`` and ``bwd(g)``
    (in-place ops). ``PyRec.numpy(...)`` (ops/pyops.py's record) holds the op's NumPy functions
    and its operands' storage, flat, and makes NumPy views of them only when a closure first runs.
    NOTE: it holds no closures of its own. A record lives until a sweep, and every container it
    holds is an object the cyclic GC tracks: those tracked objects, ~43 a record, made a W5a
    step leave 86 behind and cost it ~10 us in gen-0/1 collections (measured with the GC off);
    the flat form holds about half as many."""
    __slots__ = ("spec", "_f", "_b", "_ins", "out", "saves", "attrs", "_spans", "_ivs", "_ov", "_lin", "raw",
                 "_fn", "_vs", "_vo", "_needs", "_writes")

    def __init__(self, spec, fwd, bwd, ins, out, attrs=None, saves=True, spans=None):
        self.spec, self._f, self._b, self._ins, self.out = spec, fwd, bwd, ins, out
        self.attrs = attrs or _NO_ATTRS
        self.saves = saves
        self._spans = spans  # (address, shape, strides, itemsize) of the inputs, for the version check
        # for create_graph (autograd/_higher.py): the NumPy views of the inputs and the output, the raw
        # VJP (g, out, *ins), and `lin` for a record linear in its float inputs: True when its forward
        # is that linear map, else lin(tangents, out, ins) -> array
        self._ivs = self._ov = self._lin = self.raw = self._vs = None

    @classmethod
    def numpy(cls, spec, fn, vjp, ins, out, attrs, saves, spans, lin, needs):
        """An escape record of ops/pyops.py's record(): fn(*in_np) (or fn(out_np, *in_np) when
        fn.writes_out) computes the output, vjp(g, out_np, *in_np) the gradients. ins: the input
        tensors; spans: keep the inputs' spans for the version check."""
        r = cls.__new__(cls)
        r.spec, r._f, r._b, r._ins = spec, None, None, None
        r.out = (out._shape, out._dtype.np)
        r.attrs = attrs or _NO_ATTRS
        r.saves = saves
        r._spans = spans
        r._ivs = r._ov = None
        r._lin, r.raw = lin, vjp
        r._fn, r._needs = fn, needs
        r._writes = getattr(fn, "writes_out", False)
        if len(ins) == 1:       # (spelt out: a generator here was a tenth of W4's eager step)
            a = ins[0]
            r._vs = (a._base, a._addr, a._shape, a._stride, a._dtype.np)
        elif len(ins) == 2:
            a, b = ins
            r._vs = (a._base, a._addr, a._shape, a._stride, a._dtype.np, b._base, b._addr, b._shape, b._stride,
                     b._dtype.np)
        else:
            r._vs = tuple([v for t in ins for v in (t._base, t._addr, t._shape, t._stride, t._dtype.np)])
        r._vo = (out._base, out._addr, out._shape, out._stride, out._dtype.np)
        return r

    def fwd(self):
        if self._vs is None:
            return self._f()
        ivs, ov = self.ivs, self.ov
        r = self._fn(ov, *ivs) if self._writes else self._fn(*ivs)
        if r is not None:
            np.copyto(ov, r, casting="unsafe")

    def bwd(self, g):
        if self._vs is None:
            return self._b(g)
        if self._needs is not None:
            return self.raw(g, self.ov, *self.ivs, needs=self._needs)
        return self.raw(g, self.ov, *self.ivs)

    def _operands(self):
        """(base, address, shape, strides, NumPy dtype) of each input, from the flat _vs."""
        vs = self._vs
        return [vs[k:k + 5] for k in range(0, len(vs), 5)]

    def _views_made(self):
        """Make the NumPy views on first use (a native record's never run unless hooks, anomaly
        mode or create_graph ask: ~3 us a record saved); returns self."""
        if self._ivs is None and self._vs is not None:
            self._ivs = [view(*v) for v in self._operands()]
            self._ov = view(*self._vo)
        return self

    ivs = property(lambda self: self._views_made()._ivs, lambda self, v: setattr(self, "_ivs", v))
    ov = property(lambda self: self._views_made()._ov, lambda self, v: setattr(self, "_ov", v))

    @property
    def ins(self):
        if self._ins is None and self._vs is not None:
            self._ins = [(v[2], v[4]) for v in self._operands()]
        return self._ins

    @property
    def spans(self):
        s = self._spans
        if s is True:       # (numpy(): made from the operands when a check first asks)
            s = self._spans = [(v[1], v[2], v[3], v[4].itemsize) for v in self._operands()]
        return s

    @property
    def lin(self):
        lin = self._lin
        if lin is True:     # the forward is the linear map
            return lambda ts, o, iv: self._fn(*ts)
        return lin

    @lin.setter
    def lin(self, v):
        self._lin = v

    def held_arrays(self):
        """The NumPy arrays this record's forward reads and writes (TAPEGRAD_DEBUG's check)."""
        if self._vs is not None:
            return list(self.ivs) + [self.ov]
        arrays = []
        for cell in getattr(self._f, "__closure__", None) or ():
            v = cell.cell_contents
            arrays += list(v) if isinstance(v, (list, tuple)) else [v]
        return arrays


_NO_ATTRS = MappingProxyType({})


class _Pass:
    """The state of one backward pass (Note [backward passes])."""
    __slots__ = ("scratch", "saddr", "gaddr", "la", "ls", "ln", "bufs", "off", "dummy", "views", "direct", "clean")

    def __init__(self):
        self.views = None           # a planned backward keeps its gradient views here
        self.direct = False         # la/ls/ln are the tape's own leaf tables (arrays), not copies


def _tensor_of(arr):
    """A detached Tensor over a NumPy array (what hooks receive)."""
    from ..tensor import from_numpy
    return from_numpy(arr)


_TTYPE = {"float32": "torch.FloatTensor", "float64": "torch.DoubleTensor", "int64": "torch.LongTensor",
          "int32": "torch.IntTensor", "bool": "torch.BoolTensor"}


def _check_hook_result(r, like, fn):
    """The values of a hook's replacement gradient: a tensor of the gradient's shape and dtype
    (torch's errors otherwise)."""
    name = getattr(fn, "__name__", "hook")
    if not hasattr(r, "_values"):
        raise TypeError(f"expected Variable, but hook returned '{type(r).__name__}'")
    v = np.asarray(r._values())
    if v.dtype != like.dtype:
        raise RuntimeError(f"hook '{name}' has changed the type of value (was {_TTYPE.get(like.dtype.name)} got "
                           f"{_TTYPE.get(v.dtype.name)})")
    if v.shape != like.shape:
        if v.size != like.size:
            raise RuntimeError(f"hook '{name}' has changed the size of value")
        v = v.reshape(like.shape)     # a jitted record's flat buffer
    return v


def _hook_shape(g, shape):
    """A jitted record's flat gradient g as a node hook sees it: the node's output shape when the
    sizes agree, 0-d for a broadcast scalar."""
    if shape is not None and g.size == int(np.prod(shape, dtype=np.int64)):
        return g.reshape(shape)
    return g.reshape(()) if g.size == 1 else g


_NO_FORWARD = ("No forward pass information available. Enable detect anomaly during forward pass for more "
               "information.")
_TRIGGERED = " (Triggered internally at /__w/pytorch/pytorch/torch/csrc/autograd/python_anomaly_mode.cpp:122.)"


def _hook_values(r, n, fn):
    """A node hook's returned tuple, which must hold one value per gradient."""
    r = tuple(r) if isinstance(r, (tuple, list)) else (r,)
    if len(r) != n:
        raise RuntimeError(f"hook '{getattr(fn, '__name__', 'hook')}' has returned an incorrect number of values "
                           f"(got {len(r)}, but expected {n})")
    return r


class _Noop:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


_NOOP = _Noop()


def _grad_fn_name(tape, i):
    code = struct.unpack_from("<q", tape.buf, i * ROW)[0]
    if (code >> 5) == PY:
        return tape.py[i + tape.base].spec.grad_fn
    return BY_OPCODE[code >> 5].grad_fn


class Tape:
    def __init__(self):
        self.buf = bytearray(ROW * 4096)   # the rows; grows by doubling, never while a view is out
        self.n = 0                 # rows in use
        self.sweep_at = 8192       # tape length that triggers the next sweep
        self.py_sweep_at = _PY_SWEEP   # escape records that trigger one (see backward_many)
        self.edges = array("q")    # producer lists of escape records
        self.base = 0              # global index of physical row 0
        self.flushed = 0           # global index: records below ran forward
        self.py = {}               # global index -> PyRec
        self.keep = {}             # id(slab) -> [slab, first, last]: global indices of the records that may use it
        self.last_kept = None      # the slab most recently kept (cheap identity check on the hot path)
        self.big = {}              # id(own buffer) -> [buffer, global indices of the records using it]
        self._scratch_keep = None  # backward's gradient scratch, reused
        self._saddr = 0            # its address during a backward
        self.inplace_log = []      # (lo, hi, record index, version counter, shape, dtype) of in-place writes
        self._log_prune_at = 32    # log length that triggers prune_inplace_log
        self._nothing_saved_at = -1  # tape length at a prune that found no saving record alive
        self._prune_lo = 0         # global index: no record below it can be hit by an in-place write
        self._zeros = (_NO_RECORDS, _NO_RECORDS)   # (need, gaddr) for one backward at a time, all zero
                                   # while not in use; None while a backward has them (Note [backward's zeroed arrays])
        self.retained = {}         # global index -> tensor whose grad is retained
        self.anomaly = {}          # global index -> forward stack of the record (anomaly mode)
        self.detect_anomaly = False   # anomaly mode with NaN checks: backward runs record by record
        self.anomaly_stacks = False   # anomaly mode: keep the forward stack of each record
        self.hooks = {}            # global index -> {handle id: (kind, fn, shape)}: tensor hooks, node pre/post hooks
        self.leaf_hooks = {}       # slot -> {handle id: fn}: hooks of leaf tensors
        self.busy = 0              # backward passes running (no sweep meanwhile)
        self.hold_rows = 0         # a step is being captured (no sweep: its rows are copied at the end)
        self.capture = None        # tapegrad.capture's log while a step is captured
        self.inputs_cache = None   # a captured step's private tape: physical index -> inputs_of
        self._one_root = np.zeros(1, np.int64)   # mark_roots's argument for a single root
        self.permuted = False     # a permutation view was recorded (mark_roots: Note [folded transposes])
        self.frozen = None         # a captured step's private tape: its (T, C) views, made once
        self._scratch = None       # the running pass's gradient scratch (TAPEGRAD_DEBUG checks addresses in it)
        self._views = None         # (T, C, buf): int64/float64 views of all of buf, made once (cols)
        self._log_max = -1         # an upper bound of the record indices in inplace_log
        # leaf gradient slots
        self.leaf_addr = array("q")
        self.leaf_nbytes = array("q")
        self.leaf_state = array("b")
        self.leaf_buf = []         # the buffers themselves (kept alive)
        self.leaf_owner = []       # weakref to the leaf tensor (for AccumulateGrad.variable)
        self.pins = {}             # global index -> number of grad_fn Nodes that keep the record alive
        self.leaf_hold = {}        # slot -> leaf, while live records may use it (torch's AccumulateGrad
                                   # keeps its leaf alive); released by sweep
        self.leaf_free = []
        self.leaf_dying = []       # (global record index at death, slot)

    # ----- recording ---------------------------------------------------------
    def __len__(self):
        return self.n

    @property
    def next_index(self):
        return self.base + self.n

    def grow(self):
        self._views = None         # the cached views export buf: let them go before it resizes
        self.buf.extend(bytes(len(self.buf)))

    def append(self, code, n, out, a, b, pa, pb, alive, c):
        """Append one row (the general path; tensor.py inlines this for jitted rows)."""
        i = self.n
        if (i + 1) * ROW > len(self.buf):
            self.grow()
        PACK(self.buf, i * ROW, code, n, out, a, b, pa, pb, alive, c)
        self.n = i + 1
        return self.base + i

    def keep_alive(self, buf):
        """Keep `buf` alive while the records that may use it can still run.

        A slab is kept with the range of records that may use it: from when it
        became the arena's current slab (``Arena.adopt``) to the last record
        that kept it. The hot path skips a buffer that is ``last_kept``, and
        ``last_kept`` is reset every 4096 records, so a range's end is at most
        one segment stale: ``sweep`` pads it by 4096. A large own buffer logs
        each record that uses it instead (``big``), so loops over big tensors
        reuse their buffers (``Arena._big``)."""
        g = self.next_index
        if buf.nbytes != config.SLAB_BYTES:
            e = self.big.get(id(buf))
            if e is None:
                self.big[id(buf)] = [buf, [g]]
            else:
                e[1].append(g)
            return
        e = self.keep.get(id(buf))
        if e is None:
            self.keep[id(buf)] = [buf, g, g]
        else:
            e[2] = g
        self.last_kept = buf

    def pyrecord(self, spec, fwd, bwd, ins, out, n, dt, out_addr, producers, attrs=None, saves=True, grad=True,
                 spans=None, native=None):
        """Append an escape record of closures fwd() / bwd(g) (PyRec); returns its global index."""
        return self.append_py(PyRec(spec, fwd, bwd, ins, out, attrs, saves, spans), n, dt, out_addr, producers,
                              grad, native)

    def append_py(self, rec, n, dt, out_addr, producers, grad=True, native=None):
        """Append escape record `rec` (a PyRec); returns its global index. `native`: the descriptor
        with which the jitted replay runs the record itself (ops/pyops.py's Note [native records]);
        it follows the producer list in ``edges``, and column b holds its offset (0: none)."""
        if native and not _opfn.READY[2 * native[0] + (dt & 1)]:
            _opfn.ensure_native(native[0], dt & 1)     # (Note [native kinds] in kernels/gen_cpu.py)
        r = self.next_index
        e = len(self.edges)
        d = e + 1 + len(producers) if native else 0
        self.edges.append(len(producers))
        self.edges.extend(producers)
        if native:
            self.edges.extend(native)
        self.append((PY << 5) | dt, n, out_addr, e, d, -1, -1, 1 if grad else 0, 0.0)
        self.py[r] = rec
        if self.anomaly_stacks:
            self.capture_stacks(r, r + 1)
        return r

    def edges_np(self):
        """The producer lists and native descriptors as an int64 array, for one jitted call (the
        view must not outlive it: ``edges`` cannot grow while it is exported)."""
        return np.frombuffer(self.edges, np.int64) if len(self.edges) else _NO_EDGES

    def capture_stacks(self, lo, hi):
        """Anomaly mode: remember the Python stack that recorded records lo..hi-1 (the frames
        outside tapegrad; in this mode every record runs, and so is seen here, as it is made)."""
        stack = None
        for g in range(lo, hi):
            if g not in self.anomaly:
                if stack is None:
                    stack = [f for f in traceback.extract_stack()[:-1] if not f.filename.startswith(_PKG_DIR)]
                self.anomaly[g] = stack

    # ----- forward -----------------------------------------------------------
    def cols(self):
        f = self.frozen
        if f is not None:               # a captured step's rows never grow: its views are made once
            return (f[0], f[1]) if f[0].shape[0] == self.n else (f[0][:self.n], f[1][:self.n])
        v = self._views
        if v is None or v[2] is not self.buf:
            # NOTE: views of the whole buffer, made once and sliced per call (~2.5 us -> 0.4 us a
            # call, several calls a backward); grow() drops them before the buffer resizes
            m = memoryview(self.buf)
            v = self._views = (np.frombuffer(m, np.int64).reshape(-1, NCOL),
                               np.frombuffer(m, np.float64).reshape(-1, NCOL), self.buf)
        n = self.n
        return v[0][:n], v[1][:n]

    def flush(self):
        """Run every pending record (one jitted call between escape records)."""
        try:
            self._flush()
        except BaseException as e:
            traceback.clear_frames(e.__traceback__)   # see backward(): no views may outlive this call
            raise

    def _flush(self):
        hi = self.next_index
        if self.flushed >= hi:
            return
        if self.anomaly_stacks:
            self.capture_stacks(self.flushed, hi)
        T, C = self.cols()
        if config.DEBUG:
            from .debug import check_addresses
            check_addresses(self, T, self.flushed - self.base, hi - self.base)
        lo = self.flushed - self.base
        end = hi - self.base
        try:
            FT = _opfn.FT
            packs = True if self.permuted else None     # (Note [packed transposes] in kernels/gen_cpu.py)
            while lo < end:
                f64 = (T[lo, 0] & 3) == 1
                i = (R.forward_f64 if f64 else R.forward_f32)(T, C, self.edges_np(), FT, lo, end, packs)
                if i == -1:
                    break
                if i < -1:           # an op function not compiled yet (Note [op functions]): from there on
                    lo = -i - 2
                    _opfn.ensure_rows(T[lo:end, 0], T[lo, 0])
                    continue
                k = T[i, 0]
                if (k >> 5) == PY and T[i, 4] == 0:    # (native records run in the kernel of their dtype)
                    self.py[i + self.base].fwd()
                    lo = i + 1
                elif ((k & 3) == 1) == f64:   # a run of large elementwise records, in tiles
                    lo = (R.fwd_run_f64 if f64 else R.fwd_run_f32)(T, C, FT, i, end)
                    if lo < -1:
                        lo = -lo - 2
                        _opfn.ensure_rows(T[lo:end, 0])
                else:
                    lo = i           # a record of the other dtype: switch entry point
        finally:
            del T, C
        self.flushed = hi

    # ----- lifetime ------------------------------------------------------------
    def release(self, r):
        """The output tensor of record r died."""
        i = r - self.base
        if i >= 0:
            self.buf[i * ROW + ALIVE] = 0

    def maybe_sweep(self):
        if self.n >= self.sweep_at:
            self.sweep()

    def sweep(self, flush=True):
        """Drop the longest prefix of records that are dead and already ran
        (one jitted pass), so that the tape returns to its floor. flush=False (the arena
        reclaiming big buffers): records that have not run stay pending, and count as live."""
        if self.busy or self.hold_rows:
            return 0   # a backward pass is running, or a step is captured: physical indices must not move
        if flush and self.flushed < self.next_index:
            self.flush()   # records that have not run cannot be dropped: run them (DESIGN: flush at a bound)
        if self.n == 0:
            return 0
        live, k, used = self.liveness()
        released = False        # _release_dead has run with this `live`
        for _ in range(8):
            # NOTE: an escape record's closures may hold the tensors that keep earlier records alive
            # (a custom Function's ctx holds its inputs): releasing a dead one can free more; go again,
            # but only when what liveness() reads changed (the alive flags, the pins held by Nodes):
            # the records of ops/pyops.py's record() hold storage, not tensors, and the second pass
            # over a small loop's tape was half of each sweep (W5a: ~100 us every 32 steps)
            before = len(self.py)
            seen = self._liveness_inputs()
            self._release_dead(live)
            if len(self.py) == before or self._liveness_inputs() == seen:
                released = True
                break
            live, k, used = self.liveness()
        if self.leaf_hold:
            for slot in [s_ for s_ in self.leaf_hold if not used[s_]]:
                del self.leaf_hold[slot]
        base, n = self.base, len(live)
        # an index at or past the end is a record being appended right now: live
        for key in [key for key, (buf, recs) in self.big.items()
                    if all(r < base or (r - base < n and not live[r - base]) for r in recs)]:
            del self.big[key]
        if not released:
            self._release_dead(live)
        if k:
            self._drop(int(k))
        self.sweep_at = max(8192, 2 * self.n)
        return k

    def _liveness_inputs(self):
        """What liveness() reads that releasing Python objects can change: every row's alive flag
        (Tensor.__del__ clears it) and the pins (a Node's __del__ drops them)."""
        T, _ = self.cols()
        try:
            return T[:, ALIVE // 8].tobytes(), tuple(self.pins.items())
        finally:
            del T, _

    def liveness(self, lo=0):
        """(live[i] per physical record from lo on, length of the dead prefix that already ran,
        used[slot] per leaf slot a live record reads): one jitted pass. From lo > 0 the records
        below count as outside the tape (their liveness is not computed, nor used)."""
        T, _ = self.cols()
        edges = self.edges_np()
        used = np.zeros(len(self.leaf_addr), np.uint8) if lo == 0 else _NO_USED
        pins = np.fromiter(self.pins, np.int64, len(self.pins)) if self.pins else _NO_PINS
        live, k = _lifetime.sweep(T[lo:], edges, self.base + lo, self.flushed - self.base - lo, used, pins)
        return live, k, used

    # ----- in-place writes (for PyTorch's version-counter error) --------------------
    def log_inplace(self, spans):
        """Log in-place writes, ``(lo, hi, version counter, shape, dtype name)`` each,
        as happening before the next record."""
        at = self.next_index
        if self._nothing_saved_at == at:
            return    # no record since a prune found none that could be hit (a captured step's updates)
        self.inplace_log.extend([(lo, hi, at, vc, shape, dtname) for lo, hi, vc, shape, dtname in spans])
        self._log_max = max(self._log_max, at)
        if len(self.inplace_log) >= self._log_prune_at:
            self.prune_inplace_log()

    # NOTE: the version check compares every saved operand of a backward with every log
    # entry, so entries must not pile up between sweeps: a training loop writing its
    # parameters in place each step made backward ~0.5 us per entry slower (measured:
    # 112 us -> 553 us between two sweeps). An entry can only be hit by a record before it
    # that is live, unconsumed (a consumed one raises "backward through the graph a second
    # time" first), records grad, saves values, and has an operand overlapping the entry's
    # bytes (escape records: their inputs' spans).
    def prune_inplace_log(self):
        """Drop in-place log entries that no later backward can hit (one liveness pass)."""
        log = self.inplace_log
        keep = []
        if not self.n:
            self._nothing_saved_at = self.next_index
        if self.n and log:
            # Note [prune low-water mark]: only the rows from _prune_lo on are read. A row below the
            # first one that could be hit stays unhittable: what makes it so (dead, consumed, saves
            # nothing, needs no gradient) never changes back (the tape only appends; a dead record's
            # output tensor is gone, so nothing new reads it). Holding every step's loss (a common
            # loop) kept ~2 rows a step live, and a prune over the whole tape made each step slower
            # than the last (W5a: 190 -> 365 us a step after 30k steps). A graph that stays live and
            # unbackwarded from before such a loop holds the mark at its rows (the rows after it
            # are read again at each prune, as before).
            lo = min(max(self._prune_lo - self.base, 0), self.n)
            live, _, _ = self.liveness(lo)
            T, _ = self.cols()
            T = T[lo:]
            codes = T[:, 0]
            ops = codes >> 5
            idx = np.flatnonzero((live != 0) & (_HAS_SAVES[ops] != 0) & (ops != PY) & ((codes & 16) == 0)
                                 & ((T[:, 5] != -1) | (T[:, 6] != -1)))
            pyidx = np.flatnonzero((live != 0) & (ops == PY) & ((codes & 16) == 0))
            rows = T[idx]   # a copy
            del T, codes, ops
            first = min(idx[0] if len(idx) else len(live), pyidx[0] if len(pyidx) else len(live))
            self._prune_lo = self.base + lo + int(first)
            idx += lo
            pyidx += lo
            self._nothing_saved_at = self.next_index if not len(idx) and not len(pyidx) else -1
            py_hit = set()
            for i in pyidx:
                g = self.base + int(i)
                rec = self.py.get(g)
                if rec is None or not rec.saves or not rec.spans:
                    continue
                for addr, shape, strides, isz in rec.spans:
                    end = addr + byte_span(shape, strides, isz)
                    for ei, e in enumerate(log):
                        if e[2] > g and e[0] < end and addr < e[1]:
                            py_hit.add(ei)
            keep = [log[i] for i in sorted(py_hit)]
            if len(idx):
                at = np.array([e[2] for e in log], np.int64)
                cand = np.flatnonzero(at > self.base + idx[0])
                if len(cand) * len(idx) > (1 << 22):   # too many to compare: keep by position only
                    keep = [log[i] for i in cand if i not in py_hit] + keep
                elif len(cand):
                    g = self.base + idx                                         # the records' indices
                    nb = rows[:, 1] * np.where((rows[:, 0] & 3) == 0, 4, 8)     # bytes of each operand (at most)
                    lo = np.array([log[i][0] for i in cand], np.int64)[:, None, None]
                    hi = np.array([log[i][1] for i in cand], np.int64)[:, None, None]
                    addr = rows[:, 2:5][None, :, :]                             # out, a, b
                    hit = (((addr < hi) & (lo < addr + nb[None, :, None])).any(axis=2)
                           & (g[None, :] < at[cand][:, None]))
                    keep += [log[i] for i in cand[hit.any(axis=1)] if i not in py_hit]
        log[:] = keep
        self._log_max = max((e[2] for e in keep), default=-1)
        self._log_prune_at = max(32, 2 * len(log))

    def _release_dead(self, live):
        """What dead records hold is let go even when a live record before them
        keeps the rows from being dropped (only a dead *prefix* of rows can go):
        escape records' NumPy closures, and the slabs that no live record may use.
        A long-lived non-leaf tensor then costs 72 bytes per later record, not
        the memory those records used."""
        base, n = self.base, len(live)
        flushed = self.flushed
        lv = live.tobytes()     # (indexing bytes: ~30 ns an entry; a NumPy scalar: ~300)
        for g in [g for g in self.py if g - base < n and g < flushed and not lv[g - base]]:
            del self.py[g]
        cum = None      # live rows before each index, made when a slab's range first needs it
        end = self.next_index
        cand = []
        for key, (buf, first, last) in list(self.keep.items()):
            if buf is ARENA.slab:
                continue
            if last + 4096 < end:
                lo_, hi_ = max(first, base) - base, min(last + 4096, end - 1) - base
                if cum is None:
                    cum = np.zeros(n + 1, np.int64)
                    np.cumsum(live, dtype=np.int64, out=cum[1:])
                if hi_ < lo_ or cum[hi_ + 1] - cum[lo_] == 0:
                    self._let_go(key, buf)
                    continue
            cand.append((key, buf))
        if len(cand) <= _FEW_SLABS:
            return
        # NOTE: past a few, a slab goes when no live row addresses it. Its (first, last) range is
        # padded by a segment (keep_alive), and a loop of few records and large tensors (W2: 7 a
        # step, half a slab of activations) held ~340 slabs for those 4096 records. Escape records
        # hold their operands' slabs themselves; a tensor that records may use later holds its
        # slab, and its next record keeps the slab again (last_kept is cleared). (Only past a few:
        # the exact test reads every live row, 0.4 ms of a W1 step when done at every sweep.)
        T, _ = self.cols()
        try:
            rows = np.flatnonzero(live)
            A = T[rows, 2:5]
            A[(T[rows, 0] >> 5) == PY, 1:] = 0      # an escape row's columns 3, 4 are offsets in edges
        finally:
            del T, _
        addrs = np.unique(A)
        los = np.array([base_address(buf) for _, buf in cand], np.int64)
        his = los + np.array([buf.nbytes for _, buf in cand], np.int64)
        if len(addrs):
            at = np.searchsorted(addrs, los)
            hit = (at < len(addrs)) & (addrs[np.minimum(at, len(addrs) - 1)] < his)
        else:
            hit = np.zeros(len(cand), np.bool_)
        for (key, buf), h in zip(cand, hit.tolist()):
            if not h:
                self._let_go(key, buf)

    def _let_go(self, key, buf):
        """No live record may use slab `buf` (keep entry `key`): the arena may reuse it."""
        del self.keep[key]
        if buf is self.last_kept:
            self.last_kept = None
        ARENA.recycle(buf)

    def _drop(self, k):
        rest = self.n - k
        size = max(ROW * 4096, 2 * rest * ROW)
        if len(self.buf) <= 2 * size:
            # NOTE: the rows left move down in place (the cached views stay valid): a new zeroed
            # buffer for every sweep was a third of a small training loop's sweep (~25 us)
            self.buf[:rest * ROW] = self.buf[k * ROW:self.n * ROW]
        else:                   # much larger than what is left (a big graph went): give it back
            buf = bytearray(size)
            buf[:rest * ROW] = memoryview(self.buf)[k * ROW:self.n * ROW]
            self._views = None
            self.buf = buf
        self.n = rest
        self.base += k
        base = self.base
        for g in [g for g in self.py if g < base]:
            del self.py[g]
        for key in [key for key, e in self.keep.items() if e[2] + 4096 < base and e[0] is not ARENA.slab]:
            self._let_go(key, self.keep[key][0])
        for g in [g for g in self.retained if g < base]:
            del self.retained[g]
        for d in (self.anomaly, self.hooks):
            for g in [g for g in d if g < base]:
                del d[g]
        self.inplace_log = [e for e in self.inplace_log if e[2] >= base]
        self._log_max = max((e[2] for e in self.inplace_log), default=-1)
        self.last_kept = None
        self._compact_edges()
        still = []
        for dead_at, slot in self.leaf_dying:
            if dead_at <= base:      # no record that may use the slot is left: recycle it
                self.leaf_free.append(slot)
            else:
                still.append((dead_at, slot))
        self.leaf_dying = still

    def _compact_edges(self):
        """After a drop: the producer lists and descriptors of dropped escape records go.
        NOTE: edges used to be emptied only when the whole tape was dropped, which a training loop
        never does (the step being backpropagated is live when backward sweeps), so it grew
        without bound: 53 KB a step for W4 eager, 0.5 GB over 10,000 steps. The kept part moves
        to a new array (a captured program holds the old one, with its own offsets) once the
        dead prefix is at least half of it, and the rows' offsets (column a, and b where it
        holds a descriptor) move with it."""
        if not self.n:
            self.edges = array("q")
            return
        if self.n <= 16:        # a few rows (a training step's, usually): one by one beats NumPy calls
            buf, py = self.buf, []
            for i in range(self.n):
                if _Q.unpack_from(buf, i * ROW)[0] >> 5 == PY:
                    py.append(i)
            e0 = min([_Q.unpack_from(buf, i * ROW + 24)[0] for i in py]) if py else len(self.edges)
            if e0 == 0 or 2 * e0 < len(self.edges):
                return
            self.edges = self.edges[e0:]
            for i in py:
                _Q.pack_into(buf, i * ROW + 24, _Q.unpack_from(buf, i * ROW + 24)[0] - e0)
                d = _Q.unpack_from(buf, i * ROW + 32)[0]
                if d:
                    _Q.pack_into(buf, i * ROW + 32, d - e0)
            return
        T, _ = self.cols()
        try:
            py = np.flatnonzero((T[:, 0] >> 5) == PY)
            e0 = int(T[py, 3].min()) if len(py) else len(self.edges)
            if e0 == 0 or 2 * e0 < len(self.edges):
                return
            self.edges = self.edges[e0:]            # (slicing an array copies it)
            T[py, 3] -= e0
            nat = py[T[py, 4] != 0]
            T[nat, 4] -= e0
        finally:
            del T, _

    # ----- leaves --------------------------------------------------------------
    def new_leaf_slot(self, nbytes, owner):
        root, addr = ARENA.alloc(nbytes)
        if self.leaf_free:
            s = self.leaf_free.pop()
            self.leaf_addr[s] = addr
            self.leaf_nbytes[s] = nbytes
            self.leaf_state[s] = 0
            self.leaf_buf[s] = root
            self.leaf_owner[s] = weakref.ref(owner)
        else:
            s = len(self.leaf_addr)
            done = []
            try:   # all four tables grow together or not at all
                for arr, v in ((self.leaf_addr, addr), (self.leaf_nbytes, nbytes), (self.leaf_state, 0)):
                    arr.append(v)
                    done.append(arr)
            except BufferError:
                for arr in done:
                    arr.pop()
                raise
            self.leaf_buf.append(root)
            self.leaf_owner.append(weakref.ref(owner))
        return s

    def renew_leaf_buffer(self, s):
        """Give slot s a fresh buffer (its old one was handed out as .grad)."""
        if self.capture is not None:
            self.capture.no("it sets .grad to None after reading .grad (the gradient's buffer moves)")
        root, addr = ARENA.alloc(self.leaf_nbytes[s], zero=False)   # state 0: zeroed on first use
        self.leaf_addr[s] = addr
        self.leaf_buf[s] = root
        self.leaf_state[s] = 0

    def free_leaf_slot(self, s):
        self.leaf_hooks.pop(s, None)
        self.leaf_buf[s] = None
        self.leaf_owner[s] = None
        self.leaf_state[s] = 0
        self.leaf_dying.append((self.next_index, s))

    def leaf_view(self, s, shape, npdt):
        n = 1
        for d in shape:
            n *= d
        strides, acc = [], 1
        for d in reversed(shape):
            strides.append(acc)
            acc *= d
        return view(self.leaf_buf[s], self.leaf_addr[s], shape, tuple(reversed(strides)), npdt)

    # ----- backward ------------------------------------------------------------
    # Note [backward passes]: a pass is one reverse replay from one or more roots. Everything
    # it needs lives in a _Pass, not on the tape, because passes nest: a custom Function's
    # backward, a hook or a checkpoint may record ops and even run a backward of its own in the
    # middle of one. For the same reason no view of the rows is held while Python code runs
    # (the rows may grow), and no sweep runs while a pass is active (the physical index of a
    # record must not move under it).
    def backward(self, root, seed, retain_graph, **kw):
        """Reverse replay from global record `root` with gradient `seed` (an array of the
        root's shape and dtype); see backward_many."""
        return self.backward_many([root], [seed], retain_graph, **kw)

    def backward_many(self, roots, seeds, retain_graph, leaves=None, only=False, capture=()):
        """Reverse replay from the global records `roots`, seeded with `seeds`. Fills leaf slots
        and retained grads, and frees saved values unless retain_graph.

        leaves: {slot: zeroed uint8 buffer} collects those leaves' gradients there instead of
        in their slots; only: no other leaf slot is written (autograd.grad); capture: global
        records whose gradient to return, {record: NumPy copy or None}."""
        if self.capture is not None and not self.busy:
            if leaves or only or capture:
                self.capture.no("it calls autograd.grad or backward(inputs=...)")
            else:
                self.capture.add("backward", (list(roots), list(seeds)))
        if len(self.py) >= self.py_sweep_at:
            # NOTE: an escape record holds a dozen Python objects (closures, views, lists) that the
            # cyclic GC tracks; kept until a length-triggered sweep (thousands of steps of a small
            # training loop), they reach the oldest generation, whose collections then scan every
            # object of the process: ~90 ms each, 47 us a W5a step measured (gc.callbacks, 4000
            # steps). A backward, where a training step's earlier graphs are dead, sweeps once 64
            # of them are held (a short tape sweeps cheaply); when they are live, the bound doubles.
            self.sweep(flush=False)
            self.py_sweep_at = max(_PY_SWEEP, 2 * len(self.py))
        mode = _GRAD[0]
        _GRAD[0] = False    # as torch's engine: hooks and custom backwards run with grad mode = create_graph
        try:
            return self._backward(roots, seeds, retain_graph, leaves, only, capture)
        except BaseException as e:
            # NOTE: a traceback keeps its frames' locals, and so NumPy views of the tape's
            # buffers: the tape could never grow again (BufferError). Drop them.
            traceback.clear_frames(e.__traceback__)
            raise
        finally:
            _GRAD[0] = mode

    def mark_roots(self, roots, fold=False, keep=None, zeros=None):
        """(need, total, idx): need[g - base] = 1 + byte offset of the gradient of each record
        reachable from global records `roots` (0 elsewhere), total = the scratch bytes they take,
        idx = the physical indices of those records, ascending. Raises PyTorch's errors for a
        freed graph or a saved value modified in place (nothing has run). fold: a backward pass
        leaves out the views Note [folded transposes] (kernels/lifetime.py) folds (not in anomaly
        mode), but for records something looks at: with hooks, retained grads, or in `keep`
        (the global records whose gradients autograd.grad returns). zeros: an all-zero int64
        array at least as long as the tape, that need is a view of (default: a new one)."""
        base = self.base
        T, C = self.cols()
        if len(roots) == 1:
            ra = self._one_root
            ra[0] = roots[0]
        else:
            ra = np.array(roots, np.int64)
        E = self.edges_np()
        need, total, low, idx = _lifetime.mark_all(T, E, ra, base, np.zeros(self.n, np.int64) if zeros is None
                                                    else zeros)
        if total < 0:
            del T, C, E
            raise RuntimeError(SECOND_TIME)
        if fold and self.permuted and not self.detect_anomaly:
            ka = (np.array([*self.hooks, *self.retained, *(keep or ())], np.int64)
                  if self.hooks or self.retained or keep else _NO_RECORDS)
            idx = _lifetime.fold_transposes(T, E, need, idx, base, ka, ra)
        del E
        try:
            if self.inplace_log:
                self._check_versions(T, idx, base)
        finally:
            del T, C
        return need, total, idx

    # Note [backward's zeroed arrays]
    # ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
    # A backward's marks (need) and gradient addresses (gaddr) have one int64 per row of the tape,
    # but only the rows the pass reaches are written. Made with np.zeros for every pass, they cost
    # what the tape's length costs: a loop that keeps each step's loss (`losses.append(loss)`)
    # keeps its rows, and at 60k rows the two arrays took ~28 us of each step (np.zeros, 480 KB).
    # The tape keeps one zeroed pair instead; a backward takes it, and zeroes back only the rows
    # between the lowest one it reached and its root (all of them after an error). A backward
    # started while one runs (from a hook) makes its own.
    def _backward(self, roots, seeds, retain_graph, leaves, only, capture):
        zeros = self._zeros
        pooled = zeros is not None              # (None: a backward inside a backward)
        if not pooled:
            zeros = (np.zeros(self.n, np.int64), np.zeros(self.n, np.int64))
        else:
            self._zeros = None
            if len(zeros[0]) < self.n:
                k = max(8192, 2 * self.n)
                zeros = (np.zeros(k, np.int64), np.zeros(k, np.int64))
        span = [0, len(zeros[0])]   # the rows of need and gaddr to zero again (all of them after an error)
        try:
            got = self._backward_with(roots, seeds, retain_graph, leaves, only, capture, zeros, span)
            span[1] = max(roots) - self.base + 1
            return got
        finally:
            if pooled:
                zeros[0][span[0]:span[1]] = 0
                zeros[1][span[0]:span[1]] = 0
                self._zeros = zeros

    def _backward_with(self, roots, seeds, retain_graph, leaves, only, capture, zeros, span):
        base = self.base
        root = max(roots)
        need, total, idx = self.mark_roots(roots, True, capture, zeros[0])
        lo = base + int(idx[0])     # the lowest record this backward reaches
        span[0] = lo - base
        if (len(roots) == 1 and root == self.next_index - 1 and 0 < root - self.flushed <= _FUSE_MAX
                and not (retain_graph or leaves or only or capture)
                and not _opfn.FT[R.SERIAL]     # (fused_* is a parallel loop: Note [forked children])
                and (struct.unpack_from("<q", self.buf, (root - base) * ROW)[0] >> 5) in _REDUCE):
            plan = self._fusion_plan(root, need)
            if plan is not None:
                self._run_fused(plan, root, seeds[0])
                return {}
        self.flush()      # only now: a backward that raises above leaves the tape as it was
        P = _Pass()
        keep = self._scratch_keep
        # NOTE: references to a scratch no pass uses: _scratch_keep's tuple and the argument
        if keep is None or keep[0].nbytes < total + 64 or sys.getrefcount(keep[0]) > 2:
            P.scratch = np.zeros(int(total) + 64, np.uint8)
            P.saddr = P.scratch.ctypes.data
            if not self.busy:
                self._scratch_keep = (P.scratch, P.saddr)
        else:
            P.scratch, P.saddr = keep      # (zeroed by start_pass)
        seed_row, seed_val = -1, 0.0
        if len(roots) == 1 and seeds[0].__class__ is np.ndarray and seeds[0].size == 1 \
                and seeds[0].dtype.kind == "f":     # loss.backward(): seeded by start_pass
            seed_row, seed_val = root - base, float(seeds[0].flat[0])
            seeds = ()
        P.gaddr = _lifetime.start_pass(need, idx, zeros[1][:self.n], P.scratch, int(total) + 64, seed_row, seed_val,
                                       seed_row >= 0 and (self.buf[(root - base) * ROW] & 3) == 1)
        if not (leaves or only or self.leaf_hooks or self.hooks or self.detect_anomaly):
            # every slot collects in place: the pass uses the tape's own tables (the kernels get
            # views of them for each call only: Python code run by the pass may add slots)
            P.direct = True
            P.la, P.ls, P.ln = self.leaf_addr, self.leaf_state, self.leaf_nbytes
            P.bufs = {}
            P.off = None
        else:
            self._private_leaf_tables(P, leaves, only)
        prev_scratch, self._scratch = self._scratch, P.scratch
        self.busy += 1
        try:
            for r, seed in zip(roots, seeds):
                seed = np.asarray(seed)
                if seed.size == 1:      # loss.backward(): one element, without a view of its shape
                    off = int(P.gaddr[r - base]) - P.saddr
                    P.scratch[off:off + seed.itemsize].view(seed.dtype)[0] += seed.flat[0]
                else:
                    self._grad_view(P, r - base, seed.shape, seed.dtype)[...] += seed
            if config.DEBUG:
                from .debug import check_addresses
                T, _ = self.cols()
                try:
                    check_addresses(self, T, lo - base, root - base + 1, gaddr=P.gaddr)
                finally:
                    del T, _
            hi = root - base
            stops = self._stops(idx)
            for s in stops:
                self._replay(P, hi, s + 1)
                self._hooked(P, s)
                hi = s - 1
            self._replay(P, hi, lo - base)
            got = {}
            for g in capture:
                k = g - base
                if 0 <= k < len(P.gaddr) and P.gaddr[k]:
                    shape, npdt = capture[g]
                    got[g] = self._grad_view(P, k, shape, npdt).copy()
                else:
                    got[g] = None
            if leaves is None:
                for g, ref in list(self.retained.items()):
                    t = ref()
                    if t is None:
                        del self.retained[g]
                    elif base <= g <= root and P.gaddr[g - base]:
                        t._accumulate_retained(self._grad_view(P, g - base, t.shape, t.dtype.np).copy())
            self._finish_leaves(P, leaves, only)
            if leaves:
                got["leaves"] = {s: bool(P.ls[s]) for s in leaves}
            if not retain_graph:
                self._free_saved(idx)
            return got
        finally:
            self.busy -= 1
            self._scratch = prev_scratch

    def _private_leaf_tables(self, P, leaves, only):
        """Private copies of the leaf tables for pass P (the state goes back in _finish_leaves):
        some slots collect elsewhere (hooks, autograd.grad's inputs) or nowhere (only)."""
        nslots = len(self.leaf_addr)
        P.la = np.frombuffer(self.leaf_addr, np.int64).copy() if nslots else np.zeros(1, np.int64)
        P.ls = np.frombuffer(self.leaf_state, np.int8).copy() if nslots else np.zeros(1, np.int8)
        P.bufs = dict(leaves or {})
        P.off = None
        if only and nslots:
            # NOTE: the other leaves' gradients go to a dummy buffer, not to address 0: a jitted unary
            # rule writes its input's gradient unconditionally (its input always needs one)
            P.off = np.ones(nslots, np.bool_)
            P.dummy = np.zeros(max(self.leaf_nbytes) + 64, np.uint8)
            P.la[:nslots] = P.dummy.ctypes.data
            P.ls[:nslots] = 1
        elif self.leaf_hooks:
            for s in self.leaf_hooks:   # a leaf's hooks see its whole gradient of this pass (torch: once)
                if s < nslots and s not in P.bufs:
                    P.bufs[s] = np.zeros(self.leaf_nbytes[s], np.uint8)
        for s, buf in P.bufs.items():
            P.la[s] = buf.ctypes.data
            P.ls[s] = 0
            if P.off is not None:
                P.off[s] = False
        P.ln = np.frombuffer(self.leaf_nbytes, np.int64).copy() if nslots else np.zeros(1, np.int64)

    # ----- a pending elementwise chain, forward and backward fused ---------------------------
    # Note [fused backward]: when backward() meets a loss that has not run yet, the full sum or mean
    # of a chain of large elementwise records that have not run either (W3's
    # (sin(x)*exp(-x*x)).sum()), forward and backward run together tile by tile (R.fused_*).
    # Intermediates whose tensors are dead, and every gradient but the leaves', then never leave
    # the cache: about 2 memory passes instead of 12 (reads of x, writes of x.grad). The kernel
    # does the same arithmetic in the same order per element as the unfused path (sums go tile by
    # tile in both), so the bits are the same. Only when nothing else could look: no hooks, no
    # retained or captured grads, no anomaly mode, retain_graph=False (the saved values that are
    # never written are freed by this backward anyway), and every pending record in the chain.
    def _fusion_plan(self, root, need):
        """The arrays fused_* takes for a backward from `root`, or None when the pending records
        are not one such chain (see Note [fused backward])."""
        lo = self.flushed
        if (self.detect_anomaly or self.anomaly_stacks or self.capture is not None or self.frozen is not None
                or any(lo <= g <= root for d in (self.hooks, self.retained) if d for g in d)):
            return None
        base = self.base
        T, C = self.cols()
        try:
            code, n, out, a, b, pa, pb = (int(v) for v in T[root - base, :7])
            N, dt = b, code & 3
            isz = 4 if dt == 0 else 8
            if (code >> 5) not in _REDUCE or n != 1 or N < config.PARALLEL_THRESHOLD or not lo <= pa < root:
                return None
            rows = np.arange(lo - base, root - base, dtype=np.int64)
            R_ = T[rows]
            if not ((R_[:, 0] >> 5 >= _ELEM[0]).all() and (R_[:, 0] >> 5 <= _ELEM[1]).all()
                    and (R_[:, 1] == N).all() and ((R_[:, 0] & 19) == dt).all() and need[rows].all()):
                return None       # (& 19: dtype bits and the consumed bit)
            if config.DEBUG:
                from .debug import check_addresses
                check_addresses(self, T, lo - base, root - base + 1)
        finally:
            del T, C
        k = len(rows)
        om, gla, glb = (np.zeros(k, np.int64) for _ in range(3))        # written? leaf gradient addresses
        ia, ib, gja, gjb = (np.full(k, -1, np.int64) for _ in range(4))  # run indices (-1: none)
        # NOTE: a dead output in an own buffer that no tensor or view holds (the pool, the tape's
        # big table and this loop are its only references) need not be written; anything else is
        dead = {addr: buf for buf, addr in ARENA.pool}
        zl, slots = [], []
        for q in range(k):
            c0, _, o, _, _, p0, p1 = (int(v) for v in R_[q, :7])
            buf = dead.get(o)
            om[q] = 0 if buf is not None and sys.getrefcount(buf) <= _DEAD_REFS else 1
            del buf
            for p, bit, ix, gj, gl in ((p0, 4, ia, gja, gla), (p1, 8, ib, gjb, glb)):
                if p == -1:
                    continue
                if c0 & bit:
                    return None     # a broadcast operand that needs a gradient: tiles would race on it
                if lo <= p < root:
                    ix[q] = gj[q] = p - lo
                elif p <= -2:
                    s = -p - 2
                    if self.leaf_nbytes[s] != N * isz or s in self.leaf_hooks:
                        return None
                    gl[q] = self.leaf_addr[s]
                    if self.leaf_state[s] == 0 and s not in slots:
                        slots.append(s)
                        zl.append(self.leaf_addr[s])
                else:
                    return None     # a record that already ran needs a gradient
        return (rows, om, ia, ib, gja, gjb, gla, glb, np.array(zl, np.int64), pa - lo, N, dt, slots)

    def _run_fused(self, plan, root, seed):
        rows, om, ia, ib, gja, gjb, gla, glb, zl, jr, N, dt, slots = plan
        base = self.base
        sd = np.zeros((), np.float32 if dt == 0 else np.float64)
        sd[...] += np.asarray(seed)        # as the unfused pass seeds its zeroed scratch
        T, C = self.cols()
        try:
            _opfn.ensure_rows(T[rows, 0])
            (R.fused_f64 if dt == 1 else R.fused_f32)(T, C, _opfn.FT, rows, om, ia, ib, gja, gjb, gla, glb, zl, jr,
                                                      root - base, sd.ctypes.data, N, numba.get_num_threads())
            for s in slots:
                self.leaf_state[s] = 1
            self.flushed = root + 1
        finally:
            del T, C
        self._free_saved(np.append(rows, root - base))

    def _free_saved(self, k):
        """Mark the records at physical indices k that saved values as freed (the consumed bit):
        a backward without retain_graph."""
        if len(k) <= 16:        # a small graph: row by row beats five NumPy calls
            buf, base, py = self.buf, self.base, self.py
            for i in k.tolist():
                c = _Q.unpack_from(buf, i * ROW)[0]
                op = c >> 5
                if (py[i + base].saves if op == PY else _HAS_SAVES[op]):
                    _Q.pack_into(buf, i * ROW, c | 16)
            return
        T, _ = self.cols()
        try:
            codes = T[k, 0]
            ops = codes >> 5
            sel = _HAS_SAVES[ops] != 0
            esc = np.flatnonzero(ops == PY)      # escape records say themselves whether they save
            if len(esc):
                py = self.py
                # (Python ints from tolist(): a NumPy scalar per record was 0.15 ms of W4's backward)
                sel[esc] = [bool(py[g].saves) for g in (k[esc] + self.base).tolist()]
            T[k[sel], 0] = codes[sel] | 16
        finally:
            del T, _

    # ----- a fixed backward, replayed (tapegrad.capture) -----------------------------------
    def plan_backward(self, roots, share=False):
        """What a backward from `roots` needs that does not change between replays of the same
        rows: the marked records and their gradient addresses in a scratch buffer of its own.
        share: the buffers are shared (Note [shared gradient scratch] in kernels/lifetime.py;
        only for a backward that zeroes them after use and that nothing else reads: P.clean)."""
        need, total, idx = self.mark_roots(roots, True)
        share = share and not (self.hooks or self.retained or self.detect_anomaly)
        if share:
            T, _ = self.cols()
            E = self.edges_np()
            try:
                need, total = _lifetime.share_scratch(T, E, need, idx, self.base, np.array(roots, np.int64))
            finally:
                del T, _, E
        P = _Pass()
        P.scratch = np.zeros(int(total) + 64, np.uint8)
        P.saddr = P.scratch.ctypes.data
        P.gaddr = _lifetime.start_pass(need, idx, np.zeros(self.n, np.int64), P.scratch, 0, -1, 0.0, False)
        P.bufs = {}
        P.off = None
        P.views = {}
        P.clean = share
        return P

    def run_plan(self, P, roots, seeds):
        """Replay a planned backward: accumulate into the leaves' slots (no hooks, no retained grads,
        nothing freed)."""
        P.scratch.fill(0)
        n = len(self.leaf_addr)
        P.la = np.frombuffer(self.leaf_addr, np.int64) if n else np.zeros(1, np.int64)
        P.ls = np.frombuffer(self.leaf_state, np.int8) if n else np.zeros(1, np.int8)
        P.ln = np.frombuffer(self.leaf_nbytes, np.int64) if n else np.zeros(1, np.int64)
        self.busy += 1
        try:
            for r, seed in zip(roots, seeds):
                self._grad_view(P, r - self.base, seed.shape, seed.dtype)[...] += np.asarray(seed)
            self._replay(P, max(roots) - self.base, 0)
        finally:
            self.busy -= 1
            P.la = P.ls = P.ln = None

    def _stops(self, marked):
        """Physical indices (descending) of the marked records Python must see one by one:
        those with hooks, or all of them in anomaly mode."""
        if self.detect_anomaly:
            return [int(i) for i in marked[::-1]]
        if not self.hooks:
            return []
        base = self.base
        return sorted((g - base for g in self.hooks if g - base in set(marked.tolist())), reverse=True)

    def _replay(self, P, hi, lo):
        """Jitted reverse replay of physical records hi..lo; escape records in Python."""
        while hi >= lo:
            T, C = self.cols()
            E = self.edges_np()
            la, ls, ln = self._leaf_tables(P)
            FT = _opfn.FT
            try:
                f64 = (T[hi, 0] & 3) == 1
                i = (R.backward_f64 if f64 else R.backward_f32)(T, C, E, FT, P.gaddr, la, ls, ln, self.base, hi, lo, 0)
                while i >= 0 and (T[i, 0] >> 5) != PY and ((T[i, 0] & 3) == 1) == f64:
                    # a run of large elementwise records, in tiles; then on from the record before it
                    i = (R.bwd_run_f64 if f64 else R.bwd_run_f32)(T, C, FT, P.gaddr, la, ls, ln, self.base, i, lo)
                    if i < -1:
                        break
                    i = (R.backward_f64 if f64 else R.backward_f32)(T, C, E, FT, P.gaddr, la, ls, ln, self.base, i,
                                                                    lo, 0)
                py = i >= 0 and (T[i, 0] >> 5) == PY and T[i, 4] == 0   # (a native one: the other dtype)
                if i < -1:           # an op function not compiled yet (Note [op functions]): from there on
                    _opfn.ensure_rows(T[lo:-i - 1, 0], T[-i - 2, 0])
            finally:
                del T, C, E, la, ls, ln
            if i < -1:
                hi = -i - 2
                continue
            if i < 0:
                return
            if py:
                rec = self.py[i + self.base]
                if rec.spec.kind == "function":     # user code, which may run a backward of its own
                    self._sync_leaves(P, out=True)
                    grads = self._py_grads(P, i)
                    self._sync_leaves(P, out=False)
                else:
                    grads = self._py_grads(P, i)
                self._accumulate(P, i, grads)
                hi = i - 1
            else:
                hi = i      # a record of the other dtype: switch entry point

    def _leaf_tables(self, P):
        """The leaf tables of pass P as arrays for one jitted call (views of the tape's own tables
        for a direct pass: they must not outlive the call)."""
        if not P.direct:
            return P.la, P.ls, P.ln
        if not len(self.leaf_addr):
            return _NO_EDGES, np.zeros(1, np.int8), _NO_EDGES
        return (np.frombuffer(self.leaf_addr, np.int64), np.frombuffer(self.leaf_state, np.int8),
                np.frombuffer(self.leaf_nbytes, np.int64))

    def _finish_leaves(self, P, leaves, only):
        """After the replay: leaf hooks see the gradient this pass collected aside for their leaf
        (and may replace it); what was collected aside only for a hook goes to the leaf's slot;
        the private copy of the state table goes back for the slots written in place."""
        for s, buf in P.bufs.items():
            if not P.ls[s]:
                continue        # no record reached the leaf
            owner = self.leaf_owner[s]
            t = owner() if owner is not None else None
            if t is None:
                continue
            nb = self.leaf_nbytes[s]
            v = buf[:nb].view(t._dtype.np).reshape(t._shape)
            for fn in list(self.leaf_hooks.get(s, {}).values()):
                r = fn(_tensor_of(v.copy()))
                if r is not None:
                    v[...] = _check_hook_result(r, v, fn)
            if leaves is not None and s in leaves:
                continue        # autograd.grad reads it from there
            dst = self.leaf_view(s, t._shape, t._dtype.np)
            if self.leaf_state[s] == 0:
                dst[...] = v
                self.leaf_state[s] = 1
            else:
                dst[...] += v
        self._sync_leaves(P, out=True)

    def _sync_leaves(self, P, out):
        """The pass's private leaf states of the slots it writes in place go to the tape (out) or
        come back from it: a nested pass in user code then sees, and leaves, the true state."""
        if P.direct:
            return          # the pass wrote the tape's own tables
        n = min(len(self.leaf_state), len(P.la))
        if not n or P.ls is None:
            return
        real = np.frombuffer(self.leaf_state, np.int8)
        try:
            inplace = P.la[:n] != 0     # neither collected aside (bufs) nor disabled (off)
            if P.off is not None:
                inplace &= ~P.off[:n]
            for s in P.bufs:
                if s < n:
                    inplace[s] = False
            if out:
                real[:n][inplace] = P.ls[:n][inplace]
            else:
                P.ls[:n][inplace] = real[:n][inplace]
        finally:
            del real

    def _grad_view(self, P, i, shape, npdt):
        """The gradient buffer of physical record i in pass P, a view into the scratch bytes
        (slicing the scratch array: ~3x cheaper than np.ndarray(buffer=...))."""
        views = P.views
        if views is not None:       # a planned backward: its scratch never moves, views are kept
            key = (i, shape, npdt)
            v = views.get(key)
            if v is None:
                v = views[key] = self._grad_view_new(P, i, shape, npdt)
            return v
        return self._grad_view_new(P, i, shape, npdt)

    @staticmethod
    def _grad_view_new(P, i, shape, npdt):
        npdt = np.dtype(npdt)
        n = 1
        for d in shape:
            n *= d
        off = int(P.gaddr[i]) - P.saddr
        return P.scratch[off:off + n * npdt.itemsize].view(npdt).reshape(tuple(shape))

    # ----- one record at a time (escape records, hooks, anomaly mode) ----------------
    def inputs_of(self, i):
        """[(producer code, shape, NumPy dtype)] of physical record i's inputs; the shapes of a
        jitted record's operands are flat (the tape keeps element counts only)."""
        c = self.inputs_cache
        if c is not None:
            r = c.get(i)
            if r is None:
                r = c[i] = self._inputs_of(i)
            return r
        return self._inputs_of(i)

    def _inputs_of(self, i):
        code, n, out, a, b, pa, pb = struct.unpack_from("<7q", self.buf, i * ROW)
        op = code >> 5
        if op == PY:
            rec = self.py[i + self.base]
            cnt = self.edges[a]
            return [(self.edges[a + 1 + j], shape, npdt) for j, (shape, npdt) in enumerate(rec.ins)][:cnt]
        npdt = np.dtype(np.float64 if (code & 3) == 1 else np.float32)
        spec = BY_OPCODE[op]
        bc = (code >> 2) & 3
        if spec.kind == "reduce":
            return [(pa, (b,), npdt)]
        ins = [(pa, (1 if bc & 1 else n,), npdt)]
        if spec.kind == "binary":
            ins.append((pb, (1 if bc & 2 else n,), npdt))
        return ins

    def out_of(self, i):
        """(shape, NumPy dtype) of physical record i's output (flat for a jitted record)."""
        c = self.inputs_cache
        if c is not None:
            r = c.get(("out", i))
            if r is None:
                r = c[("out", i)] = self._out_of(i)
            return r
        return self._out_of(i)

    def _out_of(self, i):
        code, n = struct.unpack_from("<2q", self.buf, i * ROW)
        if (code >> 5) == PY:
            return self.py[i + self.base].out
        return (n,), np.dtype(np.float64 if (code & 3) == 1 else np.float32)

    def _py_grads(self, P, i):
        rec = self.py[i + self.base]
        shape, npdt = rec.out
        return rec.bwd(self._grad_view(P, i, shape, npdt))

    def _jit_grads(self, P, i):
        """The gradients a jitted record sends to each input, each in a buffer of its own (the
        record is replayed alone with its inputs' gradient addresses pointed elsewhere)."""
        ins = self.inputs_of(i)
        if len(ins) == 2 and ins[0][0] == ins[1][0] and ins[0][0] != -1:   # x * x: one buffer, two grads
            from ..ops.pyops import jit_record_grads_np
            return jit_record_grads_np(self, P, i)
        base = self.base
        tmps, saved = [], []
        for p, shape, npdt in ins:
            if p == -1:
                tmps.append(None)
                continue
            t = np.zeros(shape, npdt)
            tmps.append(t)
            if p >= 0:
                saved.append(("g", p - base, P.gaddr[p - base]))
                P.gaddr[p - base] = t.ctypes.data
            else:
                s = -p - 2
                saved.append(("l", s, (P.la[s], P.ls[s])))
                P.la[s], P.ls[s] = t.ctypes.data, 1
        try:
            self._replay(P, i, i)
        finally:
            for kind, k, old in reversed(saved):
                if kind == "g":
                    P.gaddr[k] = old
                else:
                    P.la[k], P.ls[k] = old
        return tmps

    def _accumulate(self, P, i, grads):
        """Add record i's input gradients into their producers' buffers (or leaf slots)."""
        base = self.base
        for j, (p, shape, npdt) in enumerate(self.inputs_of(i)):
            gj = grads[j] if j < len(grads) else None
            if gj is None or p == -1:
                continue
            if p >= 0:
                if not P.gaddr[p - base]:
                    continue
                pshape, pdt = self.out_of(p - base)
                dst = self._grad_view(P, p - base, pshape, pdt)
                dst[...] += np.reshape(gj, pshape) if np.size(gj) == dst.size else gj
            else:
                s = -p - 2
                if not P.la[s] or (P.off is not None and s < len(P.off) and P.off[s]):
                    continue
                dst = self._leaf_dst(P, s, shape, npdt)
                if P.ls[s] == 0:
                    dst[...] = gj
                    P.ls[s] = 1
                else:
                    dst[...] += gj

    def _leaf_dst(self, P, s, shape, npdt):
        buf = P.bufs.get(s)
        if buf is None:
            c = self.inputs_cache
            if c is None:
                return self.leaf_view(s, shape, npdt)
            addr = self.leaf_addr[s]                        # a captured step's tape keeps the views
            e = c.get(("leaf", s))
            if e is None or e[0] != addr or e[1] != shape:
                e = c[("leaf", s)] = (addr, shape, self.leaf_view(s, shape, npdt))
            return e[2]
        npdt = np.dtype(npdt)
        return buf[:int(np.prod(shape, dtype=np.int64)) * npdt.itemsize].view(npdt).reshape(shape)

    def _hooked(self, P, i):
        """Record i with Python around it: its output gradient's hooks (which may replace it),
        then its backward, with node hooks and the anomaly check on the input gradients."""
        if not P.gaddr[i]:
            return
        g = i + self.base
        hooks = list(self.hooks.get(g, {}).values())
        shape, npdt = self.out_of(i)
        name = _grad_fn_name(self, i)
        pre = [h for h in hooks if h[0] in ("tensor", "pre")]
        post = [h for h in hooks if h[0] == "post"]
        for kind, fn, hshape in pre:
            v = self._grad_view(P, i, shape, npdt)
            v = _hook_shape(v, hshape)
            arg = _tensor_of(v.copy())
            r = fn(arg) if kind == "tensor" else fn((arg,))
            if kind == "pre" and r is not None:
                r = _hook_values(r, 1, fn)[0]
            if r is not None:
                v[...] = _check_hook_result(r, v, fn)
        code = struct.unpack_from("<q", self.buf, i * ROW)[0]
        if not post and not self.detect_anomaly:
            if (code >> 5) == PY:
                self._accumulate(P, i, self._py_grads(P, i))
            else:
                self._replay(P, i, i)
            return
        with np.errstate(all="ignore") if self.detect_anomaly else _NOOP:
            grads = list(self._py_grads(P, i) if (code >> 5) == PY else self._jit_grads(P, i))
        if self.detect_anomaly:
            for j, gj in enumerate(grads):
                if gj is not None and np.isnan(np.asarray(gj, np.float64)).any():
                    import warnings
                    tb = self.anomaly.get(g)
                    where = ("Traceback of forward call that caused the error:\n" + "".join(traceback.format_list(tb))
                             if tb is not None else _NO_FORWARD)
                    warnings.warn(f"Error detected in {name}. {where}{_TRIGGERED}", UserWarning, stacklevel=2)
                    raise RuntimeError(f"Function '{name}' returned nan values in its {j}th output.")
        if post:
            hshape = post[0][2]
            gout = (_tensor_of(_hook_shape(self._grad_view(P, i, shape, npdt), hshape).copy()),)
            wrapped = (code >> 5) != PY and BY_OPCODE[code >> 5].name in ("add_scalar", "sub_scalar", "mul_scalar",
                                                                          "div_scalar")
            for _, fn, _s in post:
                gin = tuple(None if gj is None else _tensor_of(_hook_shape(np.array(gj), hshape) if (code >> 5) != PY
                                                               else np.array(gj)) for gj in grads)
                if wrapped:
                    gin = gin + (None,)    # torch: the wrapped Python number is the node's second input
                r = fn(gin, gout)
                if r is not None:
                    r = _hook_values(r, len(gin), fn)
                    grads = [None if x is None else
                             _check_hook_result(x, _hook_shape(np.asarray(grads[j]), hshape), fn).reshape(
                                 np.shape(grads[j]))
                             for j, x in enumerate(r[:len(grads)])]
        with np.errstate(all="ignore") if self.detect_anomaly else _NOOP:
            self._accumulate(P, i, grads)

    def _check_versions(self, T, marked, lo):
        """PyTorch's error for a saved value modified in place after it was saved (marked: the
        records the backward reaches, as indices from lo)."""
        base = self.base
        if not len(marked) or self._log_max <= lo + int(marked[0]):
            return   # every logged write came before the records this backward visits
        for j in marked:
            g = int(j) + lo
            k = g - base
            code = int(T[k, 0])
            op = code >> 5
            if op == PY:
                rec = self.py.get(g)
                if rec is None or not rec.saves or not rec.spans:
                    continue
                spec = rec.spec
                ops = [(addr, byte_span(shape, strides, isz_), False)   # byte spans of the inputs
                       for addr, shape, strides, isz_ in rec.spans]
                isz = 1
            else:
                spec = BY_OPCODE.get(op)
                if spec is None or not spec.saves:
                    continue
                isz = 4 if (code & 3) == 0 else 8
                n = int(T[k, 1])
                bc = (code >> 2) & 3
                ops = []
                if "self" in spec.saves:
                    ops.append((int(T[k, 3]), 1 if bc & 1 else n, False))
                if ("other" in spec.saves or "exponent" in spec.saves) and spec.kind == "binary":
                    ops.append((int(T[k, 4]), 1 if bc & 2 else n, False))
                if "result" in spec.saves:
                    ops.append((int(T[k, 2]), n, True))
            for addr, cnt, is_out in ops:
                for lo_, hi_, at, vc, shape, dtname in self.inplace_log:
                    if at > g and addr < hi_ and lo_ < addr + cnt * isz:
                        later = sum(1 for e in self.inplace_log if e[3] is vc and e[2] > g)
                        ttype = {"float32": "FloatTensor", "float64": "DoubleTensor"}.get(dtname, "Tensor")
                        dims = ", ".join(str(d) for d in shape)
                        fn = re.sub(r"Backward\d+$", "", spec.grad_fn)   # torch 2.13 names the forward op
                        what = f", which is output 0 of {fn}," if is_out else ""
                        raise RuntimeError(
                            f"one of the variables needed for gradient computation has been modified by an "
                            f"inplace operation: [torch.{ttype} [{dims}]]{what} is at version {vc[0]}; expected "
                            f"version {vc[0] - later} instead. Hint: enable anomaly detection to find the "
                            f"operation that failed to compute its gradient, with "
                            f"torch.autograd.set_detect_anomaly(True, check_nan=False).")


def replayed_whole(method):
    """A method that a captured step (tapegrad.capture) replays by calling it again, as a whole:
    what it does inside is not logged (zero_grad)."""
    import functools

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        log = TAPE.capture
        if log is None:
            return method(self, *args, **kwargs)
        log.add("call", lambda: method(self, *args, **kwargs))
        TAPE.capture = None
        try:
            return method(self, *args, **kwargs)
        finally:
            TAPE.capture = log
    return wrapper


TAPE = Tape()
ARENA.retire = TAPE.keep_alive
ARENA.adopt = TAPE.keep_alive
ARENA.reclaim = TAPE.sweep
