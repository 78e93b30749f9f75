"""dtype objects with PyTorch's names, reprs and promotion rules."""
import numpy as np


class dtype:
    __slots__ = ("name", "np", "code", "is_floating_point", "itemsize", "_kind")

    def __init__(self, name, npdt, code, kind):
        self.name = name
        self.np = np.dtype(npdt)
        self.code = code           # small int used in tape records
        self.is_floating_point = kind == "f"
        self.itemsize = self.np.itemsize
        self._kind = kind          # 'b' < 'i' < 'f' for promotion

    def __repr__(self):
        return "torch." + self.name

    def __reduce__(self):
        return (_by_name, (self.name,))

    @property
    def is_complex(self):
        return False

    @property
    def is_signed(self):
        return self._kind != "b"


float32 = dtype("float32", np.float32, 0, "f")
float64 = dtype("float64", np.float64, 1, "f")
int64 = dtype("int64", np.int64, 2, "i")
bool_ = dtype("bool", np.bool_, 3, "b")
int32 = dtype("int32", np.int32, 4, "i")
float = float32  # noqa: A001  torch.float
double = float64
long = int64
int = int32  # noqa: A001  torch.int

ALL = (float32, float64, int64, bool_, int32)
_NP = {d.np: d for d in ALL}
BY_CODE = {d.code: d for d in ALL}
_RANK = {"b": 0, "i": 1, "f": 2}


def _by_name(name):
    return {d.name: d for d in ALL}[name]


def from_numpy_dtype(npdt):
    try:
        return _NP[np.dtype(npdt)]
    except KeyError:
        raise TypeError(
            f"can't convert np.ndarray of type numpy.{np.dtype(npdt).name}. The only supported types are: "
            "float64, float32, int64, int32, and bool.") from None


import builtins  # noqa: E402  (names above shadow float/int/bool like torch does)

builtins_float, builtins_int, builtins_bool = builtins.float, builtins.int, builtins.bool
default_float = float32


def as_dtype(d):
    """Accept a tapegrad dtype, a NumPy dtype, or Python's float/int/bool."""
    if d is None or isinstance(d, dtype):
        return d
    if d is builtins_float:
        return float64
    if d is builtins_int:
        return int64
    if d is builtins_bool:
        return bool_
    return from_numpy_dtype(d)


def scalar_kind(v):
    if isinstance(v, (bool, np.bool_)):
        return "b"
    if isinstance(v, (builtins_int, np.integer)):
        return "i"
    return "f"


def promote(a, b):
    """Promotion of two tensor dtypes (both dimensioned), as torch.promote_types."""
    if a is b:
        return a
    ra, rb = _RANK[a._kind], _RANK[b._kind]
    if ra != rb:
        return a if ra > rb else b
    return a if a.itemsize >= b.itemsize else b


def promote_scalar(t, v):
    """Result dtype of `tensor op python-scalar`: the scalar only wins across kinds."""
    k = scalar_kind(v)
    if _RANK[k] > _RANK[t._kind]:
        return default_float if k == "f" else int64
    return t


def result_type(a, b):
    """torch.result_type for two tensors where 0-d tensors rank below dimensioned ones."""
    da, db = a.dtype, b.dtype
    if da is db:
        return da
    za, zb = a.dim() == 0, b.dim() == 0
    if za == zb:
        return promote(da, db)
    dim_t, zero_t = (db, da) if za else (da, db)
    # a 0-d operand only wins when it is of a higher category (bool < int < float)
    if _RANK[zero_t._kind] > _RANK[dim_t._kind]:
        return zero_t
    return dim_t
