"""kernels/smallgemm.py (Note [small gemm]): C (+)= A B without packing, for the replay's small
products. Checked against a float64 NumPy reference over random shapes and layouts (A contiguous,
transposed or a column slice; B with contiguous rows or contiguous columns), with and without
accumulation; and for the property the fold and the NumPy closures rely on: an element's bits
depend on its row of A and column of B only (not on the layout, the blocking, or whether C or
C.T is computed). Through tapegrad: a product and its NumPy closure (ops/pyops.py's _gemm) agree
bit for bit, forward and backward, and central differences hold."""
import numpy as np
import pytest
from hypothesis import given, settings
from numba import njit
from hypothesis import strategies as st

import tapegrad as tg
from tapegrad import config
from tapegrad.kernels import opfn
from tapegrad.kernels import replay_cpu as R
from tapegrad.kernels.blas import address
from tapegrad.kernels.smallgemm import (par_gemm_bt_f32, par_gemm_f32, small_gemm_bt_f32, small_gemm_bt_f64,
                                       small_gemm_f32, small_gemm_f64)
from tapegrad.ops.pyops import _gemm


def _layout(arr, how):
    """arr's values in layout `how`: 'c' contiguous, 't' a transposed view, 's' a column slice."""
    if how == "t":
        return np.ascontiguousarray(arr.T).T
    if how == "s":
        wide = np.concatenate([arr, np.full((arr.shape[0], 3), 7.0, arr.dtype)], axis=1)
        return wide[:, :arr.shape[1]]
    return np.ascontiguousarray(arr)


def _run(a, b, out):
    """out = a @ b through the replay's product (R.matmul_*, strides in elements)."""
    isz = a.itemsize
    fn = address("f" if isz == 4 else "d")
    m, k = a.shape
    n = b.shape[1]
    opfn.ensure_products(0 if isz == 4 else 1, True)
    (R.matmul_f32 if isz == 4 else R.matmul_f64)(opfn.FT.ctypes.data, fn, m, n, k, a.ctypes.data, a.strides[0] // isz,
                                                 a.strides[1] // isz, b.ctypes.data, b.strides[0] // isz,
                                                 b.strides[1] // isz, out.ctypes.data)
    return out


dims = st.integers(1, 40)


@settings(max_examples=60, deadline=None)
@given(m=dims, n=dims, k=dims, la=st.sampled_from("cts"), lb=st.sampled_from("ct"), f64=st.booleans(),
       seed=st.integers(0, 2**16))
def test_against_numpy(m, n, k, la, lb, f64, seed):
    dt = np.float64 if f64 else np.float32
    rng = np.random.default_rng(seed)
    A0, B0 = rng.standard_normal((m, k)).astype(dt), rng.standard_normal((k, n)).astype(dt)
    out = np.full((m, n), np.nan, dt)          # beta 0: what was there is not read
    got = _run(_layout(A0, la), _layout(B0, lb), out)
    ref = A0.astype(np.float64) @ B0.astype(np.float64)
    tol = 1e-5 if dt == np.float32 else 1e-13
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.sqrt(k) * max(1.0, np.abs(ref).max()))


@settings(max_examples=40, deadline=None)
@given(m=dims, n=dims, k=dims, f64=st.booleans(), seed=st.integers(0, 2**16))
def test_bits_depend_on_the_operands_only(m, n, k, f64, seed):
    """C = A B and (B.T A.T).T, any layout of either, each row alone: the same bits."""
    dt = np.float64 if f64 else np.float32
    rng = np.random.default_rng(seed)
    A0, B0 = rng.standard_normal((m, k)).astype(dt), rng.standard_normal((k, n)).astype(dt)
    C = _run(A0, B0, np.empty((m, n), dt))
    for la in "cts":
        for lb in "ct":
            np.testing.assert_array_equal(_run(_layout(A0, la), _layout(B0, lb), np.empty((m, n), dt)), C)
    Ct = _run(_layout(B0.T, "t"), _layout(A0.T, "c"), np.empty((n, m), dt))
    np.testing.assert_array_equal(Ct.T, C)
    i = int(rng.integers(m))
    np.testing.assert_array_equal(_run(A0[i:i + 1], B0, np.empty((1, n), dt))[0], C[i])


@pytest.mark.parametrize("f64", [False, True])
@pytest.mark.parametrize("m,k,n", [(16, 64, 64), (16, 32, 64), (32, 64, 96), (8, 16, 48), (32, 16, 16),
                                   (16, 48, 32), (17, 64, 64), (16, 64, 63)])
def test_transposed_b_in_vector_blocks(m, k, n, f64):
    """B = W.T (contiguous columns) with sizes in whole vector widths, where small_gemm_bt moves
    square blocks through registers (A's transpose and C's for W4's x @ W.T; B's transpose for
    tall A), and one size off each way (element by element): the bits of contiguous B, for A
    contiguous, transposed (read in place) or a column slice; accumulation one addition."""
    dt = np.float64 if f64 else np.float32
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    A0, B0 = rng.standard_normal((m, k)).astype(dt), rng.standard_normal((k, n)).astype(dt)
    C = _run(A0, B0, np.empty((m, n), dt))
    np.testing.assert_allclose(C, A0.astype(np.float64) @ B0.astype(np.float64), rtol=1e-4, atol=1e-4)
    Bt = _layout(B0, "t")
    for la in "cts":
        np.testing.assert_array_equal(_run(_layout(A0, la), Bt, np.full((m, n), np.nan, dt)), C)
    C0 = rng.standard_normal((m, n)).astype(dt)
    got = C0.copy()
    _accumulate_bt(A0, Bt, got, m, n, k)
    np.testing.assert_array_equal(got, C0 + C)


@njit
def _accumulate_bt(A, Bt, C, m, n, k):
    isz = A.itemsize
    pa, pb, pc = np.int64(A.ctypes.data), np.int64(Bt.ctypes.data), np.int64(C.ctypes.data)
    as0, as1, bs1 = A.strides[0] // isz, A.strides[1] // isz, Bt.strides[1] // isz
    if isz == 4:
        small_gemm_bt_f32(m, n, k, pa, as0, as1, pb, bs1, pc, True)
    else:
        small_gemm_bt_f64(m, n, k, pa, as0, as1, pb, bs1, pc, True)


def test_accumulate_is_one_addition():
    """Backward products accumulate: C + (A B), the product rounded first, as a separate add."""
    rng = np.random.default_rng(3)
    A, B = rng.standard_normal((9, 20)).astype(np.float32), rng.standard_normal((20, 33)).astype(np.float32)
    C0 = rng.standard_normal((9, 33)).astype(np.float32)
    P = _run(A, B, np.empty((9, 33), np.float32))
    C = C0.copy()
    _accumulate(A, B, C)
    np.testing.assert_array_equal(C, C0 + P)


@njit
def _accumulate(A, B, C):
    small_gemm_f32(9, 33, 20, A.ctypes.data, 20, 1, B.ctypes.data, 33, C.ctypes.data, True)


def test_numpy_helper_is_the_kernel():
    """ops/pyops.py's _gemm (the native records' NumPy closures) gives the kernel's bits; above
    SMALL_GEMM_MAX it is NumPy's matmul."""
    rng = np.random.default_rng(4)
    A, B = rng.standard_normal((16, 64)).astype(np.float32), rng.standard_normal((64, 48)).astype(np.float32)
    np.testing.assert_array_equal(_gemm(A, B), _run(A, B, np.empty((16, 48), np.float32)))
    np.testing.assert_array_equal(_gemm(A.T.copy().T, B.T.copy().T), _gemm(A, B))
    big = rng.standard_normal((128, 128)).astype(np.float32), rng.standard_normal((128, 128)).astype(np.float32)
    assert 128 ** 3 > config.SMALL_GEMM_MAX
    np.testing.assert_array_equal(_gemm(*big), np.matmul(*big))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_hooked_product_same_bits(dtype):
    """A hook on a product's output makes Python run its backward (the NumPy closure): the same
    gradients, bit for bit, as the jitted replay's."""
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((12, 20)), rng.standard_normal((20, 24))

    def run(hook):
        X = tg.tensor(x, dtype=getattr(tg, dtype), requires_grad=True)
        W = tg.tensor(w, dtype=getattr(tg, dtype), requires_grad=True)
        y = X @ W
        if hook:
            y.register_hook(lambda g: None)
        (y.tanh() * 3).sum().backward()
        return X.grad.numpy().copy(), W.grad.numpy().copy()
    for a, b in zip(run(False), run(True)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("m,k,n", [(7, 9, 5), (70, 60, 90)])     # small; above SMALL_GEMM_MAX
def test_central_differences_float64(m, k, n):
    """A product's gradient against float64 central differences in a random direction."""
    rng = np.random.default_rng(6)
    x, w, d = rng.standard_normal((m, k)), rng.standard_normal((n, k)), rng.standard_normal((n, k))

    def loss(wv):
        return float(np.sin(x @ wv.T).sum())
    W = tg.tensor(w, dtype=tg.float64, requires_grad=True)
    tg.sin(tg.tensor(x, dtype=tg.float64) @ W.T).sum().backward()
    eps = 1e-6
    fd = (loss(w + eps * d) - loss(w - eps * d)) / (2 * eps)
    assert abs(float((W.grad.numpy() * d).sum()) - fd) < 1e-7 * max(1.0, abs(fd))


def test_narrow_vectors_same_bits(tmp_path):
    """The 32-byte micro-kernel (CPUs without AVX-512; forced here by TAPEGRAD_VECTOR_BYTES, with a
    cache of its own) gives the bits of the kernel this process runs."""
    import os
    import subprocess
    import sys
    rng = np.random.default_rng(8)
    cases = [(int(m), int(n), int(k)) for m, n, k in rng.integers(1, 45, size=(12, 3))]
    cases += [(16, 64, 64), (16, 64, 32), (32, 16, 16), (8, 24, 16)]   # vector blocks (m, n, k)
    A = [rng.standard_normal((m, k)).astype(np.float32) for m, n, k in cases]
    B = [rng.standard_normal((k, n)).astype(np.float32) for m, n, k in cases]
    np.savez(tmp_path / "in.npz", *A, *B)
    here = [_run(a, b, np.empty((a.shape[0], b.shape[1]), np.float32)) for a, b in zip(A, B)]
    bt = [_run(a, np.ascontiguousarray(b.T).T, np.empty((a.shape[0], b.shape[1]), np.float32)) for a, b in zip(A, B)]
    code = (f"import sys, numpy as np; sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
            "from tapegrad.kernels import smallgemm; assert smallgemm._VBYTES == 32\n"
            "from test_smallgemm import _run\n"
            f"d = np.load({str(tmp_path / 'in.npz')!r}); n = {len(cases)}\n"
            "A = [d[f'arr_{i}'] for i in range(n)]; B = [d[f'arr_{n + i}'] for i in range(n)]\n"
            "out = [_run(a, b, np.empty((a.shape[0], b.shape[1]), np.float32)) for a, b in zip(A, B)]\n"
            "out += [_run(a, np.ascontiguousarray(b.T).T, np.empty((a.shape[0], b.shape[1]), np.float32)) "
            "for a, b in zip(A, B)]\n"
            f"np.savez({str(tmp_path / 'out.npz')!r}, *out)\n")
    env = dict(os.environ, TAPEGRAD_VECTOR_BYTES="32", NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    for i, want in enumerate(here + bt):
        np.testing.assert_array_equal(got[f"arr_{i}"], want)


# ----- Note [parallel gemm]: products above SMALL_GEMM_MAX, C's rows split over the threads -----

#: (m, k, n) above SMALL_GEMM_MAX and within the parallel range: rows in whole blocks of 8 and not,
#: fewer rows than a block per thread, columns left over from the vectors, whole vector blocks
#: (the bt path's register transposes) and not
PAR_SHAPES = [(10, 128, 256), (40, 100, 70), (33, 97, 130), (128, 64, 48), (200, 50, 30), (64, 300, 20),
              (64, 96, 64), (128, 784, 32), (17, 16, 1000), (256, 16, 80), (16, 512, 64), (32, 256, 64)]


@njit
def _serial(A, B, C, acc, bt):
    """C (+)= A B through one thread's small_gemm (B's rows contiguous) or small_gemm_bt (B = W.T)."""
    isz = A.itemsize
    m, k = A.shape
    n = B.shape[1]
    pa, pb, pc = np.int64(A.ctypes.data), np.int64(B.ctypes.data), np.int64(C.ctypes.data)
    as0, as1 = A.strides[0] // isz, A.strides[1] // isz
    if bt:
        bs1 = B.strides[1] // isz
        if isz == 4:
            small_gemm_bt_f32(m, n, k, pa, as0, as1, pb, bs1, pc, acc)
        else:
            small_gemm_bt_f64(m, n, k, pa, as0, as1, pb, bs1, pc, acc)
    else:
        bs0 = B.strides[0] // isz
        if isz == 4:
            small_gemm_f32(m, n, k, pa, as0, as1, pb, bs0, pc, acc)
        else:
            small_gemm_f64(m, n, k, pa, as0, as1, pb, bs0, pc, acc)


@njit
def _parallel(A, B, C, acc, bt):
    """C (+)= A B through par_gemm / par_gemm_bt (float32)."""
    m, k = A.shape
    n = B.shape[1]
    pa, pb, pc = np.int64(A.ctypes.data), np.int64(B.ctypes.data), np.int64(C.ctypes.data)
    as0, as1 = A.strides[0] // 4, A.strides[1] // 4
    if bt:
        par_gemm_bt_f32(m, n, k, pa, as0, as1, pb, B.strides[1] // 4, pc, acc)
    else:
        par_gemm_f32(m, n, k, pa, as0, as1, pb, B.strides[0] // 4, pc, acc)


@pytest.mark.parametrize("m,k,n", PAR_SHAPES)
@pytest.mark.parametrize("f64", [False, True])
def test_parallel_products_have_one_threads_bits(m, k, n, f64):
    """The replay's product in the parallel range (R.matmul_*, through _gemm_at's op function) gives
    one thread's small_gemm bits with config.PAR_GEMM (the omp layer: this module runs once more
    under the other layer, test_parallel_path_under_the_other_layer), for A contiguous, transposed or a column
    slice and B with contiguous rows or columns; and the float64 reference's values (BLAS's, without)."""
    assert config.SMALL_GEMM_MAX < m * n * k <= config.PAR_GEMM_MAX and k <= config.PAR_GEMM_K
    dt = np.float64 if f64 else np.float32
    rng = np.random.default_rng(m * 7 + k * 3 + n)
    A0, B0 = rng.standard_normal((m, k)).astype(dt), rng.standard_normal((k, n)).astype(dt)
    ref = A0.astype(np.float64) @ B0.astype(np.float64)
    tol = 1e-5 if dt == np.float32 else 1e-13
    for la in "cts":
        for lb in "ct":
            A, B = _layout(A0, la), _layout(B0, lb)
            want = np.zeros((m, n), dt)
            _serial(A, B, want, False, lb == "t")
            got = _run(A, B, np.full((m, n), np.nan, dt))
            if config.PAR_GEMM:
                np.testing.assert_array_equal(got, want)
            np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.sqrt(k) * max(1.0, np.abs(ref).max()))


@pytest.mark.parametrize("m,k,n", PAR_SHAPES[:6])
def test_parallel_accumulate_is_one_threads(m, k, n):
    """C + A B (the backward's accumulation) split over the threads (par_gemm called directly, under
    whichever threading layer): one thread's bits, both paths."""
    rng = np.random.default_rng(m + k + n)
    A, B = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)
    C0 = rng.standard_normal((m, n)).astype(np.float32)
    for bt, Bl in ((False, B), (True, _layout(B, "t"))):
        want, got = C0.copy(), C0.copy()
        _serial(A, Bl, want, True, bt)
        _parallel(A, Bl, got, True, bt)
        np.testing.assert_array_equal(got, want)
        assert not np.array_equal(got, C0)


@njit
def _slot_of(PF, m, n, k):
    return R._gemm_at(PF, m, n, k, np.int64(0))


def test_gemm_at_gives_the_parallel_range_to_pgemm():
    """_gemm_at's rule: small products and those past PAR_GEMM_MAX or PAR_GEMM_K call _gemm (BLAS for
    the large ones), the rest _pgemm; without config.PAR_GEMM, all of them _gemm."""
    opfn.ensure_products(0, config.PAR_GEMM)
    FT = opfn.FT
    pf, small = FT.ctypes.data, FT[R.GEMM]
    par = FT[R.PGEMM] if config.PAR_GEMM else small
    assert small and par and (small != par) == config.PAR_GEMM
    S, P, K = config.SMALL_GEMM_MAX, config.PAR_GEMM_MAX, config.PAR_GEMM_K
    cases = [((8, 8, 8), small), ((64, 64, 64), small), ((S // 64, 8, 8), small), ((S // 64 + 1, 8, 8), par),
             ((128, 256, 784), par), ((P // (K * 4), 4, K), par), ((1, 64, K + 1), small), ((P // 4 + 1, 2, 2), small),
             ((16, 256, 4096), small)]
    for (m, n, k), want in cases:
        assert _slot_of(pf, m, n, k) == want, (m, n, k)


def test_numpy_helper_is_the_parallel_kernel():
    """ops/pyops.py's _gemm (hooks, anomaly mode) computes a product in the parallel range as the
    replay does, bit for bit; past PAR_GEMM_MAX it is NumPy's matmul."""
    rng = np.random.default_rng(9)
    A, B = rng.standard_normal((100, 64)).astype(np.float32), rng.standard_normal((64, 90)).astype(np.float32)
    np.testing.assert_array_equal(_gemm(A, B), _run(A, B, np.empty((100, 90), np.float32)))
    want = np.zeros((100, 90), np.float32)
    _serial(A, B, want, False, False)
    if config.PAR_GEMM:
        np.testing.assert_array_equal(_gemm(A, B), want)
    big = rng.standard_normal((520, 512)).astype(np.float32), rng.standard_normal((512, 256)).astype(np.float32)
    assert 520 * 512 * 256 > config.PAR_GEMM_MAX
    np.testing.assert_array_equal(_gemm(*big), np.matmul(*big))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_hooked_parallel_product_same_bits(dtype):
    """A hook on a product in the parallel range makes Python run its backward (the NumPy closure):
    the replay's bits; and torch's values."""
    rng = np.random.default_rng(10)
    x, w = rng.standard_normal((64, 96)), rng.standard_normal((80, 96))
    assert config.SMALL_GEMM_MAX < 64 * 96 * 80

    def run(hook):
        X = tg.tensor(x, dtype=getattr(tg, dtype), requires_grad=True)
        W = tg.tensor(w, dtype=getattr(tg, dtype), requires_grad=True)
        y = X @ W.T
        if hook:
            y.register_hook(lambda g: None)
        (y.tanh() * 3).sum().backward()
        return y.detach().numpy().copy(), X.grad.numpy().copy(), W.grad.numpy().copy()
    plain, hooked = run(False), run(True)
    for a, b in zip(plain, hooked):
        np.testing.assert_array_equal(a, b)
    torch = pytest.importorskip("torch")
    X = torch.tensor(x, dtype=getattr(torch, dtype), requires_grad=True)
    W = torch.tensor(w, dtype=getattr(torch, dtype), requires_grad=True)
    y = X @ W.T
    (y.tanh() * 3).sum().backward()
    tol = 1e-4 if dtype == "float32" else 1e-10
    for a, b in zip(plain, (y.detach().numpy(), X.grad.numpy(), W.grad.numpy())):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max())


def test_parallel_path_under_the_other_layer():
    """This module's parallel-range tests and test_fold's, in a process with the other threading
    layer: workqueue when this one splits the products (config.PAR_GEMM, omp: BLAS keeps them
    there), else omp (skipped where Numba cannot load OpenMP)."""
    import os
    import subprocess
    import sys
    if config.PAR_GEMM:
        layer = "workqueue"
    else:
        if not config._omp_loads():
            pytest.skip("Numba's OpenMP threading layer does not load here")
        layer = "omp"
    here = os.path.dirname(__file__)
    env = dict(os.environ, NUMBA_THREADING_LAYER=layer)
    code = ("import sys, pytest; from tapegrad import config; assert config.PAR_GEMM == (config.THREADING_LAYER "
            f"== 'omp') != {config.PAR_GEMM}; sys.exit(pytest.main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "-q", "-p", "no:cacheprovider", "-k", "parallel and not other_layer",
                        os.path.join(here, "test_smallgemm.py"), os.path.join(here, "test_fold.py")],
                       env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout.splitlines()[-1], r.stdout[-2000:]
