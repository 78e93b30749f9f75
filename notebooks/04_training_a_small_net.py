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
# # 04 · Training a small net: fc1 → ReLU → fc2
#
# This notebook follows the Q&A article `shared/seeds/003` ("pytorch中反向传播是如何实现的"),
# with `import tapegrad as torch`. The headers are the article's own.
#
# The article's code runs as written. Two of its explanations are not what PyTorch does
# (**⚠️**): what kind of object `grad_fn` is, and where gradients are stored. After the
# article's single training step, we train its `Net` for real and plot the loss.

# %%
import warnings

import matplotlib.pyplot as plt

import tapegrad as torch
import tapegrad.nn as nn
import tapegrad.optim as optim
from tapegrad.viz import make_dot

warnings.filterwarnings("ignore", message="IProgress not found")   # no ipywidgets: a text bar
from tqdm.auto import tqdm  # noqa: E402

# %% [markdown]
# ## pytorch中反向传播是如何实现的
#
# The short answer: the forward pass records every operation, and `backward()` walks the
# record in reverse, applying the chain rule. An optimizer then uses the gradients to
# update the parameters. (In tapegrad the record is literally a tape, one row per
# operation.)
#
# ## 相关问题
#
# The article answers two follow-up questions: how backward is implemented, with
# reference to the source code, and how to implement back-propagation for a network.

# %% [markdown]
# ## pytorch中反向传播是如何实现的,结合相关源码进行讲述
#
# The article's example. `x` requires grad, y = x², loss = Σy:

# %%
# 创建张量并计算损失
x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
y = x ** 2
loss = y.sum()
# 反向传播并更新参数
loss.backward()
print(x.grad)
assert x.grad.tolist() == [2.0, 4.0, 6.0]

# %% [markdown]
# d(Σx²)/dx = 2x = [2, 4, 6]. The comment says "反向传播并更新参数" (back-propagate and
# update the parameters), but `backward()` only computes gradients. `x` is unchanged.
# Updating it is the optimizer's job, as in the next section.

# %%
print(x)
print(torch.tape(loss, names={id(x): "x"}))

# %% [markdown]
# **⚠️ The article says** "每个操作都会创建一个`torch.autograd.Function`对象" (every operation
# creates a `torch.autograd.Function` object). **What really happens:** built-in
# operations create *graph nodes* (`torch.autograd.graph.Node`), whose classes are named
# after the backward formula, like `PowBackward0` and `SumBackward0`. They are not
# instances of `torch.autograd.Function`, which is the base class for *custom*
# operations that you write yourself (`forward` and `backward` as static methods).

# %%
print(type(y.grad_fn).__name__, type(loss.grad_fn).__name__)
print(isinstance(y.grad_fn, torch.autograd.graph.Node))
assert isinstance(y.grad_fn, torch.autograd.graph.Node)
assert type(y.grad_fn).__name__ == "PowBackward0" and type(loss.grad_fn).__name__ == "SumBackward0"

# %% [markdown]
# **⚠️ The article says** backward computes "每个节点的梯度,并保存在对应张量的grad属性中" (the
# gradient of every node, stored in the `grad` attribute of the corresponding tensor).
# **What really happens:** only *leaves* get `.grad`. Intermediate tensors such as `y`
# keep `grad = None`, and PyTorch warns when you read it. The intermediate gradients are
# used during the pass and then dropped. Call `y.retain_grad()` before `backward()` to
# keep one.

# %%
x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
y = x ** 2
loss = y.sum()
loss.backward()
print("y.grad without retain_grad():", y.grad)
assert y.grad is None and x.grad is not None

x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
y = x ** 2
y.retain_grad()
loss = y.sum()
loss.backward()
print("y.grad with retain_grad():   ", y.grad)
assert y.grad.tolist() == [1.0, 1.0, 1.0]

# %% [markdown]
# ## pytorch实现反向传播算法
#
# The article's four steps:
#
# 1. **构建计算图**: define the model and run the forward pass. This records the graph.
# 2. **计算损失函数**: compare the output with the labels (here `nn.MSELoss`).
# 3. **计算梯度**: `optimizer.zero_grad()` and then `loss.backward()`.
# 4. **参数更新**: `optimizer.step()` (here plain SGD).
#
# The article's code, as written (the imports read `import tapegrad ...`):

# %%
_ = torch.manual_seed(0)


# 定义网络模型
class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.fc1 = nn.Linear(10, 5)
        self.fc2 = nn.Linear(5, 1)

    def forward(self, x):
        x = torch.relu(self.fc1(x))
        x = self.fc2(x)
        return x


# 定义输入数据和标签数据
inputs = torch.randn(1, 10)
labels = torch.randn(1, 1)
# 定义损失函数和优化算法
net = Net()
criterion = nn.MSELoss()
optimizer = optim.SGD(net.parameters(), lr=0.01)
# 计算模型输出和损失函数
outputs = net(inputs)
loss = criterion(outputs, labels)
# 计算梯度并更新参数
optimizer.zero_grad()
loss.backward()
optimizer.step()

print(net)
print(f"loss before the step: {loss.item():.4f}")
with torch.no_grad():
    loss_after = criterion(net(inputs), labels).item()
print(f"loss after one SGD step on the same sample: {loss_after:.4f}")
assert loss_after < loss.item()

# %% [markdown]
# Step 1's graph: the network's output for one input, with the parameters named by
# `dict(net.named_parameters())`. `fc1`, `relu` and `fc2` are three tape records (the
# `·` operand is `inputs`, which needs no gradient).

# %% figure="net_graph"
make_dot(net(inputs), params=dict(net.named_parameters()))

# %% [markdown]
# The article warns that gradients accumulate if you don't clear them (需要将梯度清零). That
# is right. Two `backward()` calls without `zero_grad()` in between double `.grad`:

# %%
optimizer.zero_grad()
criterion(net(inputs), labels).backward()
g1 = net.fc2.bias.grad.clone()
criterion(net(inputs), labels).backward()
print("fc2.bias.grad after one backward:", g1, "  after two:", net.fc2.bias.grad)
assert torch.allclose(net.fc2.bias.grad, 2 * g1)
optimizer.zero_grad()

# %% [markdown]
# ### Training the `Net` for real
#
# One step on one random sample shows the mechanics, but it learns nothing. Here is a
# task the net can solve. A *teacher* `Net` with fixed random weights labels 1,024 random
# inputs. A fresh *student* `Net` learns to imitate it from 768 of them, using the
# article's loop: forward, `MSELoss`, `zero_grad`, `backward`, `step`, on mini-batches of
# 64. We keep the other 256 samples to check that the student generalizes.

# %%
_ = torch.manual_seed(1)
teacher = Net()
X = torch.randn(1024, 10)
with torch.no_grad():
    T = teacher(X)
X_train, T_train, X_test, T_test = X[:768], T[:768], X[768:], T[768:]

_ = torch.manual_seed(2)
student = Net()
criterion = nn.MSELoss()
optimizer = optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
EPOCHS, BATCH = 60, 64

train_curve, test_curve = [], []
for epoch in tqdm(range(EPOCHS), desc="training Net"):
    perm = torch.randperm(768)
    total = 0.0
    for i in range(0, 768, BATCH):
        idx = perm[i:i + BATCH]
        outputs = student(X_train[idx])
        loss = criterion(outputs, T_train[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(idx)
    train_curve.append(total / 768)
    with torch.no_grad():
        test_curve.append(criterion(student(X_test), T_test).item())

print(f"train loss: {train_curve[0]:.4f} (epoch 1) -> {train_curve[-1]:.5f} (epoch {EPOCHS})")
print(f"test loss:  {test_curve[0]:.4f} (epoch 1) -> {test_curve[-1]:.5f} (epoch {EPOCHS})")
print(f"label variance (the loss of always predicting the mean): {T_test.var().item():.4f}")
assert test_curve[-1] < 0.1 * test_curve[0]

# %% figure="net_loss"
fig, ax = plt.subplots(figsize=(7, 3.4))
ax.plot(range(1, EPOCHS + 1), train_curve, label="train (mean over the epoch's mini-batches)")
ax.plot(range(1, EPOCHS + 1), test_curve, label="held-out test")
ax.axhline(T_test.var().item(), color="grey", ls=":", label="predict-the-mean baseline")
ax.set(xlabel="epoch", ylabel="MSE", yscale="log", title="Net (fc1 10→5, ReLU, fc2 5→1) imitating a teacher Net: SGD(lr=0.05, momentum=0.9)")
ax.title.set_fontsize(10)
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The student's loss falls far below the baseline of always predicting the mean. It
# does not always reach zero: the student has the teacher's architecture, but a ReLU
# unit that starts on the wrong side can stay *dead* (its gradient is 0), so the student
# may end up with less capacity than the teacher. Try other seeds to see both outcomes.
#
# How long does one training step take? The forward records about ten operations. The
# backward is one jitted pass over them. The optimizer updates the four parameter
# tensors. (Timings vary from machine to machine, so this cell's output is not compared
# by the tests.)

# %% tags=["nondeterministic"]
import time  # noqa: E402

xb, tb = X_train[:BATCH], T_train[:BATCH]
t0 = time.perf_counter()
for _ in range(200):
    loss = criterion(student(xb), tb)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"{(time.perf_counter() - t0) / 200 * 1e6:.0f} µs per training step (batch {BATCH})")
