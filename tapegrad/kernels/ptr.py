"""Raw addresses inside jitted code.

The tape stores storage addresses as int64. ``f32p(addr)`` / ``f64p(addr)``
turn one into a typed pointer (LLVM ``inttoptr``), and ``numba.carray(ptr, n)``
into an array view, with no bounds checks: ``TAPEGRAD_DEBUG=1`` validates every
address against live buffers before the jitted call instead. Measured on this
project's machines: a jitted loop over raw addresses costs the same as one over
offsets into one array, and 13x less than a ``typed.List`` of arrays.
"""
from numba import types
from numba.extending import intrinsic


def _make(ty):
    @intrinsic
    def to_ptr(typingctx, addr):
        sig = types.CPointer(ty)(types.int64)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(types.CPointer(ty)))

        return sig, codegen

    return to_ptr


f32p = _make(types.float32)
f64p = _make(types.float64)
u8p = _make(types.uint8)
i64p = _make(types.int64)
i8p = _make(types.int8)


@intrinsic
def addr_of(typingctx, arr):
    """The address of an array's first element, as int64 (``arr.ctypes.data`` in jitted code
    makes a function uncacheable)."""
    if not isinstance(arr, types.Array):
        return None
    sig = types.int64(arr)

    def codegen(context, builder, signature, args):
        from numba.core import cgutils
        ary = cgutils.create_struct_proxy(signature.args[0])(context, builder, value=args[0])
        return builder.ptrtoint(ary.data, context.get_value_type(types.int64))

    return sig, codegen
