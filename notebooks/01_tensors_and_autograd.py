# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Tensors and autograd
#
# This notebook follows the tutorial article `shared/seeds/000` (a CSDN post on PyTorch's
# autograd, in Chinese) section by section. The headers are the article's own section
# titles. Every code cell runs the article's code with `import tapegrad as torch`, and
# tapegrad prints what PyTorch 2.13 prints.
#
# The article gets a few things wrong: two printed outputs, one explanation, and one code
# sample that raises an error in PyTorch. Each of these gets a cell marked **⚠️**. The
# cell shows the article's claim, the real result and the reason, and an `assert` checks
# the real result each time the notebook runs.
#
# tapegrad records every operation as one row of a flat *tape*. We show the graph picture
# (`tapegrad.viz.make_dot`, like torchviz) next to that tape listing, so you can see that
# the graph PyTorch talks about *is* the tape.

# %%
import tapegrad as torch
from tapegrad.viz import graph_and_tape, make_dot


def raises(fn):
    """Run fn(); return the exception it raised (None if it did not raise)."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        return e
    return None


# %% [markdown]
# ## 1. torch.Tensor 和 .requires_grad 属性
#
# A tensor is an n-dimensional array. If you create it with `requires_grad=True`, autograd
# records every operation that uses it.

# %%
x = torch.tensor([1.0, 2.0], requires_grad=True)
x, x.requires_grad, torch.tensor([1.0, 2.0]).requires_grad

# %% [markdown]
# ## 2. 反向传播 .backward()
#
# `y.backward()` computes the gradients of `y` with respect to the leaves. If `y` is a
# scalar, you call it with no argument. Otherwise you pass a tensor of `y`'s shape. That
# tensor is the vector in the vector-Jacobian product.

# %%
y = (x ** 2).sum()          # a scalar: no argument needed
y.backward()
x.grad

# %%
x = torch.tensor([1.0, 2.0], requires_grad=True)
y = x ** 2                  # not a scalar
err = raises(lambda: y.backward())
print("y.backward():", type(err).__name__, "-", err)
y.backward(torch.ones_like(y))
print("y.backward(torch.ones_like(y)) -> x.grad =", x.grad)
assert isinstance(err, RuntimeError) and "only for scalar outputs" in str(err)

# %% [markdown]
# ## 3. 分离与不跟踪
#
# `detach()` returns a tensor that shares memory with the original but has no history.
# Inside `with torch.no_grad():` nothing is recorded at all.

# %%
x = torch.tensor([1.0, 2.0], requires_grad=True)
d = x.detach()
d[0] = 10.0                 # shares memory: x changes too
print(x, d.requires_grad)
with torch.no_grad():
    w = x * 2
print(w.requires_grad, w.grad_fn)

# %% [markdown]
# ## 4. Function 类和计算图
#
# Each tensor made by an operation points to the node that made it (`grad_fn`). Tensors
# that you create yourself are *leaves*, and their `grad_fn` is `None`.

# %%
x = torch.tensor([1.0, 2.0], requires_grad=True)
y = x * 3
print(x.grad_fn, x.is_leaf)
print(type(y.grad_fn).__name__, y.is_leaf)

# %% [markdown]
# ## 5. 什么是张量?
#
# A scalar has 0 dimensions, a vector 1, a matrix 2. Higher-dimensional tensors stack
# matrices.

# %%
for t in (torch.tensor(5), torch.tensor([1, 2, 3]), torch.tensor([[1, 2, 3], [4, 5, 6]])):
    print(t.dim(), tuple(t.shape))

# %% [markdown]
# ## 6. 使用 PyTorch 创建张量
#
# This is the article's code, run as written.

# %%
# 创建一个标量(0维张量)
scalar = torch.tensor(5)
# 创建一个向量(1维张量)
vector = torch.tensor([1, 2, 3])
# 创建一个矩阵(2维张量)
matrix = torch.tensor([[1, 2, 3], [4, 5, 6]])
# 创建一个三维张量
three_d_tensor = torch.tensor([[[1, 2], [3, 4]], [[5, 6], [7, 8]]])
print(scalar)
print(vector)
print(matrix)
print(three_d_tensor)

# %% [markdown]
# **⚠️ The article says** "可以使用 `torch.Tensor` 来创建张量" (you create tensors with
# `torch.Tensor`), but its own examples use `torch.tensor`, and the two are different.
# **What really happens:** `torch.Tensor(5)` is an *uninitialised float tensor of shape
# (5,)*, not the scalar 5. The class constructor reads integers as sizes. Use
# `torch.tensor(data)` to build a tensor from data. (PyTorch fills the new memory with
# whatever was there before, so we print only the shape.)

# %%
a, b = torch.Tensor(5), torch.tensor(5)
print("torch.Tensor(5):", a.shape, a.dtype, "   torch.tensor(5):", b.shape, b.dtype, b.item())
assert a.shape == (5,) and a.dtype == torch.float32
assert b.shape == () and b.dtype == torch.int64 and b.item() == 5

# %% [markdown]
# ## 7. 什么是梯度和自动微分?
#
# A gradient tells you how the loss changes when each parameter changes a little.
# Autograd computes gradients for you. It records the forward computation, then applies
# the chain rule backwards through the recorded steps.

# %% [markdown]
# ## 8. .requires_grad 属性
#
# The article's example. `requires_grad` is `False` unless you ask for it.

# %%
# 创建一个张量并开启梯度计算
x = torch.tensor([1.0, 2.0], requires_grad=True)
print(x.requires_grad)  # 输出: True
print(torch.tensor([1.0, 2.0]).requires_grad)

# %% [markdown]
# ## 9. 反向传播 .backward()
#
# For y = x², dy/dx = 2x = 4 at x = 2. The article's comment says "输出: 4.0". What
# `print` actually shows is the 0-dimensional tensor `tensor(4.)`.

# %%
# 假设我们有一个简单的操作
x = torch.tensor(2.0, requires_grad=True)  # 创建一个张量 x
y = x ** 2  # y = x^2
# 计算 y 相对于 x 的梯度
y.backward()  # 计算梯度
print(x.grad)  # 输出: 4.0,因为 dy/dx = 2x,x=2 时,dy/dx=4
assert x.grad.item() == 4.0

# %% [markdown]
# ## 10. 如何防止梯度计算
#
# The article's two ways: `detach()` and `torch.no_grad()`.

# %%
x = torch.tensor(2.0, requires_grad=True)
y = x ** 2
z = y.detach()  # z 与 y 共享数据,但是不会被跟踪
print(z.requires_grad)  # 输出: False

with torch.no_grad():
    z = x ** 2  # 这个操作不会计算梯度
print(z.requires_grad, z.grad_fn)

# %% [markdown]
# ## 11. 什么是 grad_fn
#
# `grad_fn` is the node in the graph that produced a tensor. PyTorch names the class
# after the operation's backward formula, for example `PowBackward0`. In tapegrad each
# node is a view of one *tape record*, and `grad_fn.record_index` is that record's
# number.

# %% [markdown]
# ## 12. grad_fn 的作用
#
# Each node links to the nodes of its inputs through `next_functions`. `backward()`
# walks these links from the output back to the leaves. tapegrad does the same walk as
# one pass over the tape records, from the last record to the first.

# %% [markdown]
# ## 13. 示例解释
#
# The article's example.

# %%
# 创建一个张量 x,并设置 requires_grad=True
x = torch.tensor([[1.0, 1.0], [1.0, 1.0]], requires_grad=True)
# 进行一个操作 y = x ** 2
y = x ** 2
# 打印 y 和 y 的 grad_fn
print(y)
print(y.grad_fn)

# %% [markdown]
# **⚠️ The article says** `print(y)` shows
# `tensor([[1., 1.],[1., 1.]], grad_fn=<PowBackward0>)` on one line. **What really
# happens:** PyTorch prints a 2×2 tensor on two lines, with the second row lined up under
# the first (output above). The address in `<PowBackward0 object at 0x…>` changes from
# run to run.

# %%
assert str(y) == "tensor([[1., 1.],\n        [1., 1.]], grad_fn=<PowBackward0>)"
assert str(y) != "tensor([[1., 1.],[1., 1.]], grad_fn=<PowBackward0>)"

# %% [markdown]
# ## 14. 解释输出
#
# `y` is a 2×2 tensor. `grad_fn=<PowBackward0>` says that `x ** 2` made it.
# `PowBackward0` is the backward function of `pow`.

# %%
type(y.grad_fn).__name__, y.grad_fn.name(), y.is_leaf, x.is_leaf

# %% [markdown]
# ## 15. 计算图和反向传播
#
# `y` is not a scalar, so we pass `torch.ones_like(y)` as the gradient.

# %%
# 计算梯度
y.backward(torch.ones_like(y))
# 打印 x 的梯度
print(x.grad)

# %% [markdown]
# As above, the real printout has two lines. The article prints
# `tensor([[2., 2.],[2., 2.]])` on one.

# %%
assert str(x.grad) == "tensor([[2., 2.],\n        [2., 2.]])"

# %% [markdown]
# ## 16. 解释反向传播
#
# `torch.ones_like(y)` weights every element of `y` by 1, so `x.grad` is the
# element-wise derivative dy/dx = 2x = 2 at x = 1.

# %% [markdown]
# ## 17. 总结
#
# * `grad_fn` points to the operation that made a tensor. Leaves have `None`.
# * Together the `grad_fn` nodes form the computation graph. In tapegrad they are views of
#   the tape records.
# * `backward()` walks the graph and fills `.grad` of the leaves.

# %% [markdown]
# # 例子
#
# ## 1. 定义张量 x 和计算 y

# %%
# 定义张量 x,并设置 requires_grad=True
x = torch.tensor([1.0, 2.0], requires_grad=True)
# 计算 y = x ** 2
y = x ** 2
print("y:", y)

# %% [markdown]
# ## 2. 计算 z = sin(y)

# %%
# 计算 z = sin(y)
z = torch.sin(y)
print("z:", z)

# %% [markdown]
# **⚠️ The article says** `z: tensor([0.8415, 0.9093], grad_fn=<SinBackward0>)`.
# **What really happens:** y = [1, 4], and sin(4) = −0.7568, so
# `z: tensor([ 0.8415, -0.7568], grad_fn=<SinBackward0>)`. The article's 0.9093 is sin(2).
# It looks as if the article computed sin(x) instead of sin(x²).

# %%
article_z = torch.tensor([0.8415, 0.9093])
print("article:", article_z, "  real:", z.detach(), "  sin(x):", torch.sin(x.detach()))
assert torch.allclose(z.detach(), torch.tensor([0.8415, -0.7568]), atol=1e-4)
assert torch.allclose(torch.sin(x.detach()), article_z, atol=1e-4)   # the article's numbers are sin(x)

# %% [markdown]
# ### The graph behind `z`, and the tape it is made of
#
# The picture follows `z.grad_fn.next_functions` down to the leaf `x` (blue) and its
# `AccumulateGrad` node. Each grey box is a `grad_fn` node, labelled with PyTorch's name
# and the tape record it stands for (`%1:f32[2] = sin %0`). Orange boxes are the values
# each backward rule saves: `sin` saves its input (`self`), because d sin(y)/dy = cos(y).
# On the right is `torch.tape(z)`, the same two records as text.

# %% figure="z_graph"
graph_and_tape(z, params={"x": x, "z": z})

# %% [markdown]
# The picture and the listing both number `z`'s history from `%0`. `grad_fn.record_index`
# is the record's position on the whole tape, which also holds the records made by
# earlier cells. `grad_fn` and `next_functions`, which the picture walks, are built from
# these records when you ask for them:

# %%
print(z.grad_fn.name(), "-> record", z.grad_fn.record_index)
(pow_node, _), = z.grad_fn.next_functions
(acc, _), = pow_node.next_functions
print(pow_node.name(), "-> record", pow_node.record_index)
print(type(acc).__name__, "-> variable is x:", acc.variable is x)
assert pow_node.record_index < z.grad_fn.record_index

# %% [markdown]
# ## 3. 反向传播计算梯度

# %%
# 计算梯度
z.backward(torch.ones_like(z))
# 打印 x 的梯度
print("x.grad:", x.grad)

# %% [markdown]
# **⚠️ The article says** `x.grad: tensor([1.6830, 1.8186])`. **What really happens:**
# dz/dx = cos(x²)·2x = [cos(1)·2, cos(4)·4] = `tensor([ 1.0806, -2.6146])`. The article's
# numbers are 2 × its own wrong z, 2·[0.8415, 0.9093], so they come from the same mix-up.

# %%
expected = 2 * x.detach() * torch.cos(x.detach() ** 2)
print("2x·cos(x²) =", expected, "   article:", torch.tensor([1.6830, 1.8186]))
assert torch.allclose(x.grad, torch.tensor([1.0806, -2.6146]), atol=1e-4)
assert torch.allclose(x.grad, expected)
assert torch.allclose(2 * article_z, torch.tensor([1.6830, 1.8186]), atol=1e-4)

# %% [markdown]
# After `backward()` the records are *freed*: the values they saved for the backward pass
# are released. The picture draws the saved values dashed, and the listing marks the
# records `[freed]`:

# %% figure="z_graph_freed"
graph_and_tape(z, params={"x": x, "z": z})

# %% [markdown]
# ## 4. 解释每一步
#
# 1. `x = [1., 2.]` is a leaf that requires grad, and `y = x ** 2 = [1., 4.]` has
#    `grad_fn=<PowBackward0>`.
# 2. `z = sin(y) = [0.8415, -0.7568]` has `grad_fn=<SinBackward0>`.
# 3. `z.backward(torch.ones_like(z))` runs the tape backwards. `sin`'s rule multiplies by
#    cos(y), `pow`'s rule by 2x, and the result lands in `x.grad`.

# %% [markdown]
# ## 5. 详细计算过程
#
# The chain rule by hand: dz/dx = cos(y) · 2x.

# %%
xv = x.detach()
dz_dy = torch.cos(xv ** 2)
dy_dx = 2 * xv
print("dz/dy = cos(y) =", dz_dy)
print("dy/dx = 2x     =", dy_dx)
print("dz/dx          =", dz_dy * dy_dx)

# %% [markdown]
# **⚠️ The article says** dz[1]/dx[1] = −0.6536 · 4.0 = **−2.6144**. **What really
# happens:** cos(4) = −0.65364…, and −0.65364… · 4 = **−2.6146**. The article rounded
# cos(4) to four digits *before* multiplying.

# %%
c4 = torch.cos(torch.tensor(4.0, dtype=torch.float64))
print(f"cos(4) = {c4.item():.6f},  cos(4)·4 = {(c4 * 4).item():.6f},  -0.6536·4 = {-0.6536 * 4:.4f}")
assert round((c4 * 4).item(), 4) == -2.6146

# %% [markdown]
# **⚠️ The article says** the printed [1.6830, 1.8186] is "因为 PyTorch 在反向传播时会对梯度进行累加"
# (gradients accumulate), and that `x.grad.zero_()` followed by a second `z.backward(...)`
# fixes it. **What really happens:** (1) nothing had accumulated. It was the first
# backward, and `x.grad` was already right. (2) The second `backward` raises
# `RuntimeError: Trying to backward through the graph a second time`. The first backward
# freed the values the graph saved. You need `retain_graph=True` on the first call to
# backward through the same graph twice.

# %%
x.grad.zero_()
err = raises(lambda: z.backward(torch.ones_like(z)))
print(type(err).__name__ + ":", str(err)[:80] + "…")
assert isinstance(err, RuntimeError) and "backward through the graph a second time" in str(err)

# %% [markdown]
# Accumulation is real. It happens when you call `backward` twice on a graph you kept
# with `retain_graph=True`:

# %%
x = torch.tensor([1.0, 2.0], requires_grad=True)
z = torch.sin(x ** 2)
z.backward(torch.ones_like(z), retain_graph=True)
print("after one backward :", x.grad)
z.backward(torch.ones_like(z))
print("after two backwards:", x.grad, " (twice the gradient)")
assert torch.allclose(x.grad, 2 * torch.tensor([1.0806, -2.6146]), atol=1e-4)
x.grad.zero_()
print("after zero_()      :", x.grad)

# %% [markdown]
# ## 总结
#
# * x = [1., 2.], y = x² = [1., 4.], z = sin(y) = **[0.8415, −0.7568]**
# * `z.backward(torch.ones_like(z))` gives x.grad = 2x·cos(x²) = **[1.0806, −2.6146]**
#   the first time. Nothing accumulates unless you run backward again on a graph you kept.

# %% [markdown]
# # 区别
#
# The article compares `z.backward(...)` with `y.backward(...)` on the same graph.
#
# ## 1. 定义张量 x 和计算 y

# %%
# 定义张量 x,并设置 requires_grad=True
x = torch.tensor([1.0, 2.0], requires_grad=True)
# 计算 y = x ** 2
y = x ** 2
print("y:", y)

# %% [markdown]
# ## 2. 计算 z = sin(y)

# %%
# 计算 z = sin(y)
z = torch.sin(y)
print("z:", z)

# %% [markdown]
# ## 3. 反向传播计算梯度

# %%
# 计算梯度
z.backward(torch.ones_like(z))
# 打印 x 的梯度
print("x.grad (from z):", x.grad)

# %% [markdown]
# ## 4. 清零梯度

# %%
# 清零梯度
x.grad.zero_()

# %% [markdown]
# ## 5. 反向传播计算 y 的梯度
#
# **⚠️ The article says** `y.backward(torch.ones_like(y))` now prints
# `x.grad (from y): tensor([2., 4.])`. **What really happens:** it raises the same
# `RuntimeError`. `y`'s record (`pow`) is part of `z`'s graph, and `z.backward()` has
# already freed the value `pow` saved, which is `x`. The tape listing shows the freed
# records:

# %%
print(torch.tape(z, names={id(x): "x"}))
err = raises(lambda: y.backward(torch.ones_like(y)))
print(type(err).__name__ + ":", str(err)[:80] + "…")
assert isinstance(err, RuntimeError) and "backward through the graph a second time" in str(err)

# %% [markdown]
# What the article meant to show works if you build `y` again (or pass
# `retain_graph=True` to the first backward):

# %%
x = torch.tensor([1.0, 2.0], requires_grad=True)
y = x ** 2
# 计算梯度
y.backward(torch.ones_like(y))
# 打印 x 的梯度
print("x.grad (from y):", x.grad)
assert x.grad.tolist() == [2.0, 4.0]

# %% [markdown]
# ## 6. 对比 z 和 y 的梯度
#
# **⚠️ The article's comparison code** runs `z.backward(...)`, `x.grad.zero_()` and
# `z.backward(...)` again on one graph. As written, it raises at the second `backward`.
# With `retain_graph=True` on the first call it runs and prints the true gradients:

# %%
x = torch.tensor([1.0, 2.0], requires_grad=True)
y = x ** 2
z = torch.sin(y)
err = raises(lambda: (z.backward(torch.ones_like(z)), x.grad.zero_(), z.backward(torch.ones_like(z))))
print("as written:", type(err).__name__)
assert isinstance(err, RuntimeError)

x = torch.tensor([1.0, 2.0], requires_grad=True)
y = x ** 2
z = torch.sin(y)
z.backward(torch.ones_like(z), retain_graph=True)
x.grad.zero_()
z.backward(torch.ones_like(z), retain_graph=True)
print("x.grad (from z):", x.grad)
x.grad.zero_()
y.backward(torch.ones_like(y))
print("x.grad (from y):", x.grad)
assert x.grad.tolist() == [2.0, 4.0]

# %% [markdown]
# ## 7. 解释对比结果
#
# * `z.backward(...)`: dz/dx = cos(y)·2x = [0.5403·2, −0.6536·4] = **[1.0806, −2.6146]**
#   (the article prints [1.6830, 1.8186]).
# * `y.backward(...)`: dy/dx = 2x = **[2., 4.]**.
#
# The only difference is the extra factor cos(y) from `sin`. Both graphs share the `pow`
# record:

# %% figure="y_and_z_graph"
x = torch.tensor([1.0, 2.0], requires_grad=True)
y = x ** 2
z = torch.sin(y)
make_dot((y, z), params={"x": x, "y": y, "z": z})

# %% [markdown]
# ## 总结
#
# * `z.backward(torch.ones_like(z))`: gradient of sin(x²) = **[1.0806, −2.6146]**
# * `y.backward(torch.ones_like(y))`: gradient of x² = **[2., 4.]**
# * A graph can be walked backwards once. To walk it again, keep it with
#   `retain_graph=True`.
