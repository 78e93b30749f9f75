"""Small matrix products without packing: ``C (+)= A B`` for operands that fit in cache.

Note [small gemm]
~~~~~~~~~~~~~~~~~
OpenBLAS copies ("packs") both operands into panels before every product. For the
products of a small network (W4's 16x64 @ 64x64, its weight gradients 64x16 @ 16x64)
the copies cost as much as the arithmetic: perf on a W4 captured step gave
sgemm_kernel 30% of the samples and sgemm_incopy/itcopy/otcopy/oncopy 27%.
Here B's rows are read in place and A's elements are broadcast from wherever
A's strides put them: a register-blocked micro-kernel of 8 rows by two vectors
(16 accumulators, then 4 rows, then 1; a vector is 64 bytes where the CPU has AVX-512, else
32: 32 or 16 float32 columns), written in LLVM IR (``llvm.fma`` on vectors) because
Numba's loops do not keep a block of C in registers. When B's columns are contiguous instead (``x @ W.T``), B is first
copied transposed (``small_gemm_bt_*``: k*n moves against m*n*k multiply-adds;
64x64: 0.6 us, against the 1.2 us it saves), or A is and C.T = W A.T is computed,
whichever moves less (W4's 16-row batches: A). Square blocks of one vector's width
are transposed in registers (``_transpose``: shuffles, no arithmetic); W4's 16x64 @ (64x64).T
went from 4.9 to 3.85 us a product (2.7 us with B's rows contiguous), session 24.

Every element of C is one chain ``acc = fma(a_p, b_p, acc)`` over p in order
from acc = 0, then ``C = acc`` or ``C = C + acc`` (columns left over from the
vectors go through a zero-padded copy of one vector's width: the same chains). So an element's bits depend on its
row of A and column of B only: not on the layouts, the blocking, where the
element falls, or on which of C = A B and C.T = B.T A.T is computed (Note
[folded transposes] in kernels/lifetime.py relies on it). The native records'
NumPy closures compute with the same kernels (``ops/pyops.py``'s ``_gemm``), so
hooks and anomaly mode change no bits either.

Used by the replay's ``_rm_gemm_*`` when alpha is 1, beta is 0 or 1 and
m*n*k <= SMALL_GEMM_MAX (config); otherwise BLAS. The choice depends on the
shapes only. (On a CPU without FMA, llvm.fma is a libm call: slow, same bits.)
Measured against OpenBLAS through the replay's own gemm call (float32, this VM,
32-byte vectors): 16x64x64 1.13 vs 2.39 us, 64x64x64 4.8 vs 5.8 us; 128x64x128
19.9 vs 13.7 us (BLAS ahead from there: SMALL_GEMM_MAX). With 64-byte vectors:
16x64x64 0.58 us, 64x16x64 0.62 us.

Note [parallel gemm]
~~~~~~~~~~~~~~~~~~~~
Products above SMALL_GEMM_MAX, up to PAR_GEMM_MAX multiply-adds with k <= PAR_GEMM_K (config),
run these micro-kernels too, C's rows split over the threads: ``par_gemm`` gives each thread a
block of rows (whole multiples of 8), ``par_gemm_bt`` splits its transposed copies the same way.
An element is still one fma chain over its row of A and column of B, so the bits are
small_gemm's whatever the number of threads (tests/test_smallgemm.py checks it). Measured on a
2-core znver4 VM (session 31, min of 7, /tmp scripts calling R.matmul_f32): one thread already
runs at the FMA peak, 128x784x256 in 442 us (116 GFLOP/s) against OpenBLAS's 506 us on one
thread; split over two, 234 us (219 GFLOP/s) against OpenBLAS's 304 us on two. W2's eight
products (batch 128, 784-256-256-10) took 809 us this way, 951 us in NumPy's OpenBLAS and 912
in torch's. Where it loses, BLAS keeps the product: k = 4096 with B's rows contiguous ran at
4 GFLOP/s (PAR_GEMM_K), and above PAR_GEMM_MAX the unblocked kernel falls behind (2048x64x2048:
71 against 137 GFLOP/s). The split needs the OpenMP threading layer (config.PAR_GEMM: the
default where Numba loads it since session 32; with another layer BLAS keeps these products):
a workqueue launch cost 63 us here and the two halves ran slower than one thread (595 us
against 442); an OpenMP launch costs 1.5 us. GNU OpenMP is not fork-safe (Numba terminates a
forked child at its first parallel loop), so a forked child runs them on one thread, ``_sgemm_*``,
the same bits (kernels/opfn.py's Note [forked children]). TBB, which is fork-safe, ran W2's
products in 966-1114 us against 810. The op function is ``_pgemm_*`` (FT[PGEMM], called
through replay_cpu's ``_gemm_at``), compiled when a record of such a product is made
(opfn.ensure_products): with the parallel loops compiled into ``_gemm_*``, a cold first W5a
step, all small products, took 8.1 s instead of 5.0.

Note [no literal arguments]
~~~~~~~~~~~~~~~~~~~~~~~~~~~
A jitted function that calls another with a constant argument (``1``, ``False``, a closure's
``width``) types that argument as ``Literal[int](1)``, and Numba compiles the callee, with
everything it calls, once more for that literal: a cold first W5a step spent 17.6 s compiling
``_rm_gemm_f32`` four times (three of them for the ``n, 1`` / ``1, n`` strides of the backward's
products) and 18 s more in literal variants of the functions below (session 28, timing
``Dispatcher.compile``). Constants passed to jitted callees are written ``np.int64(1)`` /
``np.bool_(False)`` (typed int64 / bool, not literal): one compile per real signature.
"""
import numpy as np
from llvmlite import ir
import numba
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..config import NJIT_INNER, NJIT_PARALLEL_INNER, VECTOR_BYTES
from .ptr import addr_of

_I64 = ir.IntType(64)


def _vector_bytes():
    """64 where the CPU has AVX-512 (one vector is 16 float32), else 32 (AVX2): measured on this
    VM's znver5, 16x64x64 float32 takes 0.58 us with 64-byte vectors, 1.13 us with 32 (OpenBLAS
    2.39). The bits do not depend on it (each element is its own chain)."""
    if VECTOR_BYTES in (32, 64):
        return VECTOR_BYTES
    try:
        from llvmlite import binding
        return 64 if binding.get_host_cpu_features().get("avx512f") else 32
    except Exception:  # pragma: no cover
        return 32


_VBYTES = _vector_bytes()
#: the chunks of par_gemm (a constant: numba.get_num_threads() in jitted code is a call through a
#: ctypes pointer, which Numba cannot cache)
_THREADS = numba.config.NUMBA_NUM_THREADS


def _micro(rows, nvec, is64):
    """The micro-kernel intrinsic: C[rows x nvec*W] (+)= A[rows x k] B[k x nvec*W]."""
    width = _VBYTES // (8 if is64 else 4)
    isz = 8 if is64 else 4

    @intrinsic
    def micro(typingctx, pa, as0, as1, pb, bs0, pc, ldc, k, accumulate):
        sig = types.void(pa, as0, as1, pb, bs0, pc, ldc, k, accumulate)

        def codegen(context, builder, signature, args):
            pa_, as0_, as1_, pb_, bs0_, pc_, ldc_, k_, acc_ = [
                context.cast(builder, v, t, types.int64) if t != types.boolean else v
                for v, t in zip(args, signature.args)]
            fty = ir.DoubleType() if is64 else ir.FloatType()
            vty = ir.VectorType(fty, width)
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3),
                                                 f"llvm.fma.v{width}f{64 if is64 else 32}")
            zero = ir.Constant(vty, [0.0] * width)
            undef = ir.Constant(vty, ir.Undefined)
            splat = ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width)
            accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(nvec)] for _ in range(rows)]
            for row in accs:
                for a in row:
                    builder.store(zero, a)

            def at(base, idx, ty):
                # base + idx * isz, as a pointer to ty
                addr = builder.add(base, builder.mul(idx, ir.Constant(_I64, isz)))
                return builder.inttoptr(addr, ty.as_pointer())

            with cgutils.for_range(builder, k_) as loop:
                p = loop.index
                brow = builder.mul(p, bs0_)
                bv = [builder.load(at(pb_, builder.add(brow, ir.Constant(_I64, v * width)), vty), align=isz)
                      for v in range(nvec)]
                pcol = builder.mul(p, as1_)
                for r in range(rows):
                    ai = builder.add(builder.mul(ir.Constant(_I64, r), as0_), pcol)
                    a = builder.load(at(pa_, ai, fty), align=isz)
                    av = builder.shuffle_vector(builder.insert_element(undef, a, ir.Constant(ir.IntType(32), 0)),
                                                undef, splat)
                    for v in range(nvec):
                        slot = accs[r][v]
                        builder.store(builder.call(fma, [av, bv[v], builder.load(slot)]), slot)
            for r in range(rows):
                for v in range(nvec):
                    ci = builder.add(builder.mul(ir.Constant(_I64, r), ldc_), ir.Constant(_I64, v * width))
                    cp = at(pc_, ci, vty)
                    acc = builder.load(accs[r][v])
                    old = builder.load(cp, align=isz)
                    builder.store(builder.select(acc_, builder.fadd(old, acc), acc), cp, align=isz)
            return context.get_dummy_value()

        return sig, codegen

    return micro


def _transpose(is64):
    """The block-transpose intrinsic: dst[W x W] (+)= src[W x W].T for one vector width W, rows
    ``ss`` / ``ds`` elements apart (each row contiguous). The rows are loaded as vectors and
    transposed in registers: log2(W) rounds of two-vector shuffles, each swapping the off-diagonal
    h x h blocks of row pairs (i, i + h), h = W/2 ... 1 (16 x 16 float32: 64 shuffles against 256
    scalar loads and stores). Moves only, so the bits are the scalar copy's."""
    width = _VBYTES // (8 if is64 else 4)
    isz = 8 if is64 else 4

    @intrinsic
    def transpose(typingctx, src, ss, dst, ds, accumulate):
        sig = types.void(src, ss, dst, ds, accumulate)

        def codegen(context, builder, signature, args):
            src_, ss_, dst_, ds_ = [context.cast(builder, v, t, types.int64)
                                    for v, t in zip(args[:4], signature.args[:4])]
            acc_ = args[4]
            vty = ir.VectorType(ir.DoubleType() if is64 else ir.FloatType(), width)

            def row(base, stride, r):
                addr = builder.add(base, builder.mul(builder.mul(ir.Constant(_I64, r), stride),
                                                     ir.Constant(_I64, isz)))
                return builder.inttoptr(addr, vty.as_pointer())

            rows = [builder.load(row(src_, ss_, r), align=isz) for r in range(width)]
            h = width // 2
            while h >= 1:
                lo = ir.Constant(ir.VectorType(ir.IntType(32), width),
                                 [j if not j & h else width + j - h for j in range(width)])
                hi = ir.Constant(ir.VectorType(ir.IntType(32), width),
                                 [j + h if not j & h else width + j for j in range(width)])
                for i in range(width):
                    if i & h:
                        continue
                    a, b = rows[i], rows[i + h]
                    rows[i] = builder.shuffle_vector(a, b, lo)
                    rows[i + h] = builder.shuffle_vector(a, b, hi)
                h //= 2
            for r in range(width):
                cp = row(dst_, ds_, r)
                old = builder.load(cp, align=isz)
                builder.store(builder.select(acc_, builder.fadd(old, rows[r]), rows[r]), cp, align=isz)
            return context.get_dummy_value()

        return sig, codegen

    return transpose


_T32, _T64 = _transpose(False), _transpose(True)
_SHAPES = ((8, 2), (4, 2), (1, 2), (8, 1), (4, 1), (1, 1))
_K32 = tuple(_micro(r, v, False) for r, v in _SHAPES)
_K64 = tuple(_micro(r, v, True) for r, v in _SHAPES)


def _column_block(m8, m4, m1, isz, inline):
    """C[:, block] (+)= A B[:, block] for one block of columns (the micro-kernels m8, m4 and m1
    give its width): rows eight at a time, then four, then one. ldc: C's row stride in elements.
    Eight rows by two vectors is 16 accumulators: on an Intel VM (AVX-512) 128x256x256 float32
    took 147 us against 251 with four rows (8 accumulators do not cover two FMA ports' latency),
    16x64x64 level (ad hoc, session 20; bench/results/2026-12-02_210327-W4.json for W4)."""
    @njit(**NJIT_INNER, inline=inline)
    def block(m, k, pa, as0, as1, pb, bs0, pc, ldc, accumulate):  # pragma: no cover
        i0 = 0
        while i0 + 8 <= m:
            m8(pa + i0 * as0 * isz, as0, as1, pb, bs0, pc + i0 * ldc * isz, ldc, k, accumulate)
            i0 += 8
        while i0 + 4 <= m:
            m4(pa + i0 * as0 * isz, as0, as1, pb, bs0, pc + i0 * ldc * isz, ldc, k, accumulate)
            i0 += 4
        while i0 < m:
            m1(pa + i0 * as0 * isz, as0, as1, pb, bs0, pc + i0 * ldc * isz, ldc, k, accumulate)
            i0 += 1
    return block


@njit(**NJIT_INNER)
def _chunk(total, unit):  # pragma: no cover
    """Rows a thread takes of `total` split over _THREADS threads: whole multiples of `unit`."""
    return max(unit, ((total + _THREADS - 1) // _THREADS + unit - 1) // unit * unit)


@njit(**NJIT_INNER)
def _alive(a, b):  # pragma: no cover
    """Nothing; called after the last raw-address use of scratch arrays a and b. Numba releases
    an array after the last statement that names it, and ``pq = addr_of(Q)`` names it before
    the kernels read it through the address: the call keeps it (and its memory) until here."""
    return a.size + b.size


def _driver(kernels, transpose, width, isz, ptr, ty):
    m8x2, m4x2, m1x2, m8x1, m4x1, m1x1 = kernels
    # two: one call site, inlined into small_gemm; one: two call sites, its own library, linked
    # (inlined, its micro-kernels would be compiled twice; Note [gemm by address] in gen_cpu.py)
    two = _column_block(m8x2, m4x2, m1x2, isz, "always")
    one = _column_block(m8x1, m4x1, m1x1, isz, "never")

    @njit(**NJIT_INNER)
    def small_gemm(m, n, k, pa, as0, as1, pb, bs0, pc, accumulate):  # pragma: no cover
        """C (m x n, row-major, contiguous) = A B, or C + A B when accumulate; A (m x k) by element
        strides, B (k x n) with contiguous rows bs0 elements apart."""
        j0 = 0
        while j0 + 2 * width <= n:
            two(m, k, pa, as0, as1, pb + j0 * isz, bs0, pc + j0 * isz, n, accumulate)
            j0 += 2 * width
        if j0 + width <= n:
            one(m, k, pa, as0, as1, pb + j0 * isz, bs0, pc + j0 * isz, n, accumulate)
            j0 += width
        if j0 < n:     # the last columns: through a zero-padded panel of one vector's width
            w = n - j0
            B = ptr(pb)
            C = ptr(pc)
            Bp = np.zeros(k * width, ty)
            for p in range(k):
                for j in range(w):
                    Bp[p * width + j] = B[p * bs0 + j0 + j]
            Cp = np.zeros(m * width, ty)
            if accumulate:
                for i in range(m):
                    for j in range(w):
                        Cp[i * width + j] = C[i * n + j0 + j]
            one(m, k, pa, as0, as1, addr_of(Bp), np.int64(width), addr_of(Cp), np.int64(width), accumulate)
            for i in range(m):
                for j in range(w):
                    C[i * n + j0 + j] = Cp[i * width + j]
            _alive(Bp, Cp)

    @njit(**NJIT_INNER)
    def copy_rows(src, s0, s1, r0, r1, cols, dst, ld):  # pragma: no cover
        """dst[c * ld + r] = src[r, c] for the rows r0 <= r < r1 of src (element strides s0, s1):
        square blocks through ``transpose`` when src's rows are contiguous and the sizes are whole
        blocks, else element by element."""
        if s1 == 1 and r0 % width == 0 and (r1 - r0) % width == 0 and cols % width == 0:
            for r in range(r0, r1, width):
                for c0 in range(0, cols, width):
                    transpose(src + (r * s0 + c0) * isz, s0, dst + (c0 * ld + r) * isz, ld, False)
            return
        S = ptr(src)
        T = ptr(dst)
        for r in range(r0, r1):
            for c in range(cols):
                T[c * ld + r] = S[r * s0 + c * s1]

    @njit(**NJIT_INNER)
    def back_rows(pd, m, n, j0, j1, pc, accumulate):  # pragma: no cover
        """C[:, j0:j1] (m x n, contiguous) = (or +=) the transpose of D's rows j0 <= j < j1 (D: n x m,
        contiguous), by blocks through ``transpose`` when the sizes are whole blocks."""
        if m % width == 0 and n % width == 0 and j0 % width == 0 and (j1 - j0) % width == 0:
            for j in range(j0, j1, width):
                for i0 in range(0, m, width):
                    transpose(pd + (j * m + i0) * isz, m, pc + (i0 * n + j) * isz, n, accumulate)
            return
        C = ptr(pc)
        D = ptr(pd)
        for i in range(m):
            if accumulate:
                for j in range(j0, j1):
                    C[i * n + j] = C[i * n + j] + D[j * m + i]
            else:
                for j in range(j0, j1):
                    C[i * n + j] = D[j * m + i]

    @njit(**NJIT_INNER, inline="always")
    def copy_t(src, s0, s1, rows, cols, dst):  # pragma: no cover
        """dst (cols x rows, contiguous) = the transpose of src (rows x cols, element strides s0, s1)."""
        copy_rows(src, s0, s1, np.int64(0), rows, cols, dst, rows)

    @njit(**NJIT_INNER, inline="always")
    def back(pd, m, n, pc, accumulate):  # pragma: no cover
        back_rows(pd, m, n, np.int64(0), n, pc, accumulate)

    @njit(**NJIT_PARALLEL_INNER)
    def par_copy_t(src, s0, s1, rows, cols, dst):  # pragma: no cover
        """copy_t, src's rows split over the threads."""
        step = _chunk(rows, np.int64(width))
        for t in prange((rows + step - 1) // step):
            copy_rows(src, s0, s1, t * step, min(rows, (t + 1) * step), cols, dst, rows)

    @njit(**NJIT_PARALLEL_INNER)
    def par_back(pd, m, n, pc, accumulate):  # pragma: no cover
        """back, D's rows (C's columns) split over the threads."""
        step = _chunk(n, np.int64(width))
        for t in prange((n + step - 1) // step):
            back_rows(pd, m, n, t * step, min(n, (t + 1) * step), pc, accumulate)

    def bt(gemm, copy, untranspose, inline):
        @njit(**NJIT_INNER, inline=inline)
        def small_gemm_bt(m, n, k, pa, as0, as1, pb, bs1, pc, accumulate):  # pragma: no cover
            """small_gemm for B (k x n) with contiguous columns bs1 elements apart (B = W.T). Either B's
            transpose is copied into rows (k*n moves), or, when that moves less, A's transpose is (none
            when A's columns are contiguous), and the product is computed as C.T = W A.T and stored
            transposed (m*k + m*n moves): the same chains of fma (a * b = b * a), so the same bits.
            Square blocks of one vector's width move through ``transpose`` (registers), the rest
            element by element. gemm, copy, untranspose: the serial functions above, or the parallel
            ones (Note [parallel gemm]: the same bits)."""
            if m * (k + n) < k * n:
                Q = np.empty(0 if as0 == 1 else k * m, ty)
                D = np.empty(n * m, ty)
                pd = addr_of(D)
                if as0 == 1:                      # A.T has contiguous rows: read in place
                    pq, lq = pa, as1
                else:
                    pq, lq = addr_of(Q), m
                    copy(pa, as0, as1, m, k, pq)
                gemm(n, m, k, pb, bs1, np.int64(1), pq, lq, pd, np.bool_(False))
                untranspose(pd, m, n, pc, accumulate)
                _alive(Q, D)
                return
            P = np.empty(k * n, ty)
            pp = addr_of(P)
            copy(pb, bs1, np.int64(1), n, k, pp)        # B's transpose is W (n x k, rows bs1 apart)
            gemm(m, n, k, pa, as0, as1, pp, n, pc, accumulate)
            _alive(P, P)
        return small_gemm_bt

    @njit(**NJIT_PARALLEL_INNER)
    def par_gemm(m, n, k, pa, as0, as1, pb, bs0, pc, accumulate):  # pragma: no cover
        """small_gemm with C's rows split over the threads (blocks of 8): Note [parallel gemm]."""
        step = _chunk(m, np.int64(8))
        for t in prange((m + step - 1) // step):
            i0 = t * step
            small_gemm(min(m, i0 + step) - i0, n, k, pa + i0 * as0 * isz, as0, as1, pb, bs0, pc + i0 * n * isz,
                       accumulate)

    return (small_gemm, bt(small_gemm, copy_t, back, "always"), par_gemm,
            bt(par_gemm, par_copy_t, par_back, "never"))


def _make():
    from .ptr import f32p, f64p
    return (_driver(_K32, _T32, _VBYTES // 4, 4, f32p, np.float32),
            _driver(_K64, _T64, _VBYTES // 8, 8, f64p, np.float64))


((small_gemm_f32, small_gemm_bt_f32, par_gemm_f32, par_gemm_bt_f32),
 (small_gemm_f64, small_gemm_bt_f64, par_gemm_f64, par_gemm_bt_f64)) = _make()
