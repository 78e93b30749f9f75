"""Every scalar rule compiles for the GPU too (cuda.jit(device=True)) and agrees
with its plain-Python self, under the CUDA simulator (NUMBA_ENABLE_CUDASIM=1).

The simulator must be chosen before numba is imported, so the check runs in a
subprocess."""
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import math, numpy as np
    from numba import cuda
    from tapegrad.kernels import elementwise as E
    from tapegrad.ops.table import OPS
    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 1.8, 16); z = rng.uniform(0.3, 1.7, 16); g = rng.standard_normal(16)
    bad = []
    for s in OPS.values():
        if s.kind not in ("unary", "binary"):
            continue
        f = getattr(E, s.rule + "_f"); b = getattr(E, s.rule + "_b")
        fd = cuda.jit(device=True)(f); bd = cuda.jit(device=True)(b)
        c = 1.5
        if s.kind == "unary":
            @cuda.jit
            def k(x, g, y, gx):
                i = cuda.grid(1)
                if i < x.size:
                    y[i] = fd(x[i], c)
                    gx[i] = bd(x[i], y[i], g[i], c)
            y = np.zeros(16); gx = np.zeros(16)
            k[1, 16](x, g, y, gx)
            ref_y = np.array([f(v, c) for v in x]); ref_g = np.array([b(v, w, q, c) for v, w, q in zip(x, ref_y, g)])
            ok = np.allclose(y, ref_y) and np.allclose(gx, ref_g)
        else:
            @cuda.jit
            def k(x, z, g, y, gx, gz):
                i = cuda.grid(1)
                if i < x.size:
                    y[i] = fd(x[i], z[i], c)
                    gx[i], gz[i] = bd(x[i], z[i], y[i], g[i], c)
            y = np.zeros(16); gx = np.zeros(16); gz = np.zeros(16)
            k[1, 16](x, z, g, y, gx, gz)
            ref_y = np.array([f(a, w, c) for a, w in zip(x, z)])
            ref = np.array([b(a, w, v, q, c) for a, w, v, q in zip(x, z, ref_y, g)])
            ok = np.allclose(y, ref_y) and np.allclose(gx, ref[:, 0]) and np.allclose(gz, ref[:, 1])
        if not ok:
            bad.append(s.name)
    print("BAD", bad)
''')


def test_every_rule_compiles_for_cuda_under_the_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    root = os.path.join(os.path.dirname(__file__), "..")
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600,
                         cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "BAD []" in out.stdout, out.stdout
