"""W3: elementwise, the memory-bandwidth workload.

``loss = (sin(x) * exp(-x*x)).sum()`` and its gradient wrt x, for x of 10^6
and 10^7 float32 elements (``--quick``: 10^5 and 10^6; ``--smoke``: 10^4),
one table per size, forward+backward timed together (x is made once,
``x.grad = None`` between reps).

Peers: tapegrad, torch eager and ``torch.compile`` (one function,
``loss_fn(torch_like, x)``; torch.compile compiles it, ``dynamic=False``, so
once per size), jax (``jax.jit(value_and_grad)``) and HIPS autograd (the same
``loss_fn`` over ``jax.numpy`` / ``autograd.numpy``), a hand-written NumPy
forward+backward, and a fused ``@njit(parallel=True)``
loop computing the loss and the gradient in one pass (the bandwidth floor):
d/dx = exp(-x²)·(cos x − 2x·sin x). Before timing, every peer's gradient
must match torch's (allclose rtol 1e-3, atol 1e-6) and its loss too
(rtol 1e-3, atol 1e-6·n: the sum of zero-mean terms nearly cancels).
"""
import numpy as np

from .functional import GradCall
from .harness import Table, checked_row, time_peers

ID = "W3"
TITLE = "elementwise (sin(x)*exp(-x*x)).sum()"
PEERS = ("tapegrad", "torch", "torch.compile", "numpy", "njit", "jax", "autograd")
RTOL, ATOL = 1e-3, 1e-6


def loss_fn(torch_like, x):
    """The workload itself, for any module with PyTorch's interface."""
    return (torch_like.sin(x) * torch_like.exp(-x * x)).sum()


def make_data(n):
    return np.random.default_rng(0).standard_normal(n, dtype=np.float32)


class TorchLike:
    """tapegrad, torch or torch.compile: the same code, parametrised by the module."""

    def __init__(self, torch_like, x_np, compile=False):
        self.loss = lambda x: loss_fn(torch_like, x)
        if compile:
            self.loss = torch_like.compile(self.loss, dynamic=False)
        self.x = torch_like.tensor(x_np, dtype=torch_like.float32, requires_grad=True)

    def zero(self):
        self.x.grad = None

    def step(self):
        loss = self.loss(self.x)
        loss.backward()
        return loss, self.x.grad

    def summary(self, res):
        loss, grad = res
        return {"loss": float(loss.item()), "grad": grad.detach().numpy().copy()}


class NumpyFloor:
    """Hand-written NumPy forward and backward (float32, few temporaries)."""

    def __init__(self, _np, x_np):
        self.x = x_np

    def zero(self):
        pass

    def step(self):
        x = self.x
        e = np.multiply(x, x)
        np.negative(e, out=e)
        np.exp(e, out=e)                 # e = exp(-x²)
        s = np.sin(x)
        loss = np.dot(s, e)              # forward
        g = np.cos(x)
        s *= x
        s *= 2.0
        g -= s
        g *= e                           # g = e·(cos x − 2x sin x)
        return loss, g

    def summary(self, res):
        return {"loss": float(res[0]), "grad": res[1]}


_FUSED = {}


def _fused_kernel(numba):
    """One parallel pass: loss (float64 accumulator) and gradient together."""
    if "k" not in _FUSED:
        @numba.njit(parallel=True, cache=False)
        def fused(x, g):  # pragma: no cover - jitted
            acc = 0.0
            for i in numba.prange(x.shape[0]):
                xi = x[i]
                s = np.sin(xi)
                e = np.exp(-xi * xi)
                acc += s * e
                g[i] = e * (np.cos(xi) - np.float32(2.0) * xi * s)
            return acc
        _FUSED["k"] = fused
    return _FUSED["k"]


class NjitFused:
    """Fused ``@njit(parallel=True)`` loop; the gradient buffer is allocated per call."""

    def __init__(self, numba, x_np):
        self.x = x_np
        self.kernel = _fused_kernel(numba)

    def zero(self):
        pass

    def step(self):
        g = np.empty_like(self.x)
        return self.kernel(self.x, g), g

    def summary(self, res):
        return {"loss": float(res[0]), "grad": res[1]}


class Functional(GradCall):
    """jax (``jax.jit(value_and_grad)``) or HIPS autograd, of the same ``loss_fn``."""

    def __init__(self, peer, module, x_np):
        super().__init__(peer, module, loss_fn, (x_np,))

    def summary(self, res):
        loss, (grad,) = res
        return {"loss": float(loss), "grad": np.asarray(grad)}


def make_impl(peer, mod, x_np):
    if peer in ("jax", "autograd"):
        return Functional(peer, mod, x_np)
    if peer in ("tapegrad", "torch", "torch.compile"):
        return TorchLike(mod, x_np, compile=peer == "torch.compile")
    return {"numpy": NumpyFloor, "njit": NjitFused}[peer](mod, x_np)


NOTES = {"numpy": "hand-written NumPy", "njit": "fused @njit(parallel=True), one pass",
         "torch.compile": "torch.compile(loss_fn)", "jax": "jax.jit(value_and_grad)",
         "autograd": "HIPS autograd"}


def sizes(ctx):
    if ctx.smoke:
        return [10 ** 4]
    return [10 ** 5, 10 ** 6] if ctx.quick else [10 ** 6, 10 ** 7]


def run(ctx):
    tables = []
    ref_torch = ctx.peers.reference_torch()
    for n in sizes(ctx):
        x_np = make_data(n)
        table = Table(ID, f"{ID} {TITLE}: forward+backward, n={n:.0e}",
                      {"n": n, "dtype": "float32"},
                      unit_note="time per loss + backward (x.grad filled)")
        tables.append(table)
        ref = None
        if ref_torch is not None:
            ref_impl = TorchLike(ref_torch, x_np)
            ref = ref_impl.summary(ref_impl.step())
            del ref_impl
        time_peers(ctx, table, f"{ID} (n={n:.0e})", PEERS, lambda peer, mod: make_impl(peer, mod, x_np), ref,
                   check=lambda where, peer, got: _check(ctx, where, peer, got, ref, n), notes=NOTES,
                   reps=ctx.reps(full=10 if n <= 10 ** 6 else 7, quick=5), warmup=ctx.warmup(1),
                   checksum="grad_sum")
    return tables


def _check(ctx, where, peer, got, ref, n):
    """Gradient: allclose(rtol 1e-3, atol 1e-6); loss: rtol 1e-3, atol 1e-6·n."""
    if ref is None:
        return checked_row(ctx, where, peer, got, None, rtol=RTOL)
    row = checked_row(ctx, where, peer, {"grad": got["grad"]}, {"grad": ref["grad"]}, rtol=RTOL, atol=ATOL)
    if row.status == "ok":
        row = checked_row(ctx, where, peer, {"loss": got["loss"]}, {"loss": ref["loss"]},
                          rtol=RTOL, atol=ATOL * n)
    return row
