"""Random numbers: one NumPy generator, seeded by manual_seed.

tapegrad's random streams are not PyTorch's (PyTorch's CPU generator is
mt19937 with its own transforms); seeded runs are reproducible within
tapegrad, and tests never compare random values with torch's."""
import numpy as np

_GEN = [np.random.default_rng()]


def manual_seed(seed):
    _GEN[0] = np.random.default_rng(int(seed))
    return _GEN[0]


seed = manual_seed


def initial_seed():
    return 0


DRAWS = [0]   # how many times a generator was handed out (tapegrad.capture: a step that draws can't replay)


def generator():
    DRAWS[0] += 1
    return _GEN[0]
