"""The peers that differentiate a pure function: jax and HIPS autograd.

``GradCall(peer, module, fn, args, consts=())`` is the forward+backward
workloads' (W1, W3, W4) implementation: ``step()`` returns ``(value, grads)``,
the value of ``fn(xnp, *args, *consts)`` and its gradient with respect to
every one of ``args`` (not ``consts``), computed to the end: for jax one
``jax.jit`` of ``value_and_grad`` over all arguments (``block_until_ready``
waits for it; an argument may be a list, of scalars say: each is a leaf), for
HIPS autograd ``value_and_grad`` of the tuple of arguments (traced anew on
every call). For HIPS autograd ``build()`` and ``backward(handle)`` split it
in two, for W1's backward-only table: the forward under ``make_vjp``, then
the pullback of 1. jax has no such split (``no_backward_only`` says why):
``jax.vjp`` of the jitted function re-linearizes it on every build and its
pullback runs op by op, not compiled.

For the training steps (W2, W5) a workload writes its loss once, as
``loss(xnp, params, x, y)`` over a NumPy-like module ``xnp`` (``jax.numpy``
or ``autograd.numpy``) and a dict of parameters; ``training_step(peer,
module, loss, init, x, y, lr)`` turns it into an implementation with
``step()`` (one SGD step, returns the loss as a float) and ``state()`` (the
parameters as NumPy arrays), as ``harness.time_peers`` wants:

* ``jax``: the whole step under one ``jax.jit``: ``value_and_grad`` of the
  loss and the SGD update, the parameters going in and coming out of the
  compiled function; ``float(loss)`` waits for it (as ``loss.item()`` does).
* ``autograd``: ``autograd.value_and_grad`` (HIPS autograd traces the
  function anew on every call) and the SGD update in NumPy, in place.
"""
import numpy as np


class GradCall:
    """Value and gradient of ``fn(xnp, *args, *consts)`` w.r.t. ``args``: jax or HIPS autograd."""

    def __init__(self, peer, module, fn, args, consts=()):
        self.peer, self.mod = peer, module
        xnp = module.numpy
        if peer == "jax":
            # the constants are arguments of the compiled function too (not baked into it)
            wrt = tuple(range(len(args)))
            self.vg = module.jit(module.value_and_grad(lambda *a: fn(xnp, *a), argnums=wrt))
            self.args = module.tree_util.tree_map(xnp.asarray, tuple(args))
            self.consts = tuple(xnp.asarray(c) for c in consts)
            self.no_backward_only = ("skipped: jax.jit(value_and_grad) is one call "
                                     "(jax.vjp's pullback is not compiled)")
        else:
            self.no_backward_only = None
            self.f = lambda a: fn(xnp, *a, *consts)
            self.vg = module.value_and_grad(self.f)
            self.args = tuple(args)

    def step(self):
        if self.peer == "jax":
            return self.mod.block_until_ready(self.vg(*self.args, *self.consts))
        return self.vg(self.args)

    def build(self):
        """HIPS autograd: the forward, keeping what the backward needs: ``(value, pullback)``."""
        pullback, value = self.mod.make_vjp(self.f)(self.args)
        return value, pullback

    def backward(self, handle):
        """HIPS autograd: the gradients from ``build``'s pullback, as ``step`` returns them."""
        value, pullback = handle
        return value, pullback(np.ones_like(value))


class JaxStep:
    """One SGD step, value_and_grad and update together, under ``jax.jit``."""

    def __init__(self, jax, loss, init, x, y, lr):
        jnp = jax.numpy
        value_and_grad = jax.value_and_grad(lambda p, x, y: loss(jnp, p, x, y))

        def sgd_step(p, x, y):
            value, g = value_and_grad(p, x, y)
            return value, {k: p[k] - lr * g[k] for k in p}

        self._step = jax.jit(sgd_step)
        self.p = {k: jnp.asarray(v) for k, v in init.items()}
        self.x, self.y = jnp.asarray(x), jnp.asarray(y)

    def step(self):
        value, self.p = self._step(self.p, self.x, self.y)
        return float(value)

    def state(self):
        return {k: np.array(v) for k, v in self.p.items()}


class AutogradStep:
    """One SGD step: HIPS ``autograd.value_and_grad``, then the update in NumPy."""

    def __init__(self, autograd, loss, init, x, y, lr):
        anp = autograd.numpy
        self._value_and_grad = autograd.value_and_grad(lambda p: loss(anp, p, x, y))
        self.p = {k: v.copy() for k, v in init.items()}
        self.lr = np.float32(lr)

    def step(self):
        value, g = self._value_and_grad(self.p)
        for k, p in self.p.items():
            p -= self.lr * g[k]
        return float(value)

    def state(self):
        return {k: v.copy() for k, v in self.p.items()}


STEPS = {"jax": JaxStep, "autograd": AutogradStep}


def training_step(peer, module, loss, init, x, y, lr):
    """The implementation of one training step for ``peer`` (``jax`` or ``autograd``)."""
    return STEPS[peer](module, loss, init, x, y, lr)
