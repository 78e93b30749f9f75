"""tapegrad.nn: modules, layers, losses and initialisers with torch.nn's interface.

    from tapegrad import nn
    import tapegrad.nn.functional as F
"""
from . import functional, init, utils  # noqa: F401
from .linear import Dropout, Flatten, Identity, Linear, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh  # noqa: F401
from .loss import BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, L1Loss, MSELoss, NLLLoss  # noqa: F401
from .module import Module, ModuleList, Parameter, Sequential  # noqa: F401
