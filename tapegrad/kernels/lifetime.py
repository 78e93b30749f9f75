"""Jitted tape lifetime: which records are still needed.

A record is live while its output tensor lives (column 7 ``alive``, cleared by
``Tensor.__del__``) or while a live record that needs gradients reads it
(its producer codes). One reverse sweep over the tape finds them all, so the
per-op cost of lifetime tracking is one byte appended and one byte cleared
(measured: per-record reference counts cost ~0.3 us per op in Python).
"""
import numpy as np
from numba import njit

from ..config import NJIT

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
