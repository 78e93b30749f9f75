"""The graph facade (DESIGN invariant 6): grad_fn, next_functions, AccumulateGrad.

Node names and the structure of ``next_functions`` are compared with real
PyTorch; the hand tables below are what torch 2.13 prints (the torch tests
check them too).
"""
import gc
import re

import pytest

from semantics_util import TAPE, real_torch, tg

_NODE_REPR = re.compile(r"^<([A-Za-z]+Backward\d+) object at 0x[0-9a-f]+>$")
_ACC_REPR = re.compile(r"^<AccumulateGrad object at 0x[0-9a-f]+>$")
ACC = "torch::autograd::AccumulateGrad"


def _exprs(m):
    x = m.tensor([1.0, 2.0], requires_grad=True)
    w = m.tensor([3.0, 4.0])
    A = m.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    B = m.tensor([[1.0, 0.5], [0.0, 2.0]])
    return {
        "x**2": lambda: x ** 2, "sin": lambda: m.sin(x), "mul": lambda: x * w, "mul_self": lambda: x * x,
        "add": lambda: x + w, "sum": lambda: x.sum(), "mean": lambda: x.mean(), "mm": lambda: A @ B,
        "tanh": lambda: m.tanh(x), "x*2": lambda: x * 2, "2*x": lambda: 2 * x, "x+1": lambda: x + 1,
        "x-1": lambda: x - 1, "1-x": lambda: 1 - x, "x/2": lambda: x / 2, "2/x": lambda: 2 / x, "-x": lambda: -x,
        "x**2.5": lambda: x ** 2.5, "x**x": lambda: x ** x, "exp": lambda: m.exp(x), "log": lambda: m.log(x),
        "cos": lambda: m.cos(x), "sigmoid": lambda: m.sigmoid(x), "relu": lambda: m.relu(x), "abs": lambda: x.abs(),
        "sqrt": lambda: x.sqrt(), "sum0": lambda: A.sum(0), "mean1": lambda: A.mean(1), "mv": lambda: A @ x,
        "dot": lambda: x @ x, "t": lambda: A.t(), "T": lambda: A.T, "reshape": lambda: A.reshape(4),
        "view": lambda: A.view(4), "row": lambda: A[0], "col": lambda: A[:, 1], "unsqueeze": lambda: x.unsqueeze(0),
        "expand": lambda: x.unsqueeze(0).expand(3, 2), "clone": lambda: x.clone(), "max": lambda: x.max(),
        "bcast": lambda: A + x, "maximum": lambda: m.maximum(x, w), "double": lambda: x.double(),
        "x**w": lambda: x ** w, "w**x": lambda: w ** x, "reciprocal": lambda: x.reciprocal(),
        "x/x": lambda: x / x, "softmax": lambda: m.softmax(x, 0), "slice": lambda: A[:, 0:1],
        "cat": lambda: m.cat([x, w]), "stack": lambda: m.stack([x, x]), "where": lambda: m.where(w > 3, x, w),
        "transpose": lambda: A.transpose(0, 1), "permute": lambda: A.permute(1, 0), "flatten": lambda: A.flatten(),
        "deep": lambda: (m.tanh(A @ x) * 2 + 1).mean(), "x-x": lambda: x - x, "w-x": lambda: w - x,
        "x*w*x": lambda: x * w * x, "A@A.T": lambda: A @ A.T, "At*2": lambda: A.t() * 2, "At+1": lambda: A.t() + 1,
        "clamp": lambda: x.clamp(0, 1), "clamp_min_fn": lambda: m.clamp_min(x, 0),
        "clamp_max_fn": lambda: m.clamp_max(x, 1),
        "2**x": lambda: 2 ** x, "clamp(min=)": lambda: x.clamp(min=0), "clamp(max=)": lambda: x.clamp(max=1),
        "A[0,1]": lambda: A[0, 1],
    }


# The brief's table, by hand (torch 2.13)
HAND_NAMES = {"x**2": "PowBackward0", "sin": "SinBackward0", "mul": "MulBackward0", "add": "AddBackward0",
              "sum": "SumBackward0", "mean": "MeanBackward0", "mm": "MmBackward0", "tanh": "TanhBackward0",
              "x*2": "MulBackward0", "x+1": "AddBackward0", "1-x": "RsubBackward1", "t": "TBackward0",
              "T": "PermuteBackward0", "reshape": "ViewBackward0", "row": "SelectBackward0", "mv": "MvBackward0",
              "dot": "DotBackward0", "sum0": "SumBackward1", "x**x": "PowBackward1", "2**x": "PowBackward2"}

_XFAIL = {
    "A[0,1]": pytest.mark.xfail(strict=True, reason="tapegrad records A[0, 1] as one SelectBackward0; torch "
                                                    "chains two SelectBackward0 nodes"),
}


def _params(keys):
    return [pytest.param(k, marks=_XFAIL[k]) if k in _XFAIL else k for k in keys]


def _structure(node, depth=0):
    """(name, [(child structure, index), ...]) down the whole graph."""
    if node is None:
        return None
    assert depth < 50
    return (node.name(), [(_structure(n, depth + 1), i) for n, i in node.next_functions])


@pytest.mark.parametrize("key", _params(sorted(HAND_NAMES)))
def test_grad_fn_names_hand(key):
    E = _exprs(tg)        # keeps the leaves alive (see test_graph_keeps_unnamed_leaf)
    y = E[key]()
    fn = y.grad_fn
    assert fn.name() == HAND_NAMES[key]
    assert type(fn).__name__ == HAND_NAMES[key]
    assert _NODE_REPR.match(repr(fn)).group(1) == HAND_NAMES[key]
    assert f"grad_fn=<{HAND_NAMES[key]}>" in repr(y)


@pytest.mark.parametrize("key", _params(sorted(_exprs(tg))))
def test_graph_structure_vs_torch(key):
    torch = real_torch()
    E, F = _exprs(tg), _exprs(torch)    # keep the leaves alive (see test_graph_keeps_unnamed_leaf)
    mine, theirs = E[key](), F[key]()
    assert type(mine.grad_fn).__name__ == type(theirs.grad_fn).__name__
    assert _structure(mine.grad_fn) == _structure(theirs.grad_fn)


def test_next_functions_shape_hand():
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    w = tg.tensor([3.0, 4.0])
    for y in (x * w, x * 2, x + 1, x - w, x / 2):
        nf = y.grad_fn.next_functions
        assert type(nf) is tuple and len(nf) == 2
        assert all(type(p) is tuple and len(p) == 2 and p[1] == 0 and type(p[1]) is int for p in nf)
        assert nf[0][0].name() == ACC and nf[0][0].variable is x
        assert nf[1] == (None, 0)
    nf = (w * x).grad_fn.next_functions
    assert nf[0] == (None, 0) and nf[1][0].variable is x
    nf = (x * x).grad_fn.next_functions
    assert nf[0][0] is nf[1][0] and nf[0][0].variable is x
    assert (x ** 2).grad_fn.next_functions[0][0].variable is x
    assert len((x ** 2).grad_fn.next_functions) == 1


def test_accumulate_grad_node():
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    a = (x * 3).grad_fn.next_functions[0][0]
    b = (x * 4).grad_fn.next_functions[0][0]
    assert a is b                       # one AccumulateGrad per leaf
    assert a.variable is x and id(a.variable) == id(x)
    assert a.name() == ACC and type(a).__name__ == "AccumulateGrad"
    assert a.next_functions == ()
    assert _ACC_REPR.match(repr(a))
    import tapegrad.autograd.graph as G
    assert isinstance(a, G.Node) and isinstance((x * 3).grad_fn, G.Node)
    assert tg.autograd.graph.Node is G.Node


def test_accumulate_grad_vs_torch():
    torch = real_torch()
    res = []
    for m in (tg, torch):
        x = m.tensor([1.0, 2.0], requires_grad=True)
        a = (x * 3).grad_fn.next_functions[0][0]
        res.append((a is (x * 4).grad_fn.next_functions[0][0], a.variable is x, a.name(), type(a).__name__,
                    a.next_functions, isinstance(a, m.autograd.graph.Node),
                    isinstance((x * 3).grad_fn, m.autograd.graph.Node), bool(_ACC_REPR.match(repr(a)))))
    assert res[0] == res[1]


def test_grad_fn_identity():
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    y = x ** 2
    z = tg.sin(y)
    assert y.grad_fn is y.grad_fn
    assert z.grad_fn.next_functions[0][0] is z.grad_fn.next_functions[0][0]
    assert z.grad_fn.next_functions[0][0] is y.grad_fn
    assert z.grad_fn is not y.grad_fn
    m = _NODE_REPR.match(repr(y.grad_fn))
    assert m and m.group(1) == "PowBackward0"
    assert repr(y.grad_fn) == f"<PowBackward0 object at {hex(id(y.grad_fn))}>"


def test_grad_fn_identity_vs_torch():
    torch = real_torch()
    res = []
    for m in (tg, torch):
        x = m.tensor([1.0, 2.0], requires_grad=True)
        y = x ** 2
        z = m.sin(y)
        res.append((y.grad_fn is y.grad_fn, z.grad_fn.next_functions[0][0] is y.grad_fn,
                    _NODE_REPR.match(repr(y.grad_fn)).group(1), type(z.grad_fn).__name__))
    assert res[0] == res[1]


def test_no_grad_fn_for_leaves_constants_and_no_grad():
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    assert x.grad_fn is None
    assert (tg.ones(2) * 2).grad_fn is None
    assert x.detach().grad_fn is None
    with tg.no_grad():
        assert (x * 2).grad_fn is None


def test_article_002_next_functions():
    # z = x**2 + y**3: z.grad_fn is AddBackward0; next_functions is two PowBackward0 (node, 0) pairs;
    # z.grad_fn.next_functions[0][0].next_functions is ((AccumulateGrad, 0),) (ERRATA: not the node itself),
    # and that AccumulateGrad's .variable *is* x (same id)
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    y = tg.tensor([3.0, 4.0], requires_grad=True)
    z = x ** 2 + y ** 3
    assert z.is_leaf is False and x.is_leaf and y.is_leaf
    assert z.grad_fn.name() == "AddBackward0"
    nf = z.grad_fn.next_functions
    assert isinstance(nf, tuple) and len(nf) == 2
    assert [(n.name(), i) for n, i in nf] == [("PowBackward0", 0), ("PowBackward0", 0)]
    leaf_edges = z.grad_fn.next_functions[0][0].next_functions
    assert isinstance(leaf_edges, tuple) and len(leaf_edges) == 1 and leaf_edges[0][1] == 0
    x_leaf = leaf_edges[0][0]
    assert type(x_leaf).__name__ == "AccumulateGrad"
    assert x_leaf.variable is x and id(x_leaf.variable) == id(x)
    assert z.grad_fn.next_functions[1][0].next_functions[0][0].variable is y
    z.sum().backward()
    assert x.grad.tolist() == [2.0, 4.0] and y.grad.tolist() == [27.0, 48.0]


def test_article_002_vs_torch():
    torch = real_torch()
    res = []
    for m in (tg, torch):
        x = m.tensor([1.0, 2.0], requires_grad=True)
        y = m.tensor([3.0, 4.0], requires_grad=True)
        z = x ** 2 + y ** 3
        inner = z.grad_fn.next_functions[0][0].next_functions
        res.append((_structure(z.grad_fn), type(inner).__name__, len(inner), inner[0][0].variable is x,
                    type(inner[0][0]).__name__))
    assert res[0] == res[1]


def test_facade_survives_backward():
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    y = (x * x).sum()
    fn = y.grad_fn
    before = _structure(fn)
    y.backward()
    assert y.grad_fn is fn
    assert _structure(y.grad_fn) == before == ("SumBackward0", [(("MulBackward0", [((ACC, []), 0),
                                                                                    ((ACC, []), 0)]), 0)])


def test_facade_of_intermediate_whose_tensor_died():
    # z = sin(x**2): the x**2 tensor is gone, its node is still reachable from z
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    z = tg.sin(x ** 2)
    gc.collect()
    TAPE.sweep()
    assert _structure(z.grad_fn) == ("SinBackward0", [(("PowBackward0", [((ACC, []), 0)]), 0)])


def test_graph_keeps_unnamed_leaf():
    y = tg.tensor([1.0, 2.0], requires_grad=True) * 2
    gc.collect()
    acc = y.grad_fn.next_functions[0][0]
    assert acc is not None and acc.name() == ACC
    assert acc.variable.tolist() == [1.0, 2.0]


def test_unnamed_leaf_still_gets_backward():
    # whatever the facade shows, backward through a graph whose leaf has no name works
    y = (tg.tensor([1.0, 2.0], requires_grad=True) * 2).sum()
    gc.collect()
    y.backward()
