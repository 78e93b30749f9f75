"""Errors: PyTorch's exception type and message, raised before anything is
recorded (DESIGN invariant 2), leaving the tape and the gradients as they were.

Before each failing call the test leaves a pending (unflushed) record and a
populated leaf gradient, snapshots the tape (length, next record index,
flush mark) and the leaf gradients, and checks they are identical after.
Messages are torch 2.13's, by hand; the torch test checks the hand table.
"""
import numpy as np
import pytest

from semantics_util import SECOND_TIME, TAPE, arena_state, outcome, real_torch, tape_state, tg

_BCAST = "The size of tensor a ({}) must match the size of tensor b ({}) at non-singleton dimension {}"


class Ctx:
    """Tensors for one case, built from module m (tapegrad or torch)."""

    def __init__(self, m):
        self.m = m
        self.x = m.tensor([1.0, 2.0, 3.0], requires_grad=True)
        self.A = m.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)
        self.c = m.tensor([1.0, 2.0, 3.0, 4.0])
        (self.x * self.x).sum().backward()          # x.grad = 2x: the failing call must keep it
        (self.A * 2).sum().backward()


# name: (builder, exception type, torch's exact message). A builder makes the operands from a Ctx and
# returns the failing call (``later(f, *operands)``), so that making operands is not part of the call.


def later(f, *operands):
    return lambda: f(*operands)


_NP_INPLACE = "a leaf Variable that requires grad is being used in an in-place operation."
_DIM = "Dimension out of range (expected to be in range of [{}, {}], but got {})"

CASES = {
    "add_shape": (lambda k: later(lambda a, b: a + b, k.x, k.c), RuntimeError, _BCAST.format(3, 4, 0)),
    "add_shape_const_first": (lambda k: later(lambda a, b: a + b, k.c, k.x), RuntimeError, _BCAST.format(4, 3, 0)),
    "mul_shape_2d": (lambda k: later(lambda a, b: a * b, k.A, k.m.ones(3, 2)), RuntimeError,
                     _BCAST.format(3, 2, 1)),
    "mul_bcast_rg": (lambda k: later(lambda a, b: a * b, k.A, k.m.ones(2)), RuntimeError, _BCAST.format(3, 2, 1)),
    "sub_shape": (lambda k: later(lambda a, b: a - b, k.x, k.m.ones(4)), RuntimeError, _BCAST.format(3, 4, 0)),
    "div_shape": (lambda k: later(lambda a, b: a / b, k.x, k.m.ones(2)), RuntimeError, _BCAST.format(3, 2, 0)),
    "pow_shape": (lambda k: later(lambda a, b: a ** b, k.x, k.m.ones(2)), RuntimeError, _BCAST.format(3, 2, 0)),
    "maximum_shape": (lambda k: later(k.m.maximum, k.x, k.m.ones(2)), RuntimeError, _BCAST.format(3, 2, 0)),
    "mm_shape": (lambda k: later(lambda a: a @ a, k.A), RuntimeError,
                 "mat1 and mat2 shapes cannot be multiplied (2x3 and 2x3)"),
    "mm_fn_shape": (lambda k: later(k.m.mm, k.A, k.A), RuntimeError,
                    "mat1 and mat2 shapes cannot be multiplied (2x3 and 2x3)"),
    "mv_shape": (lambda k: later(lambda a, b: a @ b, k.A, k.m.ones(2)), RuntimeError,
                 "size mismatch, got input (2), mat (2x3), vec (2)"),
    "dot_shape": (lambda k: later(lambda a, b: a @ b, k.x, k.c), RuntimeError,
                  "inconsistent tensor size, expected tensor [3] and src [4] to have the same number of elements, "
                  "but got 3 and 4 elements respectively"),
    "matmul_0d": (lambda k: later(lambda a, b: a @ b, k.m.tensor(2.0, requires_grad=True), k.x), RuntimeError,
                  "both arguments to matmul need to be at least 1D, but they are 0D and 1D"),
    "int_requires_grad_": (lambda k: later(lambda i: i.requires_grad_(), k.m.tensor([1, 2])), RuntimeError,
                           "only Tensors of floating point dtype can require gradients"),
    "int_requires_grad_setter": (lambda k: later(lambda i: setattr(i, "requires_grad", True), k.m.tensor([1, 2])),
                                 RuntimeError, "only Tensors of floating point and complex dtype can require "
                                               "gradients"),
    "backward_no_grad": (lambda k: later(lambda t: t.backward(), k.m.ones(3).sum()), RuntimeError,
                         "element 0 of tensors does not require grad and does not have a grad_fn"),
    "backward_non_scalar": (lambda k: later(lambda y: y.backward(), k.x * 2), RuntimeError,
                            "grad can be implicitly created only for scalar outputs"),
    "backward_grad_shape": (lambda k: later(lambda y, g: y.backward(g), k.x * 2, k.m.ones(4)), RuntimeError,
                            "Mismatch in shape: grad_output[0] has a shape of torch.Size([4]) and output[0] has a "
                            "shape of torch.Size([3])."),
    "item_many": (lambda k: later(lambda t: t.item(), k.x), RuntimeError,
                  "a Tensor with 3 elements cannot be converted to Scalar"),
    "item_many_result": (lambda k: later(lambda t: t.item(), k.A * 2), RuntimeError,
                         "a Tensor with 6 elements cannot be converted to Scalar"),
    "item_empty": (lambda k: later(lambda t: t.item(), k.m.ones(0)), RuntimeError,
                   "a Tensor with 0 elements cannot be converted to Scalar"),
    "float_many": (lambda k: later(float, k.c), ValueError,
                   "only one element tensors can be converted to Python scalars"),
    "bool_many": (lambda k: later(bool, k.c), RuntimeError,
                  "Boolean value of Tensor with more than one value is ambiguous"),
    "index_oob": (lambda k: later(lambda t: t[5], k.x), IndexError,
                  "index 5 is out of bounds for dimension 0 with size 3"),
    "index_oob_neg": (lambda k: later(lambda t: t[-4], k.x), IndexError,
                      "index -4 is out of bounds for dimension 0 with size 3"),
    "index_oob_dim1": (lambda k: later(lambda t: t[:, 3], k.A), IndexError,
                       "index 3 is out of bounds for dimension 1 with size 3"),
    "index_oob_row": (lambda k: later(lambda t: t[2], k.A), IndexError,
                      "index 2 is out of bounds for dimension 0 with size 2"),
    "index_too_many": (lambda k: later(lambda t: t[0, 0, 0], k.A), IndexError,
                       "too many indices for tensor of dimension 2"),
    "index_0d": (lambda k: later(lambda t: t[0], k.m.tensor(1.0)), IndexError,
                 "invalid index of a 0-dim tensor. Use `tensor.item()` in Python or `tensor.item<T>()` in C++ to "
                 "convert a 0-dim tensor to a number"),
    "index_tensor_oob": (lambda k: later(lambda t, i: t[i], k.x, k.m.tensor([0, 5])), IndexError,
                         "index 5 is out of bounds for dimension 0 with size 3"),
    "index_float_tensor": (lambda k: later(lambda t, i: t[i], k.x, k.m.tensor([0.0])), IndexError,
                           "tensors used as indices must be long, int, byte or bool tensors"),
    "dim_sum": (lambda k: later(lambda t: t.sum(2), k.A), IndexError, _DIM.format(-2, 1, 2)),
    "dim_sum_neg": (lambda k: later(lambda t: t.sum(-3), k.A), IndexError, _DIM.format(-2, 1, -3)),
    "dim_mean": (lambda k: later(lambda t: t.mean(dim=3), k.A), IndexError, _DIM.format(-2, 1, 3)),
    "dim_transpose": (lambda k: later(lambda t: t.transpose(0, 5), k.A), IndexError, _DIM.format(-2, 1, 5)),
    "dim_size": (lambda k: later(lambda t: t.size(2), k.A), IndexError, _DIM.format(-2, 1, 2)),
    "dim_softmax": (lambda k: later(k.m.softmax, k.x, 2), IndexError, _DIM.format(-1, 0, 2)),
    "dim_unsqueeze": (lambda k: later(lambda t: t.unsqueeze(3), k.x), IndexError, _DIM.format(-2, 1, 3)),
    "dim_cat": (lambda k: later(lambda t: k.m.cat([t, t], 2), k.x), IndexError, _DIM.format(-1, 0, 2)),
    "dim_max": (lambda k: later(lambda t: t.max(dim=2), k.A), IndexError, _DIM.format(-2, 1, 2)),
    "dim_squeeze": (lambda k: later(lambda t: t.squeeze(4), k.A), IndexError, _DIM.format(-2, 1, 4)),
    "dim_permute": (lambda k: later(lambda t: t.permute(0, 2), k.A), IndexError, _DIM.format(-2, 1, 2)),
    "view_non_contiguous": (lambda k: later(lambda t: t.view(6), k.A.t()), RuntimeError,
                            "view size is not compatible with input tensor's size and stride (at least one "
                            "dimension spans across two contiguous subspaces). Use .reshape(...) instead."),
    "view_bad_numel": (lambda k: later(lambda t: t.view(4), k.A), RuntimeError,
                       "shape '[4]' is invalid for input of size 6"),
    "reshape_bad_numel": (lambda k: later(lambda t: t.reshape(4), k.A), RuntimeError,
                          "shape '[4]' is invalid for input of size 6"),
    "expand_bad": (lambda k: later(lambda t: t.expand(2, 4), k.x), RuntimeError,
                   "The expanded size of the tensor (4) must match the existing size (3) at non-singleton dimension "
                   "1.  Target sizes: [2, 4].  Tensor sizes: [3]"),
    "t_3d": (lambda k: later(lambda t: t.t(), k.m.ones(2, 2, 2)), RuntimeError,
             "t() expects a tensor with <= 2 dimensions, but self is 3D"),
    "cat_ndim": (lambda k: later(lambda a, b: k.m.cat([a, b]), k.A, k.x), RuntimeError,
                 "Tensors must have same number of dimensions: got 2 and 1"),
    "where_shape": (lambda k: later(k.m.where, k.m.ones(3) > 0, k.x, k.m.ones(4)), RuntimeError,
                    _BCAST.format(3, 4, 0)),
    "numpy_requires_grad": (lambda k: later(lambda t: t.numpy(), k.x), RuntimeError,
                            "Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy() instead."),
    "numpy_requires_grad_result": (lambda k: later(lambda t: t.numpy(), k.x * 2), RuntimeError,
                                   "Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy() "
                                   "instead."),
    "leaf_in_place_fill": (lambda k: later(lambda t: t.fill_(0.0), k.x), RuntimeError, _NP_INPLACE),
    "leaf_in_place_zero": (lambda k: later(lambda t: t.zero_(), k.x), RuntimeError, _NP_INPLACE),
    "in_place_bcast_out": (lambda k: later(lambda a, b: a.add_(b), k.m.ones(3), k.m.ones(2, 3)), RuntimeError,
                           "output with shape [3] doesn't match the broadcast shape [2, 3]"),
    "setitem_oob": (lambda k: later(lambda t: t.__setitem__(5, 1.0), k.m.ones(3)), IndexError,
                    "index 5 is out of bounds for dimension 0 with size 3"),
    "setitem_0d": (lambda k: later(lambda t: t.__setitem__(0, 1.0), k.m.tensor(2.0)), IndexError,
                   "invalid index of a 0-dim tensor. Use `tensor.item()` in Python or `tensor.item<T>()` in C++ to "
                   "convert a 0-dim tensor to a number"),
    "setitem_shape_basic": (lambda k: later(lambda t, v: t.__setitem__((slice(None), 0), v), k.m.ones(2, 3),
                                            k.m.ones(3)), RuntimeError,
                            "The expanded size of the tensor (2) must match the existing size (3) at non-singleton "
                            "dimension 0.  Target sizes: [2].  Tensor sizes: [3]"),
    "setitem_shape_advanced": (lambda k: later(lambda t, i, v: t.__setitem__(i, v), k.m.ones(3), k.m.tensor([0, 1]),
                                               k.m.ones(3)), RuntimeError,
                               "shape mismatch: value tensor of shape [3] cannot be broadcast to indexing result of "
                               "shape [2]"),
    "requires_grad_false_non_leaf": (lambda k: later(lambda y: y.requires_grad_(False), k.x * 2), RuntimeError,
                                     "you can only change requires_grad flags of leaf variables. If you want to use "
                                     "a computed variable in a subgraph that doesn't require differentiation use "
                                     "var_no_grad = var.detach()."),
    "from_numpy_negative_strides": (lambda k: later(k.m.from_numpy, np.arange(3.0)[::-1]), ValueError,
                                    "At least one stride in the given numpy array is negative, and tensors with "
                                    "negative strides are not currently supported. (You can probably work around "
                                    "this by making a copy of your array  with array.copy().) "),
    "ragged_list": (lambda k: later(k.m.tensor, [[1.0], [1.0, 2.0]]), ValueError,
                    "expected sequence of length 1 at dim 1 (got 2)"),
    "int_tensor_requires_grad_ctor": (lambda k: later(lambda: k.m.tensor([1, 2], requires_grad=True)),
                                      RuntimeError,
                                      "Only Tensors of floating point and complex dtype can require gradients"),
}

_MSG_XFAIL = {}   # (all fixed upstream; see the report)


def _params(with_xfail):
    out = []
    for k in CASES:
        if with_xfail and k in _MSG_XFAIL:
            out.append(pytest.param(k, marks=pytest.mark.xfail(strict=True, reason=_MSG_XFAIL[k])))
        else:
            out.append(k)
    return out


# Ops that must read values to check their arguments (integer-array indices): DESIGN invariant 2 lets them
# flush pending records first, so the flush mark may move; nothing may be recorded.
_READS_VALUES = {"index_tensor_oob", "setitem_shape_advanced"}
# Calls whose operand is necessarily made before the check (in torch too): not part of the arena test.
_MAKES_OPERAND = {"int_tensor_requires_grad_ctor", "ragged_list"}


def _leaves(k):
    return (k.x, k.A)


@pytest.mark.parametrize("name", _params(True))
def test_error_type_and_message(name):
    build, etype, msg = CASES[name]
    call = build(Ctx(tg))
    with pytest.raises(etype) as ei:
        call()
    assert type(ei.value) is etype
    assert str(ei.value) == msg


@pytest.mark.parametrize("name", _params(False))
def test_error_leaves_tape_and_grads_unchanged(name):
    build, etype, _ = CASES[name]
    k = Ctx(tg)
    call = build(k)
    pending = tg.sin(k.x) * 2 + k.c[:3]   # unflushed records: the failing call must neither record nor flush
    assert TAPE.flushed < TAPE.next_index
    before = tape_state(*_leaves(k))
    with pytest.raises(etype):
        call()
    after = tape_state(*_leaves(k))
    if name in _READS_VALUES:
        before.pop("flushed")
        after.pop("flushed")
    assert after == before
    assert k.x.grad.tolist() == [2.0, 4.0, 6.0]
    assert k.A.grad.tolist() == [[2.0] * 3] * 2
    # and the graph and the pending values are still right
    np.testing.assert_allclose(pending.tolist(), 2 * np.sin([1.0, 2.0, 3.0]) + [1.0, 2.0, 3.0], rtol=1e-6)


@pytest.mark.parametrize("name", [k for k in _params(False) if k not in _MAKES_OPERAND])
def test_error_allocates_nothing(name):
    """DESIGN invariant 2: check, infer, *then* allocate: a failing op leaves the arena as it was."""
    build, etype, _ = CASES[name]
    call = build(Ctx(tg))
    before = arena_state()
    with pytest.raises(etype):
        call()
    assert arena_state() == before


@pytest.mark.parametrize("name", list(CASES))
def test_hand_table_vs_torch(name):
    torch = real_torch()
    build, etype, msg = CASES[name]
    assert outcome(build(Ctx(torch))) == (etype.__name__, msg)


@pytest.mark.parametrize("name", _params(True))
def test_error_vs_torch(name):
    torch = real_torch()
    build, _, _ = CASES[name]
    assert outcome(build(Ctx(tg))) == outcome(build(Ctx(torch)))


def _second_backward_setup():
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    z = tg.sin(x ** 2)
    z.backward(tg.ones_like(z))
    s = tg.sin(x ** 2).sum()
    s.backward()
    pending = x.detach() * 3
    return x, z, s, pending


def test_second_backward_error_leaves_state_unchanged():
    x, z, s, pending = _second_backward_setup()
    g = x.grad.tolist()
    for call in (lambda: s.backward(), lambda: z.backward(tg.ones_like(z))):
        before = tape_state(x)
        with pytest.raises(RuntimeError) as ei:
            call()
        assert str(ei.value) == SECOND_TIME
        after = tape_state(x)
        before.pop("flushed")
        after.pop("flushed")
        assert after == before and x.grad.tolist() == g
    assert pending.tolist() == [3.0, 6.0]


def test_second_backward_error_does_not_flush():
    x, z, s, pending = _second_backward_setup()
    before = tape_state(x)
    with pytest.raises(RuntimeError):
        s.backward()
    assert tape_state(x) == before


def test_second_backward_error_with_gradient_does_not_flush():
    x, z, s, pending = _second_backward_setup()
    g = tg.ones_like(z)
    before = tape_state(x)
    with pytest.raises(RuntimeError):
        z.backward(g)
    assert tape_state(x) == before


def test_failed_op_then_graph_still_works():
    x = tg.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = x * x
    for bad in (lambda: y + tg.ones(2), lambda: y @ tg.ones(2), lambda: y[7], lambda: y.sum(3),
                lambda: y.view(2, 2)):
        with pytest.raises((RuntimeError, IndexError)):
            bad()
    y.sum().backward()
    assert x.grad.tolist() == [2.0, 4.0, 6.0]
