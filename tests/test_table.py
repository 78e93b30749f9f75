"""The op table is the single source: the generated replay, rules and escape ops derive from it."""
import inspect
import os
import re

import pytest

from tapegrad.kernels import elementwise as E
from tapegrad.kernels import gen_cpu
from tapegrad.ops import pyops
from tapegrad.ops.table import OPS

ROOT = os.path.join(os.path.dirname(__file__), "..", "tapegrad")


def test_generated_replay_is_up_to_date():
    with open(gen_cpu.TARGET) as f:
        assert f.read() == gen_cpu.source(), "run: python -m tapegrad.kernels.gen_cpu"


@pytest.mark.parametrize("spec", [s for s in OPS.values() if s.kind in ("unary", "binary")], ids=lambda s: s.name)
def test_every_jit_row_has_both_rules(spec):
    f = getattr(E, spec.rule + "_f")
    b = getattr(E, spec.rule + "_b")
    nargs = 2 if spec.kind == "unary" else 3
    assert len(inspect.signature(f).parameters) == nargs
    assert len(inspect.signature(b).parameters) == nargs + 2
    assert re.fullmatch(r"\w+Backward\d", spec.grad_fn)
    assert spec.ref is not None and spec.vjp


def test_every_escape_row_is_used():
    src = inspect.getsource(pyops)
    for s in OPS.values():
        if s.kind == "py":
            assert re.search(rf'"{s.name}"', src), f"escape row {s.name} is not built anywhere in ops/pyops.py"


def test_jit_flags_live_in_config_only():
    """stumpy's habit: no hard-coded cache=/fastmath= outside config.py."""
    bad = []
    for dirpath, _, files in os.walk(ROOT):
        for fn in files:
            if fn.endswith(".py") and fn != "config.py":
                text = open(os.path.join(dirpath, fn)).read()
                for m in re.finditer(r"(cache|fastmath)\s*=\s*(True|False)", text):
                    bad.append(f"{fn}: {m.group(0)}")
    assert not bad, bad


def test_import_without_gpu_does_not_import_numba_cuda():
    """`import tapegrad` works on machines with no GPU: it never imports numba.cuda."""
    import subprocess
    import sys
    code = "import sys, tapegrad; print(any(m.startswith('numba.cuda') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=os.path.join(ROOT, ".."))
    assert out.stdout.strip() == "False", out.stderr
