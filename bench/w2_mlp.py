"""W2: MLP 784-256-256-10, ReLU, batch 128, cross-entropy, one SGD step.

One training step is ``zero_grad(); loss = cross_entropy(model(x), y);
loss.backward(); step(); loss.item()``: matmuls plus small tensors, a real
training step (see ``shared/BENCHMARKS.md``). Peers: tapegrad,
tapegrad.capture (the same step under ``tapegrad.capture``, the batch as its
arguments, replayed), torch eager
and ``torch.compile`` (the same code, ``TorchLike``; torch.compile compiles
the model, the loss, backward and SGD step stay as they are), jax (the whole
step under ``jax.jit``) and HIPS autograd (``mlp_loss``, written once over
``jax.numpy`` / ``autograd.numpy``, see ``functional.py``), and a
hand-written NumPy forward+backward+update (the "no autograd overhead"
floor). Every peer's first loss and parameters after one step are checked
against torch's before it is timed.
"""
import numpy as np

from . import captured
from .functional import training_step
from .harness import Table, summarize, time_peers
from .w5_article_loops import NOTES, _tapegrad_nn_missing, reset_params

ID = "W2"
TITLE = "MLP 784-256-256-10 training step"
PEERS = ("tapegrad", captured.PEER, "torch", "torch.compile", "numpy", "jax", "autograd")
RTOL, ATOL = 1e-4, 1e-5
LR = 0.01
BATCH = 128
SIZES = (784, 256, 256, 10)


def make_data(sizes=SIZES, batch=BATCH):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], batch).astype(np.int64)
    init = {}
    for i, (fi, fo) in enumerate(zip(sizes[:-1], sizes[1:])):
        bound = 1.0 / np.sqrt(fi)
        init[f"{2 * i}.weight"] = rng.uniform(-bound, bound, (fo, fi)).astype(np.float32)
        init[f"{2 * i}.bias"] = rng.uniform(-bound, bound, (fo,)).astype(np.float32)
    return x, y, init


class TorchLike:
    """tapegrad, torch or torch.compile (the model compiled):
    nn.Sequential(Linear, ReLU, Linear, ReLU, Linear) + CrossEntropyLoss + SGD."""

    def __init__(self, torch_like, data, sizes=SIZES, compile=False):
        x, y, init = data
        nn = torch_like.nn
        layers = []
        for i, (fi, fo) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(fi, fo))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.model = nn.Sequential(*layers)
        with torch_like.no_grad():
            for name, p in self.model.named_parameters():
                p.copy_(torch_like.tensor(init[name]))
        self.forward = torch_like.compile(self.model) if compile else self.model
        self.loss_fn = nn.CrossEntropyLoss()
        self.opt = torch_like.optim.SGD(self.model.parameters(), lr=LR)
        self.x = torch_like.tensor(x)
        self.y = torch_like.tensor(y)

    def train_step(self, x, y):
        """The step, returning the loss tensor."""
        self.opt.zero_grad()
        loss = self.loss_fn(self.forward(x), y)
        loss.backward()
        self.opt.step()
        return loss

    def step(self):
        return self.train_step(self.x, self.y).item()

    def state(self):
        return {name: p.detach().numpy().copy() for name, p in self.model.named_parameters()}


class Captured(TorchLike):
    """tapegrad: the same ``train_step`` under ``tapegrad.capture``, the batch as its arguments
    (cross-entropy's record reads the labels when it runs, so new batches replay too)."""

    def __init__(self, tg, data, sizes=SIZES):
        super().__init__(tg, data, sizes)
        init = data[2]

        def train_step(x, y):
            return TorchLike.train_step(self, x, y)

        self.cap = captured.Replayed(tg, train_step, (self.x, self.y),
                                     reset=lambda: reset_params(tg, self.model, init))
        self.skip_reason, self.extra, self.audit = self.cap.skip_reason, self.cap.extra, self.cap.audit

    def step(self):
        return self.cap().item()


class NumpyStep:
    """Hand-written forward, backward and SGD update (float32)."""

    def __init__(self, _np, data, sizes=SIZES):
        x, y, init = data
        self.x, self.y = x, y
        self.n = len(sizes) - 1
        self.p = {k: v.copy() for k, v in init.items()}

    def step(self):
        p, h = self.p, self.x
        acts, pre = [h], []
        for i in range(self.n):
            z = h @ p[f"{2 * i}.weight"].T + p[f"{2 * i}.bias"]
            pre.append(z)
            h = np.maximum(z, 0) if i < self.n - 1 else z
            acts.append(h)
        logits = acts[-1]
        m = logits.max(axis=1, keepdims=True)
        e = np.exp(logits - m)
        s = e.sum(axis=1, keepdims=True)
        logp = logits - m - np.log(s)
        b = len(self.y)
        loss = -logp[np.arange(b), self.y].mean()
        g = e / s
        g[np.arange(b), self.y] -= 1
        g *= np.float32(1.0 / b)
        lr = np.float32(LR)
        for i in range(self.n - 1, -1, -1):
            w = p[f"{2 * i}.weight"]
            dw = g.T @ acts[i]
            db = g.sum(axis=0)
            if i:
                g = (g @ w) * (pre[i - 1] > 0)
            w -= lr * dw
            p[f"{2 * i}.bias"] -= lr * db
        return float(loss)

    def state(self):
        return {k: v.copy() for k, v in self.p.items()}


def mlp_loss(xnp, p, x, y):
    """The same step's loss as a pure function of the parameters (jax, HIPS autograd)."""
    n = len(p) // 2
    h = x
    for i in range(n):
        h = h @ p[f"{2 * i}.weight"].T + p[f"{2 * i}.bias"]
        if i < n - 1:
            h = xnp.maximum(h, 0.0)
    m = xnp.max(h, axis=1, keepdims=True)
    logp = h - m - xnp.log(xnp.sum(xnp.exp(h - m), axis=1, keepdims=True))
    return -xnp.mean(logp[np.arange(len(y)), y])


def make_impl(peer, mod, data, sizes):
    if peer in ("jax", "autograd"):
        x, y, init = data
        return training_step(peer, mod, mlp_loss, init, x, y, LR)
    if peer == "numpy":
        return NumpyStep(mod, data, sizes)
    if peer == captured.PEER:
        return Captured(mod, data, sizes)
    return TorchLike(mod, data, sizes, compile=peer == "torch.compile")

W2_NOTES = {**NOTES, captured.PEER: captured.NOTE}


def run(ctx):
    sizes, batch = ((784, 32, 32, 10), 16) if ctx.smoke else (SIZES, BATCH)
    data = make_data(sizes, batch)
    table = Table(ID, f"{ID} {TITLE}: one training step", {"sizes": list(sizes), "batch": batch, "lr": LR},
                  unit_note="time per step: zero_grad, forward, cross-entropy, backward, SGD step, loss.item()")
    ref_torch = ctx.peers.reference_torch()
    ref = summarize(TorchLike(ref_torch, data, sizes)) if ref_torch is not None else None
    time_peers(ctx, table, ID, PEERS, lambda peer, mod: make_impl(peer, mod, data, sizes), ref, rtol=RTOL,
               atol=ATOL, notes=W2_NOTES, skip=lambda peer: _tapegrad_nn_missing() if peer.startswith("tapegrad") else None,
               reps=ctx.reps(full=30, quick=10), warmup=ctx.warmup(5))
    return [table]
