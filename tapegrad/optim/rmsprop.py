"""RMSprop (torch.optim.RMSprop)."""
from ..kernels import optim as K
from ..tensor import Tensor
from .optimizer import Optimizer
from .sgd import _not_differentiable

__all__ = ["RMSprop"]


class RMSprop(Optimizer):
    r"""RMSprop, PyTorch's algorithm (``_single_tensor_rmsprop``):

    .. math::
        v \leftarrow \alpha v + (1-\alpha) g^2,\quad
        a = \sqrt{v - \bar g^2} + \epsilon \text{ (centered, } \bar g \leftarrow
        \mathrm{lerp}(\bar g, g, 1-\alpha)) \text{ or } \sqrt{v} + \epsilon,\quad
        b \leftarrow \mu b + g/a,\ \theta \leftarrow \theta - \gamma b
        \text{ (momentum) or } \theta \leftarrow \theta - \gamma g/a
    """
    _kernel = "rmsprop_step"

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False,
                 capturable=False, foreach=None, maximize=False, differentiable=False):
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= momentum:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not 0.0 <= alpha:
            raise ValueError(f"Invalid alpha value: {alpha}")
        _not_differentiable(differentiable)
        defaults = {"lr": lr, "momentum": momentum, "alpha": alpha, "eps": eps, "centered": centered,
                    "weight_decay": weight_decay, "capturable": capturable, "foreach": foreach,
                    "maximize": maximize, "differentiable": differentiable}
        super().__init__(params, defaults)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("momentum", 0)
            group.setdefault("centered", False)
            group.setdefault("foreach", None)
            group.setdefault("maximize", False)
            group.setdefault("differentiable", False)
            group.setdefault("capturable", False)

    def _hyper(self, g):
        return (float(g["lr"]), float(g["alpha"]), float(g["eps"]), float(g["weight_decay"]),
                float(g["momentum"]), float(bool(g["centered"])), float(bool(g["maximize"])))

    def _layout(self, g):
        return (g["momentum"] > 0, bool(g["centered"]))

    def _state_keys(self, g):
        keys = (("step", K.STEP), ("square_avg", K.S0))
        if g["momentum"] > 0:
            keys += (("momentum_buffer", K.S1),)
        if g["centered"]:
            keys += (("grad_avg", K.S2),)
        return keys
