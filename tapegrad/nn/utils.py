"""torch.nn.utils: gradient clipping."""
import numpy as np

from ..autograd.grad_mode import no_grad
from ..tensor import Tensor, tensor as _tensor

__all__ = ["clip_grad_norm_", "clip_grad_value_"]


def _grads(parameters):
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    return [p.grad for p in parameters if p.grad is not None]


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """Scale the gradients in place so that their joint norm is at most max_norm.

    Returns the total norm before clipping (a 0-d tensor). As in torch the grads
    are multiplied by min(1, max_norm / (total_norm + 1e-6)) even when no
    clipping is needed."""
    grads = _grads(parameters)
    max_norm = float(max_norm)
    norm_type = float(norm_type)
    if not grads:
        return _tensor(0.0)
    dt = grads[0].dtype
    vals = [g._values() for g in grads]
    if norm_type == float("inf"):
        norms = np.array([np.abs(v).max() if v.size else 0.0 for v in vals], dt.np)
        total = norms.max()
    else:
        norms = np.array([np.linalg.norm(v.reshape(-1).astype(np.float64), norm_type) for v in vals], dt.np)
        total = np.linalg.norm(norms.astype(np.float64), norm_type)
    total_norm = _tensor(np.asarray(total, dt.np), dtype=dt)
    if error_if_nonfinite and not np.isfinite(total):
        raise RuntimeError(f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, so "
                           "it cannot be clipped. To disable this error and scale the gradients by the non-finite "
                           "norm anyway, set `error_if_nonfinite=False`")
    coef = min(float(np.asarray(max_norm / (np.asarray(total, dt.np) + dt.np.type(1e-6)), dt.np)), 1.0)
    with no_grad():
        for g in grads:
            g.mul_(coef)
    return total_norm


def clip_grad_value_(parameters, clip_value, foreach=None):
    """Clamp every gradient element to [-clip_value, clip_value] in place."""
    clip_value = float(clip_value)
    with no_grad():
        for g in _grads(parameters):
            g.clamp_(-clip_value, clip_value)
