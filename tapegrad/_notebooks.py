"""Run, build and check the article notebooks in ``notebooks/`` (a checkout's, not an install's).

    python -m tapegrad._notebooks build [NAME...]   # .py (jupytext percent, the source) -> executed .ipynb
    python -m tapegrad._notebooks check             # run the .ipynb, compare with their stored outputs
    python -m tapegrad.demo                          # the console demo, then run_demo() below

Notebooks run in a fresh kernel of *this* Python (``sys.executable``) through a
kernelspec written to a temporary directory, so nothing depends on which
``python`` is on PATH or on a kernel registered by hand. The kernel gets the
repository root on PYTHONPATH, so a checkout works without ``pip install -e``.

Cell metadata used here (set in the ``.py`` source as ``# %% figure="loss"`` or
``# %% tags=["nondeterministic"]``):
  figure             the file name stem of the pictures the cell displays (demo-output/figures/)
  nondeterministic   the cell's outputs are not compared (timings, addresses, random bars)
"""
import copy
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

KERNEL_NAME = "tapegrad-python"
CELL_TIMEOUT = 600
DOT_MIME = "text/vnd.graphviz"
_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]+")


# ----- where things are ---------------------------------------------------------------------
def repo_root():
    """The checkout holding ``notebooks/``: the parent of this package, else the current
    directory or one of its parents."""
    here = Path(__file__).resolve().parent.parent
    for cand in [here, Path.cwd(), *Path.cwd().parents]:
        if (cand / "notebooks").is_dir() and (cand / "tapegrad").is_dir():
            return cand
    raise RuntimeError("the notebooks live in a tapegrad checkout (notebooks/ next to tapegrad/); "
                       f"none found from {here} or {Path.cwd()}")


def notebook_dir():
    return repo_root() / "notebooks"


def notebooks():
    """The committed notebooks, in order (notebooks/NN_*.ipynb)."""
    return sorted(notebook_dir().glob("[0-9][0-9]_*.ipynb"))


def sources():
    """The jupytext sources (notebooks/NN_*.py)."""
    return sorted(notebook_dir().glob("[0-9][0-9]_*.py"))


# ----- a kernel of this Python ----------------------------------------------------------------
class _Kernel:
    """A kernelspec for sys.executable in a temporary directory (removed on exit)."""

    def __enter__(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="tapegrad-kernel-")
        d = Path(self._tmp.name) / KERNEL_NAME
        d.mkdir()
        root = str(repo_root())
        pp = os.environ.get("PYTHONPATH")
        spec = {
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (ipykernel)",
            "language": "python",
            "env": {"PYTHONPATH": root + (os.pathsep + pp if pp else "")},
            "metadata": {"supported_encryption": ["curve"]},
        }
        (d / "kernel.json").write_text(json.dumps(spec))
        self.dir = self._tmp.name
        return self

    def manager(self):
        from jupyter_client.kernelspec import KernelSpecManager
        from jupyter_client.manager import KernelManager
        ksm = KernelSpecManager(kernel_dirs=[self.dir])
        km = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm)
        try:    # CurveZMQ keys when pyzmq has them (else ipykernel warns about plain TCP)
            import zmq
            if zmq.has("curve") and "transport_encryption" in km.trait_names():
                km.transport_encryption = "auto"
        except Exception:
            pass
        return km

    def __exit__(self, *exc):
        self._tmp.cleanup()


def execute(nb, timeout=CELL_TIMEOUT):
    """Run a notebook (nbformat node) top to bottom in a fresh kernel of this Python, in
    notebooks/ as working directory; returns the executed copy. Raises on any cell error."""
    from nbclient import NotebookClient
    nb = copy.deepcopy(nb)
    with _Kernel() as k:
        km = k.manager()
        client = NotebookClient(nb, km=km, timeout=timeout, allow_errors=False,
                                record_timing=False, resources={"metadata": {"path": str(notebook_dir())}})
        try:
            client.execute()
        finally:           # nbclient shuts down only kernels it made itself
            if km.has_kernel:
                km.shutdown_kernel(now=False)
    return nb


def _normalise(nb):
    """Stable cell ids and metadata, so that rebuilding an unchanged notebook changes no byte."""
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"
        cell.metadata.pop("execution", None)
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python",
                                 "name": "python3"}
    nb.metadata.setdefault("language_info", {}).pop("version", None)
    jt = nb.metadata.setdefault("jupytext", {})
    jt["formats"] = "ipynb,py:percent"
    jt.pop("text_representation", None)
    return nb


def _cell_key(cell, i, nb):
    """What a rebuild must reproduce for a cell's outputs to count as unchanged: its compared
    texts (addresses masked) and its pictures; progress bars and addresses may differ."""
    pics = [(k, _text(v)) for o in cell.get("outputs", []) for k, v in sorted(o.get("data", {}).items())
            if k != "text/plain"]
    return cell.source, comparable(nb).get(i), pics


def _keep_unchanged_outputs(old, new):
    """Keep the stored outputs of cells whose rebuild shows nothing new (only addresses, progress
    bars), so that rebuilding an unchanged notebook leaves the file as it was."""
    if len(old.cells) != len(new.cells):
        return
    for i, (a, b) in enumerate(zip(old.cells, new.cells)):
        if b.cell_type != "code" or "nondeterministic" in b.metadata.get("tags", []):
            continue
        if a.cell_type == "code" and _cell_key(a, i, old) == _cell_key(b, i, new):
            b["outputs"] = a["outputs"]


def read_source(py):
    import jupytext
    return jupytext.read(str(py))


def build(names=None, verbose=True):
    """notebooks/NN_*.py -> executed notebooks/NN_*.ipynb with outputs (commit-ready)."""
    import nbformat
    times = {}
    for py in sources():
        if names and not any(n in py.stem for n in names):
            continue
        t0 = time.perf_counter()
        nb = execute(read_source(py))
        times[py.stem] = time.perf_counter() - t0
        nb = _normalise(nb)
        target = py.with_suffix(".ipynb")
        if target.exists():
            _keep_unchanged_outputs(nbformat.read(str(target), as_version=4), nb)
        nbformat.write(nb, str(target))
        if verbose:
            print(f"{py.with_suffix('.ipynb').relative_to(repo_root())}: executed in {times[py.stem]:.1f} s")
    return times


# ----- comparing outputs ------------------------------------------------------------------------
def _text(v):
    return "".join(v) if isinstance(v, list) else v


def comparable(nb):
    """The deterministic outputs of a notebook: {cell index: [text, ...]}. Kept: stdout and the
    text/plain of results and displays; memory addresses become ``0x?``. Left out: stderr
    (progress bars, warnings), pictures, widgets, and cells tagged ``nondeterministic``."""
    out = {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or "nondeterministic" in cell.metadata.get("tags", []):
            continue
        texts, stdout = [], []
        for o in cell.get("outputs", []):
            if o.output_type == "stream":      # one string per cell: chunking varies from run to run
                if o.name == "stdout":
                    stdout.append(_text(o.text))
            elif o.output_type in ("execute_result", "display_data"):
                data = o.get("data", {})
                if any(k.startswith("application/vnd.jupyter.widget") for k in data):
                    continue
                if "text/plain" in data:
                    texts.append(("text/plain", _text(data["text/plain"])))
            elif o.output_type == "error":
                texts.append(("error", f"{o.ename}: {o.evalue}"))
        if stdout:
            texts.insert(0, ("stdout", "".join(stdout)))
        if texts:
            out[i] = [(kind, _ADDRESS.sub("0x?", t)) for kind, t in texts]
    return out


def differences(stored, fresh):
    """Human-readable differences between two notebooks' comparable outputs ([] if none)."""
    a, b = comparable(stored), comparable(fresh)
    diffs = []
    if [c.source for c in stored.cells] != [c.source for c in fresh.cells]:
        diffs.append("cell sources differ")
    for i in sorted(set(a) | set(b)):
        if a.get(i) != b.get(i):
            src = fresh.cells[i].source.splitlines()[0] if i < len(fresh.cells) else "?"
            diffs.append(f"cell {i} ({src!r}):\n  stored: {a.get(i)!r}\n  fresh:  {b.get(i)!r}")
    return diffs


# ----- figures and the demo -------------------------------------------------------------------
def figures(nb, stem, outdir):
    """Write the pictures a notebook displays: graphs (from their DOT text) as .svg and .png,
    matplotlib figures as .png. Returns the paths written."""
    import base64
    from .viz import PNG_DPI, render_dot
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    written, used = [], {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        base = cell.metadata.get("figure") or f"cell{i:02d}"
        for o in cell.get("outputs", []):
            data = o.get("data", {}) if o.output_type in ("execute_result", "display_data") else {}
            kinds = []
            if DOT_MIME in data:
                src = _text(data[DOT_MIME])
                kinds = [("svg", lambda src=src: render_dot(src, "svg")),
                         ("png", lambda src=src: render_dot(src, "png", PNG_DPI))]
            elif "image/png" in data:
                png = _text(data["image/png"])
                kinds = [("png", lambda png=png: base64.b64decode(png))]
            if not kinds:
                continue
            n = used[base] = used.get(base, 0) + 1
            name = f"{stem}-{base}" + (f"-{n}" if n > 1 else "")
            for ext, make in kinds:
                p = outdir / f"{name}.{ext}"
                p.write_bytes(make())
                written.append(p)
    return written


def _html(nb, path):
    try:
        from nbconvert import HTMLExporter
    except ImportError:
        return None
    body, _ = HTMLExporter().from_notebook_node(nb)
    path.write_text(body, encoding="utf-8")
    return path


def run_demo(outdir=None, verbose=True):
    """Run every committed notebook headlessly; write the executed copies (HTML when nbconvert
    is installed, and the .ipynb) and their pictures into ``demo-output/``."""
    import nbformat
    root = repo_root()
    outdir = Path(outdir) if outdir else root / "demo-output"
    figdir = outdir / "figures"
    outdir.mkdir(parents=True, exist_ok=True)
    report = []
    for path in notebooks():
        stored = nbformat.read(str(path), as_version=4)
        t0 = time.perf_counter()
        nb = execute(stored)
        dt = time.perf_counter() - t0
        ipynb = outdir / path.name
        nbformat.write(nb, str(ipynb))
        html = _html(nb, outdir / (path.stem + ".html"))
        figs = figures(nb, path.stem, figdir)
        diffs = differences(stored, nb)
        report.append((path.stem, dt, html or ipynb, figs, diffs))
        if verbose:
            print(f"  {path.name}: ran in {dt:.1f} s -> {(html or ipynb).relative_to(root) if outdir.is_relative_to(root) else html or ipynb}"
                  + ("" if not diffs else f"  ({len(diffs)} output(s) differ from the committed notebook)"))
    if verbose:
        def rel(p):
            return p.relative_to(root) if p.is_relative_to(root) else p
        print(f"\nexecuted notebooks in {rel(outdir)}/" + ("" if any(str(r[2]).endswith(".html") for r in report)
                                                      else "  (install nbconvert for HTML copies)"))
        print(f"figures in {rel(figdir)}/:")
        for *_, figs, _ in report:
            for f in figs:
                print(f"  {rel(f)}")
        stale = [r for r in report if r[4]]
        if stale:
            print("\nnote: outputs differ from the committed notebooks in "
                  + ", ".join(r[0] for r in stale) + " (rebuild with `python -m tapegrad._notebooks build`)")
        print("open them in Jupyter: .venv/bin/pip install jupyterlab && .venv/bin/jupyter lab notebooks/")
    return report


def check(verbose=True):
    """Run each committed notebook and compare with its stored outputs; returns the failures."""
    import nbformat
    bad = {}
    for path in notebooks():
        stored = nbformat.read(str(path), as_version=4)
        t0 = time.perf_counter()
        d = differences(stored, execute(stored))
        if verbose:
            print(f"{path.name}: {time.perf_counter() - t0:.1f} s, " + ("ok" if not d else f"{len(d)} differences"))
        if d:
            bad[path.name] = d
    return bad


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(prog="python -m tapegrad._notebooks", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="execute notebooks/NN_*.py and write the .ipynb with outputs")
    b.add_argument("names", nargs="*", help="only notebooks whose name contains one of these")
    sub.add_parser("check", help="re-run the committed notebooks and compare their outputs")
    d = sub.add_parser("demo", help="run the notebooks into demo-output/")
    d.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.cmd == "build":
        build(a.names)
    elif a.cmd == "check":
        bad = check()
        for name, ds in bad.items():
            print(f"\n{name}:\n" + "\n".join(ds))
        return 1 if bad else 0
    else:
        run_demo(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
