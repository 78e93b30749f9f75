"""A package whose ``__init__`` runs at its first use, not at its import.

Note [deferred scipy.linalg]
~~~~~~~~~~~~~~~~~~~~~~~~~~~~
Numba's first compile or cache load imports ``numba.np.arraymath``, which checks
that BLAS is there with ``import scipy.linalg.cython_blas`` (tapegrad's own gemm
records take ``dgemm``'s address from the same module, kernels/blas.py). Python
imports a submodule's package first, and ``scipy/linalg/__init__.py`` imports all
of SciPy's linear algebra and its array-API layer (which walks NumPy's lazy
submodules, ``numpy.f2py`` and ``numpy.testing`` among them): 0.20-0.30 s of a
fresh process's first ``backward()`` on the 2-core VM, to use one Cython module
that needs none of it.

``defer("scipy.linalg", "cython_blas")`` (config.py, before Numba is imported)
puts the package in ``sys.modules`` as a module built from its real spec
(``__path__``, ``__file__``, ``__spec__`` as an import sets them) whose
``__init__`` has not run, and imports the named submodules into it. The first
attribute the package lacks (``scipy.linalg.inv``, ``from scipy.linalg import
inv``, ``__all__`` for a star import), or ``dir()``, runs ``__init__`` in the
module's own namespace, once, under a lock; the module then becomes a plain
``types.ModuleType``, the same object every earlier ``import`` returned. While
``__init__`` runs, a missing attribute raises AttributeError, as during any
package's import (a circular import sees a partly built module). If ``__init__``
raises, the error reaches the attribute access and the package stays deferred,
so the next access runs it again, as a failed import would be retried.

What differs from a plain import until the first use: ``vars(scipy.linalg)``
(the module's ``__dict__`` read without an attribute lookup) holds only what the
import set and the preloaded submodules. A package already imported is left
alone. ``TAPEGRAD_DEFER_SCIPY_LINALG=0`` turns this off (config.py).
"""
import importlib
import importlib.util
import sys
import threading
import types

_STATE = "_tapegrad_deferred_init"


class DeferredPackage(types.ModuleType):
    """A package module whose ``__init__`` has not run yet; see the Note above."""

    def __getattr__(self, name):   # only called for attributes the module lacks
        dunder = name.startswith("__") and name.endswith("__") and name != "__all__"
        if not dunder:
            run_init(self)   # waits while another thread runs it; returns at once inside it
        if dunder or self.__dict__.get(_STATE) is not None:   # a probe, or __init__ still running
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        return getattr(self, name)

    def __dir__(self):
        if self.__dict__.get(_STATE) is not None:
            run_init(self)
        return sorted(self.__dict__)


class _State:
    __slots__ = ("lock", "loading")

    def __init__(self):
        self.lock = threading.RLock()
        self.loading = False


def run_init(module):
    """Run a deferred package's ``__init__`` now (nothing if it already ran)."""
    state = module.__dict__.get(_STATE)
    if state is None:
        return
    with state.lock:
        if module.__dict__.get(_STATE) is None or state.loading:
            return
        state.loading = True
        try:
            module.__spec__.loader.exec_module(module)
        finally:
            state.loading = False
        del module.__dict__[_STATE]
        module.__class__ = types.ModuleType


def defer(name, *submodules):
    """Make package ``name`` deferred (see the Note), then import ``name.<sub>`` for
    each of ``submodules``. Returns the package module. A package already in
    ``sys.modules`` is only given the submodules."""
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.find_spec(name)   # imports the parent package
        if spec is None or spec.submodule_search_locations is None or spec.loader is None:
            raise ImportError(f"{name!r} is not a package that can be deferred", name=name)
        module = importlib.util.module_from_spec(spec)
        module.__dict__[_STATE] = _State()
        module.__class__ = DeferredPackage
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
    for sub in submodules:
        importlib.import_module(name + "." + sub)
    return module


def defer_scipy_linalg():
    """config.py's call: scipy.linalg deferred, its ``cython_blas`` loaded. Without SciPy,
    nothing happens (Numba and kernels/blas.py report the missing BLAS themselves)."""
    try:
        defer("scipy.linalg", "cython_blas")
    except ImportError:   # pragma: no cover (SciPy is a dependency)
        pass
