"""The float32 fast loops of the CPU replay's add and sub (kernels/gen_cpu.py's Note [unit alpha])
and of the broadcast add's unit-stride rows (h + b): they must give the bits of the general rule.

The references are NumPy's float32 operations, which are correctly rounded, and sequential float32
sums (np.cumsum) for a broadcast operand's gradient: what the replay's loops compute element by
element. alpha != 1 keeps the double rule: float32(x + alpha * z) computed in float64.
"""
import numpy as np
import pytest

import tapegrad as tg

RNG = np.random.default_rng(30)


def _data(*shape, scale=1.0):
    # mixed magnitudes, so that the sums round (and double rounding would show if it mattered)
    x = RNG.standard_normal(shape) * np.exp(RNG.uniform(-12, 12, shape)) * scale
    return x.astype(np.float32)


def _run(fn, xn, zn, wn):
    x = tg.tensor(xn, requires_grad=True)
    z = tg.tensor(zn, requires_grad=True)
    out = fn(x, z)
    (out * tg.tensor(wn)).sum().backward()
    return out.detach().numpy(), x.grad.numpy(), z.grad.numpy()


CASES = [
    ("add", lambda x, z: x + z, lambda x, z: x + z, 1.0),
    ("sub", lambda x, z: x - z, lambda x, z: x - z, -1.0),
    ("add_alpha1", lambda x, z: tg.add(x, z, alpha=1), lambda x, z: x + z, 1.0),
    ("add_alpha2", lambda x, z: tg.add(x, z, alpha=2),
     lambda x, z: (x.astype(np.float64) + 2.0 * z.astype(np.float64)).astype(np.float32), 2.0),
    ("sub_alpha_half", lambda x, z: tg.sub(x, z, alpha=0.5),
     lambda x, z: (x.astype(np.float64) - 0.5 * z.astype(np.float64)).astype(np.float32), -0.5),
]


@pytest.mark.parametrize("name,fn,ref,dz", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("n", [1, 7, 16, 1024, 1031])
def test_same_shape_bits(name, fn, ref, dz, n):
    xn, zn, wn = _data(n), _data(n), _data(n, scale=1e-3)
    out, gx, gz = _run(fn, xn, zn, wn)
    np.testing.assert_array_equal(out, ref(xn, zn))
    np.testing.assert_array_equal(gx, wn)                  # d(x + a z)/dx = 1: the seed itself
    np.testing.assert_array_equal(gz, (np.float64(dz) * wn.astype(np.float64)).astype(np.float32))


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("rows,cols", [(16, 64), (3, 5), (1, 33), (100, 1)])
def test_broadcast_rows_bits(sign, rows, cols):
    """h (rows x cols) +- b (cols): the forward is NumPy's float32 op; b's gradient sums the rows in
    order, from zero (each column one sequential float32 sum), h's is the seed."""
    hn, bn, wn = _data(rows, cols), _data(cols), _data(rows, cols, scale=1e-3)
    fn = (lambda h, b: h + b) if sign > 0 else (lambda h, b: h - b)
    out, gh, gb = _run(fn, hn, bn, wn)
    np.testing.assert_array_equal(out, hn + bn if sign > 0 else hn - bn)
    np.testing.assert_array_equal(gh, wn)
    g = wn if sign > 0 else -wn
    np.testing.assert_array_equal(gb, np.cumsum(g, axis=0, dtype=np.float32)[-1])


def test_broadcast_columns_keep_the_general_loop():
    """h (8 x 6) + c (8 x 1): c's inner stride is 0, so its forward and its gradient take the
    general loop (h's gradient the unit-stride one): the same bits, c's gradient summed along
    each row in order."""
    hn, cn, wn = _data(8, 6), _data(8, 1), _data(8, 6, scale=1e-3)
    out, gh, gc = _run(lambda h, c: h + c, hn, cn, wn)
    np.testing.assert_array_equal(out, hn + cn)
    np.testing.assert_array_equal(gh, wn)
    np.testing.assert_array_equal(gc, np.cumsum(wn, axis=1, dtype=np.float32)[:, -1:])


def test_against_torch():
    torch = pytest.importorskip("torch")
    xn, bn, wn = _data(16, 64), _data(64), _data(16, 64, scale=1e-3)
    mine = _run(lambda h, b: (h + b) - h * 0.5, xn, bn, wn)

    def theirs():
        x = torch.tensor(xn, requires_grad=True)
        b = torch.tensor(bn, requires_grad=True)
        ((x + b - x * 0.5) * torch.tensor(wn)).sum().backward()
        return (x + b - x * 0.5).detach().numpy(), x.grad.numpy(), b.grad.numpy()
    for a, t in zip(mine, theirs()):
        np.testing.assert_allclose(a, t, rtol=1e-6, atol=1e-6 * np.abs(t).max())
