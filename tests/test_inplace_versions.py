"""A value saved for backward and then modified in place: PyTorch's version-counter error."""
import pytest

import tapegrad

torch = pytest.importorskip("torch")


def _run(m, case):
    x = m.tensor([1.0, 2.0], requires_grad=True)
    if case == "saved_result":
        y = m.exp(x)
        z = (y * 2).sum()
        with m.no_grad():
            y.add_(1)
    elif case == "saved_leaf":
        z = (x * x).sum()
        with m.no_grad():
            x.mul_(2)
    elif case == "not_saved":        # add saves nothing: modifying its input is fine
        y = x * 1.0
        z = (y + 3).sum()
        with m.no_grad():
            y.zero_()
    elif case == "modified_before_use":  # written before it was saved: fine
        y = x * 1.0
        with m.no_grad():
            y.add_(1)
        z = (y * y).sum()
    try:
        z.backward()
    except RuntimeError as e:
        return "error", str(e)
    return "ok", x.grad.tolist()


@pytest.mark.parametrize("case", ["saved_result", "saved_leaf", "not_saved", "modified_before_use"])
def test_version_counter_parity(case):
    mine, theirs = _run(tapegrad, case), _run(torch, case)
    assert mine[0] == theirs[0]
    if mine[0] == "error":
        assert mine[1] == theirs[1]
    else:
        assert mine[1] == pytest.approx(theirs[1])


def test_version_property_counts_inplace_writes():
    for m in (tapegrad, torch):
        t = m.zeros(3)
        v0 = t._version
        t.add_(1)
        t[0] = 5
        t.zero_()
        assert t._version - v0 == 3
