"""BLAS ``gemm`` called from jitted code through a raw function address.

The jitted replay runs small matrix products itself (``native`` escape records, see
``ops/pyops.py``'s Note [native records]) instead of returning to Python for each.
It calls SciPy's Fortran BLAS (``scipy.linalg.cython_blas.sgemm`` / ``dgemm``, the
same OpenBLAS NumPy-class libraries use) through an address the record carries:
a function pointer baked into compiled code as a constant would make the kernel
uncacheable (and wrong in the next process), an address passed at run time is not.

``gemm(fn, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)`` is Fortran's
column-major ``C = alpha op(A) op(B) + beta C``; ``ta``/``tb`` are ``ord("N")`` or
``ord("T")``, ``a``/``b``/``c`` addresses; the float type follows ``alpha``.
``row_major_gemm`` in the replay turns the row-major products into it.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_ADDR = {}


def address(dtype_char):
    """The address of SciPy's ``sgemm`` ('f') or ``dgemm`` ('d'), or 0 without SciPy
    (then matrix products stay NumPy escape records)."""
    a = _ADDR.get(dtype_char)
    if a is None:
        try:
            from numba.extending import get_cython_function_address
            a = get_cython_function_address("scipy.linalg.cython_blas", "sgemm" if dtype_char == "f" else "dgemm")
        except (ImportError, ValueError):   # pragma: no cover (SciPy is a dependency)
            a = 0
        _ADDR[dtype_char] = a
    return a


@intrinsic
def gemm(typingctx, fn, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    if not isinstance(alpha, types.Float) or alpha != beta:
        return None
    sig = types.void(fn, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    is32 = alpha == types.float32

    def codegen(context, builder, signature, args):
        fn_, ta_, tb_, m_, n_, k_, al_, a_, lda_, b_, ldb_, be_, c_, ldc_ = args
        i8, i32 = ir.IntType(8), ir.IntType(32)
        fty = ir.FloatType() if is32 else ir.DoubleType()
        fp = fty.as_pointer()

        def slot(ty, v):
            p = cgutils.alloca_once(builder, ty)
            builder.store(v, p)
            return p

        def i(v):
            return slot(i32, builder.trunc(v, i32))

        argv = [slot(i8, builder.trunc(ta_, i8)), slot(i8, builder.trunc(tb_, i8)), i(m_), i(n_), i(k_),
                slot(fty, al_), builder.inttoptr(a_, fp), i(lda_), builder.inttoptr(b_, fp), i(ldb_),
                slot(fty, be_), builder.inttoptr(c_, fp), i(ldc_)]
        fnty = ir.FunctionType(ir.VoidType(), [v.type for v in argv])
        builder.call(builder.inttoptr(fn_, fnty.as_pointer()), argv)
        return context.get_dummy_value()

    return sig, codegen
