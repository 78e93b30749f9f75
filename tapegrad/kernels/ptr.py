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


def _call_codegen(nint):
    def codegen(context, builder, signature, llargs):
        from llvmlite import ir
        fnty = ir.FunctionType(ir.VoidType(), [ir.IntType(64)] * nint + [ir.DoubleType()])
        want = [types.int64] * nint + [types.float64]
        vals = [context.cast(builder, v, t, w) for v, t, w in zip(llargs[1:], signature.args[1:], want)]
        builder.call(builder.inttoptr(llargs[0], fnty.as_pointer()), vals)
        return context.get_dummy_value()
    return codegen


# NOTE: call the C function at address fn (kernels/opfn.py's op functions) with int64 arguments
# and one float64: the address is data, so the caller stays cacheable
@intrinsic
def call_fwd(typingctx, fn, px, pz, po, n, sx, sz, c):
    """(fn, px, pz, po, n, sx, sz, c)"""
    return types.void(fn, px, pz, po, n, sx, sz, c), _call_codegen(6)


@intrinsic
def call_bwd(typingctx, fn, px, pz, py, pg, pgx, pgz, n, sx, sz, wx, wz, c):
    """(fn, px, pz, py, pg, pgx, pgz, n, sx, sz, wx, wz, c)"""
    return types.void(fn, px, pz, py, pg, pgx, pgz, n, sx, sz, wx, wz, c), _call_codegen(11)


@intrinsic
def call12(typingctx, fn, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, c):
    """(fn, 12 int64, one float64): the native records' backward and the products (Note [gemm by
    address] in kernels/gen_cpu.py)"""
    return types.void(fn, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, c), _call_codegen(12)
