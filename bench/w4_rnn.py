"""W4: tanh RNN cell, backpropagation through time: many medium records.

Input 32, hidden 64, batch 16, 100 steps (``--smoke``: 8, 16, 4, 10),
float32, data from NumPy ``default_rng(0)``: inputs x_t standard normal,
parameters W_ih (64×32), W_hh (64×64) and b (64) uniform in ±1/√hidden (as
``torch.nn.RNN`` draws them). From h_0 = 0, ``h = tanh(x_t @ W_ih.T + h @
W_hh.T + b)`` for every step; loss = sum(h_T²); one call is the forward, the
backward and the gradient of all three parameters (``.grad = None`` between
calls, untimed; a torch-like peer ends with ``loss.item()``).

Peers: tapegrad, tapegrad.capture (the same forward and backward as one step
under ``tapegrad.capture``, h_0 and the x_t its arguments, replayed), torch
eager and ``torch.compile`` (one function, ``rnn_loss(torch_like, …)``; torch.compile compiles it, the Python loop
unrolled), jax (``jax.jit`` of ``value_and_grad`` of the loop as
``lax.scan``, ``rnn_loss_scan``), HIPS autograd (``rnn_loss`` over
``autograd.numpy``), and a hand-written NumPy BPTT (the floor: the input
projections of all steps in one matmul, then the recurrence forward and
backward). Before timing, every peer's loss and gradients must match a
float64 run of the hand-written BPTT (rtol 1e-4, atol 1e-5 × the largest
gradient element); the JSON keeps each peer's gradient checksum.
"""
import numpy as np

from . import captured
from .functional import GradCall
from .harness import Table, summarize, time_peers

ID = "W4"
TITLE = "tanh RNN cell, BPTT"
PEERS = ("tapegrad", captured.PEER, "torch", "torch.compile", "numpy", "jax", "autograd")
PARAMS = ("W_ih", "W_hh", "b")
SIZES = {"input": 32, "hidden": 64, "batch": 16, "steps": 100}
SMOKE_SIZES = {"input": 8, "hidden": 16, "batch": 4, "steps": 10}
RTOL = 1e-4


def rnn_loss(torch_like, w_ih, w_hh, b, xs, h):
    """The workload itself, for any module with PyTorch's interface (``h`` is h_0)."""
    for x_t in xs:
        h = torch_like.tanh(x_t @ w_ih.T + h @ w_hh.T + b)
    return (h * h).sum()


def rnn_loss_scan(lax, jnp, w_ih, w_hh, b, xs, h):
    """The same with the loop as ``lax.scan`` (jax)."""
    def cell(h, x_t):
        return jnp.tanh(x_t @ w_ih.T + h @ w_hh.T + b), None
    h, _ = lax.scan(cell, h, xs)
    return (h * h).sum()


def make_data(sizes):
    hidden = sizes["hidden"]
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((sizes["steps"], sizes["batch"], sizes["input"]), dtype=np.float32)
    bound = 1.0 / np.sqrt(hidden)
    shapes = {"W_ih": (hidden, sizes["input"]), "W_hh": (hidden, hidden), "b": (hidden,)}
    init = {name: rng.uniform(-bound, bound, shapes[name]).astype(np.float32) for name in PARAMS}
    return xs, init


def _h0(xs, init):
    return np.zeros((xs.shape[1], init["b"].shape[0]), xs.dtype)


def _result(loss, grads):
    return {"loss": float(loss), **{name: np.asarray(g) for name, g in zip(PARAMS, grads)}}


# ----- peers ---------------------------------------------------------------------

class TorchLike:
    """tapegrad, torch or torch.compile: the same ``rnn_loss``, then ``loss.backward()``."""

    def __init__(self, torch_like, data, compile=False):
        xs, init = data
        self.params = [torch_like.tensor(init[name], requires_grad=True) for name in PARAMS]
        self.xs = [torch_like.tensor(x_t) for x_t in xs]
        self.h0 = torch_like.tensor(_h0(xs, init))
        self.loss = lambda *a: rnn_loss(torch_like, *a)
        if compile:
            self.loss = torch_like.compile(self.loss, dynamic=False)

    def zero(self):
        for p in self.params:
            p.grad = None

    def step(self):
        loss = self.loss(*self.params, self.xs, self.h0)
        loss.backward()
        return loss.item()

    def state(self):
        return {name: p.grad.detach().numpy().copy() for name, p in zip(PARAMS, self.params)}


class Captured(TorchLike):
    """tapegrad: the same ``rnn_loss`` and ``loss.backward()`` as one step under ``tapegrad.capture``,
    h_0 and the inputs x_t its arguments, the parameters in its closure (``zero()`` resets their
    gradients outside the captured call); ``loss.item()`` is read outside it."""

    def __init__(self, tg, data):
        super().__init__(tg, data)

        def bptt_step(h0, *xs):
            loss = rnn_loss(tg, *self.params, xs, h0)
            loss.backward()
            return loss

        self.cap = captured.Replayed(tg, bptt_step, (self.h0, *self.xs), reset=self.zero)
        self.skip_reason, self.extra, self.audit = self.cap.skip_reason, self.cap.extra, self.cap.audit

    def step(self):
        return self.cap().item()


class NumpyBPTT:
    """Hand-written forward and backpropagation through time (float32; float64 for the reference)."""

    def __init__(self, _np, data, dtype=np.float32):
        xs, init = data
        self.xs = xs.astype(dtype)
        self.w_ih, self.w_hh, self.b = (init[name].astype(dtype) for name in PARAMS)

    def step(self):
        xs, w_hh = self.xs, self.w_hh
        steps, batch, n_in = xs.shape
        flat = xs.reshape(steps * batch, n_in)
        u = (flat @ self.w_ih.T + self.b).reshape(steps, batch, -1)   # input projections, all steps
        hs = np.zeros((steps + 1,) + u.shape[1:], xs.dtype)
        for t in range(steps):
            np.tanh(u[t] + hs[t] @ w_hh.T, out=hs[t + 1])
        h = hs[steps]
        loss = np.sum(h * h)
        dz = np.empty_like(u)
        dh = 2 * h
        for t in range(steps - 1, -1, -1):
            ht = hs[t + 1]
            np.multiply(dh, 1 - ht * ht, out=dz[t])
            dh = dz[t] @ w_hh
        dz_flat = dz.reshape(steps * batch, -1)
        g_ih = dz_flat.T @ flat
        g_hh = dz_flat.T @ hs[:steps].reshape(steps * batch, -1)
        return loss, (g_ih, g_hh, dz_flat.sum(axis=0))

    def summary(self, res):
        return _result(*res)


class Functional(GradCall):
    """jax (``rnn_loss_scan`` under ``jax.jit(value_and_grad)``) or HIPS autograd (``rnn_loss``)."""

    def __init__(self, peer, module, data):
        xs, init = data
        if peer == "jax":
            fn = lambda jnp, *a: rnn_loss_scan(module.lax, jnp, *a)   # noqa: E731
            consts = (xs, _h0(xs, init))
        else:
            fn, consts = rnn_loss, (list(xs), _h0(xs, init))
        super().__init__(peer, module, fn, [init[name] for name in PARAMS], consts)

    def summary(self, res):
        loss, grads = res
        return _result(loss, grads)


def make_impl(peer, mod, data):
    if peer in ("jax", "autograd"):
        return Functional(peer, mod, data)
    if peer == "numpy":
        return NumpyBPTT(mod, data)
    if peer == captured.PEER:
        return Captured(mod, data)
    return TorchLike(mod, data, compile=peer == "torch.compile")


NOTES = {"numpy": "hand-written NumPy BPTT", "torch.compile": "torch.compile(rnn_loss), loop unrolled",
         "jax": "jax.jit(value_and_grad), lax.scan", "autograd": "HIPS autograd", captured.PEER: captured.NOTE}


def run(ctx):
    sizes = SMOKE_SIZES if ctx.smoke else SIZES
    data = make_data(sizes)
    table = Table(ID, f"{ID} {TITLE}: forward+backward", {**sizes, "dtype": "float32"},
                  unit_note="time per loss + backward (grads of W_ih, W_hh, b); loss = sum(h_T²)")
    ref = summarize(NumpyBPTT(np, data, dtype=np.float64))
    atol = 1e-5 * max(float(np.max(np.abs(ref[name]))) for name in PARAMS)
    time_peers(ctx, table, ID, PEERS, lambda peer, mod: make_impl(peer, mod, data), ref, rtol=RTOL, atol=atol,
               notes=NOTES, reps=ctx.reps(full=30, quick=10), warmup=ctx.warmup(3), checksum="grad_sum",
               ref_name="the float64 NumPy BPTT")
    return [table]
