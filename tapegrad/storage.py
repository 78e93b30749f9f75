"""Arena: storage that never moves (DESIGN invariant 4).

Tensor values live in 1-D uint8 *slabs*. A slab is filled by bumping an
offset and never grown: when it is full a new slab follows. A tensor keeps a
reference to its slab (``Tensor._base``), so a slab is freed by reference
counting when its last tensor (and the tape's last record that addresses it) is
gone. NOTE: a slab the tape lets go of is kept as a *spare* (``Arena.recycle``),
and the next new slab is a spare that nothing references any more, zeroed:
a fresh 1 MB slab cost ~0.3 ms in page faults, and a training loop of 128x256
activations (W2) made one every other step (about 15% of its eager step). A slab's address is read once (reading
``ndarray.ctypes.data`` costs ~1.8 us); a tensor's address is that plus an
offset, a 25 ns integer add.

Large tensors (over a quarter slab) get a buffer of their own, so a long-lived
big tensor never pins a slab of small dead ones, and vice versa.
"""
import sys
import weakref

import numpy as np

from . import config

_ALIGN = 64  # bytes; every allocation starts on a cache line (SIMD-friendly)
_SPARES = 16  # slabs kept for reuse at most


class Arena:
    """Bump allocator over slabs. ``retire`` (set by the tape) is called with
    every slab that stops being current and with every own buffer, so that
    pending records whose tensors already died still write into live memory."""
    __slots__ = ("slab", "addr", "off", "size", "retire", "pool", "reclaim", "adopt", "spare")

    def __init__(self):
        self.slab = None
        self.addr = 0
        self.off = 0
        self.size = -1     # (no slab: -1, so that the inline bump allocations of tensor.py take
        #                  none from it, not even an empty tensor's 0 bytes)
        self.retire = None
        self.pool = []     # large buffers, reused once nothing else references them
        self.reclaim = None  # set by the tape: let go of buffers only dead records still hold
        self.adopt = None    # set by the tape: a slab becomes current (records may use it from now on)
        self.spare = []      # slabs the tape let go of: reused once nothing else references them

    def _big(self, nbytes, zero=True):
        """A large buffer: reuse a pooled one of the same size that no tensor,
        view or record references any more (its reference count says so), else
        a new one. Fresh pages cost a page fault each on first touch, which at
        10^7 floats is most of an elementwise pass; reuse skips them.
        NOTE: a reused buffer is zeroed, like a fresh one."""
        if nbytes == config.SLAB_BYTES:
            nbytes += _ALIGN   # never the size of a slab: the tape tells slabs from own buffers by size
        pool = self.pool
        for attempt in (0, 1, 2):
            for i, (buf, addr) in enumerate(pool):
                if buf.nbytes == nbytes and sys.getrefcount(buf) <= 3:   # pool entry + local + argument
                    del pool[i]
                    pool.append((buf, addr))
                    EXPOSED.discard(id(buf))
                    if zero:
                        buf.fill(0)
                    return buf, addr
            if self.reclaim is None or not any(b.nbytes == nbytes for b, _ in pool):
                break
            # first without running pending records (a backward may still fuse them: tape.py
            # Note [fused backward]); then, when 8 or more buffers of this size are held by the
            # tape alone (pending records that will write them), running them: the dead ones free
            if attempt == 0:
                self.reclaim(False)
            elif attempt == 1 and sum(1 for b, _ in pool if b.nbytes == nbytes and sys.getrefcount(b) <= 4) >= 8:
                self.reclaim(True)   # refs: pool entry, the tape's big table, b, argument
            else:
                break
        buf, addr = self._new_slab(nbytes)
        pool.append((buf, addr))
        if len(pool) > 64:
            del pool[0]
        return buf, addr

    def recycle(self, slab):
        """The tape no longer needs `slab` (no live record may use it): keep it as a spare."""
        spare = self.spare
        if slab.nbytes == config.SLAB_BYTES and slab is not self.slab and not any(s is slab for s in spare):
            spare.append(slab)
            if len(spare) > _SPARES:
                del spare[0]

    def _new_slab(self, nbytes):
        spare = self.spare
        if nbytes == config.SLAB_BYTES:
            for i in range(len(spare)):
                if sys.getrefcount(spare[i]) <= 2:    # (the list and the argument): no tensor, view or record
                    slab = spare.pop(i)
                    slab.fill(0)
                    EXPOSED.discard(id(slab))       # (no NumPy view of it is left either)
                    return slab, base_address(slab)
        slab = np.zeros(nbytes, dtype=np.uint8)
        addr = slab.ctypes.data
        _remember(slab, addr)
        return slab, addr

    def retire_current(self):
        """Stop allocating from the current slab (its storage was handed to NumPy)."""
        if self.slab is not None:
            if self.retire is not None:
                self.retire(self.slab)
            self.slab, self.addr, self.off, self.size = None, 0, 0, -1

    def alloc(self, nbytes, zero=True):
        """Return (base, address) of `nbytes` bytes that never move, zeroed
        unless zero=False (outputs that a record overwrites entirely)."""
        if nbytes > config.SLAB_BYTES >> 2:
            buf, addr = self._big(nbytes, zero)
            if self.retire is not None:
                self.retire(buf)
            return buf, addr
        off = self.off
        if off + nbytes > self.size or self.slab is None:
            if self.slab is not None and self.retire is not None:
                self.retire(self.slab)
            self.slab, self.addr = self._new_slab(config.SLAB_BYTES)
            if self.adopt is not None:
                self.adopt(self.slab)
            self.size = config.SLAB_BYTES
            off = 0
        self.off = off + ((nbytes + _ALIGN - 1) & ~(_ALIGN - 1))
        return self.slab, self.addr + off


ARENA = Arena()

#: ids of root buffers NumPy may touch at any moment (tensor.py's _expose). A pooled buffer is
#: reused only when nothing references it, so no NumPy view of it is left: _big forgets it here.
EXPOSED = set()


_ADDR = {}   # id(root buffer) -> its address: reading __array_interface__ costs ~3 us a view


def _remember(root, addr):
    _ADDR[id(root)] = addr
    weakref.finalize(root, _ADDR.pop, id(root), None)


def byte_span(shape, strides, itemsize):
    """Bytes from element 0 to the end of the last element of a strided view
    (strides in elements); 0 for an empty one."""
    if not all(shape):
        return 0
    return (sum((d - 1) * st for d, st in zip(shape, strides)) + 1) * itemsize


def base_address(base):
    """Address of element 0 of a root buffer (cached when the root was made)."""
    a = _ADDR.get(id(base))
    if a is None:
        a = base.__array_interface__["data"][0]
    return a


def view(base, addr, shape, strides, npdt):
    """A NumPy view of tensor storage at `addr`; `strides` are in elements."""
    off = addr - base_address(base)
    if base.dtype != np.uint8 or base.ndim != 1 or not base.flags.c_contiguous:
        base = base.reshape(-1).view(np.uint8) if base.flags.c_contiguous else base
    isz = npdt.itemsize
    return np.ndarray(shape, npdt, buffer=base, offset=off, strides=tuple(s * isz for s in strides))


def array_at(addr, n, npdt):
    """A flat NumPy array over `n` elements at a raw address (a record's operand; the
    caller keeps the memory alive)."""
    import ctypes
    npdt = np.dtype(npdt)
    raw = (ctypes.c_uint8 * (n * npdt.itemsize)).from_address(addr)
    return np.frombuffer(raw, npdt, n)


class _Span:
    """Exposes the bytes a NumPy array spans as a 1-D uint8 array (via the
    array interface) while keeping the array alive: the root of a tensor made
    by ``from_numpy``, however the array is strided."""
    __slots__ = ("__array_interface__", "owner")

    def __init__(self, lo, nbytes, owner):
        self.__array_interface__ = {"data": (lo, False), "shape": (max(nbytes, 1),),
                                    "typestr": "|u1", "version": 3}
        self.owner = owner


def root_of(arr):
    """(root, address of arr[0,...,0], element strides) for a NumPy array."""
    isz = arr.itemsize
    addr = arr.__array_interface__["data"][0]
    if any(s < 0 for s in arr.strides):
        raise ValueError("At least one stride in the given numpy array is negative, and tensors with negative "
                         "strides are not currently supported. (You can probably work around this by making a "
                         "copy of your array  with array.copy().) ")
    if any(s % isz for s in arr.strides):
        raise ValueError("given numpy array strides not a multiple of the element byte size. "
                         "Copy the numpy array to reallocate the memory.")
    span = isz + sum((n - 1) * s for n, s in zip(arr.shape, arr.strides)) if arr.size else isz
    root = np.asarray(_Span(addr, span, arr))
    _remember(root, addr)
    return root, addr, tuple(s // isz for s in arr.strides)
