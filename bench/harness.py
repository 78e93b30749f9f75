"""Timing, cross-checking, table printing and JSON writing for the bench suite.

Timing (``measure``): ``time.perf_counter`` around the timed call only;
warm-up calls first (not recorded); before every repetition the untimed
``setup`` runs, then ``gc.collect()``, then the clock starts. A repetition may
run the call ``number`` times (each with its own setup) and records the mean.
Median and min are reported; the ratio column is ``peer min / tapegrad min``
(above 1: tapegrad is faster by that factor).

A ``Table`` is one measured quantity (one workload at one size) with one
``Row`` per peer; a row is ``ok``, ``FAILED`` (cross-check mismatch, still
timed), ``ERROR`` (raised) or ``skipped``. ``Context.fail`` collects the
failures of tapegrad so that ``--smoke`` can exit 1.
"""
import datetime as _dt
import functools
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field

import numpy as np

from .peers import COMPILING

REF_PEER = "tapegrad"
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# ----- timing -----------------------------------------------------------------

def measure(fn, *, setup=None, warmup=1, reps=5, number=1, max_seconds=None, min_reps=3):
    """Time ``fn(setup())`` and return the per-call seconds of each repetition.

    ``setup`` (untimed) runs before every call; its result is passed to ``fn``
    (``None`` when there is no setup). ``gc.collect()`` runs once per
    repetition, after the first setup and just before the clock starts, so
    garbage left by earlier repetitions (micrograd's reference cycles) is not
    collected inside the timed region (objects alive before the call are
    frozen, ``gc.freeze()``, so that this collect is cheap). When ``max_seconds`` is given and the
    first repetition shows that ``reps`` would take longer, fewer repetitions
    run (never fewer than ``min_reps``).
    """
    # Objects alive now (torch's modules, the peers' data) go to the permanent
    # generation, so each per-repetition gc.collect() scans only what the
    # workload made since: a full collect costs ~0.3 s with torch imported.
    gc.collect()
    gc.freeze()
    try:
        for _ in range(warmup):
            arg = setup() if setup is not None else None
            fn(arg)
            arg = None
        times = []
        want = reps
        clock = time.perf_counter
        while len(times) < want:
            elapsed = 0.0
            for k in range(number):
                arg = setup() if setup is not None else None
                if k == 0:
                    gc.collect()
                t0 = clock()
                fn(arg)
                elapsed += clock() - t0
                arg = None
            times.append(elapsed / number)
            if max_seconds is not None and len(times) == 1:
                per_rep = max(elapsed, 1e-9)
                want = max(min(reps, min_reps), min(reps, int(max_seconds / per_rep)))
    finally:
        gc.unfreeze()
    return times


# ----- results ------------------------------------------------------------------

@dataclass
class Row:
    """One peer's result in one table."""
    peer: str
    status: str = "ok"           # ok | FAILED | ERROR | skipped
    note: str = ""
    times: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def median(self):
        return statistics.median(self.times) if self.times else None

    @property
    def min(self):
        return min(self.times) if self.times else None


@dataclass
class Table:
    """One measured quantity: a workload at one size, one row per peer."""
    workload: str
    title: str
    params: dict = field(default_factory=dict)
    rows: list = field(default_factory=list)
    unit_note: str = ""

    def row(self, peer):
        for r in self.rows:
            if r.peer == peer:
                return r
        return None

    def ratio(self, row):
        """``row.min / tapegrad.min``; None when either is missing."""
        ref = self.row(REF_PEER)
        if ref is None or ref.min is None or row.min is None or ref.min <= 0:
            return None
        return row.min / ref.min

    def to_json(self):
        return {
            "workload": self.workload,
            "title": self.title,
            "params": self.params,
            "unit_note": self.unit_note,
            "ratio_definition": "peer min / tapegrad min (>1: tapegrad faster)",
            "rows": [{
                "peer": r.peer, "status": r.status, "note": r.note,
                "median_s": r.median, "min_s": r.min, "ratio": self.ratio(r),
                "reps": len(r.times), "times_s": r.times, "extra": r.extra,
            } for r in self.rows],
        }


class Context:
    """What a workload needs to know about this run, and where failures go."""

    def __init__(self, peers, *, quick=False, smoke=False, reps=None, warmup=None):
        self.peers = peers          # bench.peers.Peers
        self.quick = quick
        self.smoke = smoke
        self.reps_override = reps
        self.warmup_override = warmup
        self.failures = []          # (table title, peer, message)

    def reps(self, full, quick):
        """Repetitions for this mode (1 in --smoke, --reps wins)."""
        if self.reps_override is not None:
            return self.reps_override
        if self.smoke:
            return 1
        return quick if self.quick else full

    def warmup(self, full=1):
        if self.warmup_override is not None:
            return self.warmup_override
        return 0 if self.smoke else full

    @property
    def max_seconds(self):
        """Time budget per peer and table (repetitions are cut to fit)."""
        return None if self.smoke else (4.0 if self.quick else 15.0)

    def fail(self, where, peer, message):
        """Record a failure; only tapegrad's failures decide the exit code."""
        self.failures.append((where, peer, message))


def loud(msg):
    """A line that cannot be missed in a long log."""
    bar = "!" * 78
    print(f"\n{bar}\n!!! {msg}\n{bar}", flush=True)


def unavailable_row(ctx, where, peer, reason):
    """Row for a peer that could not be imported: skipped, or ERROR for tapegrad."""
    if reason.startswith("ERROR"):
        loud(f"{where}: peer {peer}: {reason}")
        ctx.fail(where, peer, reason)
        return Row(peer, status="ERROR", note=reason[len("ERROR: "):][:200])
    return Row(peer, status="skipped", note=reason)


def error_row(ctx, where, peer, exc):
    """Turn an exception of a peer into an ERROR row (and report it)."""
    tb = traceback.format_exc()
    loud(f"{where}: peer {peer} raised {type(exc).__name__}: {exc}")
    print(tb, flush=True)
    ctx.fail(where, peer, f"{type(exc).__name__}: {exc}")
    return Row(peer, status="ERROR", note=f"{type(exc).__name__}: {exc}"[:200],
               extra={"traceback": tb})


# ----- cross-checks --------------------------------------------------------------

def compare(got, ref, *, rtol, atol=0.0):
    """Compare two dicts of floats/arrays key by key; return a list of mismatches."""
    bad = []
    for key, want in ref.items():
        have = got.get(key)
        if have is None:
            bad.append(f"{key}: missing")
            continue
        a = np.asarray(have, dtype=np.float64)
        b = np.asarray(want, dtype=np.float64)
        if a.shape != b.shape:
            bad.append(f"{key}: shape {a.shape} != reference {b.shape}")
        elif not np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=False):
            if a.ndim == 0:
                bad.append(f"{key}: {float(a):.9g} vs reference {float(b):.9g}")
            else:
                err = np.abs(a - b)
                i = int(np.argmax(err - rtol * np.abs(b)))
                n_bad = int(np.sum(~np.isclose(a, b, rtol=rtol, atol=atol)))
                bad.append(f"{key}: {n_bad}/{a.size} elements differ; worst at {i}: "
                           f"{a.flat[i]:.9g} vs reference {b.flat[i]:.9g}")
    return bad


def checked_row(ctx, where, peer, got, ref, *, rtol, atol=0.0, ref_name="torch"):
    """A fresh Row for ``peer``: ``ok``, or ``FAILED`` with a loud line."""
    row = Row(peer)
    if ref is None:
        row.note = "not cross-checked (no reference)"
        return row
    bad = compare(got, ref, rtol=rtol, atol=atol)
    if bad:
        msg = f"MISMATCH {where}: {peer} disagrees with {ref_name}: " + "; ".join(bad)
        loud(msg)
        ctx.fail(where, peer, msg)
        row.status = "FAILED"
        row.note = "; ".join(bad)[:200]
    return row


# ----- printing --------------------------------------------------------------------

def fmt_time(s):
    if s is None:
        return "—"
    if s >= 1.0:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.1f} µs"


def fmt_ratio(r):
    if r is None:
        return "—"
    return f"{r:.3g}×" if r < 100 else f"{r:.0f}×"


def print_table(table):
    """Print one table: peer | median | min | ratio | reps | status."""
    head = ("peer", "median", "min", "ratio (min/tapegrad min)", "reps", "status")
    lines = []
    for r in table.rows:
        if r.status == "skipped":
            lines.append((r.peer, "", "", "", "", r.note))
            continue
        status = r.status if not r.note else f"{r.status}: {r.note}"
        lines.append((r.peer, fmt_time(r.median), fmt_time(r.min),
                      fmt_ratio(table.ratio(r)), str(len(r.times)), status))
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h)
              for i, h in enumerate(head)]
    widths[-1] = len(head[-1])

    def fmt(cells):
        out = [cells[0].ljust(widths[0])]
        out += [c.rjust(w) for c, w in zip(cells[1:5], widths[1:5])]
        out.append(cells[5])
        return " | ".join(out)

    print()
    params = ", ".join(f"{k}={v}" for k, v in table.params.items())
    print(f"{table.title}" + (f"  [{params}]" if params else ""))
    if table.unit_note:
        print(f"  ({table.unit_note})")
    print(fmt(head))
    print("-+-".join("-" * w for w in widths[:-1]) + "-+-" + "-" * 8)
    for l in lines:
        print(fmt(l))
    sys.stdout.flush()


# ----- machine info and JSON --------------------------------------------------------

def _version(modname):
    try:
        mod = __import__(modname)
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return None
    return getattr(mod, "__version__", "unknown")


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _cpu_llvm():
    """LLVM's name for this CPU (what Numba compiles for). The VMs all say "AMD EPYC" in
    /proc/cpuinfo, but a znver4 runs a 512-bit FMA in two halves (session 30 measured 116 GFLOP/s
    float32 peak on one) where a znver5 has full-width units, so the small products of W2 and W4
    (and their captured steps) are not comparable between VMs without it."""
    try:
        from llvmlite import binding
        return binding.get_host_cpu_name()
    except Exception:  # noqa: BLE001 - informative only
        return None


@functools.lru_cache(maxsize=None)
def _fma_peak():
    """Measured once a run (results_payload is written after every workload)."""
    from .peak import fma_peak_gflops
    peak = fma_peak_gflops()
    return None if peak is None else round(peak, 1)


def _git_revision():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                             capture_output=True, text=True, timeout=10)
        # (untracked files do not count: the run's own results, written workload by workload)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if rev.returncode != 0:
        return "no commits" if dirty.returncode == 0 else None
    return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def machine_info():
    """Platform, CPUs and library versions, for the JSON header."""
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_llvm": _cpu_llvm(),
        "fma_peak_gflops_f32": _fma_peak(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "numpy": _version("numpy"),
        "numba": _version("numba"),
        "torch": _version("torch"),
        "matplotlib": _version("matplotlib"),
        "git": _git_revision(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "env": {k: os.environ[k] for k in sorted(os.environ)
                if k.startswith(("NUMBA_", "OMP_", "MKL_", "OPENBLAS_", "TAPEGRAD_", "TORCHINDUCTOR_", "JAX_",
                                 "XLA_"))},
    }
    from importlib.metadata import PackageNotFoundError, version
    for dist in ("micrograd", "jax", "jaxlib", "autograd"):   # from metadata: importing jax takes ~1 s
        try:
            info[dist] = version(dist)
        except PackageNotFoundError:
            info[dist] = None
    if "tapegrad" in sys.modules:
        info["tapegrad"] = getattr(sys.modules["tapegrad"], "__version__", "unknown")
        cfg = sys.modules.get("tapegrad.config")
        if cfg is not None:      # the layer tapegrad chose (Numba reports its own only after a parallel loop ran)
            info["tapegrad_threading_layer"] = getattr(cfg, "THREADING_LAYER", None)
            info["tapegrad_par_gemm"] = getattr(cfg, "PAR_GEMM", None)
    if "torch" in sys.modules:
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
    if "numba" in sys.modules:
        numba = sys.modules["numba"]
        info["numba_threads"] = numba.config.NUMBA_NUM_THREADS
        try:
            info["numba_threading_layer"] = numba.threading_layer()
        except ValueError:  # no parallel function has run yet
            info["numba_threading_layer"] = None
    return info


def load_warning():
    """A line when other processes keep the CPUs busy (timings get noisy), else None."""
    if not hasattr(os, "getloadavg"):
        return None
    load, ncpu = os.getloadavg()[0], os.cpu_count() or 1
    if load < 0.5 * ncpu:
        return None
    return (f"note: load average {load:.1f} on {ncpu} CPUs before the run: other processes are busy, "
            "expect medians far above mins and noisier ratios")


def stamp():
    """Timestamp used in result file names (runs on one day do not overwrite)."""
    return _dt.datetime.now().strftime("%Y-%m-%d_%H%M%S")


def results_payload(tables_by_workload, options):
    return {
        "schema": 1,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "argv": sys.argv,
        "options": options,
        "machine": machine_info(),
        "workloads": {w: [t.to_json() for t in ts] for w, ts in tables_by_workload.items()},
    }


def _clean(obj):
    """JSON has no NaN/inf: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(path, payload):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(_clean(payload), f, indent=1, default=str)
        f.write("\n")
    return path


def summarize(impl):
    """One call of an implementation, as a dict for the cross-check: ``impl.summary(impl.step())``
    when it has ``summary``, else (a training step) its loss and its ``state()`` after the step."""
    if hasattr(impl, "summary"):
        return impl.summary(impl.step())
    out = {"loss": impl.step()}
    out.update(impl.state())
    return out


def first_call(fn):
    """``(fn(), seconds)``: the first call, where a JIT traces and compiles."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def note_first_call(row, peer, seconds):
    """Keep the first call's time in ``row.extra`` (``first_call_s``; ``compile_s`` too for the
    compiling peers, whose note then shows it: their compile time is reported apart; the
    ``tapegrad.capture`` peer's capturing call, ``capture_s``, ran before and is noted alike)."""
    row.extra["first_call_s"] = seconds
    if "capture_s" in row.extra and row.status == "ok":     # tapegrad.capture: the capturing call
        row.note = (f"{row.note}; " if row.note else "") + f"capture (first call) {fmt_time(row.extra['capture_s'])}"
    if peer in COMPILING:
        row.extra["compile_s"] = seconds
        if row.status == "ok":
            row.note = (f"{row.note}; " if row.note else "") + f"compile (first call) {fmt_time(seconds)}"


def audit_row(ctx, where, peer, row, impl, when):
    """``impl.audit()`` (the ``tapegrad.capture`` peer: did every call replay?), when the
    implementation has one: its problems make the row ``FAILED`` (a failure, loud);
    ``impl.extra``, when it has one, goes into ``row.extra``."""
    audit = getattr(impl, "audit", None)
    bad = audit() if audit is not None else []
    row.extra.update(getattr(impl, "extra", {}))
    if bad:
        msg = f"{where}: {peer} {when}: " + "; ".join(bad)
        loud(msg)
        ctx.fail(where, peer, msg)
        row.status = "FAILED"
        row.note = (f"{row.note}; " if row.note else "") + f"{when}: " + "; ".join(bad)[:200]
    return row


def skip_reason(impl):
    """Why an implementation that was built must not be timed (``impl.skip_reason``), else None."""
    return getattr(impl, "skip_reason", None)


def time_peers(ctx, table, where, peers, make_impl, ref, *, rtol=None, atol=0.0, check=None, notes=None,
               skip=None, reps, warmup, number=1, checksum="param_sum", ref_name="torch"):
    """The loop of a workload with one table: for each wanted peer, build its
    implementation (``make_impl(peer, module)``), run it once (``summarize``;
    its time goes to ``note_first_call``), check that against ``ref`` (or
    with ``check(where, peer, got) -> Row``), then time ``impl.step()``. An
    implementation is either a training step (``.step()`` returns the loss,
    ``.state()`` the parameters) or has ``.summary(step_result)``; its
    ``.zero()``, when it has one, runs untimed before every call.
    ``skip(peer)`` may return a reason to skip a peer, and so may the built
    implementation (``impl.skip_reason``); ``impl.extra`` goes into the row's
    ``extra``; ``impl.audit()``, when it exists, runs after the cross-check
    and after timing (``audit_row``). ``checksum`` names the
    row's ``extra["check"]`` entry holding the sum of all non-loss values;
    ``ref_name`` is what a mismatch says ``ref`` came from."""
    for peer in peers:
        if not ctx.peers.wanted(peer):
            continue
        mod, reason = ctx.peers.get(peer)
        if mod is None:
            table.rows.append(unavailable_row(ctx, where, peer, reason))
            continue
        why = skip(peer) if skip else None
        if why:
            table.rows.append(Row(peer, status="skipped", note=why))
            continue
        try:
            impl = make_impl(peer, mod)
            why = skip_reason(impl)
            if why:
                table.rows.append(Row(peer, status="skipped", note=why))
                continue
            got, first_s = first_call(lambda: summarize(impl))
            row = (check(where, peer, got) if check is not None
                   else checked_row(ctx, where, peer, got, ref, rtol=rtol, atol=atol, ref_name=ref_name))
            audit_row(ctx, where, peer, row, impl, "after the cross-check")
            row.extra["check"] = {"loss": got["loss"],
                                  checksum: float(sum(np.sum(v, dtype=np.float64)
                                                      for k, v in got.items() if k != "loss"))}
            if notes and peer in notes and row.status == "ok" and not row.note:
                row.note = notes[peer]
            note_first_call(row, peer, first_s)
            row.times = measure(lambda _: impl.step(), setup=getattr(impl, "zero", None), warmup=warmup,
                                reps=reps, number=number, max_seconds=ctx.max_seconds)
            audit_row(ctx, where, peer, row, impl, "after timing")
            table.rows.append(row)
        except Exception as exc:  # noqa: BLE001 - report, keep the suite running
            table.rows.append(error_row(ctx, where, peer, exc))
        finally:
            impl = None   # W3's 10^7-element buffers: free them before the next peer allocates
