"""One home for every JIT and engine setting (DESIGN invariant 9).

Everything that changes how kernels are compiled or how the tape behaves is
read here, once, at import. Kernel modules import the flags from this module;
`tests/test_config.py` rejects hard-coded ``cache=``/``fastmath=`` elsewhere.
"""
import os
import tempfile

#: compile jitted functions with ``cache=True`` (on-disk cache of machine code)
CACHE = os.environ.get("TAPEGRAD_JIT_CACHE", "1") != "0"
#: fastmath changes rounding; off so that results follow IEEE like PyTorch
FASTMATH = False
#: elements above which a run of elementwise records goes tile by tile, tiles in parallel
PARALLEL_THRESHOLD = 1 << 16
#: elements per tile (a few arrays of a tile stay in L2 across the records of a run)
TILE = 4096
#: threads per block for CUDA kernels (used by the CUDA backend)
THREADS_PER_BLOCK = 256
#: pending records are flushed once this many are waiting (memory stays flat)
FLUSH_BOUND = 1 << 15
#: matrix products of at most this many multiply-adds (m*n*k) whose B has contiguous rows run
#: in kernels/smallgemm.py (no packing), larger ones in BLAS
SMALL_GEMM_MAX = 1 << 18
#: ... and products up to this many run there too, their rows split over the threads (Note
#: [parallel gemm] in kernels/smallgemm.py); larger ones in BLAS
PAR_GEMM_MAX = 1 << 26
#: ... when k is at most this (k = 4096 ran at 4 GFLOP/s there, against BLAS's 120)
PAR_GEMM_K = 2048
#: bytes of one vector in kernels/smallgemm.py's micro-kernel: 0 picks 64 where the CPU has AVX-512,
#: else 32; TAPEGRAD_VECTOR_BYTES=32 forces the narrow one (the results are the same bits either way)
VECTOR_BYTES = int(os.environ.get("TAPEGRAD_VECTOR_BYTES", "0") or 0)
#: bytes per arena slab; larger tensors get a buffer of their own
SLAB_BYTES = 1 << 20
#: run matrix products and mse_loss inside the jitted replay (ops/pyops.py's Note [native
#: records]); TAPEGRAD_NATIVE=0 keeps them NumPy escape records (tests compare the two)
NATIVE = os.environ.get("TAPEGRAD_NATIVE", "1") not in ("", "0")
#: TAPEGRAD_DEBUG=1 checks every tape address against live buffers before each jitted call
DEBUG = os.environ.get("TAPEGRAD_DEBUG", "0") not in ("", "0")


def _cache_dir():
    """Numba's cache needs a writable directory; a read-only install has none
    next to the sources ("no locator available"), so pick one explicitly."""
    d = os.environ.get("NUMBA_CACHE_DIR")
    if d:
        return d
    here = os.path.dirname(os.path.abspath(__file__))
    if os.access(here, os.W_OK):
        return os.path.join(here, "__pycache__", "numba")
    return os.path.join(tempfile.gettempdir(), "tapegrad-numba-cache")


def _kernel_hash():
    """Numba keys a cached function on its own file only, so a cached replay that
    inlines a changed rule from another module would go stale. The cache dir
    carries a hash of every kernel source, so any change compiles afresh."""
    import hashlib
    h = hashlib.sha1()
    here = os.path.dirname(os.path.abspath(__file__))
    kdir = os.path.join(here, "kernels")
    files = [os.path.join(kdir, fn) for fn in sorted(os.listdir(kdir)) if fn.endswith(".py")]
    for path in files + [os.path.join(here, "config.py")]:   # config.py: the JIT flags themselves
        with open(path, "rb") as f:
            h.update(os.path.basename(path).encode() + f.read())
    return h.hexdigest()[:12]


#: scipy.linalg's __init__ runs at its first use, not in the first backward() (Note [deferred
#: scipy.linalg] in _deferred.py: 0.2-0.3 s of a fresh process); TAPEGRAD_DEFER_SCIPY_LINALG=0 keeps
#: the plain import. Done before Numba is imported, whose first compile imports scipy.linalg.cython_blas.
DEFER_SCIPY_LINALG = os.environ.get("TAPEGRAD_DEFER_SCIPY_LINALG", "1") not in ("", "0")
if DEFER_SCIPY_LINALG:
    from ._deferred import defer_scipy_linalg
    defer_scipy_linalg()
import numba  # noqa: E402


def _omp_loads():
    """Whether Numba's OpenMP threading layer loads here (it needs libgomp)."""
    try:
        from numba.np.ufunc import omppool  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


#: threading layer of the parallel loops: NUMBA_THREADING_LAYER if set, else omp where Numba can
#: load it, else workqueue. GNU OpenMP's launch costs 1.5 us on a 2-core VM, workqueue's 63 us
#: (its threads sleep between launches; session 31). A child forked from a process using GNU
#: OpenMP must not start a parallel loop: kernels/opfn.py's Note [forked children] keeps it on
#: one thread, with the same bits.
THREADING_LAYER = os.environ.get("NUMBA_THREADING_LAYER") or ("omp" if _omp_loads() else "workqueue")
#: the products of kernels/smallgemm.py's Note [parallel gemm] are split over the threads only
#: with omp (workqueue's launches made the split slower than one thread); else BLAS keeps them,
#: as before session 31
PAR_GEMM = THREADING_LAYER == "omp"
#: where compiled kernels are cached: NUMBA_CACHE_DIR (or a default) / k<hash of kernel sources>
#: -t<threads> (Numba's thread count, a constant in kernels/smallgemm.py's par_gemm: the cache
#: does not check the globals it froze) and -omp with PAR_GEMM (replay_cpu's _gemm_at reads it).
#: The environment is left as it is, so subprocesses find the same cache.
CACHE_DIR = os.path.join(_cache_dir(), f"k{_kernel_hash()}-t{numba.config.NUMBA_NUM_THREADS}"
                         + ("-omp" if PAR_GEMM else ""))
numba.config.CACHE_DIR = CACHE_DIR
#: processes that fill the cache at once lock its index and data files (Note [cache lock] in
#: _cachelock.py: without it two of them can leave one variant's machine code under another's
#: key); TAPEGRAD_CACHE_LOCK=0 leaves Numba's cache files as Numba writes them
CACHE_LOCK = os.environ.get("TAPEGRAD_CACHE_LOCK", "1") not in ("", "0")
if CACHE_LOCK:
    from ._cachelock import install as _install_cache_lock
    _install_cache_lock(_cache_dir())
numba.config.THREADING_LAYER = THREADING_LAYER
if PAR_GEMM:
    # cached code that calls a parallel loop from a function that is not one links to the
    # layer's symbols (``allocate_sched``): loaded from the cache before the layer is, LLVM
    # aborts the process. The op function _pgemm is such code, so the threads start here.
    from numba.np.ufunc.parallel import _launch_threads
    _launch_threads()

#: keyword arguments for every CPU @njit in the package. error_model="numpy": IEEE results
#: (inf/nan) instead of Python's ZeroDivisionError checks, which also means less code to compile.
#: no_cfunc_wrapper: no C wrapper per function (only a first-class function value would call it,
#: and the package passes none; the op functions are numba.cfunc, CFUNC below): ~0.15 s of a cold
#: first W5a step (session 28)
NJIT = dict(cache=CACHE, fastmath=FASTMATH, nogil=True, error_model="numpy", no_cfunc_wrapper=True)
#: functions only called from other jitted functions need no CPython wrapper
NJIT_INNER = dict(NJIT, no_cpython_wrapper=True)
#: keyword arguments for the op functions, C callbacks the replay calls through a table
#: (kernels/opfn.py): compiled one by one, the first time a tape uses the op
CFUNC = dict(cache=CACHE, fastmath=FASTMATH, error_model="numpy")
#: keyword arguments for the tile loops run with prange
NJIT_PARALLEL = dict(NJIT, parallel=True)
#: ... and for those only called from other jitted functions (kernels/smallgemm.py's par_gemm)
NJIT_PARALLEL_INNER = dict(NJIT_PARALLEL, no_cpython_wrapper=True)
