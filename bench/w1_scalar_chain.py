"""W1: scalar chain, the per-op and per-record overhead workload.

Leaves x, w_1..w_N, b_1..b_N are 0-d float32 tensors with requires_grad
(values from NumPy ``default_rng(0)``); ``h = x; h = tanh(h*w_i + b_i)``
N times (3N records); backward from h. Two tables:

* forward+backward: build the chain and call ``h.backward()`` (leaves are
  made once, outside the timed region; ``.grad = None`` between reps);
* backward only: a fresh chain is built per repetition outside the timed
  region and its value read (``h.item()``, so that a lazy engine such as
  tapegrad has run the forward), and only ``h.backward()`` is timed.

Peers: tapegrad and torch (one function, ``chain_forward(torch_like, …)``),
tapegrad.capture (the same chain and backward as one step under
``tapegrad.capture``, replayed; forward+backward table only),
micrograd (``tanh`` added as in the lecture), jax (``jax.jit`` of
``value_and_grad`` of the same ``chain_forward`` over ``jax.numpy``, every
leaf a scalar, the loop unrolled when traced; its compile time, tens of
seconds, is reported apart; no backward-only row) and HIPS autograd
(the same function over ``autograd.numpy``, w and b as two arrays; backward
only: ``make_vjp`` builds the forward, the pullback is timed), a hand-written
Python loop (the no-autograd floor of an interpreter), and ``@njit`` loops
(the compiled floor). Before timing, every peer's ``h`` and sum of all leaf gradients
must match torch's (rtol 1e-4).
"""
import math

import numpy as np

from . import captured
from .functional import GradCall
from .harness import (Row, Table, audit_row, checked_row, error_row, first_call, measure, note_first_call,
                      skip_reason, summarize, unavailable_row)

ID = "W1"
TITLE = "scalar chain"
PEERS = ("tapegrad", captured.PEER, "torch", "micrograd", "numpy", "njit", "jax", "autograd")
RTOL = 1e-4


def chain_forward(torch_like, x, w, b):
    """The workload itself, for any module with PyTorch's interface."""
    h = x
    for wi, bi in zip(w, b):
        h = torch_like.tanh(h * wi + bi)
    return h


def make_data(n):
    vals = np.random.default_rng(0).standard_normal(2 * n + 1).astype(np.float32)
    return vals[0], vals[1:n + 1].copy(), vals[n + 1:].copy()


# ----- peers: one class each, same methods -------------------------------------
# zero() untimed reset of grads; step() timed forward+backward, returns a handle;
# build() untimed forward for the backward-only table; backward(handle) timed;
# summary(handle) -> {"h": float, "grad_sum": float} for the cross-check.

class TorchLike:
    """tapegrad or torch: the same code, parametrised by the module."""

    def __init__(self, torch_like, data):
        x, w, b = data
        f32 = torch_like.float32
        self.tl = torch_like
        self.x = torch_like.tensor(float(x), dtype=f32, requires_grad=True)
        self.w = [torch_like.tensor(float(v), dtype=f32, requires_grad=True) for v in w]
        self.b = [torch_like.tensor(float(v), dtype=f32, requires_grad=True) for v in b]
        self.leaves = [self.x, *self.w, *self.b]

    def zero(self):
        for leaf in self.leaves:
            leaf.grad = None

    def step(self):
        h = chain_forward(self.tl, self.x, self.w, self.b)
        h.backward()
        return h

    def build(self):
        self.zero()
        h = chain_forward(self.tl, self.x, self.w, self.b)
        h.item()   # a lazy engine computes the forward here, outside the timed backward
        return h

    def backward(self, h):
        h.backward()

    def summary(self, h):
        return {"h": float(h.item()), "grad_sum": sum(float(l.grad.item()) for l in self.leaves)}


class Captured(TorchLike):
    """tapegrad: the same chain and backward as one step under ``tapegrad.capture`` (the leaves
    in its closure; gradients accumulate into them as in eager, ``zero()`` resets them outside)."""

    no_backward_only = "skipped: a captured step is the whole forward+backward"

    def __init__(self, tg, data):
        super().__init__(tg, data)

        def chain_step():
            h = chain_forward(self.tl, self.x, self.w, self.b)
            h.backward()
            return h

        self.cap = captured.Replayed(tg, chain_step, reset=self.zero)
        self.skip_reason, self.extra, self.audit = self.cap.skip_reason, self.cap.extra, self.cap.audit

    def step(self):
        return self.cap()


class Micrograd:
    """micrograd's Value graph (Python floats, float64)."""

    def __init__(self, engine, data):
        x, w, b = data
        V = engine.Value
        self.x = V(float(x))
        self.w = [V(float(v)) for v in w]
        self.b = [V(float(v)) for v in b]
        self.leaves = [self.x, *self.w, *self.b]

    def forward(self):
        h = self.x
        for wi, bi in zip(self.w, self.b):
            h = (h * wi + bi).tanh()
        return h

    def zero(self):
        for leaf in self.leaves:
            leaf.grad = 0

    def step(self):
        h = self.forward()
        h.backward()
        return h

    def build(self):
        self.zero()
        return self.forward()

    def backward(self, h):
        h.backward()

    def summary(self, h):
        return {"h": h.data, "grad_sum": sum(l.grad for l in self.leaves)}


class PythonLoop:
    """Hand-written forward and backward over Python floats: no autograd at all."""

    def __init__(self, _np, data):
        x, w, b = data
        self.x, self.w, self.b = float(x), w.tolist(), b.tolist()

    def zero(self):
        pass

    def forward(self):
        tanh = math.tanh
        hs = [self.x]
        h = self.x
        for wi, bi in zip(self.w, self.b):
            h = tanh(h * wi + bi)
            hs.append(h)
        return hs

    def backward(self, hs):
        w = self.w
        n = len(w)
        gw = [0.0] * n
        gb = [0.0] * n
        g = 1.0
        for i in range(n - 1, -1, -1):
            ho = hs[i + 1]
            d = g * (1.0 - ho * ho)
            gw[i] = d * hs[i]
            gb[i] = d
            g = d * w[i]
        return hs, g, gw, gb

    def build(self):
        return self.forward()

    def step(self):
        return self.backward(self.forward())

    def summary(self, res):
        hs, gx, gw, gb = res
        return {"h": hs[-1], "grad_sum": gx + sum(gw) + sum(gb)}


_NJIT = {}


def _njit_kernels(numba):
    """Compile (once per process) the forward and reverse loops of the chain."""
    if not _NJIT:
        @numba.njit(cache=False)
        def fwd(x, w, b):  # pragma: no cover - jitted
            hs = np.empty(w.shape[0] + 1, np.float32)
            hs[0] = x
            h = x
            for i in range(w.shape[0]):
                h = np.tanh(h * w[i] + b[i])
                hs[i + 1] = h
            return hs

        @numba.njit(cache=False)
        def bwd(hs, w):  # pragma: no cover - jitted
            n = w.shape[0]
            gw = np.empty(n, np.float32)
            gb = np.empty(n, np.float32)
            g = np.float32(1.0)
            for i in range(n - 1, -1, -1):
                ho = hs[i + 1]
                d = g * (np.float32(1.0) - ho * ho)
                gw[i] = d * hs[i]
                gb[i] = d
                g = d * w[i]
            return g, gw, gb

        _NJIT["fwd"], _NJIT["bwd"] = fwd, bwd
    return _NJIT["fwd"], _NJIT["bwd"]


class NjitLoop:
    """Hand-written forward and backward as two @njit loops over float32 arrays."""

    def __init__(self, numba, data):
        x, w, b = data
        self.x, self.w, self.b = np.float32(x), w, b
        self.fwd, self.bwd = _njit_kernels(numba)

    def zero(self):
        pass

    def build(self):
        return self.fwd(self.x, self.w, self.b)

    def backward(self, hs):
        return (hs,) + self.bwd(hs, self.w)

    def step(self):
        return self.backward(self.fwd(self.x, self.w, self.b))

    def summary(self, res):
        hs, gx, gw, gb = res
        return {"h": float(hs[-1]),
                "grad_sum": float(gx) + float(gw.astype(np.float64).sum() + gb.astype(np.float64).sum())}


class Functional(GradCall):
    """jax or HIPS autograd: value and gradient of ``chain_forward`` w.r.t. x, w and b."""

    def __init__(self, module, data, peer):
        x, w, b = data
        if peer == "jax":    # 2N+1 scalar leaves; iterating a traced array compiles for minutes
            w, b = list(w), list(b)
        super().__init__(peer, module, chain_forward, (np.float32(x), w, b))

    def zero(self):
        pass

    def summary(self, res):
        h, grads = res
        return {"h": float(h), "grad_sum": sum(float(np.asarray(g, dtype=np.float64).sum()) for g in grads)}


IMPLS = {"tapegrad": TorchLike, captured.PEER: Captured, "torch": TorchLike, "micrograd": Micrograd,
         "numpy": PythonLoop, "njit": NjitLoop,
         "jax": lambda mod, data: Functional(mod, data, "jax"),
         "autograd": lambda mod, data: Functional(mod, data, "autograd")}
NOTES = {"numpy": "hand-written Python loop", "njit": "hand-written @njit loops",
         "micrograd": "float64 Python floats", "jax": "jax.jit(value_and_grad), loop unrolled",
         "autograd": "HIPS autograd", captured.PEER: captured.NOTE}


def run(ctx):
    n = 50 if ctx.smoke else 2000
    data = make_data(n)
    params = {"N": n, "records": 3 * n, "dtype": "float32"}
    t_both = Table(ID, f"{ID} {TITLE}: forward+backward", params,
                   unit_note="time per forward+backward of the whole chain")
    t_bwd = Table(ID, f"{ID} {TITLE}: backward only", params,
                  unit_note="time of h.backward() alone; chain built and h.item() read untimed")

    ref = None
    ref_torch = ctx.peers.reference_torch()
    if ref_torch is not None:
        ref_impl = TorchLike(ref_torch, data)
        ref = ref_impl.summary(ref_impl.step())

    reps_both = ctx.reps(full=15, quick=5)
    reps_bwd = ctx.reps(full=15, quick=5)
    for peer in PEERS:
        if not ctx.peers.wanted(peer):
            continue
        mod, reason = ctx.peers.get(peer)
        if mod is None:
            for t in (t_both, t_bwd):
                t.rows.append(unavailable_row(ctx, t.title, peer, reason))
            continue
        where = f"{ID} (N={n})"
        try:
            impl = IMPLS[peer](mod, data)
            why = skip_reason(impl)
            if why:
                for t in (t_both, t_bwd):
                    t.rows.append(Row(peer, status="skipped", note=why))
                continue
            got, first_s = first_call(lambda: summarize(impl))
            row = checked_row(ctx, where, peer, got, ref, rtol=RTOL)
            row.extra["check"] = got
            audit_row(ctx, where, peer, row, impl, "after the cross-check")
            if peer in NOTES and row.status == "ok" and not row.note:
                row.note = NOTES[peer]
            note_first_call(row, peer, first_s)
            t_both.rows.append(row)
            row.times = measure(lambda _: impl.step(), setup=lambda: impl.zero(),
                                warmup=ctx.warmup(2), reps=reps_both, max_seconds=ctx.max_seconds)
            audit_row(ctx, where, peer, row, impl, "after timing")
        except Exception as exc:  # noqa: BLE001 - report, keep the suite running
            t_both.rows.append(error_row(ctx, f"{where} forward+backward", peer, exc))
            t_bwd.rows.append(Row(peer, status="ERROR", note="see forward+backward"))
            continue
        why = getattr(impl, "no_backward_only", None)
        if why:
            t_bwd.rows.append(Row(peer, status="skipped", note=why))
            continue
        try:
            row2 = Row(peer, status=row.status, note=NOTES.get(peer, "") if row.status == "ok" else row.note)
            t_bwd.rows.append(row2)
            row2.times = measure(impl.backward, setup=impl.build, warmup=ctx.warmup(1),
                                 reps=reps_bwd, max_seconds=ctx.max_seconds)
        except Exception as exc:  # noqa: BLE001
            t_bwd.rows[-1] = error_row(ctx, f"{where} backward only", peer, exc)
    return [t_both, t_bwd]
