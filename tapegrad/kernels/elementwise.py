"""Scalar rules for elementwise ops, written once as plain Python.

Each op has a forward rule and a backward (local VJP) rule over scalars:

    unary:   f(x, c) -> y            b(x, y, g, c) -> gx
    binary:  f(x, z, c) -> y         b(x, z, y, g, c) -> (gx, gz)

`c` is the record's float attribute (an exponent, a scalar operand, a clamp
bound); `y` is the forward result, `g` the incoming gradient. The rules are
plain functions, so they run in Python as they are (the tests call them),
inline into the CPU replay with ``numba.njit(inline="always")`` (see
``cpu.py``), and compile for the GPU with ``cuda.jit(device=True)``
(``tests/test_kernels_cudasim.py`` keeps that true under the simulator).
Derivatives follow PyTorch's ``derivatives.yaml``; a ``NOTE:`` marks every
place where the choice at a kink changes a gradient. Where PyTorch masks
(``where(cond, grad, 0)``) the rule returns a literal 0.0, never ``0.0 * g``:
that would turn an infinite or nan gradient (or input) into nan.
"""
import math

# ----- unary ---------------------------------------------------------------


def neg_f(x, c):
    return -x


def neg_b(x, y, g, c):
    return -g


def exp_f(x, c):
    return math.exp(x)


def exp_b(x, y, g, c):
    return g * y


def log_f(x, c):
    if x > 0.0:
        return math.log(x)
    if x == 0.0:
        return -math.inf
    return math.nan


def log_b(x, y, g, c):
    return g / x


def sin_f(x, c):
    return math.sin(x)


def sin_b(x, y, g, c):
    return g * math.cos(x)


def cos_f(x, c):
    return math.cos(x)


def cos_b(x, y, g, c):
    return -g * math.sin(x)


def tanh_f(x, c):
    return math.tanh(x)


def tanh_b(x, y, g, c):
    return g * (1.0 - y * y)


def sigmoid_f(x, c):
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def sigmoid_b(x, y, g, c):
    return g * (1.0 - y) * y


def relu_f(x, c):
    # NOTE: relu(nan) is nan in PyTorch; `x > 0 ? x : 0` would give 0
    return x if (x > 0.0 or x != x) else 0.0


def relu_b(x, y, g, c):
    # NOTE: PyTorch's threshold_backward uses the result: gradient 0 at x == 0
    return g if y > 0.0 else 0.0


def abs_f(x, c):
    return abs(x)


def abs_b(x, y, g, c):
    # NOTE: sgn(0) = 0, so |x|' at 0 is 0 as in PyTorch
    if x > 0.0:
        return g
    if x < 0.0:
        return -g
    return 0.0


def sqrt_f(x, c):
    if x >= 0.0:
        return math.sqrt(x)
    return math.nan


def sqrt_b(x, y, g, c):
    return g / (2.0 * y)


def square_f(x, c):
    return x * x


def square_b(x, y, g, c):
    return g * 2.0 * x


def reciprocal_f(x, c):
    return 1.0 / x


def reciprocal_b(x, y, g, c):
    return -g * y * y


def powc_f(x, c):           # x ** c, c a Python number
    return _pow(x, c)


def powc_b(x, y, g, c):
    # NOTE: PyTorch's pow_backward: zero gradient when the exponent is 0
    if c == 0.0:
        return 0.0
    return g * c * _pow(x, c - 1.0)


def rpowc_f(x, c):          # c ** x, c a Python number
    return _pow(c, x)


def rpowc_b(x, y, g, c):
    # NOTE: pow_backward_exponent: 0 where base == 0 and exponent >= 0
    if c == 0.0 and x >= 0.0:
        return 0.0
    return g * y * math.log(c) if c > 0.0 else g * y * math.nan


def adds_f(x, c):           # x + c
    return x + c


def adds_b(x, y, g, c):
    return g


def subs_f(x, c):           # x - c
    return x - c


def subs_b(x, y, g, c):
    return g


def rsubs_f(x, c):          # c - x
    return c - x


def rsubs_b(x, y, g, c):
    return -g


def muls_f(x, c):           # x * c
    return x * c


def muls_b(x, y, g, c):
    return g * c


def divs_f(x, c):           # x / c
    return x / c if c != 0.0 else _div0(x, c)


def divs_b(x, y, g, c):
    return g / c if c != 0.0 else _div0(g, c)


def clampmin_f(x, c):
    # NOTE: clamp propagates nan like PyTorch
    return x if (x >= c or x != x) else c


def clampmin_b(x, y, g, c):
    return g if x >= c else 0.0


def clampmax_f(x, c):
    return x if (x <= c or x != x) else c


def clampmax_b(x, y, g, c):
    return g if x <= c else 0.0


def copy_f(x, c):           # x.clone(), contiguous copy
    return x


def copy_b(x, y, g, c):
    return g

# ----- binary --------------------------------------------------------------


def add_f(x, z, c):         # x + c * z  (torch's alpha)
    return x + c * z


def add_b(x, z, y, g, c):
    return g, g * c


def sub_f(x, z, c):         # x - c * z
    return x - c * z


def sub_b(x, z, y, g, c):
    return g, -g * c


def mul_f(x, z, c):
    return x * z


def mul_b(x, z, y, g, c):
    return g * z, g * x


def div_f(x, z, c):
    return x / z if z != 0.0 else _div0(x, z)


def div_b(x, z, y, g, c):
    if z == 0.0:
        return _div0(g, z), -g * _div0(x, z * z)
    return g / z, -g * x / (z * z)


def pow_f(x, z, c):
    return _pow(x, z)


def pow_b(x, z, y, g, c):
    # NOTE: as PyTorch: d/dx is 0 where z == 0; d/dz is 0 where x == 0 and z >= 0
    gx = 0.0 if z == 0.0 else g * z * _pow(x, z - 1.0)
    if x == 0.0 and z >= 0.0:
        gz = 0.0
    else:
        gz = g * y * (math.log(x) if x > 0.0 else math.nan)
    return gx, gz


def maximum_f(x, z, c):
    if x != x or z != z:
        return x + z
    return x if x >= z else z


def maximum_b(x, z, y, g, c):
    # NOTE: ties split the gradient evenly (PyTorch's max/min backward); PyTorch masks only the
    # strictly smaller side, so where one side is nan both sides get the gradient
    if x == z:
        return g * 0.5, g * 0.5
    return (0.0 if x < z else g), (0.0 if x > z else g)


def minimum_f(x, z, c):
    if x != x or z != z:
        return x + z
    return x if x <= z else z


def minimum_b(x, z, y, g, c):
    if x == z:
        return g * 0.5, g * 0.5
    return (0.0 if x > z else g), (0.0 if x < z else g)

# ----- helpers (also plain Python, compiled inline) --------------------------


def _pow(x, c):
    if x < 0.0 and c != math.floor(c):
        return math.nan
    if x == 0.0 and c < 0.0:
        return math.inf
    return x ** c


def _div0(x, z):
    """x / 0 with IEEE semantics (Python raises ZeroDivisionError)."""
    if x != x or x == 0.0:
        return math.nan
    neg = (x < 0.0) != (math.copysign(1.0, z) < 0.0)
    return -math.inf if neg else math.inf


def _register():
    """Make every rule callable from jitted code (CPU and CUDA), inlined;
    the functions themselves stay plain Python."""
    from numba.extending import register_jitable
    for name, fn in list(globals().items()):
        if callable(fn) and getattr(fn, "__module__", None) == __name__ and name != "_register":
            register_jitable(fn)  # LLVM inlines them; numba IR inlining warns on multi-return rules


_register()
