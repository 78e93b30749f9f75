"""torch.optim: optimizers whose step() is one jitted call over all parameters.

    opt = tapegrad.optim.Adam([w, b], lr=1e-3)
    loss.backward(); opt.step(); opt.zero_grad()

``optimizer.py`` holds PyTorch's Optimizer surface (param groups, state,
state_dict, zero_grad) and the kernel rows; ``kernels/optim.py`` the updates.
"""
from . import lr_scheduler
from .adam import Adam, AdamW
from .optimizer import Optimizer
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "lr_scheduler"]
