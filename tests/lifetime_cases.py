"""Lifetime cases (DESIGN invariant 7), each run by tests/test_storage.py in a fresh
interpreter: the tape is global, and anything an earlier test left alive (see the
retain_grad and long-lived-tensor bugs below) would change what these measure.
Not a test module. Everything is measured from outside: tape length, weak
references to arena slabs, tracemalloc, sizes of the tape's bookkeeping.
"""
import gc
import tracemalloc
import weakref

import numpy as np

import tapegrad as tg
from tapegrad.storage import ARENA
from tapegrad.tape.tape import TAPE


class SlabWatch:
    """Weak references to every arena slab seen current, from outside the arena."""

    def __init__(self):
        self.refs = []
        self.ids = set()

    def see(self):
        s = ARENA.slab
        if s is not None and id(s) not in self.ids:
            self.ids.add(id(s))
            self.refs.append(weakref.ref(s))

    def alive(self):
        return sum(r() is not None for r in self.refs)


def _settle():
    gc.collect()
    TAPE.sweep()
    gc.collect()


def _mlp(seed=0):
    rng = np.random.default_rng(seed)
    X = tg.tensor(rng.standard_normal((16, 4)).astype(np.float32))
    Y = tg.tensor(rng.standard_normal((16, 1)).astype(np.float32))
    W1 = tg.tensor((rng.standard_normal((4, 8)) * 0.5).astype(np.float32), requires_grad=True)
    b1 = tg.zeros(8, requires_grad=True)
    W2 = tg.tensor((rng.standard_normal((8, 1)) * 0.5).astype(np.float32), requires_grad=True)
    return X, Y, [W1, b1, W2]


def _step(X, Y, params, lr=0.05, zero="none"):
    W1, b1, W2 = params
    h = tg.tanh(X @ W1 + b1)
    loss = ((h @ W2 - Y) ** 2).mean()
    loss.backward()
    with tg.no_grad():
        for p in params:
            p -= lr * p.grad
            if zero == "none":
                p.grad = None
            else:
                p.grad.zero_()
    return loss


def _internals():
    """Sizes of everything the tape and the arena hold on to (read from outside)."""
    return dict(tape=len(TAPE), py=len(TAPE.py), keep=len(TAPE.keep), big=len(TAPE.big),
                retained=len(TAPE.retained), inplace_log=len(TAPE.inplace_log), edges=len(TAPE.edges),
                leaf_slots=len(TAPE.leaf_addr), leaf_dying=len(TAPE.leaf_dying), pool=len(ARENA.pool),
                buf=len(TAPE.buf))


def _assert_bounded(mid, end, slack=16):
    for k in mid:
        assert end[k] <= max(mid[k] + slack, 2 * mid[k]), f"{k} grew from {mid[k]} to {end[k]}"


def training_loop_tape_and_memory_flat(zero):
    """2,000 steps of a small MLP: the tape returns to its floor, live slabs and the tape's
    bookkeeping stay bounded, and (with tracemalloc, one variant) memory is flat."""
    X, Y, params = _mlp()
    watch = SlabWatch()
    first = _step(X, Y, params, zero=zero).item()
    for _ in range(99):                  # warm-up: jitted entry points, first sweep, pools
        _step(X, Y, params, zero=zero)
    _settle()
    floor = len(TAPE)
    trace = zero == "none"
    if trace:
        tracemalloc.start()
    try:
        for half in range(2):
            if trace:
                tracemalloc.reset_peak()
            for _ in range(950):
                loss = _step(X, Y, params, zero=zero)
                watch.see()
            _settle()
            cur, peak = tracemalloc.get_traced_memory() if trace else (0, 0)
            if half == 0:
                cur0, peak0, slabs0, mid = cur, peak, watch.alive(), _internals()
    finally:
        if trace:
            tracemalloc.stop()
    end = _internals()
    assert loss.item() < first / 10                # it trained
    assert len(TAPE) <= max(floor, 16)             # the tape returns to its floor
    _assert_bounded(mid, end)
    assert watch.alive() <= max(slabs0, 4) and watch.alive() <= 8
    slab = 1 << 20
    assert cur - cur0 < slab, f"memory grew by {cur - cur0} bytes over the second half"
    # between sweeps the tape grows and is cut back (a sawtooth whose phase differs between the halves);
    # a leak would add to every later peak
    assert peak < 1.5 * peak0 + 2 * slab, f"second-half peak {peak} vs first-half {peak0}"


def long_lived_non_leaf_does_not_pin_the_tape():
    X, Y, params = _mlp()
    keep = params[0] * 1.0         # e.g. a statistic of a parameter, computed once and kept
    for _ in range(100):
        _step(X, Y, params)
    _settle()
    n0 = len(TAPE)
    for _ in range(700):
        _step(X, Y, params)
    _settle()
    assert len(TAPE) <= n0 + 64
    assert keep.requires_grad


def no_grad_loop_never_reading_stays_flat():
    a = tg.ones(16)
    watch = SlabWatch()
    _settle()
    floor = len(TAPE)
    max_len = 0
    tracemalloc.start()
    try:
        peaks = []
        with tg.no_grad():
            for half in range(2):
                tracemalloc.reset_peak()
                for i in range(5000):        # 2 records per iteration: 20,000 ops in all, no value read
                    a = a * 1.0 + 0.0
                    if not i % 256:
                        max_len = max(max_len, len(TAPE))
                        watch.see()
                peaks.append(tracemalloc.get_traced_memory()[1])
    finally:
        tracemalloc.stop()
    assert max_len <= 3 * 4096 + 16            # pending records are flushed and dropped at a bound
    assert watch.alive() <= 8
    assert peaks[1] < peaks[0] + (2 << 20)
    assert a.tolist() == [1.0] * 16
    _settle()
    assert len(TAPE) <= max(floor, 16)


def dropped_graph_is_freed():
    _settle()
    floor, floor_py, floor_big = len(TAPE), len(TAPE.py), len(TAPE.big)
    watch = SlabWatch()
    x = tg.tensor(np.linspace(-1, 1, 64).astype(np.float32), requires_grad=True)
    W = tg.ones(64, 64, requires_grad=True)
    h = x
    refs = []
    for i in range(300):
        h = tg.tanh(h * 0.9 + 0.01)            # jitted records
        if i % 50 == 0:
            h = (W @ h) / 64                   # escape records
            refs.append(weakref.ref(h))
        watch.see()
    loss = (h * h).sum()
    refs.append(weakref.ref(loss))
    assert len(TAPE) > floor + 600
    del h, loss
    _settle()
    assert all(r() is None for r in refs)
    assert len(TAPE) <= max(floor, 16)
    assert len(TAPE.py) <= floor_py and len(TAPE.big) <= floor_big
    assert watch.alive() <= 2                  # only the arena's current slab may remain
    # the leaves survive, untouched
    assert x.grad is None and W.grad is None
    assert x.tolist()[0] == -1.0


def backwarded_and_retained_graphs_are_freed():
    _settle()
    floor = len(TAPE)
    x = tg.tensor([0.5, 1.5], requires_grad=True)
    for retain in (False, True):
        for _ in range(200):
            y = tg.sin(x * x).sum()
            y.backward(retain_graph=retain)
        del y
        _settle()
        assert len(TAPE) <= max(floor, 16)
    np.testing.assert_allclose(x.grad.tolist(), 400 * 2 * np.array([0.5, 1.5]) * np.cos([0.25, 2.25]),
                               rtol=1e-4)


def leaf_slots_are_reused():
    def batch():
        for _ in range(1000):
            p = tg.tensor([1.0, 2.0], requires_grad=True)
            (p * p).sum().backward()
        _settle()
    _settle()
    for _ in range(3):
        batch()
    n1 = len(TAPE.leaf_addr)
    batch()
    batch()
    assert len(TAPE.leaf_addr) <= n1 + 2
    assert n1 < 3000          # fewer slots than leaves made: slots of dead leaves are reused


def tensors_outlive_the_tape():
    # DESIGN invariant 7: tensors that outlive the tape keep their values
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    y = tg.exp(x)
    z = y * 2
    z.sum().backward()
    for _ in range(3):
        for _ in range(3000):
            q = tg.ones(4) + 1          # noqa: F841
        _settle()
    np.testing.assert_allclose(y.detach().tolist(), np.exp([1.0, 2.0]), rtol=1e-6)
    np.testing.assert_allclose(z.detach().tolist(), 2 * np.exp([1.0, 2.0]), rtol=1e-6)
    np.testing.assert_allclose(x.grad.tolist(), 2 * np.exp([1.0, 2.0]), rtol=1e-6)
    assert repr(z).endswith("grad_fn=<MulBackward0>)")


def retain_grad_does_not_pin_the_tape():
    # torch: a retained grad lives on the tensor; dropping the tensor frees everything
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    for _ in range(100):
        (x * x).sum().backward()
    _settle()
    n0 = len(TAPE)
    y = x + 1
    y.retain_grad()
    (y * y).sum().backward()
    assert y.grad.tolist() == [4.0, 6.0]
    ref = weakref.ref(y)
    del y
    for _ in range(3000):
        (x * x).sum().backward()
    _settle()
    assert ref() is None, "the retained tensor is kept alive by the tape"
    assert len(TAPE) <= n0 + 64


def held_node_keeps_its_graph():
    # torch: a Node keeps its part of the graph (and its next_functions) alive
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    t = (x * 2).sum()
    n = t.grad_fn.next_functions[0][0]
    del t
    _settle()
    for _ in range(3):
        y = tg.sin(tg.ones(3))     # noqa: F841
    _settle()
    assert n.name() == "MulBackward0"
    assert [(None if a is None else a.name(), i) for a, i in n.next_functions] == \
        [("torch::autograd::AccumulateGrad", 0), (None, 0)]


def edges_bounded_while_steps_live(depth=1):
    """Escape records' producer lists and descriptors (``TAPE.edges``) stay bounded over a
    training loop that never lets the tape empty (the step being backpropagated is live at each
    backward's sweep; _settle would hide it, so nothing settles here). Each step below records
    escape records (matmuls, a broadcasting add); depth > 1 repeats the hidden layer, so that
    more rows are live at a sweep (Tape._compact_edges has a path for a few rows and one for many)."""
    X, Y, params = _mlp()
    W1, b1, W2 = params
    H = tg.tensor(np.eye(8, dtype=np.float32) * 0.5, requires_grad=True)

    def step():
        h = tg.tanh(X @ W1 + b1)
        for _ in range(depth - 1):
            h = tg.tanh(h @ H + b1)
        loss = ((h @ W2 - Y) ** 2).mean()
        loss.backward()
        with tg.no_grad():
            for p in params + [H]:
                if p.grad is not None:
                    p -= 0.01 * p.grad
                p.grad = None
        return loss

    grew = []
    steps = 1200 if depth == 1 else 300
    for i in range(steps):
        before = len(TAPE.edges)
        loss = step()
        if i == 0:
            grew = len(TAPE.edges) - before
            rows = len(TAPE)
        if i == steps // 4:
            mid = len(TAPE.edges)
    end = len(TAPE.edges)
    assert grew > 0, "the step records no escape record: the case tests nothing"
    assert depth == 1 or rows > 16, f"only {rows} rows a step"
    assert end <= max(2 * mid, mid + 64), f"edges grew from {mid} to {end} entries ({grew} a step)"
    assert end <= 400 * grew, f"edges hold {end} entries: {end // grew} steps' worth"
    del loss


def big_activations_few_slabs():
    """A loop of few records and large activations (W2's shape: an MLP on 128 x 256 batches, a
    handful of records a step, half a slab of activations): the slabs held stay few, and new
    slabs are old ones reused (measured from outside: weak references to every slab seen, and
    the process's peak memory through tracemalloc of NumPy's allocations)."""
    rng = np.random.default_rng(3)
    X = tg.tensor(rng.standard_normal((128, 64)).astype(np.float32))
    W1 = tg.tensor((rng.standard_normal((256, 64)) * 0.1).astype(np.float32), requires_grad=True)
    W2 = tg.tensor((rng.standard_normal((10, 256)) * 0.1).astype(np.float32), requires_grad=True)
    watch = SlabWatch()

    def step():
        h = tg.relu(X @ W1.T)
        loss = ((h @ W2.T) ** 2).mean()
        loss.backward()
        with tg.no_grad():
            for p in (W1, W2):
                p -= 1e-4 * p.grad
                p.grad = None
        return loss

    start = TAPE.next_index
    seen, fresh, current = [], 0, None     # weak references to the slabs seen current
    tracemalloc.start()
    for i in range(600):
        step()
        s = ARENA.slab
        if s is not None and s is not current:
            current = s
            if not any(r() is s for r in seen):
                fresh += 1
                seen.append(weakref.ref(s))
            del s
        watch.see()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rows = (TAPE.next_index - start) / 600
    assert rows < 20, f"{rows:.0f} records a step: the case means few"
    assert len(TAPE.keep) <= 16, f"the tape keeps {len(TAPE.keep)} slabs"
    assert watch.alive() <= 40, f"{watch.alive()} slabs alive after 600 steps"
    assert peak < 64 << 20, f"peak traced memory {peak >> 20} MB"
    assert fresh < 60, f"{fresh} new slabs became current in 600 steps: few are reused"


PASSING = ["training_loop_tape_and_memory_flat('none')", "training_loop_tape_and_memory_flat('zero_')",
           "no_grad_loop_never_reading_stays_flat()", "dropped_graph_is_freed()",
           "backwarded_and_retained_graphs_are_freed()", "leaf_slots_are_reused()", "tensors_outlive_the_tape()",
           "held_node_keeps_its_graph()", "edges_bounded_while_steps_live()",
           "edges_bounded_while_steps_live(depth=12)", "big_activations_few_slabs()"]


def run_all(calls):
    """Run cases one after another in this interpreter; print one JSON object mapping each
    call to None (passed) or its traceback. Each case starts from a settled tape."""
    import json
    import traceback
    res = {}
    for call in calls:
        _settle()
        try:
            eval(call)
            res[call] = None
        except BaseException:  # noqa: BLE001  (reported to the test)
            res[call] = traceback.format_exc()[-3000:]
    print("LIFETIME-RESULTS " + json.dumps(res))
