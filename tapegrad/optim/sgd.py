"""SGD with momentum, dampening, Nesterov, weight decay, maximize (torch.optim.SGD)."""
from ..kernels import optim as K
from .optimizer import Optimizer

__all__ = ["SGD"]


def _not_differentiable(differentiable):
    if differentiable:
        raise NotImplementedError("tapegrad.optim: differentiable=True is not supported (the update runs "
                                  "outside the tape)")


class SGD(Optimizer):
    r"""Stochastic gradient descent, PyTorch's algorithm (``_single_tensor_sgd``):

    .. math::
        g \leftarrow \pm\nabla + \lambda\theta,\quad
        b \leftarrow \mu b + (1-\tau) g \ (b_1 = g),\quad
        g \leftarrow g + \mu b \text{ (Nesterov) or } b,\quad
        \theta \leftarrow \theta - \gamma g
    """
    _kernel = "sgd_step"

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *,
                 maximize=False, foreach=None, differentiable=False, fused=None):
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening, "weight_decay": weight_decay,
                    "nesterov": nesterov, "maximize": maximize, "foreach": foreach,
                    "differentiable": differentiable, "fused": fused}
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        _not_differentiable(differentiable)
        super().__init__(params, defaults)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("differentiable", False)
            group.setdefault("fused", False)

    def _hyper(self, g):
        return (float(g["lr"]), float(g["momentum"]), float(g["dampening"]), float(g["weight_decay"]),
                float(bool(g["nesterov"])), float(bool(g["maximize"])))

    def _layout(self, g):
        return g["momentum"] != 0

    def _state_keys(self, g):
        return (("momentum_buffer", K.S0),) if g["momentum"] != 0 else ()

    def _initialized(self, st):
        return st.get("momentum_buffer") is not None
