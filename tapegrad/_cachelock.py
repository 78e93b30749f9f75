"""Numba's on-disk cache, made safe for processes that fill it at the same time.

Note [cache lock]
~~~~~~~~~~~~~~~~~
Numba keeps, per jitted function, one index file (``<qualname>-<line>.py3X.nbi``:
a pickled dict from a key, the signature plus the closure's variables, to a data
file name) and one data file per entry (``….N.nbc``). ``IndexDataCacheFile.save``
reads the index, picks the first number no entry uses, writes the index, then the
data file. Each write is atomic (a temporary file, then ``os.replace``), but the
three steps together are not. Two processes that compile the same function for
different keys at once both read the index without the other's entry and both pick
``.1``:

- the index that lands last names one key only (the other is lost and compiles
  again in the next process), and
- ``.1`` holds whichever data file landed last, which need not be the data for
  the key the index names. The next process then loads one variant's machine code
  for another. tapegrad has many such functions: the float32 and float64 variants
  of a kernel are closures of one ``def`` (one qualname, one index file) that differ
  only in their cells, and their signatures are the same raw addresses.

A load can also race a save: the index may already name ``.N`` while ``.N`` still
holds a data file from an older source stamp (Numba reuses numbers when the stamp
changes), which the load would take.

Seen in session 24: a helper process compiling the backward cfuncs beside the main
one left a cache whose float64 gradients were wrong until the cache was deleted.
Numba's own reports: numba/numba#4807, #10128 (its developers suggest a file lock).

``install(root)`` (config.py, after Numba is imported) wraps ``save``, ``load`` and
``flush`` of ``numba.core.caching.IndexDataCacheFile``: for a cache directory
inside ``root`` (NUMBA_CACHE_DIR or tapegrad's default, config._cache_dir(): every
kernel hash's CACHE_DIR, and the user's own cached functions, which Numba
caches there once tapegrad is imported), ``save`` and ``flush`` hold an
exclusive ``flock`` on ``<that directory>/.tapegrad-cache.lock`` from reading the
index to writing the data file, and ``load`` holds a shared one from reading the
index to reading the data file. Readers never wait for each other; a writer waits
a few milliseconds (an index write and a data write). Compilation itself happens
outside the lock, so processes still compile in parallel. Other directories are
left to Numba as they are. Where ``fcntl`` is missing (Windows) nothing is
wrapped. ``TAPEGRAD_CACHE_LOCK=0`` turns it off (config.py).
"""
import functools
import os

try:
    import fcntl
except ImportError:       # Windows: Numba's own behaviour
    fcntl = None

LOCK_NAME = ".tapegrad-cache.lock"
_MARK = "_tapegrad_cache_lock"
#: the methods wrapped, and whether each takes the lock exclusively
_METHODS = (("save", True), ("flush", True), ("load", False))


def _inside(path, root):
    path = os.path.abspath(path)
    return path == root or path.startswith(root + os.sep)


def _flock(directory, exclusive):
    """A descriptor of ``directory/LOCK_NAME`` holding its ``flock`` (closing it releases
    the lock), or None where the lock cannot be taken (no write access, say): Numba's
    cache then behaves as without tapegrad."""
    try:
        fd = os.open(os.path.join(directory, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    except OSError:
        os.close(fd)
        return None
    return fd


def _locked(method, exclusive, root):
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        directory = self._cache_path
        fd = _flock(directory, exclusive) if _inside(directory, root) else None
        try:
            return method(self, *args, **kwargs)
        finally:
            if fd is not None:
                os.close(fd)
    setattr(wrapper, _MARK, method)
    return wrapper


def install(root):
    """Wrap Numba's cache file methods as the Note says, for directories inside *root*.
    Installing again (another root) replaces the earlier wrappers. Returns whether
    anything was wrapped."""
    if fcntl is None:
        return False
    from numba.core import caching
    cls = getattr(caching, "IndexDataCacheFile", None)
    if cls is None or not all(hasattr(cls, m) for m, _ in _METHODS):
        return False     # a Numba whose cache is built differently: left alone
    root = os.path.abspath(root)
    for name, exclusive in _METHODS:
        method = getattr(cls, name)
        method = getattr(method, _MARK, method)
        setattr(cls, name, _locked(method, exclusive, root))
    return True


def uninstall():
    """Put Numba's own methods back (tests)."""
    from numba.core import caching
    cls = caching.IndexDataCacheFile
    for name, _ in _METHODS:
        method = getattr(cls, name)
        setattr(cls, name, getattr(method, _MARK, method))
