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
        value = self._value   # keep this instance's mode (e.g. inference_mode(False))

        @functools.wraps(fn)
        def wrapper(*a, **k):
            prev = _STATE[0]
            _STATE[0] = value
            try:
                return fn(*a, **k)
            finally:
                _STATE[0] = prev
        return wrapper


class _NoParamMode(_Mode):
    """torch allows ``@no_grad`` / ``@enable_grad`` without parentheses."""

    def __new__(cls, orig_func=None):
        if orig_func is None:
            return super().__new__(cls)
        return cls()(orig_func)


class no_grad(_NoParamMode):
    _value = False


class enable_grad(_NoParamMode):
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
    def __new__(cls, mode=True):
        if mode is None or isinstance(mode, bool):
            return _Mode.__new__(cls)
        return cls()(mode)   # @inference_mode without parentheses

    def __init__(self, mode=True):
        self._value = not mode
