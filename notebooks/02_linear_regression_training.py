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
# # 02 · Linear regression training: `nn.Linear`, `MSELoss`, `SGD`, `CosineAnnealingLR`
#
# This notebook follows the tutorial article `shared/seeds/001` ("PyTorch自动微分工具详解与应用")
# section by section, with `import tapegrad as torch`. The headers are the article's
# section titles.
#
# The article has three code samples. The first two crash in real PyTorch, because they
# give `nn.Linear(10, 1)` a weight of the wrong shape. The third stops halfway. The
# **⚠️** cells show each crash and why it happens. Then we fix the code and train for
# real. We plot the losses and the `CosineAnnealingLR` schedule.

# %%
import math
import warnings

import matplotlib.pyplot as plt

import tapegrad as torch

warnings.filterwarnings("ignore", message="IProgress not found")   # no ipywidgets: a text bar
from tqdm.auto import tqdm  # noqa: E402


def raises(fn):
    """Run fn(); return the exception it raised (None if it did not raise)."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        return e
    return None


_ = torch.manual_seed(0)

# %% [markdown]
# ## 1. PyTorch自动微分的基础
#
# Autograd computes gradients without deriving them by hand. It records the forward
# computation and applies the chain rule backwards: *reverse mode*, or back-propagation.
# For a mean squared error, the gradient that autograd computes matches the textbook
# formula ∂/∂w mean((Xw − t)²) = 2/N · Xᵀ(Xw − t):

# %%
X = torch.randn(8, 3)
t = torch.randn(8, 1)
w = torch.zeros(3, 1, requires_grad=True)
loss = ((X @ w - t) ** 2).mean()
loss.backward()
by_hand = 2 / 8 * X.t() @ (X @ w.detach() - t)
print(w.grad.t())
print(by_hand.t())
assert torch.allclose(w.grad, by_hand, atol=1e-6)

# %% [markdown]
# The article also mentions *gradient accumulation*. Gradients of successive `backward()`
# calls add up in `.grad`. So two half-batches (each loss weighted ½) give the same
# gradient as the full batch:

# %%
w.grad = None
for half in (slice(0, 4), slice(4, 8)):
    (((X[half] @ w - t[half]) ** 2).mean() / 2).backward()
print(w.grad.t())
assert torch.allclose(w.grad, by_hand, atol=1e-6)

# %% [markdown]
# It also mentions the *Jacobian* and *checkpointing*. `torch.autograd.functional.jacobian`
# differentiates every output with respect to every input. The residuals r(w) = Xw − t are
# linear in w, so their Jacobian is X itself. `torch.utils.checkpoint.checkpoint` does not keep
# a segment's intermediate values in the forward pass. It recomputes them in the backward
# pass, which trades compute for memory. The gradient is the same:

# %%
J = torch.autograd.functional.jacobian(lambda v: (X @ v - t).reshape(-1), w.detach())
print(J.shape)
assert torch.allclose(J.reshape(8, 3), X)

w.grad = None
loss = torch.utils.checkpoint.checkpoint(lambda v: ((X @ v - t) ** 2).mean(), w, use_reentrant=False)
loss.backward()
print(w.grad.t())
assert torch.allclose(w.grad, by_hand, atol=1e-6)

# %% [markdown]
# ## 2. PyTorch自动微分的应用
#
# ### 2.1 梯度计算和反向传播
#
# #### 反向传播算法
#
# Back-propagation starts at the loss. It visits the operations in reverse order and
# multiplies local derivatives along the way (the chain rule), until it reaches the
# parameters.
#
# #### PyTorch中的反向传播
#
# The article's sample, run as written:

# %%
def article_sample_1():
    # 定义损失函数
    loss_fn = torch.nn.MSELoss()
    # 定义模型
    model = torch.nn.Linear(10, 1)
    # 随机初始化模型参数
    model.weight = torch.nn.Parameter(torch.randn(10, 1))
    model.bias = torch.nn.Parameter(torch.randn(1))
    # 前向传播
    input = torch.randn(1, 10)
    output = model(input)
    # 计算损失
    loss = loss_fn(output, torch.randn(1, 1))
    # 反向传播
    loss.backward()
    # 获取梯度
    grad_weight = model.weight.grad
    grad_bias = model.bias.grad
    return grad_weight, grad_bias


err = raises(article_sample_1)
print(f"{type(err).__name__}: {err}")

# %% [markdown]
# **⚠️ The article says** this code computes the gradients `grad_weight` and
# `grad_bias`. **What really happens:** `RuntimeError: mat1 and mat2 shapes cannot be
# multiplied (1x10 and 1x10)`. `nn.Linear(in_features=10, out_features=1)` stores its
# weight as **(out, in) = (1, 10)** and computes `input @ weight.T + bias`. Setting the
# attribute to a `Parameter` of shape (10, 1) works, because PyTorch does not check the
# shape at that point. The forward pass then multiplies (1×10) by weightᵀ (1×10) and
# fails.

# %%
model = torch.nn.Linear(10, 1)
print("nn.Linear(10, 1).weight.shape:", model.weight.shape)
model.weight = torch.nn.Parameter(torch.randn(10, 1))          # accepted...
err = raises(lambda: model(torch.randn(1, 10)))                # ...but forward fails
print(f"{type(err).__name__}: {err}")
assert isinstance(err, RuntimeError)
assert str(err) == "mat1 and mat2 shapes cannot be multiplied (1x10 and 1x10)"

# %% [markdown]
# The fix is a (1, 10) weight. Then the sample runs, and each gradient has its
# parameter's shape:

# %%
# 定义损失函数
loss_fn = torch.nn.MSELoss()
# 定义模型
model = torch.nn.Linear(10, 1)
# 随机初始化模型参数 (weight: (out_features, in_features) = (1, 10))
model.weight = torch.nn.Parameter(torch.randn(1, 10))
model.bias = torch.nn.Parameter(torch.randn(1))
# 前向传播
input = torch.randn(1, 10)
output = model(input)
# 计算损失
loss = loss_fn(output, torch.randn(1, 1))
# 反向传播
loss.backward()
# 获取梯度
grad_weight = model.weight.grad
grad_bias = model.bias.grad
print("grad_weight:", tuple(grad_weight.shape), "  grad_bias:", tuple(grad_bias.shape))
assert grad_weight.shape == model.weight.shape and grad_bias.shape == model.bias.shape

# %% [markdown]
# The tape behind `loss` has two records: one `addmm` for the linear layer
# (`AddmmBackward0`: input @ weightᵀ + bias), then one `mse_loss` (`MseLossBackward0`, as
# in PyTorch). The `·` operands need no gradient: the input and the target.

# %%
output = model(input)
loss = loss_fn(output, torch.zeros(1, 1))
print(torch.tape(loss, names={id(model.weight): "weight", id(model.bias): "bias", id(input): "input"}))

# %% [markdown]
# #### 逻辑分析
#
# * `loss_fn` is the mean squared error between the output and the target.
# * `model` is a linear layer: `output = input @ weight.T + bias`.
# * `backward()` computes ∂loss/∂weight and ∂loss/∂bias and stores them in `.grad`.
#
# ### 2.2 优化算法
#
# #### 随机梯度下降(SGD)
#
# SGD moves each parameter a small step against its gradient: p ← p − lr · ∂loss/∂p.
#
# #### PyTorch中的SGD
#
# The article's training loop, as written. It uses the same (10, 1) weight:

# %%
def article_sample_2():
    SGD = torch.optim.SGD
    # 定义损失函数
    loss_fn = torch.nn.MSELoss()
    # 定义模型
    model = torch.nn.Linear(10, 1)
    # 随机初始化模型参数
    model.weight = torch.nn.Parameter(torch.randn(10, 1))
    model.bias = torch.nn.Parameter(torch.randn(1))
    # 定义优化器
    optimizer = SGD(model.parameters(), lr=0.01)
    # 训练模型
    for epoch in range(100):
        # 前向传播
        input = torch.randn(1, 10)
        output = model(input)
        # 计算损失
        loss = loss_fn(output, torch.randn(1, 1))
        # 反向传播
        loss.backward()
        # 更新参数
        optimizer.step()
        # 清除梯度
        optimizer.zero_grad()


err = raises(article_sample_2)
print(f"{type(err).__name__}: {err}")

# %% [markdown]
# **⚠️ The article says** this loop trains the model. **What really happens:** it stops
# in the first epoch with the same `RuntimeError: mat1 and mat2 shapes cannot be
# multiplied (1x10 and 1x10)`. With a (1, 10) weight it runs. But notice what it trains
# on: a *new random input and a new random target* at every step. There is nothing to
# learn. The expected loss is E[(w·x + b − t)²] = ‖w‖² + b² + 1, and the best SGD can do
# is shrink w and b towards 0, bringing the expected loss down to 1 (the variance of the
# random targets).

# %%
assert isinstance(err, RuntimeError) and "mat1 and mat2 shapes cannot be multiplied" in str(err)

torch.manual_seed(1)
loss_fn = torch.nn.MSELoss()
model = torch.nn.Linear(10, 1)
model.weight = torch.nn.Parameter(torch.randn(1, 10))      # the fix: (out, in)
model.bias = torch.nn.Parameter(torch.randn(1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
losses, expected = [], []
for epoch in tqdm(range(300), desc="article loop (fixed)"):
    input = torch.randn(1, 10)
    output = model(input)
    loss = loss_fn(output, torch.randn(1, 1))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    losses.append(loss.item())
    with torch.no_grad():
        expected.append((model.weight ** 2).sum().item() + model.bias.item() ** 2 + 1)
print(f"expected loss ‖w‖²+b²+1: {expected[0]:.1f} at the start -> {expected[-1]:.2f} after 300 steps")
assert expected[-1] < 0.5 * expected[0] and expected[-1] > 1.0

# %% figure="article_loop_loss"
fig, ax = plt.subplots(figsize=(7, 3.2))
ax.plot(losses, lw=0.8, alpha=0.6, label="loss of each step (one random sample)")
ax.plot(expected, lw=2, label="expected loss ‖w‖² + b² + 1")
ax.axhline(1.0, color="grey", ls=":", label="noise floor = Var(target) = 1")
ax.set(xlabel="step", ylabel="MSE", yscale="log", title="The article's SGD loop (weight shape fixed): random targets")
ax.title.set_fontsize(10)
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ### 2.3 超参数优化
#
# #### 学习率调度器
#
# A scheduler changes the learning rate during training. `CosineAnnealingLR` moves it from
# the initial `lr` down to `eta_min` along half a cosine over `T_max` steps:
#
# η_t = η_min + (η_0 − η_min) · (1 + cos(π·t / T_max)) / 2
#
# #### PyTorch中的学习率调度器
#
# **⚠️ The article's last sample stops** after `# 定义模型`. It never creates the
# scheduler. Here is the schedule it was about to use. We step it for 2·T_max epochs,
# because past T_max PyTorch's `CosineAnnealingLR` does *not* stay at `eta_min`. It
# follows the cosine back up to the initial lr. Set `T_max` to the number of epochs you
# train.

# %%
CosineAnnealingLR = torch.optim.lr_scheduler.CosineAnnealingLR

model = torch.nn.Linear(10, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
scheduler = CosineAnnealingLR(optimizer, T_max=50, eta_min=0.001)
lrs = []
for epoch in range(100):
    lrs.append(scheduler.get_last_lr()[0])
    optimizer.step()          # (a real loop trains here)
    scheduler.step()
closed_form = [0.001 + (0.1 - 0.001) * (1 + math.cos(math.pi * t / 50)) / 2 for t in range(100)]
print(f"lr at epoch 0: {lrs[0]:.4f}, 25: {lrs[25]:.4f}, 50: {lrs[50]:.4f}, 99: {lrs[99]:.4f}")
assert all(abs(a - b) < 1e-9 for a, b in zip(lrs, closed_form))
assert abs(lrs[50] - 0.001) < 1e-9 and lrs[99] > 0.09          # back up after T_max

# %% figure="cosine_annealing_lr"
fig, ax = plt.subplots(figsize=(7, 3))
ax.plot(lrs, marker=".", ms=3, label="scheduler.get_last_lr()")
ax.plot(closed_form, lw=0.8, color="k", ls="--", label="η_min + (η₀−η_min)(1+cos(πt/T_max))/2")
ax.axvline(50, color="grey", ls=":")
ax.text(51, 0.05, "T_max = 50", fontsize=8)
ax.set(xlabel="epoch", ylabel="learning rate", title="CosineAnnealingLR(optimizer, T_max=50, eta_min=0.001), lr=0.1")
ax.title.set_fontsize(10)
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ### The completed sample: a real linear regression
#
# Now data with something to learn: t = X·w_true + b_true + noise (σ = 0.1). We train
# `nn.Linear(10, 1)` with `MSELoss`, `SGD` and `CosineAnnealingLR` (T_max = number of
# epochs), on mini-batches of 32. The loss should drop to the noise floor σ² = 0.01, and
# the learned weights should land on the true ones.

# %%
torch.manual_seed(42)
N, D = 512, 10
w_true = torch.randn(D, 1)
b_true = 0.5
X = torch.randn(N, D)
t = X @ w_true + b_true + 0.1 * torch.randn(N, 1)

loss_fn = torch.nn.MSELoss()
model = torch.nn.Linear(D, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
EPOCHS, BATCH = 30, 32
scheduler = CosineAnnealingLR(optimizer, T_max=EPOCHS)

step_losses, epoch_losses, epoch_lrs = [], [], []
for epoch in tqdm(range(EPOCHS), desc="training"):
    perm = torch.randperm(N)
    for i in range(0, N, BATCH):
        idx = perm[i:i + BATCH]
        loss = loss_fn(model(X[idx]), t[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step_losses.append(loss.item())
    epoch_lrs.append(scheduler.get_last_lr()[0])
    scheduler.step()
    with torch.no_grad():
        epoch_losses.append(loss_fn(model(X), t).item())

err_w = (model.weight.detach().t() - w_true).abs().max().item()
err_b = abs(model.bias.item() - b_true)
print(f"full-data loss: {epoch_losses[0]:.3f} after epoch 1 -> {epoch_losses[-1]:.4f} after {EPOCHS} (noise floor 0.01)")
print(f"largest weight error {err_w:.3f}, bias error {err_b:.3f}")
assert epoch_losses[-1] < 0.015 and err_w < 0.05 and err_b < 0.05

# %% figure="regression_loss"
fig, ax = plt.subplots(figsize=(7, 3.4))
steps_per_epoch = N // BATCH
ax.plot([i / steps_per_epoch for i in range(len(step_losses))], step_losses, lw=0.6, alpha=0.5,
        label="mini-batch loss")
ax.plot(range(1, EPOCHS + 1), epoch_losses, marker="o", ms=3, label="full-data loss (end of epoch)")
ax.axhline(0.01, color="grey", ls=":", label="noise floor σ² = 0.01")
ax.set(xlabel="epoch", ylabel="MSE", yscale="log", title="nn.Linear(10, 1) + MSELoss + SGD(lr=0.05) + CosineAnnealingLR")
ax.title.set_fontsize(10)
ax2 = ax.twinx()
ax2.plot(range(EPOCHS), epoch_lrs, color="tab:red", lw=1, ls="--")
ax2.set_ylabel("learning rate", color="tab:red")
ax.legend(fontsize=8, loc="upper right")
plt.show()

# %% [markdown]
# #### 逻辑分析
#
# * Each step runs forward (`model(X[idx])`), computes the loss, clears the old gradients
#   (`zero_grad`), runs `backward()`, and updates the parameters (`step`).
# * `scheduler.step()` runs once per epoch, after the optimizer steps of that epoch
#   (calling it first gives PyTorch's warning about the order).
# * The learning rate falls from 0.05 to 0 along the cosine. The mini-batch noise in the
#   loss shrinks with it.
