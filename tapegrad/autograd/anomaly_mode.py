"""Anomaly mode (torch.autograd.detect_anomaly / set_detect_anomaly).

While it is on, every record runs as soon as it is made, and the tape keeps the Python
stack that made it (``Tape.anomaly``; nothing is kept when it is off). A backward then
runs record by record and checks each record's input gradients: a NaN raises PyTorch's
``RuntimeError: Function 'SqrtBackward0' returned nan values in its 0th output.`` after a
warning that shows the forward call that recorded the op.
"""
import warnings

from .. import config
from ..tape.tape import TAPE

_STATE = {"enabled": False, "check_nan": True}


def is_anomaly_enabled():
    return _STATE["enabled"]


def is_anomaly_check_nan_enabled():
    return _STATE["check_nan"]


def _set(mode, check_nan):
    import sys
    _t = sys.modules[__name__.rsplit(".", 2)[0] + ".tensor"]   # (tapegrad.tensor the function shadows it)
    if mode and not TAPE.anomaly_stacks:
        TAPE.flush()      # records made before: no forward stack of theirs is known (torch says so)
    _STATE["enabled"], _STATE["check_nan"] = bool(mode), bool(check_nan)
    TAPE.anomaly_stacks = bool(mode)
    TAPE.detect_anomaly = bool(mode) and bool(check_nan)
    _t._FLUSH_BOUND = 0 if mode else config.FLUSH_BOUND   # every record runs as it is made
    if not mode:
        TAPE.anomaly.clear()


class detect_anomaly:
    """Context manager (and decorator) that turns anomaly detection on."""

    def __init__(self, check_nan=True):
        self.check_nan = check_nan
        self.prev = is_anomaly_enabled()
        self.prev_check_nan = is_anomaly_check_nan_enabled()
        warnings.warn("Anomaly Detection has been enabled. This mode will increase the runtime and should only be "
                      "enabled for debugging.", stacklevel=2)

    def __enter__(self):
        _set(True, self.check_nan)

    def __exit__(self, *exc):
        _set(self.prev, self.prev_check_nan)
        return False

    def __call__(self, fn):
        import functools

        @functools.wraps(fn)
        def wrapper(*a, **k):
            with self.__class__(self.check_nan):
                return fn(*a, **k)
        return wrapper


class set_detect_anomaly:
    """Turns anomaly detection on or off at once; as a context manager, restores it on exit."""

    def __init__(self, mode, check_nan=True):
        self.prev = is_anomaly_enabled()
        self.prev_check_nan = is_anomaly_check_nan_enabled()
        _set(mode, check_nan)

    def __enter__(self):
        pass

    def __exit__(self, *exc):
        _set(self.prev, self.prev_check_nan)
        return False
