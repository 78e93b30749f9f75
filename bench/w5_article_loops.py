"""W5a / W5b: the articles' own training loops, overhead-bound.

* W5a (article 001): ``nn.Linear(10, 1)`` + ``nn.MSELoss()`` +
  ``optim.SGD(lr=0.01)``; weight and bias set with ``nn.Parameter`` as the
  article does (with the (1, 10) shape real PyTorch needs, see ERRATA).
* W5b (article 003): ``class Net(nn.Module)`` with ``fc1 = Linear(10, 5)``,
  ``torch.relu``, ``fc2 = Linear(5, 1)``, same loss and optimizer.

Batch of 100 random float32 rows (``default_rng(0)``). One training step is
``zero_grad(); out = model(X); loss = loss_fn(out, Y); loss.backward();
step(); loss.item()`` (the ``item()`` is the logging a real loop does; it
also makes a lazy engine finish the step). Each repetition times a block of
steps and reports the time per step.

Peers: tapegrad, tapegrad.capture (the same step, ``step_loss``, under
``tapegrad.capture``, the batch as its arguments, replayed), torch eager and
``torch.compile`` (the same code, ``build_w5a/b(torch_like, …)``; torch.compile compiles the model, the loop
around it is the article's), jax (the whole step, SGD update included, under
``jax.jit``) and HIPS autograd (the loss written once as a pure function,
``LOSSES``, see ``functional.py``), and a hand-written NumPy step. Before
timing, the loss of the first step and every parameter after it must match
torch's (rtol 1e-4, atol 1e-6). tapegrad
runs only when ``tapegrad.nn`` and ``tapegrad.optim`` exist; otherwise its
row says "skipped: tapegrad.nn not available".
"""
import importlib

import numpy as np

from . import captured
from .functional import training_step
from .harness import Table, summarize, time_peers

ID = "W5"
TITLE = "the articles' training loops (W5a, W5b)"
PEERS = ("tapegrad", captured.PEER, "torch", "torch.compile", "numpy", "jax", "autograd")
RTOL, ATOL = 1e-4, 1e-6
LR = 0.01
BATCH = 100


# ----- the workloads, for any module with PyTorch's interface --------------------

def _param(torch_like, a):
    return torch_like.nn.Parameter(torch_like.tensor(a, dtype=torch_like.float32))


def build_w5a(torch_like, init):
    """Article 001: Linear(10, 1) + MSELoss + SGD(lr=0.01)."""
    nn = torch_like.nn
    model = nn.Linear(10, 1)
    model.weight = _param(torch_like, init["weight"])
    model.bias = _param(torch_like, init["bias"])
    return model, nn.MSELoss(), torch_like.optim.SGD(model.parameters(), lr=LR)


def build_w5b(torch_like, init):
    """Article 003: Linear(10, 5) - relu - Linear(5, 1), same loss and optimizer."""
    nn = torch_like.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(10, 5)
            self.fc2 = nn.Linear(5, 1)

        def forward(self, x):
            x = torch_like.relu(self.fc1(x))
            x = self.fc2(x)
            return x

    net = Net()
    net.fc1.weight = _param(torch_like, init["fc1.weight"])
    net.fc1.bias = _param(torch_like, init["fc1.bias"])
    net.fc2.weight = _param(torch_like, init["fc2.weight"])
    net.fc2.bias = _param(torch_like, init["fc2.bias"])
    return net, nn.MSELoss(), torch_like.optim.SGD(net.parameters(), lr=LR)


def step_loss(model, loss_fn, optimizer, inputs, labels):
    """One step of the articles' loop, returning the loss tensor (what ``tapegrad.capture`` records)."""
    optimizer.zero_grad()
    outputs = model(inputs)
    loss = loss_fn(outputs, labels)
    loss.backward()
    optimizer.step()
    return loss


def train_step(model, loss_fn, optimizer, inputs, labels):
    """One step of the articles' loop, with its logging read."""
    return step_loss(model, loss_fn, optimizer, inputs, labels).item()


def reset_params(torch_like, model, init):
    """Put every parameter back to ``init[name]``, in place (the captured peers, after their probe)."""
    with torch_like.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch_like.tensor(init[name], dtype=torch_like.float32))


# ----- data -----------------------------------------------------------------------

SHAPES = {
    "W5a": {"weight": (1, 10), "bias": (1,)},
    "W5b": {"fc1.weight": (5, 10), "fc1.bias": (5,), "fc2.weight": (1, 5), "fc2.bias": (1,)},
}


def make_data(variant):
    """Inputs, labels and an initial state like PyTorch's default init."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, 10), dtype=np.float32)
    y = rng.standard_normal((BATCH, 1), dtype=np.float32)
    init = {}
    for name, shape in SHAPES[variant].items():
        fan_in = SHAPES[variant][name.replace("bias", "weight")][1]
        bound = 1.0 / np.sqrt(fan_in)
        init[name] = rng.uniform(-bound, bound, shape).astype(np.float32)
    return x, y, init


# ----- peers -------------------------------------------------------------------------

class TorchLike:
    """tapegrad, torch or torch.compile (the model compiled): the same code, parametrised by the module."""

    def __init__(self, torch_like, variant, data, compile=False):
        x, y, init = data
        build = build_w5a if variant == "W5a" else build_w5b
        self.model, self.loss_fn, self.opt = build(torch_like, init)
        self.forward = torch_like.compile(self.model) if compile else self.model
        self.x = torch_like.tensor(x, dtype=torch_like.float32)
        self.y = torch_like.tensor(y, dtype=torch_like.float32)

    def step(self):
        return train_step(self.forward, self.loss_fn, self.opt, self.x, self.y)

    def state(self):
        return {name: p.detach().numpy().copy() for name, p in self.model.named_parameters()}


class Captured(TorchLike):
    """tapegrad: the same step (``step_loss``) under ``tapegrad.capture``, the batch as its arguments;
    the loss is read outside the captured call."""

    def __init__(self, tg, variant, data):
        super().__init__(tg, variant, data)
        init = data[2]

        def article_step(inputs, labels):
            return step_loss(self.forward, self.loss_fn, self.opt, inputs, labels)

        self.cap = captured.Replayed(tg, article_step, (self.x, self.y),
                                     reset=lambda: reset_params(tg, self.model, init))
        self.skip_reason, self.extra, self.audit = self.cap.skip_reason, self.cap.extra, self.cap.audit

    def step(self):
        return self.cap().item()


class NumpyStep:
    """Hand-written forward, backward and SGD update in NumPy (float32)."""

    def __init__(self, _np, variant, data):
        x, y, init = data
        self.variant = variant
        self.x, self.y = x, y
        self.p = {k: v.copy() for k, v in init.items()}

    def step(self):
        return self._step_a() if self.variant == "W5a" else self._step_b()

    def _step_a(self):
        p, x = self.p, self.x
        w, b = p["weight"], p["bias"]
        pred = x @ w.T + b
        diff = pred - self.y
        loss = np.mean(diff * diff)
        dpred = diff * np.float32(2.0 / diff.size)
        w -= np.float32(LR) * (dpred.T @ x)
        b -= np.float32(LR) * dpred.sum(axis=0)
        return float(loss)

    def _step_b(self):
        p, x = self.p, self.x
        w1, b1, w2, b2 = p["fc1.weight"], p["fc1.bias"], p["fc2.weight"], p["fc2.bias"]
        z1 = x @ w1.T + b1
        a1 = np.maximum(z1, 0)
        pred = a1 @ w2.T + b2
        diff = pred - self.y
        loss = np.mean(diff * diff)
        dpred = diff * np.float32(2.0 / diff.size)
        dw2 = dpred.T @ a1
        db2 = dpred.sum(axis=0)
        dz1 = (dpred @ w2) * (z1 > 0)
        dw1 = dz1.T @ x
        db1 = dz1.sum(axis=0)
        lr = np.float32(LR)
        w1 -= lr * dw1
        b1 -= lr * db1
        w2 -= lr * dw2
        b2 -= lr * db2
        return float(loss)

    def state(self):
        return {k: v.copy() for k, v in self.p.items()}


def w5a_loss(xnp, p, x, y):
    """W5a's loss as a pure function of the parameters (jax, HIPS autograd)."""
    diff = x @ p["weight"].T + p["bias"] - y
    return xnp.mean(diff * diff)


def w5b_loss(xnp, p, x, y):
    """W5b's loss as a pure function of the parameters."""
    h = xnp.maximum(x @ p["fc1.weight"].T + p["fc1.bias"], 0.0)
    diff = h @ p["fc2.weight"].T + p["fc2.bias"] - y
    return xnp.mean(diff * diff)


LOSSES = {"W5a": w5a_loss, "W5b": w5b_loss}


def make_impl(peer, mod, variant, data):
    if peer in ("jax", "autograd"):
        x, y, init = data
        return training_step(peer, mod, LOSSES[variant], init, x, y, LR)
    if peer == "numpy":
        return NumpyStep(mod, variant, data)
    if peer == captured.PEER:
        return Captured(mod, variant, data)
    return TorchLike(mod, variant, data, compile=peer == "torch.compile")


NOTES = {"numpy": "hand-written NumPy step", "torch.compile": "torch.compile(model)",
         "jax": "jax.jit of the whole step", "autograd": "HIPS autograd + NumPy SGD",
         captured.PEER: captured.NOTE}


def _tapegrad_nn_missing():
    """Reason string when tapegrad has no nn/optim yet, else None."""
    for sub in ("nn", "optim"):
        try:
            importlib.import_module(f"tapegrad.{sub}")
        except ImportError:
            return f"skipped: tapegrad.{sub} not available"
    return None



def run(ctx):
    tables = []
    ref_torch = ctx.peers.reference_torch()
    steps_per_rep = 1 if ctx.smoke else 20
    for variant, title in (("W5a", "article 001: Linear(10,1) + MSELoss + SGD"),
                           ("W5b", "article 003: Linear(10,5)-ReLU-Linear(5,1) + MSELoss + SGD")):
        if variant not in ctx.only_variants:
            continue
        data = make_data(variant)
        table = Table(variant, f"{variant} {title}: one training step",
                      {"batch": BATCH, "lr": LR, "steps_per_rep": steps_per_rep},
                      unit_note="time per step: zero_grad, forward, loss, backward, step, loss.item()")
        tables.append(table)
        ref = summarize(TorchLike(ref_torch, variant, data)) if ref_torch is not None else None
        time_peers(ctx, table, variant, PEERS,
                   lambda peer, mod, v=variant, d=data: make_impl(peer, mod, v, d), ref, rtol=RTOL, atol=ATOL,
                   notes=NOTES, skip=lambda peer: _tapegrad_nn_missing() if peer.startswith("tapegrad") else None,
                   reps=ctx.reps(full=30, quick=10), warmup=ctx.warmup(20), number=steps_per_rep)
    return tables
