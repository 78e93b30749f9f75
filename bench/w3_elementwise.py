"""W3: elementwise, the memory-bandwidth workload.

``loss = (sin(x) * exp(-x*x)).sum()`` and its gradient wrt x, for x of 10^6
and 10^7 float32 elements (``--quick``: 10^5 and 10^6; ``--smoke``: 10^4),
one table per size, forward+backward timed together (x is made once,
``x.grad = None`` between reps).

Peers: tapegrad and torch (one function, ``loss_fn(torch_like, x)``), a
hand-written NumPy forward+backward, and a fused ``@njit(parallel=True)``
loop computing the loss and the gradient in one pass (the bandwidth floor):
d/dx = exp(-x²)·(cos x − 2x·sin x). Before timing, every peer's gradient
must match torch's (allclose rtol 1e-3, atol 1e-6) and its loss too
(rtol 1e-3, atol 1e-6·n: the sum of zero-mean terms nearly cancels).
"""
import numpy as np

from .harness import Table, checked_row, error_row, measure, unavailable_row

ID = "W3"
TITLE = "elementwise (sin(x)*exp(-x*x)).sum()"
PEERS = ("tapegrad", "torch", "numpy", "njit", "jax", "autograd")
RTOL, ATOL = 1e-3, 1e-6


def loss_fn(torch_like, x):
    """The workload itself, for any module with PyTorch's interface."""
    return (torch_like.sin(x) * torch_like.exp(-x * x)).sum()


def make_data(n):
    return np.random.default_rng(0).standard_normal(n, dtype=np.float32)


class TorchLike:
    """tapegrad or torch: the same code, parametrised by the module."""

    def __init__(self, torch_like, x_np):
        self.tl = torch_like
        self.x = torch_like.tensor(x_np, dtype=torch_like.float32, requires_grad=True)

    def zero(self):
        self.x.grad = None

    def step(self):
        loss = loss_fn(self.tl, self.x)
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


IMPLS = {"tapegrad": TorchLike, "torch": TorchLike, "numpy": NumpyFloor, "njit": NjitFused}
NOTES = {"numpy": "hand-written NumPy", "njit": "fused @njit(parallel=True), one pass"}


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
        where = f"{ID} (n={n:.0e})"
        reps = ctx.reps(full=10 if n <= 10 ** 6 else 7, quick=5)
        for peer in PEERS:
            if not ctx.peers.wanted(peer):
                continue
            mod, reason = ctx.peers.get(peer)
            if mod is None:
                table.rows.append(unavailable_row(ctx, where, peer, reason))
                continue
            try:
                impl = IMPLS[peer](mod, x_np)
                got = impl.summary(impl.step())
                row = _check(ctx, where, peer, got, ref, n)
                row.extra["check"] = {"loss": got["loss"], "grad_sum": float(np.sum(got["grad"], dtype=np.float64))}
                if peer in NOTES and row.status == "ok" and not row.note:
                    row.note = NOTES[peer]
                table.rows.append(row)
                row.times = measure(lambda _: impl.step(), setup=lambda: impl.zero(),
                                    warmup=ctx.warmup(1), reps=reps, max_seconds=ctx.max_seconds)
            except Exception as exc:  # noqa: BLE001 - report, keep the suite running
                table.rows.append(error_row(ctx, where, peer, exc))
            finally:
                impl = None
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
