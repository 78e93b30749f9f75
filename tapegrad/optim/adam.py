"""Adam and AdamW (torch.optim.Adam, torch.optim.AdamW)."""
from ..kernels import optim as K
from ..tensor import Tensor
from .optimizer import Optimizer
from .sgd import _not_differentiable

__all__ = ["Adam", "AdamW"]


def _scalar(x):
    return float(x) if isinstance(x, Tensor) else x


class Adam(Optimizer):
    r"""Adam, PyTorch's algorithm (``_single_tensor_adam``, capturable=False): with
    :math:`t` the parameter's own step count,

    .. math::
        m \leftarrow \mathrm{lerp}(m, g, 1-\beta_1),\quad
        v \leftarrow \beta_2 v + (1-\beta_2) g^2,\quad
        \theta \leftarrow \theta - \frac{\gamma}{1-\beta_1^t}\,
            \frac{m}{\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon}

    (``amsgrad``: :math:`\max` of all :math:`v` so far in place of :math:`v`;
    ``decoupled_weight_decay``/AdamW: :math:`\theta \leftarrow \theta(1-\gamma\lambda)`
    first instead of :math:`g \leftarrow g + \lambda\theta`).
    """
    _kernel = "adam_step"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
                 foreach=None, maximize=False, capturable=False, differentiable=False, fused=None,
                 decoupled_weight_decay=False):
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not ((isinstance(betas[0], float) and isinstance(betas[1], float))
                or (isinstance(betas[0], Tensor) and isinstance(betas[1], Tensor))):
            raise ValueError("betas must be either both floats or both Tensors")
        for i in (0, 1):
            if isinstance(betas[i], Tensor) and betas[i].numel() != 1:
                raise ValueError(f"Tensor betas[{i}] must be 1-element")
        betas = tuple(map(_scalar, betas))
        _not_differentiable(differentiable)
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "amsgrad": amsgrad,
                    "maximize": maximize, "foreach": foreach, "capturable": capturable,
                    "differentiable": differentiable, "fused": fused,
                    "decoupled_weight_decay": decoupled_weight_decay}
        super().__init__(params, defaults)
        if fused and foreach:
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("amsgrad", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("capturable", False)
            group.setdefault("differentiable", False)
            group.setdefault("decoupled_weight_decay", False)
            group.setdefault("fused", None)

    def _hyper(self, g):
        b1, b2 = g["betas"]
        return (float(g["lr"]), float(b1), float(b2), float(g["eps"]), float(g["weight_decay"]),
                float(bool(g["amsgrad"])), float(bool(g["maximize"])), float(bool(g["decoupled_weight_decay"])))

    def _layout(self, g):
        return bool(g["amsgrad"])

    def _state_keys(self, g):
        keys = (("step", K.STEP), ("exp_avg", K.S0), ("exp_avg_sq", K.S1))
        return keys + (("max_exp_avg_sq", K.S2),) if g["amsgrad"] else keys

    def _bumps(self, g):
        # PyTorch writes the parameter twice with decoupled weight decay: param.mul_(), then addcdiv_()
        return 2 if g["decoupled_weight_decay"] and g["weight_decay"] != 0 else 1


class AdamW(Adam):
    """Adam with decoupled weight decay (``decoupled_weight_decay=True``), weight_decay 1e-2 by default."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, foreach=None, capturable=False, differentiable=False, fused=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
