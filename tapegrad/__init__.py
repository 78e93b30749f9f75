"""tapegrad: reverse-mode autograd with PyTorch's interface over a flat tape.

    import tapegrad as torch

Operations append records to a flat Wengert tape (``tapegrad.tape``); one
Numba-jitted call runs pending records forward when a value is needed, and
one replays them in reverse for ``backward()``. ``grad_fn`` and
``next_functions`` are a facade over the tape (``tapegrad.autograd.graph``).
"""
from . import config  # noqa: F401  (first: sets the numba cache dir)
from . import _dtype
from ._dtype import (bool_ as bool, double, dtype, float, float32, float64, int, int32, int64,  # noqa: A004
                     long)
from ._format import get_printoptions, printoptions, set_printoptions
from .autograd.grad_mode import enable_grad, inference_mode, is_grad_enabled, no_grad, set_grad_enabled
from .random import manual_seed, seed, initial_seed
from .tensor import (Size, Tensor, arange, as_tensor, device, empty, empty_like, eye, from_numpy, full,
                     full_like, linspace, ones, ones_like, tensor, zeros, zeros_like)
from .functions import *  # noqa: F401,F403
from . import autograd  # noqa: E402
from .autograd.anomaly_mode import is_anomaly_check_nan_enabled, is_anomaly_enabled  # noqa: E402,F401
from .functions import __all__ as _fn_all

__version__ = "0.1.0"


def is_tensor(obj):
    return isinstance(obj, Tensor)


def numel(t):
    return t.numel()


def get_default_dtype():
    return float32


def set_default_dtype(d):
    if d is not float32:
        raise NotImplementedError("tapegrad's default dtype is float32")


def get_num_threads():
    import numba
    return numba.get_num_threads()


def set_num_threads(n):
    import numba
    numba.set_num_threads(n)


def is_grad_enabled_():  # pragma: no cover - compatibility alias
    return is_grad_enabled()


class cuda:  # noqa: N801  torch.cuda namespace (CPU build)
    @staticmethod
    def is_available():
        return False

    @staticmethod
    def device_count():
        return 0


def tape(t=None, names=None):
    """The tape as a program: ``print(tapegrad.tape())`` lists every live record,
    ``print(tapegrad.tape(y))`` only the records y depends on. `names` maps
    id(leaf) -> a name to print instead of ``leaf<slot>``."""
    from .tape.printer import TapeView
    return TapeView(t, names)


from .capture import capture  # noqa: E402,F401
from . import nn  # noqa: E402,F401  (last: nn imports the namespace above)
from . import optim  # noqa: E402,F401
