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
import traceback
import weakref
from array import array

import numpy as np

from .. import config
from ..kernels import lifetime as _lifetime
from ..kernels import replay_cpu as R
from ..ops.table import BY_OPCODE, OPS, PY
from ..storage import ARENA, byte_span, view

NCOL = 9                  # int64 columns of a row; column 8 holds the float attribute's bits
ROW = NCOL * 8
ALIVE = 7 * 8             # byte offset of the alive flag in a row
PACK = struct.Struct("<8qd").pack_into
_NO_EDGES = np.zeros(1, np.int64)
_NO_PINS = np.zeros(0, np.int64)
SECOND_TIME = ("Trying to backward through the graph a second time (or directly access saved tensors after "
               "they have already been freed). Saved intermediate values of the graph are freed when you call "
               ".backward() or autograd.grad(). Specify retain_graph=True if you need to backward through the "
               "graph a second time or if you need to access saved tensors after calling backward.")
_HAS_SAVES = np.zeros(64, np.int8)
for _s in OPS.values():
    if _s.kind != "py" and _s.saves:
        _HAS_SAVES[_s.opcode] = 1
_HAS_SAVES[PY] = 1


class PyRec:
    """An escape record: forward and VJP in NumPy (ops/pyops.py).

    ``fwd(out_np, *in_np)`` fills the output; ``bwd(g_np, out_np, *in_np)``
    returns one gradient (or None) per input. ``ins`` are the input tensors
    (kept alive, as PyTorch keeps saved tensors)."""
    __slots__ = ("spec", "fwd", "bwd", "ins", "out", "saves", "attrs", "spans")

    def __init__(self, spec, fwd, bwd, ins, out, attrs=None, saves=True, spans=None):
        self.spec, self.fwd, self.bwd, self.ins, self.out = spec, fwd, bwd, ins, out
        self.attrs = attrs or {}
        self.saves = saves
        self.spans = spans   # (address, shape, strides, itemsize) of the inputs, for the version check


class Tape:
    def __init__(self):
        self.buf = bytearray(ROW * 4096)   # the rows; grows by doubling, never while a view is out
        self.n = 0                 # rows in use
        self.sweep_at = 8192       # tape length that triggers the next sweep
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
        self.retained = {}         # global index -> tensor whose grad is retained
        self.anomaly = {}          # global index -> traceback (anomaly mode)
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
                 spans=None):
        """Append an escape record; returns its global index."""
        r = self.next_index
        e = len(self.edges)
        self.edges.append(len(producers))
        self.edges.extend(producers)
        self.append((PY << 5) | dt, n, out_addr, e, 0, -1, -1, 1 if grad else 0, 0.0)
        self.py[r] = PyRec(spec, fwd, bwd, ins, out, attrs, saves, spans)
        return r

    # ----- forward -----------------------------------------------------------
    def cols(self):
        m = memoryview(self.buf)[:self.n * ROW]
        return np.frombuffer(m, np.int64).reshape(-1, NCOL), np.frombuffer(m, np.float64).reshape(-1, NCOL)

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
        T, C = self.cols()
        if config.DEBUG:
            from .debug import check_addresses
            check_addresses(self, T, self.flushed - self.base, hi - self.base)
        lo = self.flushed - self.base
        end = hi - self.base
        try:
            while lo < end:
                i = (R.forward_f64 if (T[lo, 0] & 3) == 1 else R.forward_f32)(T, C, lo, end)
                if i < 0:
                    break
                if (T[i, 0] >> 5) == PY:
                    self.py[i + self.base].fwd()
                    lo = i + 1
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

    def sweep(self):
        """Drop the longest prefix of records that are dead and already ran
        (one jitted pass), so that the tape returns to its floor."""
        if self.flushed < self.next_index:
            self.flush()   # records that have not run cannot be dropped: run them (DESIGN: flush at a bound)
        if self.n == 0:
            return 0
        live, k, used = self.liveness()
        if self.leaf_hold:
            for slot in [s_ for s_ in self.leaf_hold if not used[s_]]:
                del self.leaf_hold[slot]
        base, n = self.base, len(live)
        # an index at or past the end is a record being appended right now: live
        for key in [key for key, (buf, recs) in self.big.items()
                    if all(r < base or (r - base < n and not live[r - base]) for r in recs)]:
            del self.big[key]
        self._release_dead(live)
        if k:
            self._drop(int(k))
        self.sweep_at = max(8192, 2 * self.n)
        return k

    def liveness(self):
        """(live[i] per physical record, length of the dead prefix that already ran,
        used[slot] per leaf slot a live record reads): one jitted pass."""
        T, _ = self.cols()
        edges = np.frombuffer(self.edges, np.int64) if len(self.edges) else _NO_EDGES
        used = np.zeros(len(self.leaf_addr), np.uint8)
        pins = np.fromiter(self.pins, np.int64, len(self.pins)) if self.pins else _NO_PINS
        live, k = _lifetime.sweep(T, edges, self.base, self.flushed - self.base, used, pins)
        return live, k, used

    # ----- in-place writes (for PyTorch's version-counter error) --------------------
    def log_inplace(self, spans):
        """Log in-place writes, ``(lo, hi, version counter, shape, dtype name)`` each,
        as happening before the next record."""
        at = self.next_index
        self.inplace_log.extend([(lo, hi, at, vc, shape, dtname) for lo, hi, vc, shape, dtname in spans])
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
        if self.n and log:
            live, _, _ = self.liveness()
            T, _ = self.cols()
            codes = T[:, 0]
            ops = codes >> 5
            idx = np.flatnonzero((live != 0) & (_HAS_SAVES[ops] != 0) & (ops != PY) & ((codes & 16) == 0)
                                 & ((T[:, 5] != -1) | (T[:, 6] != -1)))
            pyidx = np.flatnonzero((live != 0) & (ops == PY) & ((codes & 16) == 0))
            rows = T[idx]   # a copy
            del T, codes, ops
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
        self._log_prune_at = max(32, 2 * len(log))

    def _release_dead(self, live):
        """What dead records hold is let go even when a live record before them
        keeps the rows from being dropped (only a dead *prefix* of rows can go):
        escape records' NumPy closures, and the slabs that no live record may use.
        A long-lived non-leaf tensor then costs 72 bytes per later record, not
        the memory those records used."""
        base, n = self.base, len(live)
        flushed = self.flushed
        for g in [g for g in self.py if g - base < n and g < flushed and not live[g - base]]:
            del self.py[g]
        cum = np.concatenate(([0], np.cumsum(live, dtype=np.int64)))
        end = self.next_index
        for key, (buf, first, last) in list(self.keep.items()):
            if buf is ARENA.slab or last + 4096 >= end:
                continue            # the current slab, or records may still come that use it
            lo_, hi_ = max(first, base) - base, min(last + 4096, end - 1) - base
            if hi_ < lo_ or cum[hi_ + 1] - cum[lo_] == 0:
                del self.keep[key]
                if buf is self.last_kept:
                    self.last_kept = None

    def _drop(self, k):
        rest = self.n - k
        buf = bytearray(max(ROW * 4096, 2 * rest * ROW))
        buf[:rest * ROW] = memoryview(self.buf)[k * ROW:self.n * ROW]
        self.buf = buf
        self.n = rest
        self.base += k
        base = self.base
        for g in [g for g in self.py if g < base]:
            del self.py[g]
        for key in [key for key, e in self.keep.items() if e[2] + 4096 < base and e[0] is not ARENA.slab]:
            del self.keep[key]
        for g in [g for g in self.retained if g < base]:
            del self.retained[g]
        self.inplace_log = [e for e in self.inplace_log if e[2] >= base]
        self.last_kept = None
        if not self.n:
            self.edges = array("q")
        still = []
        for dead_at, slot in self.leaf_dying:
            if dead_at <= base:      # no record that may use the slot is left: recycle it
                self.leaf_free.append(slot)
            else:
                still.append((dead_at, slot))
        self.leaf_dying = still

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
        root, addr = ARENA.alloc(self.leaf_nbytes[s])
        self.leaf_addr[s] = addr
        self.leaf_buf[s] = root
        self.leaf_state[s] = 0

    def free_leaf_slot(self, s):
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
    def backward(self, root, seed, retain_graph):
        """Reverse replay from global record `root`, its gradient `seed` (an
        array of the root's shape and dtype). Fills leaf slots and retained
        grads; frees saved values unless retain_graph."""
        try:
            self._backward(root, seed, retain_graph)
        except BaseException as e:
            # NOTE: a traceback keeps its frames' locals, and so NumPy views of the tape's
            # buffers: the tape could never grow again (BufferError). Drop them.
            traceback.clear_frames(e.__traceback__)
            raise

    def _backward(self, root, seed, retain_graph):
        base = self.base
        lo = base
        T, C = self.cols()
        need = np.zeros(root - lo + 1, np.int64)
        total = R.mark(T, np.frombuffer(self.edges, np.int64) if len(self.edges) else _NO_EDGES, root, lo, base,
                       need)
        if total < 0:
            del T, C
            raise RuntimeError(SECOND_TIME)
        if self.inplace_log:
            try:
                self._check_versions(T, need, lo)
            finally:
                del T, C
        else:
            del T, C
        self.flush()      # only now: a backward that raises above leaves the tape as it was
        T, C = self.cols()
        scratch = self._scratch_keep
        if scratch is None or scratch.nbytes < total + 64 or __import__("sys").getrefcount(scratch) > 2:
            scratch = self._scratch_keep = np.zeros(int(total) + 64, np.uint8)
        else:
            scratch[:int(total) + 64] = 0
        saddr = self._saddr = scratch.ctypes.data
        gaddr = np.zeros(self.n, np.int64)
        idx = np.nonzero(need)[0]
        gaddr[idx + (lo - base)] = saddr + need[idx] - 1
        self._scratch = scratch
        rp = root - base
        self._grad_view(gaddr, rp, seed.shape, seed.dtype)[...] = seed
        la = np.frombuffer(self.leaf_addr, np.int64) if len(self.leaf_addr) else np.zeros(1, np.int64)
        ls = np.frombuffer(self.leaf_state, np.int8) if len(self.leaf_state) else np.zeros(1, np.int8)
        ln = np.frombuffer(self.leaf_nbytes, np.int64) if len(self.leaf_nbytes) else np.zeros(1, np.int64)
        if config.DEBUG:
            from .debug import check_addresses
            check_addresses(self, T, lo - base, rp + 1, gaddr=gaddr)
        hi = rp
        try:
            dt = int(T[hi, 0]) & 3
            while hi >= 0:
                i = (R.backward_f64 if dt == 1 else R.backward_f32)(T, C, gaddr, la, ls, ln, base, hi, lo - base)
                if i < 0:
                    break
                if (T[i, 0] >> 5) == PY:
                    self._py_backward(i, gaddr, ls)
                    hi = i - 1
                else:
                    dt = int(T[i, 0]) & 3    # a record of the other dtype: switch entry point
                    hi = i
            for g, ref in list(self.retained.items()):
                t = ref()
                if t is None:
                    del self.retained[g]
                elif base <= g <= root and gaddr[g - base]:
                    t._accumulate_retained(self._grad_view(gaddr, g - base, t.shape, t.dtype.np).copy())
            if not retain_graph:
                k = idx + (lo - base)
                codes = T[k, 0]
                ops = codes >> 5
                sel = _HAS_SAVES[ops] != 0
                for j in np.nonzero(ops == PY)[0]:   # escape records say themselves whether they save
                    sel[j] = self.py[int(k[j]) + base].saves
                T[k[sel], 0] = codes[sel] | 16
        finally:
            del T, C, la, ls, ln
            self._scratch = None

    def _check_versions(self, T, need, lo):
        """PyTorch's error for a saved value modified in place after it was saved."""
        base = self.base
        marked = np.nonzero(need)[0]
        if not len(marked) or max(e[2] for e in self.inplace_log) <= lo + int(marked[0]):
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

    def _grad_view(self, gaddr, i, shape, npdt):
        """The gradient buffer of physical record i, a view into the scratch bytes
        (slicing the scratch array: ~3x cheaper than np.ndarray(buffer=...))."""
        npdt = np.dtype(npdt)
        n = 1
        for d in shape:
            n *= d
        off = int(gaddr[i]) - self._saddr
        return self._scratch[off:off + n * npdt.itemsize].view(npdt).reshape(tuple(shape))

    def _py_backward(self, i, gaddr, ls):
        rec = self.py[i + self.base]
        out = rec.out
        g = self._grad_view(gaddr, i, out[0], out[1])
        grads = rec.bwd(g)
        e = struct.unpack_from("<q", self.buf, i * ROW + 24)[0]
        for j, (shape, npdt) in enumerate(rec.ins):
            gj = grads[j] if j < len(grads) else None
            if gj is None:
                continue
            p = self.edges[e + 1 + j]
            if p >= 0:
                self._grad_view(gaddr, p - self.base, shape, npdt)[...] += gj
            elif p <= -2:
                s = -p - 2
                dst = self.leaf_view(s, shape, npdt)
                if ls[s] == 0:
                    dst[...] = gj
                    ls[s] = 1
                else:
                    dst[...] += gj


TAPE = Tape()
ARENA.retire = TAPE.keep_alive
ARENA.adopt = TAPE.keep_alive
ARENA.reclaim = TAPE.sweep
