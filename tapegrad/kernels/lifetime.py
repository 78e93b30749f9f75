"""Jitted tape lifetime: which records are still needed.

A record is live while its output tensor lives (column 7 ``alive``, cleared by
``Tensor.__del__``) or while a live record that needs gradients reads it
(its producer codes). One reverse sweep over the tape finds them all, so the
per-op cost of lifetime tracking is one byte appended and one byte cleared
(measured: per-record reference counts cost ~0.3 us per op in Python).
"""
import numpy as np
from numba import njit

from ..config import NJIT, NJIT_INNER
from . import replay_cpu as R
from .ptr import addr_of, f32p, f64p

_PY = 1


@njit(**NJIT)
def sweep(T, edges, base, flushed_phys, used, pins):  # pragma: no cover
    """live[i] for every physical record; returns (live, length of the dead
    prefix that has already run forward and can be dropped). used[s] is set
    for every leaf slot s that a live record reads. pins: global indices of
    records that a held grad_fn Node keeps alive."""
    n = T.shape[0]
    live = np.zeros(n, np.uint8)
    for p in pins:
        if base <= p < base + n:
            live[p - base] = 1
    for i in range(n - 1, -1, -1):
        if T[i, 7] or i >= flushed_phys:   # a record that has not run yet will write its output
            live[i] = 1
        if live[i] == 0:
            continue
        if (T[i, 0] >> 5) == _PY:
            e = T[i, 3]
            for q in range(edges[e]):
                p = edges[e + 1 + q]
                if p >= base:
                    live[p - base] = 1
                elif p <= -2 and -p - 2 < used.shape[0]:
                    used[-p - 2] = 1
        else:
            for col in (5, 6):
                p = T[i, col]
                if p >= base:
                    live[p - base] = 1
                elif p <= -2 and -p - 2 < used.shape[0]:
                    used[-p - 2] = 1
    k = 0
    while k < n and k < flushed_phys and live[k] == 0:
        k += 1
    return live, k


# ----- a backward pass's start, in two calls (Tape.mark_roots, Tape._backward) ----------------
# NOTE: the same steps as NumPy calls from Python (a marks array, the roots set in it, the walk,
# the marked indices, the gradient addresses, the scratch zeroed, a one-element seed) cost
# ~10 us of a W5a step's backward; these two calls cost ~2.

# Note [folded transposes]
# ~~~~~~~~~~~~~~~~~~~~~~~~
# `x @ W.T` records two things: the view W.T (a native record, kind 4) and the product (kind 2).
# Its backward computes dB = x.T G into the view's own gradient, then the view scatters dB.T
# into W's gradient element by element: a strided loop as long as the product's own gemm (W4,
# an RNN: ~240 us of a 1.4 ms captured step). When the product is the view's only consumer in
# the pass, the pass leaves the view unmarked and the product's backward writes
# dW += G.T x straight into W's gradient: the same products summed in the same order
# (each element one dot product over the batch), added once, so the same bits. Not when
# anything could look at the view's or the product's gradients (`keep`: hooks, retained grads,
# autograd.grad's inputs), nor in anomaly mode, nor for create_graph (its own walk of the marks).

@njit(**NJIT_INNER)
def _transposed_input(T, edges, v):  # pragma: no cover
    """The producer code of record v's input if v is a native view of its whole input's gradient
    transposed (2-D, offset 0, strides (1, rows)), else -1."""
    if (T[v, 0] >> 5) != _PY or T[v, 4] == 0:
        return -1
    d = T[v, 4]
    e = T[v, 3]
    if edges[d] != 4 or edges[d + 3] != 0 or edges[d + 4] != 2 or edges[e] != 1:
        return -1
    if edges[d + 7] != 1 or edges[d + 8] != edges[d + 5]:
        return -1
    return edges[e + 1]


@njit(**NJIT_INNER)
def _fold_transposes(T, edges, need, lo, base, keep, roots):  # pragma: no cover
    """Unmark the views Note [folded transposes] folds into their product; returns how many."""
    n = need.shape[0]
    uses = np.zeros(n, np.int64)      # consumers among the marked records
    fold = np.zeros(n, np.uint8)      # candidates used once, as a product's B
    kept = np.zeros(n, np.uint8)
    for g in keep:
        if base <= g < base + n:
            kept[g - base] = 1
    for g in roots:
        kept[g - base] = 1
    for i in range(lo, n):
        if need[i] == 0:
            continue
        if (T[i, 0] >> 5) == _PY:
            e = T[i, 3]
            d = T[i, 4]
            product = d != 0 and edges[d] == 2 and edges[e] == 2 and not kept[i]   # a native A @ B
            for q in range(edges[e]):
                p = edges[e + 1 + q] - base
                if p >= 0:
                    uses[p] += 1
                    # B (q == 1), not also A, a whole transpose whose shape is the product's (k, n)
                    if (product and q == 1 and not kept[p] and edges[e + 1] - base != p
                            and _transposed_input(T, edges, p) != -1 and edges[d + 3] == edges[T[p, 4] + 5]
                            and edges[d + 4] == edges[T[p, 4] + 6]):
                        fold[p] = 1
        else:
            for col in (5, 6):
                p = T[i, col] - base
                if p >= 0:
                    uses[p] += 1
    k = 0
    for i in range(lo, n):
        if fold[i] and uses[i] == 1 and need[i] != 0:
            need[i] = 0
            k += 1
    return k


@njit(**NJIT)
def fold_transposes(T, edges, need, idx, base, keep, roots):  # pragma: no cover
    """Note [folded transposes] on mark_all's marks (need, idx), except where a product or its
    view is one of the global records `keep` or a root; returns idx without the folded views.
    (Its own function: compiled only once a tape has recorded a permutation, not for every
    first backward: it cost 0.5 s of mark_all's cold compile.)"""
    if _fold_transposes(T, edges, need, idx[0], base, keep, roots) == 0:
        return idx
    k = 0
    for i in idx:
        if need[i] != 0:
            k += 1
    out = np.empty(k, np.int64)
    k = 0
    for i in idx:
        if need[i] != 0:
            out[k] = i
            k += 1
    return out


@njit(**NJIT)
def mark_all(T, edges, roots, base, zeros):  # pragma: no cover
    """(need, total, low, idx) of a backward from the global records `roots` (int64 array):
    replay_cpu.mark's marks and results, and idx the physical indices of the marked records,
    ascending (empty when total < 0: a freed record was reached). need is a view of `zeros`
    (int64, all zero, at least as long as the tape; Note [backward's zeroed arrays])."""
    root = roots[0]
    for r in roots:
        root = max(root, r)
    need = zeros[:root - base + 1]
    # NOTE: not `left = 0`: typing would call R.mark with Literal[int](0) before unifying, and
    # compile a second mark (~0.5 s of a cold first backward, numba's compile events)
    left = np.int64(0)
    for r in roots:
        if need[r - base] == 0:
            need[r - base] = 1
            left += 1
    total, low = R.mark(T, edges, root, base, base, need, left)
    if total < 0:
        return need, total, low, np.zeros(0, np.int64)
    k = 0
    for i in range(low - base, need.shape[0]):
        if need[i] != 0:
            k += 1
    idx = np.empty(k, np.int64)
    k = 0
    for i in range(low - base, need.shape[0]):
        if need[i] != 0:
            idx[k] = i
            k += 1
    return need, total, low, idx


@njit(**NJIT)
def start_pass(need, idx, gaddr, scratch, nbytes, seed_row, seed, seed_f64):  # pragma: no cover
    """Fill gaddr (int64, all zero, one per physical row) with the gradient addresses of a pass
    over the marked records idx, into scratch, whose first nbytes are zeroed; when seed_row >= 0,
    that record's one-element gradient is `seed` (float64; written as float32 unless seed_f64)."""
    scratch[:nbytes] = 0
    saddr = addr_of(scratch)
    for i in idx:
        gaddr[i] = saddr + need[i] - 1
    if seed_row >= 0:
        if seed_f64:
            f64p(gaddr[seed_row])[0] += seed
        else:
            f32p(gaddr[seed_row])[0] += np.float32(seed)
    return gaddr


# Note [shared gradient scratch]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# A pass gives every marked record a gradient buffer of its own in one scratch, zeroed first.
# A captured W4 step's is 2 MB (500 records of 4 KB): zeroing it took ~50 us of a 0.5 ms step,
# and the backward then wrote and read 2 MB that had just left the cache. But a record's
# gradient is needed only from the backward of its first consumer (the highest-index one, which
# the reverse pass meets first) to its own backward. share_scratch lays the buffers out again
# so that one freed by its record's backward is taken by a later one (in backward order): W4's
# scratch is then a few buffers. A taken buffer must be zero again, so the backward of such a
# pass zeroes each record's gradient after reading it (kernels/gen_cpu.py's backward_*, `clean`)
# and the scratch is left all zero for the next replay. Only for passes nothing else reads:
# capture.py's one-call programs (no hooks, no retained grads, no escape record, whose backward
# Python would run). A folded view (Note [folded transposes]) is not marked; the product's
# backward writes into the view's input's gradient, so that input counts the product as a
# consumer.

@njit(**NJIT_INNER)
def _take(fo, fs, nfree, size):  # pragma: no cover
    """The free buffer (offsets fo, sizes fs) that fits `size` most tightly: (its index or -1)."""
    best = -1
    for j in range(nfree):
        if fs[j] >= size and (best < 0 or fs[j] < fs[best]):
            best = j
    return best


@njit(**NJIT)
def share_scratch(T, edges, need, idx, base, roots):  # pragma: no cover
    """Note [shared gradient scratch] on a pass's marks (need, idx; roots: global indices):
    returns (need with the new offsets, the scratch bytes they take)."""
    n = need.shape[0]
    off = np.full(n, -1, np.int64)
    size = np.zeros(n, np.int64)
    for i in idx:
        isz = 4 if (T[i, 0] & 3) == 0 else 8
        size[i] = ((T[i, 1] * isz + 63) // 64) * 64
    fo = np.zeros(idx.shape[0] + 1, np.int64)
    fs = np.zeros(idx.shape[0] + 1, np.int64)
    nfree = 0
    total = 0
    order = np.empty(idx.shape[0] + roots.shape[0], np.int64)
    k = 0
    for g in roots:                     # the roots' buffers first (seeded before the pass)
        order[k] = g - base
        k += 1
    for j in range(idx.shape[0] - 1, -1, -1):
        order[k] = idx[j]
        k += 1
    prods = np.zeros(16, np.int64)
    for j in range(order.shape[0]):
        i = order[j]
        if j < roots.shape[0]:
            np_ = 1
            prods[0] = i
        elif (T[i, 0] >> 5) == _PY:
            e = T[i, 3]
            d = T[i, 4]
            if edges[e] + 1 > prods.shape[0]:
                prods = np.zeros(edges[e] + 1, np.int64)
            np_ = 0
            for q in range(edges[e]):
                p = edges[e + 1 + q] - base
                if p >= 0 and need[p] == 0 and q == 1 and d != 0 and edges[d] == 2:
                    p = _transposed_input(T, edges, p) - base    # a folded view: its input's gradient
                if p >= 0 and need[p] != 0:
                    prods[np_] = p
                    np_ += 1
            if off[i] < 0:          # (no marked consumer wrote it: zero all the same)
                prods[np_] = i
                np_ += 1
        else:
            np_ = 0
            for col in (5, 6):
                p = T[i, col] - base
                if p >= 0 and need[p] != 0:
                    prods[np_] = p
                    np_ += 1
            if off[i] < 0:
                prods[np_] = i
                np_ += 1
        for q in range(np_):
            p = prods[q]
            if off[p] >= 0:
                continue
            b = _take(fo, fs, nfree, size[p])
            if b >= 0:
                off[p] = fo[b]
                nfree -= 1
                fo[b], fs[b] = fo[nfree], fs[nfree]
            else:
                off[p] = total
                total += size[p]
        if j >= roots.shape[0]:     # its backward has read it: free for the records below
            fo[nfree], fs[nfree] = off[i], size[i]
            nfree += 1
    out = need.copy()
    for i in idx:
        out[i] = off[i] + 1
    return out, total
