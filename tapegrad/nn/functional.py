"""torch.nn.functional: activations, linear, dropout and the losses.

Everything here is a composite over existing rows of the op table (STYLE:
"few primitives, free composites"): a loss is a handful of records (sub,
square, mean...), so its gradient is the chain of those rows' VJPs and the
loss needs no kernel of its own. The price is the top record's grad_fn
name: PyTorch's fused losses report ``MseLossBackward0``,
``NllLossBackward0``, ``BinaryCrossEntropyBackward0``...; here the name is
that of the last composite step (``MeanBackward0``, ``NegBackward0``...).

Arguments, reductions, warnings and error messages follow PyTorch 2.13.
"""
import functools
import warnings

import numpy as np

from .. import _dtype as D
from .. import functions as _F
from ..ops import pyops as P
from ..ops.table import OpSpec
from ..random import generator
from ..tensor import Tensor, tensor as _tensor

__all__ = ["relu", "sigmoid", "tanh", "softmax", "log_softmax", "linear", "dropout", "mse_loss", "l1_loss",
           "cross_entropy", "nll_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits"]

_LONG = {"float32": "Float", "float64": "Double", "int64": "Long", "int32": "Int", "bool": "Bool"}


# ----- reductions (torch.nn._reduction) --------------------------------------------------

def _reduction(reduction):
    """Validate `reduction` like ``_Reduction.get_enum``; returns 'none' | 'mean' | 'sum'."""
    if reduction in ("none", "mean", "sum"):
        return reduction
    if reduction == "elementwise_mean":
        warnings.warn("reduction='elementwise_mean' is deprecated. Please use reduction='mean' instead.",
                      stacklevel=3)
        return "mean"
    raise ValueError(f"{reduction} is not a valid value for reduction")


def _legacy_get_string(size_average, reduce, emit_warning=True):
    """The deprecated size_average/reduce pair -> a reduction string (with torch's warning)."""
    if size_average is None:
        size_average = True
    if reduce is None:
        reduce = True
    ret = "mean" if size_average and reduce else "sum" if reduce else "none"
    if emit_warning:
        warnings.warn(f"size_average and reduce args will be deprecated, please use reduction='{ret}' instead.",
                      stacklevel=3)
    return ret


def _reduce(loss, reduction):
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _check_tensor(x, fname, pos, arg):
    if not isinstance(x, Tensor):
        raise TypeError(f"{fname}(): argument '{arg}' (position {pos}) must be Tensor, not {type(x).__name__}")


# ----- activations ------------------------------------------------------------------------

def relu(input, inplace=False):
    if inplace:
        return input.copy_(_F.relu(input))
    return _F.relu(input)


def sigmoid(input):
    return _F.sigmoid(input)


def tanh(input):
    return _F.tanh(input)


def _get_softmax_dim(name, ndim, stacklevel):
    warnings.warn(f"Implicit dimension choice for {name} has been deprecated. Change the call to include dim=X "
                  "as an argument.", stacklevel=stacklevel)
    return 0 if ndim in (0, 1, 3) else 1


def softmax(input, dim=None, _stacklevel=3, dtype=None):
    if dim is None:
        dim = _get_softmax_dim("softmax", input.dim(), _stacklevel)
    return _F.softmax(input, dim, dtype=dtype)


def log_softmax(input, dim=None, _stacklevel=3, dtype=None):
    if dim is None:
        dim = _get_softmax_dim("log_softmax", input.dim(), _stacklevel)
    return _F.log_softmax(input, dim, dtype=dtype)


# ----- linear, dropout -----------------------------------------------------------------------

def _unsafe_view(x, shape):
    """x.view(shape) recorded as UnsafeViewBackward0 (what torch's matmul folding reports)."""
    return P.view_op("unsafe_view", x, lambda v: v.reshape(shape), lambda g, o, xv: (g.reshape(xv.shape),))


def linear(input, weight, bias=None):
    """y = input @ weight.T + bias. 2-D input with bias is one ``addmm`` record
    (AddmmBackward0, as torch); other ranks are flattened to 2-D and viewed back."""
    if bias is not None and isinstance(input, Tensor) and isinstance(weight, Tensor) and isinstance(bias, Tensor):
        xs, ws = input._shape, weight._shape     # the usual case (nn.Linear on a batch), checks below
        if len(xs) == 2 and len(ws) == 2 and xs[1] == ws[1] and bias._shape == ws[:1]:
            return P.addmm(bias, input, weight)
    _check_tensor(input, "linear", 1, "input")
    _check_tensor(weight, "linear", 2, "weight")
    if input.dim() == 0 or weight.dim() == 0:
        raise RuntimeError(f"both arguments to linear need to be at least 1D, but they are {input.dim()}D and "
                           f"{weight.dim()}D")
    if weight.dim() != 2:
        out = _F.matmul(input, weight.t())
        return out + bias if bias is not None else out
    in_f, out_f = input.shape[-1], weight.shape[0]
    if in_f != weight.shape[1]:
        rows = input.numel() // in_f if in_f else 0
        raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({rows}x{in_f} and "
                           f"{weight.shape[1]}x{weight.shape[0]})")
    lead = tuple(input.shape[:-1])
    if bias is not None:
        rows = input.numel() // in_f if in_f else (lead[0] if lead else 1)
        target = (rows, out_f)
        bs = (1,) * (2 - bias.dim()) + tuple(bias.shape)
        for i in (1, 0):
            if len(bs) == 2 and bs[i] not in (1, target[i]):
                raise RuntimeError(f"The expanded size of the tensor ({target[i]}) must match the existing size "
                                   f"({bs[i]}) at non-singleton dimension {i}.  Target sizes: {list(target)}.  "
                                   f"Tensor sizes: {list(bias.shape)}")
        if input.dim() == 2:
            return P.addmm(bias, input, weight)
        out = P.addmm(bias, input.reshape(-1, in_f), weight)
        return out.view(*lead, out_f)
    if input.dim() == 1:
        return _F.matmul(input, weight.t())
    if input.dim() == 2:
        return _F.mm(input, weight.t())
    out = _F.mm(input.reshape(-1, in_f), weight.t())
    return _unsafe_view(out, lead + (out_f,))


def dropout(input, p=0.5, training=True, inplace=False):
    """Zero each element with probability p and scale the rest by 1/(1-p) (training only)."""
    if p < 0.0 or p > 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return input
    keep = generator().random(tuple(input.shape)) >= p
    scale = 0.0 if p == 1.0 else 1.0 / (1.0 - p)
    mask = _tensor(keep * scale, dtype=input.dtype)
    return input.mul_(mask) if inplace else input * mask


# ----- regression losses ------------------------------------------------------------------

def _size_warning(input, target):
    if target.shape != input.shape:
        warnings.warn(f"Using a target size ({target.size()}) that is different to the input size "
                      f"({input.size()}). This will likely lead to incorrect results due to broadcasting. "
                      "Please ensure they have the same size.", stacklevel=3)


def _pointwise_loss(err, input, reduction, weight):
    if weight is not None:
        if weight.shape != input.shape:
            raise ValueError("Weights and input must have the same size.")
        err = err * weight
        if reduction == "none":
            return err
        if reduction == "sum":
            return err.sum()
        return err.sum() / weight.sum()
    return _reduce(err, reduction)


def mse_loss(input, target, size_average=None, reduce=None, reduction="mean", weight=None):
    if (size_average is None and reduce is None and weight is None and reduction in ("mean", "sum")
            and isinstance(input, Tensor) and isinstance(target, Tensor) and input._shape == target._shape
            and input._dtype is target._dtype and input._dtype.code <= 1 and input._n):
        return P.mse_loss(input, target, reduction)   # the usual case: what the checks below come to
    _size_warning(input, target)
    if size_average is not None or reduce is not None:
        reduction = _legacy_get_string(size_average, reduce)
    reduction = _reduction(reduction)
    if weight is None and reduction in ("mean", "sum") and input.dtype.is_floating_point \
            and target.dtype.is_floating_point and input.numel() and input.dtype is target.dtype:
        return P.mse_loss(input, target, reduction)   # one record, torch's MseLossBackward0
    return _pointwise_loss((input - target).square(), input, reduction, weight)


def l1_loss(input, target, size_average=None, reduce=None, reduction="mean", weight=None):
    _size_warning(input, target)
    if size_average is not None or reduce is not None:
        reduction = _legacy_get_string(size_average, reduce)
    reduction = _reduction(reduction)
    return _pointwise_loss((input - target).abs(), input, reduction, weight)


# ----- classification losses -----------------------------------------------------------------

def _class_weight_view(weight, ndim):
    """weight (C,) shaped to broadcast along dim 1 of an (N, C, d1...) input."""
    if ndim <= 1:
        return weight
    return weight.view(*([1, weight.shape[0]] + [1] * (ndim - 2)))


def nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean"):
    """-input[n, target[n], d...] * weight[target], averaged over the weights of the kept targets."""
    if size_average is not None or reduce is not None:
        reduction = _legacy_get_string(size_average, reduce)
    reduction = _reduction(reduction)
    nd = input.dim()
    if nd < 1:
        raise ValueError(f"Expected 1 or more dimensions (got {nd})")
    if nd == 1 and target.dim() == 1 and target.shape[0] != 1:
        raise ValueError(f"For 1D input, 1D target must have size 1, but got target size: {target.shape[0]}")
    if nd != 1 and (target.dim() == 0 or input.shape[0] != target.shape[0]):
        raise ValueError(f"Expected input batch_size ({input.shape[0]}) to match target batch_size "
                         f"({target.shape[0] if target.dim() else 1}).")
    if nd <= 2 and target.dim() > 1:
        raise RuntimeError("0D or 1D target tensor expected, multi-target not supported")
    if nd > 2 and tuple(target.shape) != (input.shape[0],) + tuple(input.shape[2:]):
        raise RuntimeError(f"Expected target size {[input.shape[0]] + list(input.shape[2:])}, got "
                           f"{list(target.shape)}")
    C = input.shape[1] if nd >= 2 else input.shape[0]
    if weight is not None and (weight.dim() != 1 or weight.numel() != C):
        raise RuntimeError(f"weight tensor should be defined either for all {C} classes or no classes but got "
                           f"weight tensor of shape: {list(weight.shape)}")
    if target.dtype is not D.int64:
        raise RuntimeError(f"expected target dtype to be Long or Byte, but got {_LONG[target.dtype.name]}")
    if nd == 2 and weight is None and input.dtype.is_floating_point:
        return _nll_2d(input, target, ignore_index, reduction, C)
    tv = np.asarray(target._values(), dtype=np.int64)
    ignored = tv == ignore_index
    bad = ~ignored & ((tv < 0) | (tv >= C))
    if bad.any():
        raise IndexError(f"Target {tv[bad].flat[0]} is out of bounds.")
    safe = np.where(ignored, 0, tv)
    if nd == 1:
        picked = input[int(safe.reshape(-1)[0])]
    else:
        n, rest = input.shape[0], tuple(input.shape[2:])
        k = len(rest)
        idx = [np.arange(n).reshape((n,) + (1,) * k), safe]
        for j, d in enumerate(rest):
            idx.append(np.arange(d).reshape((1,) * (j + 1) + (d,) + (1,) * (k - j - 1)))
        picked = input[tuple(idx)]
    w = np.ones(safe.shape) if weight is None else np.asarray(weight._values(), np.float64)[safe]
    w = np.where(ignored, 0.0, w)
    if nd == 1:
        w = w.reshape(())
    plain = bool((w == 1.0).all())
    loss = -picked if plain else -(picked * _tensor(w, dtype=input.dtype))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.mean() if plain else loss.sum() / float(w.sum())


# NOTE: one escape record (torch's NllLossBackward0), like mse_loss; it is not a row of the op table
# because only this module makes it. The targets are read by the record when it runs, not when it is
# made, so a captured training step replays it with each batch's labels.
_NLL = OpSpec("nll_loss", "py", "NllLossBackward0", mnemonic="nll_loss")


def _nll_picks(tv, ignore_index, C):
    """(rows, kept classes, kept mask) of targets tv; torch's IndexError for a class out of range."""
    ignored = tv == ignore_index
    bad = ~ignored & ((tv < 0) | (tv >= C))
    if bad.any():
        raise IndexError(f"Target {tv[bad].flat[0]} is out of bounds.")
    return np.arange(tv.shape[0]), np.where(ignored, 0, tv), ~ignored


def _nll_2d(input, target, ignore_index, reduction, C):
    """nll_loss of (N, C) log-probabilities and (N,) class indices, without class weights."""
    from ..tape.tape import TAPE
    _nll_check(target, ignore_index, C)     # torch's error now, before anything is recorded
    n = input.shape[0]
    from ..tensor import _empty
    out = _empty(() if reduction != "none" else (n,), input.dtype)
    nat = None      # Note [native nll_loss]
    if input._contig and target._contig and P._native_ok(out, [input]):
        nat = [7, _NLL_REDUCTION[reduction], n, C, input._addr, target._addr, ignore_index]
        if TAPE.capture is not None:
            check = functools.partial(_nll_check, target, ignore_index, C)
            check.after_copies = True   # (a one-call replay copies the arguments in before it runs)
            TAPE.capture.add("call", check)

    def fwd(xv, tv):
        rows, cls, kept = _nll_picks(tv, ignore_index, C)
        picked = np.where(kept, -xv[rows, cls], 0.0)
        if reduction == "none":
            return picked
        s = picked.sum(dtype=np.float64)
        return s / kept.sum() if reduction == "mean" else s

    def bwd(g, o, xv, tv):
        rows, cls, kept = _nll_picks(tv, ignore_index, C)
        gx = np.zeros(xv.shape, xv.dtype)
        scale = -g if reduction == "none" else (-g / kept.sum() if reduction == "mean" else -g)
        gx[rows, cls] = np.where(kept, scale, 0.0)
        return gx, None
    return P.record(_NLL, out, [input, target], fwd, bwd, lin=True, native=nat)


# Note [native nll_loss]: nll_loss of a contiguous (N, C) float matrix and contiguous int64 targets
# is a native record (kind 7, kernels/gen_cpu.py; log_softmax over its rows is kind 6), so a
# classifier's training step replays in one jitted call (capture.py's Note [one call a step]). The
# kernel cannot raise torch's IndexError for a target out of range, so the targets are checked in
# Python first: when the record is made (above); in a captured step, also by a "call" event at
# the record's place, which a replay runs after the rows before it (the targets' values are there:
# the arguments copied in, anything the step computed them from run) and before the record itself,
# the backward and the update: a bad batch raises with the parameters untouched, as the eager step
# would. The kernel skips a target out of range rather than read outside the row (nan for its loss).
_NLL_REDUCTION = {"none": 0, "mean": 1, "sum": 2}


def _nll_check(target, ignore_index, C):
    """_nll_picks's IndexError for the targets' current values. Not ``target._values()``: in a
    step being captured that is a read the replay would guard on (new labels: eager again)."""
    from ..tape.tape import TAPE
    if TAPE.flushed < TAPE.next_index:
        TAPE.flush()
    _nll_picks(np.asarray(target._view_np(), np.int64), ignore_index, C)


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0):
    """log_softmax over the class dim, then nll_loss (class indices) or -sum(target * logp)
    (class probabilities: a float target of the input's shape)."""
    if size_average is not None or reduce is not None:
        reduction = _legacy_get_string(size_average, reduce)
    reduction = _reduction(reduction)
    class_dim = 0 if input.dim() == 1 else 1
    if input.shape == target.shape:
        if not target.is_floating_point():
            raise RuntimeError(f"Expected floating point type for target with class probabilities, got "
                               f"{_LONG[target.dtype.name]}")
        if ignore_index >= 0:
            raise RuntimeError("ignore_index is not supported for floating point target")
        _check_smoothing(label_smoothing)
        return _cross_entropy_probs(input, target, weight, reduction, label_smoothing, class_dim)
    if label_smoothing > 0.0:
        _check_smoothing(label_smoothing)
        return _cross_entropy_smoothing(input, target, weight, ignore_index, reduction, label_smoothing,
                                        class_dim)
    return nll_loss(log_softmax(input, class_dim), target, weight, None, ignore_index, None, reduction)


def _check_smoothing(ls):
    if ls > 1.0:
        raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {ls:g}")


def _cross_entropy_probs(input, target, weight, reduction, ls, class_dim):
    C = input.shape[class_dim]
    logp = log_softmax(input, class_dim)
    if ls > 0.0:
        target = target * (1 - ls) + ls / C
    prod = logp * target
    if weight is not None:
        prod = prod * _class_weight_view(weight, input.dim())
    if reduction == "none":
        return -prod.sum(class_dim)
    if reduction == "sum":
        return -prod.sum()
    n = input.numel() // C if C else 0
    return -prod.sum() / (n if n else float("nan"))


def _cross_entropy_smoothing(input, target, weight, ignore_index, reduction, ls, class_dim):
    C = input.shape[class_dim]
    logp = log_softmax(input, class_dim)
    nll = nll_loss(logp, target, weight, None, ignore_index, None, reduction)
    tv = np.asarray(target._values(), np.int64)
    ignored = tv == ignore_index
    if weight is not None:
        smooth = -(logp * _class_weight_view(weight, input.dim())).sum(class_dim)
    else:
        smooth = -logp.sum(class_dim)
    if ignored.any():
        smooth = smooth * _tensor(~ignored, dtype=input.dtype)
    if reduction == "mean":
        if weight is not None:
            denom = float(np.asarray(weight._values(), np.float64)[tv[~ignored]].sum())
        else:
            denom = float((~ignored).sum())
        ret = smooth.sum() / denom
    elif reduction == "sum":
        ret = smooth.sum()
    else:
        ret = smooth
    return nll * (1 - ls) + ret * (ls / C)


def _clamped_log(x, xv):
    """max(log(x), -100) as in torch's binary_cross_entropy. Where x == 0 the
    value is -100 and the gradient 0 (log is taken of a safe stand-in there)."""
    if (xv > 0).all():
        return _F.log(x).clamp_min(-100.0)
    pos = _tensor(xv > 0)
    safe = _F.where(pos, x, 1.0)
    return _F.where(pos, _F.log(safe).clamp_min(-100.0), -100.0)


def binary_cross_entropy(input, target, weight=None, size_average=None, reduce=None, reduction="mean"):
    """-(target * log(input) + (1 - target) * log(1 - input)), each log clamped at -100."""
    if size_average is not None or reduce is not None:
        reduction = _legacy_get_string(size_average, reduce)
    reduction = _reduction(reduction)
    if target.shape != input.shape:
        raise ValueError(f"Using a target size ({target.size()}) that is different to the input size "
                         f"({input.size()}) is deprecated. Please ensure they have the same size.")
    if target.dtype is not input.dtype:
        raise RuntimeError(f"Found dtype {_LONG[target.dtype.name]} but expected {_LONG[input.dtype.name]}")
    if weight is not None:
        try:
            np.broadcast_shapes(tuple(weight.shape), tuple(target.shape))
            ok = tuple(np.broadcast_shapes(tuple(weight.shape), tuple(target.shape))) == tuple(target.shape)
        except ValueError:
            ok = False
        if not ok:
            raise RuntimeError(f"Attempting to broadcast a dimension of length {weight.shape[-1]} at -1! "
                               f"Mismatching argument at index 1 had {weight.shape}; but expected shape should "
                               f"be broadcastable to {list(target.shape)}")
    xv = input._values()
    if not ((xv >= 0) & (xv <= 1)).all():
        raise RuntimeError("all elements of input should be between 0 and 1")
    tv = target._values()
    if not ((tv >= 0) & (tv <= 1)).all():
        raise RuntimeError("all elements of target should be between 0 and 1")
    one_minus = 1 - input
    loss = (target - 1) * _clamped_log(one_minus, one_minus._values()) - target * _clamped_log(input, xv)
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None, reduce=None,
                                     reduction="mean", pos_weight=None):
    """(1 - target) * x + lw * softplus(-x), lw = 1 + (pos_weight - 1) * target, with
    softplus(-x) = m + log(exp(-m) + exp(-x - m)), m = max(-x, 0): no overflow for any x,
    and the gradient is exact whatever subgradient max takes at 0 (m cancels)."""
    if size_average is not None or reduce is not None:
        reduction = _legacy_get_string(size_average, reduce)
    reduction = _reduction(reduction)
    if target.shape != input.shape:
        raise ValueError(f"Target size ({target.size()}) must be the same as input size ({input.size()})")
    if not target.is_floating_point():
        raise RuntimeError(f"result type Float can't be cast to the desired output type "
                           f"{_LONG[target.dtype.name]}")
    neg = -input
    m = neg.clamp_min(0.0)
    softplus = m + _F.log(_F.exp(-m) + _F.exp(neg - m))
    if pos_weight is not None:
        softplus = softplus * ((pos_weight - 1) * target + 1)
    loss = (1 - target) * input + softplus
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)

