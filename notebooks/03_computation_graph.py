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
# # 03 · The computation graph: `grad_fn`, `next_functions`, `AccumulateGrad`
#
# This notebook follows the tutorial article `shared/seeds/002` ("Pytorch——自动求导机制"),
# with `import tapegrad as torch`. The headers are the article's own.
#
# The article shows its results as screenshots, which are not in the text we have. So
# every step is re-run here, and each printout comes from the code. The main claim needs
# a correction (**⚠️**): `next_functions` is a tuple of `(node, index)` pairs, not an
# `AccumulateGrad`.
#
# Along the way we draw the graph (`tapegrad.viz.make_dot`, like torchviz) next to the
# tape it is made of. In tapegrad the graph objects are views of tape records, and the
# backward pass is one sweep over those records from the last to the first.

# %%
import tapegrad as torch
from tapegrad.viz import graph_and_tape, make_dot

# %% [markdown]
# ## Tensor
#
# A tensor has three attributes that matter for autograd:
#
# * `data`: the values,
# * `grad`: the gradient, filled in by `backward()`,
# * `grad_fn`: the node (PyTorch calls it a `Function`) that computes the gradients of the
#   tensor's inputs.
#
# A new tensor does not track gradients unless you create it with `requires_grad=True`.

# %%
t = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
print(t.requires_grad, t.grad, t.grad_fn)
print(t.data)

# %% [markdown]
# ## Autograd
#
# Tensors that you create yourself have `grad_fn = None` (the article writes "grand_fn").
# Once an operation uses a tensor that requires grad, its result's `grad_fn` points to
# that operation's backward node. We use the article's function, z = x² + y³.

# %%
x = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
y = torch.tensor([[0.5, 1.0], [1.5, 2.0]], requires_grad=True)
print(x.grad_fn, y.grad_fn)
z = x ** 2 + y ** 3
print(z)
print(z.grad_fn)

# %% [markdown]
# Tensors and nodes make up a directed acyclic graph. Here it is, with the tape listing
# it is built from. Boxes: blue = leaves, grey = `grad_fn` nodes (with their tape record
# `%i`), orange = values saved for backward (`pow` saves its input `self`), green = the
# output. Arrows run from an input to the node that uses it.

# %% figure="z_graph"
graph_and_tape(z, params={"x": x, "y": y, "z": z})

# %% [markdown]
# ## Autograd过程解析
#
# `dir(z)` lists everything a tensor has. Here are the autograd-related names:

# %%
[a for a in dir(z) if a in ("backward", "data", "detach", "grad", "grad_fn", "is_leaf",
                            "requires_grad", "retain_grad")]

# %% [markdown]
# **⚠️ The article's `dir(z)` listing** comes from an old PyTorch. It still has `ifft`,
# which PyTorch removed from tensors in 1.8 (it lives in `torch.fft` now).

# %%
assert not hasattr(z, "ifft")

# %% [markdown]
# `is_leaf`: tensors you create (`x`, `y`) are leaves. Results of operations (`z`) are
# not.

# %%
x.is_leaf, y.is_leaf, z.is_leaf

# %% [markdown]
# `z.grad_fn` is an `AddBackward0`. The name says it computes the gradients of an
# addition. The object's address varies from run to run.

# %%
z.grad_fn

# %%
type(z.grad_fn).__name__, z.grad_fn.name(), "next_functions" in dir(z.grad_fn)

# %% [markdown]
# `z.grad_fn.next_functions` is a tuple of length 2, because `z = x**2 + y**3` adds two
# things. Both entries hold the backward node of a `pow`:

# %%
z.grad_fn.next_functions

# %%
[(type(node).__name__, i) for node, i in z.grad_fn.next_functions]

# %% [markdown]
# Digging one level deeper (继续深挖):

# %%
z.grad_fn.next_functions[0][0].next_functions

# %% [markdown]
# **⚠️ The article says** `z.grad_fn.next_functions[0][0].next_functions` "的类型是
# AccumulateGrad" (is of type AccumulateGrad). **What really happens:** it is a *tuple* of
# `(node, input_index)` pairs, like every `next_functions`. The `AccumulateGrad` node is
# its first element's node, `[0][0]`. That node's `.variable` *is* the leaf tensor `x`.
# It is the same object, not a copy, so the article's `id()` check holds.

# %%
nf = z.grad_fn.next_functions[0][0].next_functions
x_leaf = nf[0][0]
print(type(nf).__name__, len(nf), type(nf[0]).__name__)
print(type(x_leaf).__name__, x_leaf.name())
print(x_leaf.variable)
print("id(x_leaf.variable) == id(x):", id(x_leaf.variable) == id(x), "   x_leaf.variable is x:", x_leaf.variable is x)
assert isinstance(nf, tuple) and type(nf[0][0]).__name__ == "AccumulateGrad"
assert type(nf).__name__ != "AccumulateGrad"
assert x_leaf.variable is x
y_leaf = z.grad_fn.next_functions[1][0].next_functions[0][0]
assert y_leaf.variable is y

# %% [markdown]
# In tapegrad each grey box is one tape record, and `record_index` says which one. The
# boxes in the picture number `z`'s history from `%0`, as `torch.tape(z)` does:

# %%
print(torch.tape(z, names={id(x): "x", id(y): "y"}))
for node, _ in z.grad_fn.next_functions:
    print(node.name(), "is record", node.record_index, "of the whole tape")
print(z.grad_fn.name(), "is record", z.grad_fn.record_index)

# %% [markdown]
# When `backward()` runs, autograd updates the leaves' `grad` through `grad_fn`.
# z = x² + y³, so ∂z/∂x = 2x and ∂z/∂y = 3y²:

# %%
z.backward(torch.ones_like(z))
print(x.grad)
print(y.grad)
assert torch.allclose(x.grad, 2 * x.detach()) and torch.allclose(y.grad, 3 * y.detach() ** 2)

# %% [markdown]
# ## 结论
#
# The article's summary of how autograd works:
#
# * `z.backward()` calls the node that `z.grad_fn` refers to.
# * Each node passes gradients on to the nodes in its `next_functions`, recursively, and
#   the recursion stops at `AccumulateGrad` nodes (the leaves).
# * The results land in the `grad` of the tensors that the `AccumulateGrad` nodes'
#   `variable` refer to (`x`, `y`).
# * When the walk ends, every leaf's `grad` is up to date.
#
# The same walk written out by hand: a depth-first visit of `next_functions`, printing
# each node and, at the leaves, the tensor that `variable` refers to:

# %%
def walk(node, depth=0, names=None):
    pad = "    " * depth
    if node is None:                      # an input that needs no gradient
        print(pad + "None")
        return
    if type(node).__name__ == "AccumulateGrad":
        v = node.variable
        print(pad + f"AccumulateGrad -> variable {names.get(id(v), '?')} (grad {'set' if v.grad is not None else 'None'})")
        return
    print(pad + f"{node.name()}  (record {node.record_index})")
    for child, _ in node.next_functions:
        walk(child, depth + 1, names)


walk(z.grad_fn, names={id(x): "x", id(y): "y"})

# %% [markdown]
# tapegrad does not run this recursion. The nodes are only a view. `backward()` makes
# *one* jitted pass over the tape records, from the last to the first (`%2`, then `%1`
# and `%0`), and adds each record's contribution to the gradient buffers. After that
# pass, the records' saved values are freed, as in PyTorch. The picture and the listing
# show them `[freed]`, and a second `backward()` without `retain_graph=True` raises
# PyTorch's error:

# %% figure="z_graph_freed"
graph_and_tape(z, params={"x": x, "y": y, "z": z})

# %%
try:
    z.backward(torch.ones_like(z))
except RuntimeError as e:
    print("RuntimeError:", str(e)[:75] + "…")

# %% [markdown]
# ### One more picture: a small network, with named parameters
#
# `make_dot(output, params=dict(model.named_parameters()))` names the leaves, as
# torchviz does. (PyTorch's graph has one more node per layer: a `TBackward0` between
# each weight and its `AddmmBackward0`. tapegrad's `addmm` record reads the weight
# directly.)

# %% figure="mlp_graph"
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
out = model(torch.randn(2, 3))
make_dot(out, params=dict(model.named_parameters()))

# %% [markdown]
# ## 引用
#
# The article cites [pytorch-handbook](https://github.com/zergtant/pytorch-handbook)
# (chapter 2.1.2, autograd). For the real node classes, see PyTorch's
# `torch/csrc/autograd/` and `tools/autograd/derivatives.yaml`. For tapegrad's, see
# `tapegrad/autograd/graph.py` (the view) and `tapegrad/ops/table.py` (one row per op:
# grad_fn name, what it saves, the VJP).
