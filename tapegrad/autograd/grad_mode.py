"""Grad modes: no_grad, enable_grad, set_grad_enabled (context managers and decorators)."""
import functools

_STATE = [True]


def is_grad_enabled():
    return _STATE[0]


class _Mode:
    _value = True

    def __enter__(self):
        self._prev = _STATE[0]
        _STATE[0] = self._value

    def __exit__(self, *exc):
        _STATE[0] = self._prev
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            with self.__class__():
                return fn(*a, **k)
        return wrapper


class no_grad(_Mode):
    _value = False


class enable_grad(_Mode):
    _value = True


class set_grad_enabled(_Mode):
    def __init__(self, mode):
        self._value = bool(mode)
        self._prev = _STATE[0]
        _STATE[0] = self._value   # takes effect at once, as in torch

    def __enter__(self):
        pass

    def __exit__(self, *exc):
        _STATE[0] = self._prev
        return False

    def __call__(self, fn):
        _STATE[0] = self._prev
        mode = self._value

        @functools.wraps(fn)
        def wrapper(*a, **k):
            with set_grad_enabled(mode):
                return fn(*a, **k)
        return wrapper


class inference_mode(no_grad):
    def __init__(self, mode=True):
        self._value = not mode
