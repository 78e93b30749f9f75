"""torch.optim.Optimizer over tapegrad storage: one jitted call updates every parameter.

PyTorch's ``step()`` loops over parameters in Python and runs a few tensor ops
on each. Here storage never moves (DESIGN invariant 4), so the optimizer keeps
one int64 row per parameter (``kernels/optim.py``: the parameter's address, its
gradient slot, element count, dtype, group and the addresses of its state
buffers) and ``step()`` is one call of one @njit kernel over all of them. The
gradient of each parameter is read at call time from the tape's leaf-slot
table, so a new ``.grad`` buffer (``zero_grad()``, ``p.grad = g``) needs no
rebuild; a parameter whose ``.grad`` is None is skipped, as in PyTorch.

The rows are rebuilt only when something they hold changes: the param groups
(their lists, or an option that decides which state buffers exist), a
parameter's storage (``p.data = ...``), or ``optimizer.state`` (any assignment
into it marks the rows stale; writing *into* a state tensor in place needs
nothing, the kernel reads that memory).

State follows PyTorch: it appears in ``optimizer.state[p]`` (with PyTorch's
keys, as tapegrad Tensors sharing the kernel's memory) at the first step in
which ``p`` has a gradient. Its buffers are allocated, zeroed, when the rows
are built, and published at that step.

Parameters are updated in place: pending tape records run first, each updated
parameter's version counter moves as PyTorch's does, and the write is logged
so that a backward through a graph that saved the old values raises
PyTorch's error.
"""
import warnings
from collections import defaultdict
from copy import deepcopy
from itertools import chain

import numpy as np

from .. import _dtype as D
from ..autograd.grad_mode import enable_grad
from ..functions import typename
from ..kernels import optim as K
from ..ops.pyops import inplace_span
from ..tape.tape import TAPE, replayed_whole
from ..tensor import Tensor, tensor as _tensor, zeros as _zeros

__all__ = ["Optimizer", "required"]


class _RequiredParameter:
    """Singleton class representing a required parameter for an Optimizer."""

    def __repr__(self):
        return "<required parameter>"


required = _RequiredParameter()

_NO_SLOTS_L = np.zeros(1, np.int64)
_NO_SLOTS_S = np.zeros(1, np.int8)


# ----- state containers ----------------------------------------------------------------------

class _ParamState(dict):
    """One parameter's state (a dict). Any change marks the optimizer's rows stale."""
    _stale = None

    def _touch(self):
        if self._stale is not None:
            self._stale[0] = True

    def __setitem__(self, k, v):
        dict.__setitem__(self, k, v)
        self._touch()

    def __delitem__(self, k):
        dict.__delitem__(self, k)
        self._touch()

    def clear(self):
        dict.clear(self)
        self._touch()

    def pop(self, *a):
        self._touch()
        return dict.pop(self, *a)

    def popitem(self):
        self._touch()
        return dict.popitem(self)

    def setdefault(self, k, default=None):
        self._touch()
        return dict.setdefault(self, k, default)

    def update(self, *a, **kw):
        dict.update(self, *a, **kw)
        self._touch()

    def __ior__(self, other):
        self.update(other)
        return self


def _param_state(stale, items=()):
    d = _ParamState(items)
    d._stale = stale
    return d


class _StateMap(defaultdict):
    """``optimizer.state``: PyTorch's ``defaultdict(dict)`` from parameter to its state;
    any change marks the optimizer's rows stale."""

    def __init__(self, stale, items=()):
        defaultdict.__init__(self, None)
        self._stale = stale
        for k, v in dict(items).items():
            self[k] = v

    def __missing__(self, key):
        d = _param_state(self._stale)   # an empty state means "not initialised": no rebuild needed
        dict.__setitem__(self, key, d)
        return d

    def __setitem__(self, k, v):
        if not (isinstance(v, _ParamState) and v._stale is self._stale):
            v = _param_state(self._stale, v)
        dict.__setitem__(self, k, v)
        self._stale[0] = True

    def __delitem__(self, k):
        dict.__delitem__(self, k)
        self._stale[0] = True

    def clear(self):
        dict.clear(self)
        self._stale[0] = True

    def pop(self, *a):
        self._stale[0] = True
        return dict.pop(self, *a)

    def popitem(self):
        self._stale[0] = True
        return dict.popitem(self)

    def setdefault(self, k, default=None):
        if k not in self:
            self[k] = {} if default is None else default
        return dict.__getitem__(self, k)

    def update(self, *a, **kw):
        for k, v in dict(*a, **kw).items():
            self[k] = v

    def __ior__(self, other):
        self.update(other)
        return self

    def __repr__(self):
        return f"defaultdict(<class 'dict'>, {dict.__repr__(self)})"

    def __reduce__(self):
        return (defaultdict, (dict,), None, None, iter(self.items()))


# ----- the rows ------------------------------------------------------------------------------

class _Rows:
    """The kernel arguments of one optimizer and what they were built from."""
    __slots__ = ("P", "upd", "params", "addrs", "sig", "unslotted", "spans", "vcs", "gidx", "pending",
                 "hyper", "H", "f64s")




class Optimizer:
    r"""Base class for all optimizers (PyTorch's interface).

    A subclass names its kernel (``_kernel``, a function of ``kernels/optim.py``,
    looked up at each step) and says, per param group, which hyperparameters
    the kernel reads (``_hyper``), which state buffers exist (``_state_keys``)
    and how many in-place writes PyTorch makes to a parameter per step
    (``_bumps``).
    """
    _kernel = None

    def __init__(self, params, defaults):
        self.defaults = defaults
        self._stale = [True]
        self._rows_cache = None
        self._state = _StateMap(self._stale)
        if isinstance(params, Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable of Tensors or dicts, "
                            "but got " + typename(params))
        self.param_groups = []
        param_groups = list(params)
        if len(param_groups) == 0:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(param_groups[0], dict):
            param_groups = [{"params": param_groups}]
        for param_group in param_groups:
            self.add_param_group(param_group)

    # ----- PyTorch's surface -----------------------------------------------------------------
    @property
    def state(self):
        return self._state

    @state.setter
    def state(self, value):
        self._state = _StateMap(self._stale, value)
        self._stale[0] = True

    def __getstate__(self):
        return {"defaults": self.defaults, "state": self.state, "param_groups": self.param_groups}

    def __setstate__(self, state):
        state = dict(state)
        self._stale = [True]
        self._rows_cache = None
        self._state = _StateMap(self._stale, state.pop("state", {}))
        self.__dict__.update(state)
        self.defaults.setdefault("differentiable", False)

    def __repr__(self):
        format_string = self.__class__.__name__ + " ("
        for i, group in enumerate(self.param_groups):
            format_string += "\n"
            format_string += f"Parameter Group {i}\n"
            for key in sorted(group.keys()):
                if key != "params":
                    format_string += f"    {key}: {group[key]}\n"
        format_string += ")"
        return format_string

    def add_param_group(self, param_group):
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group)}")
        params = param_group["params"]
        if isinstance(params, Tensor):
            param_group["params"] = [params]
        elif isinstance(params, set):
            raise TypeError("optimizer parameters need to be organized in ordered collections, but the ordering "
                            "of tensors in sets will change between runs. Please use a list instead.")
        else:
            param_group["params"] = list(params)

        tensors, names = [], []
        for param in param_group["params"]:
            if isinstance(param, tuple):
                names.append(param[0])
                tensors.append(param[1])
            else:
                tensors.append(param)
        param_group["params"] = tensors
        if names:
            if len(names) == len(tensors):
                param_group["param_names"] = names
            else:
                raise ValueError("all optimizer params should be with/without names. Some param names are missing")

        for param in param_group["params"]:
            if not isinstance(param, Tensor):
                raise TypeError("optimizer can only optimize Tensors, but one of the params is " + typename(param))
            if not self.defaults.get("differentiable", None) and not (param.is_leaf or param.retains_grad):
                raise ValueError("can't optimize a non-leaf Tensor")

        for name, default in self.defaults.items():
            if default is required and name not in param_group:
                raise ValueError(f"parameter group didn't specify a value of required optimization parameter "
                                 f"{name}")
            param_group.setdefault(name, default)

        params = param_group["params"]
        if len(params) != len(set(params)):
            warnings.warn("optimizer contains a parameter group with duplicate parameters; in future, this will "
                          "cause an error; see github.com/pytorch/pytorch/issues/40967 for more information",
                          stacklevel=3)

        param_set = set()
        for group in self.param_groups:
            param_set.update(set(group["params"]))
            if ("param_names" in param_group) != ("param_names" in group):
                current_group_txt = "with names" if "param_names" in param_group else "without names"
                raise ValueError("all optimizer param groups should be with/without names. "
                                 f"cannot add param group {current_group_txt} to the optimizer")
        if not param_set.isdisjoint(set(param_group["params"])):
            raise ValueError("some parameters appear in more than one parameter group")

        self.param_groups.append(param_group)
        self._stale[0] = True

    @replayed_whole
    def zero_grad(self, set_to_none=True):
        """Reset the gradients: ``.grad = None`` (default), or zero them in place."""
        ls = TAPE.leaf_state
        if set_to_none:
            for group in self.param_groups:
                for p in group["params"]:
                    if p._rec >= 0:
                        if p._gradt is not None:
                            p._gradt = None
                        continue
                    s = p._slot
                    if s >= 0 and ls[s]:
                        if p._gradt is None:
                            ls[s] = 0      # what `p.grad = None` does here (replayed_whole: nothing logged)
                        else:
                            p.grad = None
            return
        c = self._rows()
        if TAPE.flushed < TAPE.next_index:
            TAPE.flush()   # records still to run may read or write these gradients
        spans = []
        for group in self.param_groups:
            for p in group["params"]:
                if p._rec >= 0:
                    g = p._gradt
                    if g is not None:
                        g.detach_()
                        g._values()[...] = 0
                        g._version_counter()[0] += 1
                        spans.append(inplace_span(g))
                    continue
                s = p._slot
                if s < 0 or not ls[s]:
                    continue
                g = p._gradt   # the grad tensor handed out, if any: it is the one zeroed
                if g is not None:
                    if g._rec >= 0:
                        g.detach_()
                    else:
                        g.requires_grad_(False)
                    g._version_counter()[0] += 1
                    spans.append(inplace_span(g))
        la, lsa = self._slot_table()
        try:
            K.zero_grads(c.P, la, lsa)
        finally:
            del la, lsa
        if spans:
            TAPE.log_inplace(spans)

    def state_dict(self):
        """PyTorch's structure: {'state': {index: {...}}, 'param_groups': [{..., 'params': [indices]}]}.
        Like PyTorch's, the state tensors are the optimizer's own (not copies)."""
        param_mappings = {}
        start_index = 0

        def pack_group(group):
            nonlocal start_index
            packed = {k: v for k, v in group.items() if k != "params"}
            param_mappings.update({id(p): i for i, p in enumerate(group["params"], start_index)
                                   if id(p) not in param_mappings})
            packed["params"] = [param_mappings[id(p)] for p in group["params"]]
            start_index += len(packed["params"])
            return packed

        param_groups = [pack_group(g) for g in self.param_groups]
        packed_state = {(param_mappings[id(k)] if isinstance(k, Tensor) else k): v for k, v in self.state.items()}
        return {"state": packed_state, "param_groups": param_groups}

    def load_state_dict(self, state_dict):
        """Load a state from ``state_dict()`` (PyTorch's checks and casts). Tensors of
        the parameter's dtype are taken as they are, as PyTorch does; others are
        converted (a torch or NumPy array is copied into a tapegrad tensor)."""
        state_dict = state_dict.copy()
        groups = self.param_groups
        saved_groups = deepcopy(state_dict["param_groups"])
        if len(groups) != len(saved_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        param_lens = (len(g["params"]) for g in groups)
        saved_lens = (len(g["params"]) for g in saved_groups)
        if any(p_len != s_len for p_len, s_len in zip(param_lens, saved_lens)):
            raise ValueError("loaded state dict contains a parameter group that doesn't match the size of "
                             "optimizer's group")
        id_map = dict(zip(chain.from_iterable(g["params"] for g in saved_groups),
                          chain.from_iterable(g["params"] for g in groups)))

        def _cast(param, value, key=None):
            if isinstance(value, Tensor):
                if key == "step":
                    return value
                if param.is_floating_point() and value._dtype is not param._dtype:
                    return value.to(param._dtype)
                return value
            if isinstance(value, dict):
                return {k: _cast(param, v, key=k) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return type(value)(_cast(param, v) for v in value)
            return value

        state = {}
        for k, v in state_dict["state"].items():
            if k in id_map:
                param = id_map[k]
                state[param] = _cast(param, v)
            else:
                state[k] = v

        def update_group(group, new_group):
            new_group["params"] = group["params"]
            if "param_names" in group and "param_names" not in new_group:
                new_group["param_names"] = group["param_names"]
            return new_group

        param_groups = [update_group(g, ng) for g, ng in zip(groups, saved_groups)]
        self.__setstate__({"state": state, "param_groups": param_groups})

    def step(self, closure=None):
        """Perform a single optimization step: one jitted call over every parameter."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        self._update()
        return loss

    # ----- what a subclass says ---------------------------------------------------------------
    def _hyper(self, group):
        """The group's hyperparameters, in the kernel's H columns."""
        raise NotImplementedError

    def _state_keys(self, group):
        """(key, row column) of each state entry, in PyTorch's order."""
        return ()

    def _initialized(self, st):
        """Whether PyTorch would treat this parameter state as initialised."""
        return len(st) != 0

    def _bumps(self, group):
        """In-place writes PyTorch makes to a parameter in one step (its version counter moves by this)."""
        return 1

    # ----- the update -------------------------------------------------------------------------
    @staticmethod
    def _slot_table():
        """The tape's gradient-slot table as arrays (views: delete them before the table grows)."""
        if len(TAPE.leaf_addr):
            return np.frombuffer(TAPE.leaf_addr, np.int64), np.frombuffer(TAPE.leaf_state, np.int8)
        return _NO_SLOTS_L, _NO_SLOTS_S

    def _layout(self, group):
        """What decides which state buffers exist (part of the rows' signature)."""
        return None

    def _signature(self):
        lay = self._layout
        return [(id(g["params"]), len(g["params"]), lay(g)) for g in self.param_groups]

    def _rows(self):
        """The kernel rows, rebuilt when the groups, a parameter's storage or the state changed."""
        c = self._rows_cache
        if (c is None or self._stale[0] or c.sig != self._signature()
                or [p._addr for p in c.params] != c.addrs):
            c = self._rows_cache = self._build()
        elif c.unslotted:
            still = []
            for i in c.unslotted:   # parameters that had no gradient slot yet
                s = c.params[i]._slot
                if s >= 0:
                    c.P[i, K.SLOT] = s
                else:
                    still.append(i)
            c.unslotted = still
        return c

    def _build(self):
        self._stale[0] = False
        c = _Rows()
        groups = self.param_groups
        c.sig = self._signature()
        params, gidx = [], []
        for gi, g in enumerate(groups):
            for p in g["params"]:
                params.append(p)
                gidx.append(gi)
        n = len(params)
        P = np.zeros((n, K.NCOL), np.int64)
        c.pending = {}
        shared = {}   # id(param) -> (init, state tensors): a duplicated parameter shares its state
        for i, (p, gi) in enumerate(zip(params, gidx)):
            if p._dtype not in (D.float32, D.float64):
                raise TypeError(f"tapegrad.optim: parameters must be float32 or float64, got {p._dtype}")
            if not p._contig:
                raise NotImplementedError("tapegrad.optim: a non-contiguous parameter is not supported "
                                          "(make it contiguous before creating the optimizer)")
            if p._rec >= 0:
                raise NotImplementedError("tapegrad.optim: a non-leaf parameter (retain_grad) is not supported")
            P[i, K.ADDR] = p._addr
            P[i, K.SLOT] = p._slot
            P[i, K.N] = p._n
            P[i, K.CODE] = p._dtype.code
            P[i, K.GROUP] = gi
            if id(p) not in shared:
                shared[id(p)] = self._state_buffers(p, groups[gi])
            init, bufs = shared[id(p)]
            P[i, K.INIT] = init
            for key, col in self._state_keys(groups[gi]):
                P[i, col] = bufs[key]._addr
            if not init:
                c.pending[i] = bufs
        c.P = P
        # None: float32 rows only, and the kernel compiles without its float64 branch (kernels/optim.py)
        c.f64s = True if (P[:, K.CODE] != 0).any() else None
        c.upd = np.zeros(max(n, 1), np.int8)
        c.params = params
        c.addrs = [p._addr for p in params]
        c.unslotted = [i for i, p in enumerate(params) if p._slot < 0]
        c.spans = [inplace_span(p) for p in params]
        c.vcs = [s[2] for s in c.spans]
        c.gidx = gidx
        c.hyper = None
        c.H = None
        self._stale[0] = False
        return c

    def _state_buffers(self, p, group):
        """(initialised, {key: tensor}) for parameter p: its state tensors when PyTorch
        would consider it initialised (converted to what the kernel needs), else fresh zeros."""
        keys = self._state_keys(group)
        st = dict.get(self._state, p)
        init = st is not None and self._initialized(st)
        bufs = {}
        for key, _ in keys:
            v = st.get(key) if init else None
            if key == "step":
                t = v if (isinstance(v, Tensor) and v._dtype is D.float32 and v._n == 1) else None
                if t is None:
                    t = _tensor(float(v) if v is not None else 0.0, dtype=D.float32)
            elif v is None:
                t = _zeros(p._shape, dtype=p._dtype)
            else:
                t = v
                if not isinstance(t, Tensor):
                    t = _tensor(np.asarray(t), dtype=p._dtype)
                elif t._dtype is not p._dtype:
                    t = t.to(p._dtype)
                if t._shape != p._shape:
                    raise RuntimeError(f"tapegrad.optim: state '{key}' has shape {list(t._shape)}, its parameter "
                                       f"{list(p._shape)}")
                if not t._contig:
                    t = t.contiguous()
            if t._rg:
                t = t.detach()
            bufs[key] = t
            if init and v is not t:
                dict.__setitem__(st, key, t)   # converted: the state holds what the kernel writes
        return init, bufs

    def _update(self):
        if TAPE.capture is not None:
            TAPE.capture.add("update", self._update)
        c = self._prepare()
        if TAPE.flushed < TAPE.next_index:
            # records still to run read the old parameter values, or write a gradient or a converted state
            TAPE.flush()
        la, ls = self._slot_table()
        try:
            done, new = getattr(K, self._kernel)(c.P, la, ls, c.H, c.upd, c.f64s)
        finally:
            del la, ls
        self._finish(c, done, new)

    def _prepare(self):
        """The kernel rows, with this step's hyperparameters (what the update kernel takes besides
        the gradient-slot table; a captured step calls the kernel itself, capture.py)."""
        c = self._rows()
        hyper = [self._hyper(g) for g in self.param_groups]
        if hyper != c.hyper:
            c.hyper = hyper
            c.H = np.array(hyper, np.float64)
        return c

    def _finish(self, c, done, new):
        """After the kernel updated `done` parameters (`new` of them initialised their state):
        version counters, the in-place log, the state PyTorch would show."""
        if not done:
            return
        groups = self.param_groups
        if self.__class__._bumps is Optimizer._bumps:    # one write a parameter (not overridden)
            b, bumps, same = 1, None, True
        else:
            bumps = [self._bumps(g) for g in groups]
            b = bumps[0]
            same = bumps.count(b) == len(bumps)
        if done == len(c.params) and same:   # every row, the same count
            for vc in c.vcs:
                vc[0] += b
            TAPE.log_inplace(c.spans if b == 1 else c.spans * b)
        else:
            spans = []
            for i in np.flatnonzero(c.upd[:len(c.params)]).tolist():
                b = bumps[c.gidx[i]] if bumps is not None else 1
                c.vcs[i][0] += b
                spans.extend([c.spans[i]] * b)
            TAPE.log_inplace(spans)
        if new:
            self._publish(c)

    def _publish(self, c):
        """State initialised by this step appears in optimizer.state, as in PyTorch."""
        for i in np.flatnonzero(c.upd[:len(c.params)] == 2).tolist():
            bufs = c.pending.pop(i, None)
            if bufs is None:
                continue
            p = c.params[i]
            st = dict.get(self._state, p)
            if st is None:
                st = _param_state(self._stale)
                dict.__setitem__(self._state, p, st)
            dict.update(st, bufs)
