"""What a cold first step compiles (kernels/smallgemm.py's Note [no literal arguments]).

A jitted function that passes a constant (``1``, ``False``, a closure's ``width``) to another
makes Numba compile the callee, and all it calls, once more for ``Literal[int](1)``: on a cold
cache that was two thirds of the first W5a step (27 s). The child process below starts from an
empty cache, runs steps that reach the replay's products in every layout (the native records'
forward and backward, packed transposes, small_gemm_bt, BLAS), both float dtypes, a native
cross-entropy, the elementwise ops and SGD, and reports every compile of a tapegrad function
whose signature holds a literal type.
"""
import json
import os
import subprocess
import sys
import tempfile

CHILD = r'''
import json
import numba.core.dispatcher as D
from numba.core import types

literal = []
_compile = D.Dispatcher.compile


def compile(self, sig):
    args = sig if isinstance(sig, tuple) else getattr(sig, "args", ())
    if self.py_func.__module__.startswith("tapegrad") and any(isinstance(a, types.Literal) for a in args):
        literal.append(f"{self.py_func.__module__}.{self.py_func.__qualname__}{tuple(map(str, args))}")
    return _compile(self, sig)


D.Dispatcher.compile = compile

import numpy as np
import tapegrad as torch
from tapegrad import nn, optim

rng = np.random.default_rng(0)
for dt in (torch.float32, torch.float64):
    for rows, width in ((100, 1), (16, 64), (3, 40), (200, 300)):   # (200, 300): BLAS
        x = torch.tensor(rng.standard_normal((rows, 10)), dtype=dt)
        y = torch.tensor(rng.standard_normal((rows, width)), dtype=dt)
        net = nn.Sequential(nn.Linear(10, width), nn.Tanh(), nn.Linear(width, width)).to(dt)
        opt = optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        for _ in range(2):
            opt.zero_grad()
            out = net(x)
            loss = nn.functional.mse_loss(out, y) + nn.functional.cross_entropy(
                out, torch.tensor(rng.integers(0, width, rows)))
            loss.backward()
            opt.step()
        w = torch.tensor(rng.standard_normal((width, 10)), dtype=dt, requires_grad=True)
        (x @ w.T).sum().backward()                   # B's columns contiguous: small_gemm_bt
        (w @ x.T).sin().sum().backward()
print(json.dumps(literal))
'''


def test_cold_step_compiles_no_literal_variants():
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                              timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    literal = json.loads(proc.stdout.strip().splitlines()[-1])
    assert literal == [], "\n".join(literal)
