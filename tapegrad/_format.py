"""Tensor printing: a pure-NumPy port of PyTorch 2.13's ``torch/_tensor_str.py``.

The goal is that ``repr`` of a tapegrad tensor is byte-identical to ``repr``
of the equivalent ``torch.Tensor``.  Only the dense, strided, real-valued CPU
path of torch's printer is needed here (no sparse, quantized, nested, complex
or functorch tensors), and that path is ported line for line:

* ``_PrinterOptions`` / ``PRINT_OPTS``, ``set_printoptions``,
  ``get_printoptions`` and ``printoptions`` keep torch's global print state and
  its semantics (note that, as in torch, every ``set_printoptions`` call resets
  ``sci_mode`` to whatever is passed, ``None`` included).
* ``_Formatter`` decides int mode / scientific mode and the common field width.
* ``_tensor_str``, ``_tensor_str_with_formatter``, ``_vector_str``,
  ``_scalar_str`` and ``get_summarized_data`` lay the values out, wrap lines
  at ``linewidth`` and summarise with ``...`` past ``threshold`` elements.
* ``_add_suffixes`` appends ``dtype=...``, ``grad_fn=...`` etc., wrapping them
  onto a new line when the current line would grow past ``linewidth``.
* ``format_tensor`` is the equivalent of torch's ``_str_intern`` for a plain
  tensor: it decides on the ``size=...`` and ``dtype=...`` suffixes itself and
  appends the caller's suffixes (``grad_fn=<...>`` / ``requires_grad=True``).

How torch turns elements into text matters for byte equality: torch formats
each element with Python's ``format`` applied to ``tensor.item()`` /
``tensor.tolist()`` values, i.e. a Python ``float`` holding the *exact* value
of the float32/float64 element (or a Python ``int`` / ``bool``).  NumPy's
``ndarray.tolist()`` produces exactly the same Python objects, so every string
below is built from ``tolist()`` values, never from NumPy scalars.

This module depends only on NumPy and the standard library; it never imports
torch.
"""
import contextlib
import dataclasses
import math
from typing import Any

import numpy as np

__all__ = [
    "format_tensor",
    "tensor_str",
    "set_printoptions",
    "get_printoptions",
    "printoptions",
    "PRINT_OPTS",
    "DEFAULT_DTYPE",
]

#: tapegrad's default floating dtype (torch.get_default_dtype()); tensors of
#: this dtype never show ``dtype=...`` in their repr.
DEFAULT_DTYPE = "float32"

# Dtypes that torch leaves out of the repr of a non-empty tensor
# (``has_default_dtype`` in ``_str_intern``): the default float dtype, its
# complex counterpart (none in tapegrad), int64 and bool.
_IMPLICIT_DTYPES = ("int64", "bool")

# dtype name -> NumPy dtype, for the dtypes tapegrad has.
_NP_DTYPES = {
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
    "int64": np.dtype(np.int64),
    "int32": np.dtype(np.int32),
    "bool": np.dtype(np.bool_),
}


# ---------------------------------------------------------------------------
# Print options (torch._tensor_str.__PrinterOptions and friends)
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class _PrinterOptions:
    precision: int = 4
    threshold: float = 1000
    edgeitems: int = 3
    linewidth: int = 80
    sci_mode: bool | None = None


PRINT_OPTS = _PrinterOptions()


def set_printoptions(
    precision=None,
    threshold=None,
    edgeitems=None,
    linewidth=None,
    profile=None,
    sci_mode=None,
):
    """Set options for printing (same semantics as ``torch.set_printoptions``).

    Args:
        precision: digits after the decimal point for floats (default 4).
        threshold: number of elements above which the output is summarised
            with ``...`` (default 1000).
        edgeitems: items shown at the start and end of each summarised
            dimension (default 3).
        linewidth: characters per line before wrapping (default 80).
        profile: ``"default"``, ``"short"`` or ``"full"``; applied first, then
            overridden by any explicit option above.
        sci_mode: ``True``/``False`` forces scientific notation on/off;
            ``None`` lets the formatter decide.  As in torch, this option is
            always assigned, so any call without ``sci_mode`` resets it to
            ``None``.
    """
    if profile is not None:
        if profile == "default":
            PRINT_OPTS.precision = 4
            PRINT_OPTS.threshold = 1000
            PRINT_OPTS.edgeitems = 3
            PRINT_OPTS.linewidth = 80
        elif profile == "short":
            PRINT_OPTS.precision = 2
            PRINT_OPTS.threshold = 1000
            PRINT_OPTS.edgeitems = 2
            PRINT_OPTS.linewidth = 80
        elif profile == "full":
            PRINT_OPTS.precision = 4
            PRINT_OPTS.threshold = math.inf
            PRINT_OPTS.edgeitems = 3
            PRINT_OPTS.linewidth = 80

    if precision is not None:
        PRINT_OPTS.precision = precision
    if threshold is not None:
        PRINT_OPTS.threshold = threshold
    if edgeitems is not None:
        PRINT_OPTS.edgeitems = edgeitems
    if linewidth is not None:
        PRINT_OPTS.linewidth = linewidth
    PRINT_OPTS.sci_mode = sci_mode


def get_printoptions() -> dict[str, Any]:
    """Current print options, as a dict that ``set_printoptions(**d)`` accepts."""
    return dataclasses.asdict(PRINT_OPTS)


@contextlib.contextmanager
def printoptions(**kwargs):
    """Context manager that temporarily changes the print options.

    Accepts the same arguments as :func:`set_printoptions`.
    """
    old_kwargs = get_printoptions()
    set_printoptions(**kwargs)
    try:
        yield
    finally:
        set_printoptions(**old_kwargs)


# ---------------------------------------------------------------------------
# Element formatter (torch._tensor_str._Formatter)
# ---------------------------------------------------------------------------


class _Formatter:
    """Chooses how elements are written and the common width they share.

    ``arr`` is the data that decides the format: the whole tensor, or only the
    elements that will be shown when the tensor is summarised.
    """

    def __init__(self, arr):
        self.floating_dtype = np.issubdtype(arr.dtype, np.floating)
        self.int_mode = True
        self.sci_mode = False
        self.max_width = 1

        flat = arr.reshape(-1)

        if not self.floating_dtype:
            # torch: max(len(f"{value}")) over every element, where value.item()
            # is a Python int or bool.  The maximum over the distinct values is
            # the same number, and np.unique keeps this cheap for big tensors.
            for value in np.unique(flat).tolist():
                value_str = f"{value}"
                self.max_width = max(self.max_width, len(value_str))
            return

        # Only non-zero finite values take part in the decision (-0.0 == 0).
        nonzero_finite_vals = flat[np.isfinite(flat) & (flat != 0)]

        if nonzero_finite_vals.size == 0:
            # no valid number, do nothing (int_mode stays True, width 1)
            return

        # torch converts |values| to float64 before taking min/max and
        # comparing; every float32 value is exact in float64.
        nonzero_finite_abs = np.abs(nonzero_finite_vals).astype(np.float64)
        nonzero_finite_min = nonzero_finite_abs.min()
        nonzero_finite_max = nonzero_finite_abs.max()

        # int_mode: every value equals its ceiling (checked in the tensor's
        # own dtype, like ``value != torch.ceil(value)``).
        if np.any(nonzero_finite_vals != np.ceil(nonzero_finite_vals)):
            self.int_mode = False

        if PRINT_OPTS.sci_mode is None:
            # max / min may overflow to inf (e.g. 1e300 / 1e-300): fine, as in torch
            with np.errstate(over="ignore"):
                self.sci_mode = bool(
                    nonzero_finite_max / nonzero_finite_min > 1000.0
                    or nonzero_finite_max > 1.0e8
                    or nonzero_finite_min < 1.0e-4
                )
        else:
            self.sci_mode = PRINT_OPTS.sci_mode

        # Python floats holding the exact element values, as torch's
        # Tensor.__format__ -> .item() gives them.  Distinct values suffice
        # for a maximum.
        values = np.unique(nonzero_finite_vals).tolist()
        precision = PRINT_OPTS.precision

        if self.int_mode:
            # in int_mode for floats, all numbers are integers, and we append a
            # decimal to nonfinites to indicate that the tensor is of floating
            # type. add 1 to the len to account for this.
            if self.sci_mode:
                for value in values:
                    value_str = f"{{:.{precision}e}}".format(value)
                    self.max_width = max(self.max_width, len(value_str))
            else:
                for value in values:
                    value_str = f"{value:.0f}"
                    self.max_width = max(self.max_width, len(value_str) + 1)
        else:
            if self.sci_mode:
                for value in values:
                    value_str = f"{{:.{precision}e}}".format(value)
                    self.max_width = max(self.max_width, len(value_str))
            else:
                for value in values:
                    value_str = f"{{:.{precision}f}}".format(value)
                    self.max_width = max(self.max_width, len(value_str))

    def width(self):
        return self.max_width

    def format(self, value):
        """Format one Python scalar (from ``tolist()``), right-aligned."""
        if self.floating_dtype:
            if self.sci_mode:
                ret = f"{{:{self.max_width}.{PRINT_OPTS.precision}e}}".format(value)
            elif self.int_mode:
                ret = f"{value:.0f}"
                if not (math.isinf(value) or math.isnan(value)):
                    ret += "."
            else:
                ret = f"{{:.{PRINT_OPTS.precision}f}}".format(value)
        else:
            ret = f"{value}"
        return (self.max_width - len(ret)) * " " + ret


# ---------------------------------------------------------------------------
# Layout (torch._tensor_str._scalar_str / _vector_str / _tensor_str...)
# ---------------------------------------------------------------------------


def _scalar_str(arr, formatter):
    return formatter.format(arr.item())


def _vector_str(arr, indent, summarize, formatter):
    # length includes spaces and comma between elements
    element_length = formatter.width() + 2
    elements_per_line = max(
        1, math.floor((PRINT_OPTS.linewidth - indent) / (element_length))
    )

    edgeitems = PRINT_OPTS.edgeitems
    if summarize and not edgeitems:
        data = ["..."]
    elif summarize and arr.shape[0] > 2 * edgeitems:
        data = (
            [formatter.format(val) for val in arr[:edgeitems].tolist()]
            + [" ..."]
            + [formatter.format(val) for val in arr[-edgeitems:].tolist()]
        )
    else:
        data = [formatter.format(val) for val in arr.tolist()]

    data_lines = [
        data[i : i + elements_per_line] for i in range(0, len(data), elements_per_line)
    ]
    lines = [", ".join(line) for line in data_lines]
    return "[" + ("," + "\n" + " " * (indent + 1)).join(lines) + "]"


def _tensor_str_with_formatter(arr, indent, summarize, formatter):
    dim = arr.ndim

    if dim == 0:
        return _scalar_str(arr, formatter)

    if dim == 1:
        return _vector_str(arr, indent, summarize, formatter)

    edgeitems = PRINT_OPTS.edgeitems
    n = arr.shape[0]
    if summarize and n > 2 * edgeitems:
        slices = (
            [
                _tensor_str_with_formatter(arr[i], indent + 1, summarize, formatter)
                for i in range(edgeitems)
            ]
            + ["..."]
            + [
                _tensor_str_with_formatter(arr[i], indent + 1, summarize, formatter)
                for i in range(n - edgeitems, n)
            ]
        )
    else:
        slices = [
            _tensor_str_with_formatter(arr[i], indent + 1, summarize, formatter)
            for i in range(n)
        ]

    # sub-tensors are separated by (dim - 1) newlines: one for rows of a
    # matrix, a blank line between matrices of a 3-d tensor, and so on.
    tensor_str = ("," + "\n" * (dim - 1) + " " * (indent + 1)).join(slices)
    return "[" + tensor_str + "]"


def get_summarized_data(arr):
    """The elements that a summarised print shows (they decide the format)."""
    dim = arr.ndim
    edgeitems = PRINT_OPTS.edgeitems
    if dim == 0:
        return arr
    if dim == 1:
        if arr.shape[0] > 2 * edgeitems:
            # note: with edgeitems == 0, arr[-0:] is the whole array, as in torch
            return np.concatenate((arr[:edgeitems], arr[-edgeitems:]))
        else:
            return arr
    if not edgeitems:
        return np.empty([0] * dim, dtype=arr.dtype)
    elif arr.shape[0] > 2 * edgeitems:
        start = [arr[i] for i in range(edgeitems)]
        end = [arr[i] for i in range(len(arr) - edgeitems, len(arr))]
        return np.stack([get_summarized_data(x) for x in (start + end)])
    else:
        return np.stack([get_summarized_data(x) for x in arr])


def _tensor_str(arr, indent):
    """torch's ``_tensor_str(self, indent)`` for a real, dense tensor."""
    if arr.size == 0:
        return "[]"

    summarize = arr.size > PRINT_OPTS.threshold
    formatter = _Formatter(get_summarized_data(arr) if summarize else arr)
    return _tensor_str_with_formatter(arr, indent, summarize, formatter)


def _add_suffixes(tensor_str, suffixes, indent, force_newline):
    tensor_strs = [tensor_str]
    # (torch's arithmetic, kept as is: without a newline rfind is -1, so this
    # counts two characters more than the line has)
    last_line_len = len(tensor_str) - tensor_str.rfind("\n") + 1
    for suffix in suffixes:
        suffix_len = len(suffix)
        if force_newline or last_line_len + suffix_len + 2 > PRINT_OPTS.linewidth:
            tensor_strs.append(",\n" + " " * indent + suffix)
            last_line_len = indent + suffix_len
            force_newline = False
        else:
            tensor_strs.append(", " + suffix)
            last_line_len += suffix_len + 2
    tensor_strs.append(")")
    return "".join(tensor_strs)


# ---------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------


def _as_array(arr, dtype_name):
    """``arr`` as an ndarray of the NumPy dtype matching ``dtype_name``."""
    arr = np.asarray(arr)
    np_dtype = _NP_DTYPES.get(dtype_name)
    if np_dtype is not None and arr.dtype != np_dtype:
        arr = arr.astype(np_dtype)
    return arr


def tensor_str(arr, dtype_name) -> str:
    """Only the values part of the repr (torch's ``_tensor_str(t, 0)``)."""
    return _tensor_str(_as_array(arr, dtype_name), 0)


def format_tensor(arr, dtype_name, suffixes=(), *, prefix="tensor(", indent=None) -> str:
    """The full repr of a plain CPU tensor, as torch's ``_str_intern`` writes it.

    Args:
        arr: the tensor's values as a NumPy array (any shape, 0-d and empty
            included).
        dtype_name: the tensor's dtype: ``'float32'``, ``'float64'``,
            ``'int64'``, ``'int32'`` or ``'bool'``.
        suffixes: extra ``key=value`` strings that go after the values and
            after the ``size=``/``dtype=`` suffixes this function adds itself,
            e.g. ``["grad_fn=<PowBackward0>"]`` or ``["requires_grad=True"]``.
        prefix: text before the values (torch uses ``"tensor("``, or
            ``"ClassName("`` for subclasses).
        indent: column at which continuation lines start; defaults to
            ``len(prefix)``.
    """
    arr = _as_array(arr, dtype_name)
    if indent is None:
        indent = len(prefix)
    all_suffixes = []

    if arr.size == 0:
        # Explicitly print the shape if it is not (0,), to match NumPy behavior
        if arr.ndim != 1:
            all_suffixes.append("size=" + str(tuple(arr.shape)))
        # In an empty tensor, there are no elements to infer if the dtype
        # should be int64, so it must be shown explicitly.
        if dtype_name != DEFAULT_DTYPE:
            all_suffixes.append("dtype=torch." + dtype_name)
        values = "[]"
    else:
        if not PRINT_OPTS.edgeitems:
            all_suffixes.append("size=" + str(tuple(arr.shape)))
        if dtype_name != DEFAULT_DTYPE and dtype_name not in _IMPLICIT_DTYPES:
            all_suffixes.append("dtype=torch." + dtype_name)
        values = _tensor_str(arr, indent)

    all_suffixes.extend(suffixes)
    return _add_suffixes(prefix + values, all_suffixes, indent, force_newline=False)
