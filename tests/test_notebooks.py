"""The article notebooks run from a clean kernel without errors, and their deterministic
outputs equal the ones stored in the committed .ipynb files (so these never go stale).

Each notebook runs in a fresh kernel of this interpreter (sys.executable, through a
kernelspec in a temporary directory: tapegrad/_notebooks.py), so this works in a fresh
.venv with no kernel registered. Compared: stdout and the text/plain of results, with
memory addresses masked. Not compared: stderr (tqdm bars, warnings), pictures, and cells
tagged "nondeterministic" (timings).

After editing a notebook's source (notebooks/NN_*.py), rebuild the .ipynb with
``python -m tapegrad._notebooks build``.
"""
import re
import time

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from tapegrad import _notebooks as N  # noqa: E402

NOTEBOOKS = N.notebooks()
EXPECTED = ["01_tensors_and_autograd", "02_linear_regression_training", "03_computation_graph",
            "04_training_a_small_net"]
MAX_SECONDS = 90     # each notebook runs in a few seconds; this catches one that grows far past ~30 s


def test_the_four_notebooks_and_their_sources_are_there():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED
    assert [p.stem for p in N.sources()] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_matches_its_stored_outputs(path):
    stored = nbformat.read(str(path), as_version=4)
    code = [c for c in stored.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), "the committed notebook was not executed"
    assert not any(o.output_type == "error" for c in code for o in c.outputs)
    t0 = time.perf_counter()
    fresh = N.execute(stored)            # raises CellExecutionError on any error
    dt = time.perf_counter() - t0
    diffs = N.differences(stored, fresh)
    assert not diffs, (f"{path.name}: outputs differ from the committed notebook "
                       f"(rebuild: python -m tapegrad._notebooks build {path.stem[:2]}):\n" + "\n".join(diffs))
    assert N.comparable(fresh), "nothing was compared"
    assert dt < MAX_SECONDS, f"{path.name} took {dt:.0f} s"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_built_from_its_jupytext_source(path):
    pytest.importorskip("jupytext")
    src = N.read_source(path.with_suffix(".py"))
    nb = nbformat.read(str(path), as_version=4)
    assert [(c.cell_type, c.source) for c in nb.cells] == [(c.cell_type, c.source) for c in src.cells], \
        f"{path.name} is stale: run python -m tapegrad._notebooks build {path.stem[:2]}"
    for a, b in zip(nb.cells, src.cells):
        for key in ("figure", "tags"):
            assert a.metadata.get(key) == b.metadata.get(key)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_uses_tapegrad_as_torch_and_marks_the_article_errors(path):
    nb = nbformat.read(str(path), as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert "import tapegrad as torch" in code[0]
    assert not any(re.search(r"^\s*(import torch\b|from torch\b)", s, re.M) for s in code)
    md = [c.source for c in nb.cells if c.cell_type == "markdown"]
    claim = re.compile(r"\*\*⚠️ The article")
    assert any(claim.search(s) for s in md)
    # every "⚠️ ... says" cell is followed (in the next code cells) by an assert that holds the claim
    for i, c in enumerate(nb.cells):
        if c.cell_type == "markdown" and claim.search(c.source):
            nxt = next((d for d in nb.cells[i + 1:] if d.cell_type == "code"), None)
            assert nxt is not None and "assert" in nxt.source, f"{path.name} cell {i}: ⚠️ without an assert"


def test_graph_pictures_and_plots_are_stored():
    kinds = {}
    for path in NOTEBOOKS:
        nb = nbformat.read(str(path), as_version=4)
        outs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
        kinds[path.stem[:2]] = {k for o in outs for k in o.get("data", {})}
    for nb in ("01", "03"):
        assert {"image/svg+xml", "text/html", N.DOT_MIME} <= kinds[nb]
    for nb in ("02", "04"):
        assert "image/png" in kinds[nb]
