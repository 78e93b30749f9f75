"""torch.utils.checkpoint: trade compute for memory.

``checkpoint(fn, *args)`` runs ``fn`` so that the tape does not keep its intermediate
values: its outputs come back as the outputs of one custom ``autograd.Function`` node
whose backward recomputes ``fn`` (grad enabled, the forward's random state restored)
and backpropagates through the recomputed segment. Backward passes nest (Note
[backward passes] in tape/tape.py), so that inner pass runs in the middle of the outer one.

How: the segment runs once in the caller's grad mode, and the leaves its outputs reach
through the records it made (its parameters) are found by walking the graph facade
(``grad_fn.next_functions`` down to ``AccumulateGrad.variable``). The outputs are then
re-rooted on one ``autograd.Function`` node whose inputs are the tensor arguments that
require grad and those leaves: the segment's own records die with its intermediate tensors,
and the tape drops them (their large buffers go back to ARENA.pool). The node's backward
detaches the saved arguments, recomputes under enable_grad and calls ``autograd.grad`` on
the recomputed outputs with respect to the copies and the leaves, and returns those
gradients: the *outer* pass accumulates the parameters' ``.grad``, exactly as without
checkpointing (and ``autograd.grad`` / ``backward(inputs=...)`` work through it).

NOTE: torch's reentrant variant accumulates the parameters' gradients in an inner
``autograd.backward`` instead. That path is kept as ``CheckpointFunction`` (torch's public
class); checkpoint() returns the gradients to the outer pass instead, so that
``autograd.grad`` works through a checkpoint too.

The two variants differ as in torch where it shows: ``use_reentrant=True`` (torch 2.13's
default when ``use_reentrant`` is not passed, with torch's warning) records nothing when no
tensor argument requires grad (the output then does not require grad, with torch's warning
"None of the inputs have requires_grad=True"), takes no keyword arguments, and has no
determinism check; ``use_reentrant=False`` passes kwargs, supports ``context_fn`` and
checks that the recomputed outputs have the forward's shapes and dtypes.
"""
import contextlib
import warnings

from ..autograd.grad_mode import enable_grad, is_grad_enabled, no_grad

__all__ = ["checkpoint", "checkpoint_sequential", "CheckpointError", "CheckpointFunction", "check_backward_validity",
           "detach_variable", "noop_context_fn", "set_checkpoint_debug_enabled", "set_checkpoint_early_stop"]

_DEFAULT_DETERMINISM_MODE = "default"
_checkpoint_debug_enabled = None


def _Tensor():
    from ..tensor import Tensor
    return Tensor


def _Function():
    from ..autograd.function import Function
    return Function


class CheckpointError(RuntimeError):
    pass


@contextlib.contextmanager
def set_checkpoint_debug_enabled(enabled):
    global _checkpoint_debug_enabled
    prev = _checkpoint_debug_enabled
    _checkpoint_debug_enabled = enabled
    try:
        yield
    finally:
        _checkpoint_debug_enabled = prev


@contextlib.contextmanager
def set_checkpoint_early_stop(enable):
    yield   # tapegrad always recomputes the whole segment


def noop_context_fn():
    return contextlib.nullcontext(), contextlib.nullcontext()


def detach_variable(inputs):
    if isinstance(inputs, tuple):
        out = []
        for inp in inputs:
            if not isinstance(inp, _Tensor()):
                out.append(inp)
                continue
            x = inp.detach()
            x.requires_grad = inp.requires_grad
            out.append(x)
        return tuple(out)
    raise RuntimeError(f"Only tuple of tensors is supported. Got Unsupported input type: {type(inputs).__name__}")


def check_backward_validity(inputs):
    if not any(inp.requires_grad for inp in inputs if isinstance(inp, _Tensor())):
        warnings.warn("None of the inputs have requires_grad=True. Gradients will be None", stacklevel=2)


# ----- random state ------------------------------------------------------------------------
def _get_rng_state():
    from ..random import _GEN
    return _GEN[0].bit_generator.state      # a fresh dict (a copy)


@contextlib.contextmanager
def _rng_as(state, enabled):
    """Run the block with tapegrad's generator in `state`, then put back the state it had."""
    if not enabled:
        yield
        return
    from ..random import _GEN
    gen = _GEN[0]
    outer = gen.bit_generator.state
    gen.bit_generator.state = state
    try:
        yield
    finally:
        _GEN[0] = gen
        gen.bit_generator.state = outer


# ----- use_reentrant=True: torch's CheckpointFunction ------------------------------------------
def _make_checkpoint_function():
    Function = _Function()

    class CheckpointFunction(Function):
        @staticmethod
        def forward(ctx, run_function, preserve_rng_state, *args):
            check_backward_validity(args)
            ctx.run_function = run_function
            ctx.preserve_rng_state = preserve_rng_state
            if preserve_rng_state:
                ctx.fwd_cpu_state = _get_rng_state()
            ctx.inputs = []
            ctx.tensor_indices = []
            tensor_inputs = []
            for i, arg in enumerate(args):
                if isinstance(arg, _Tensor()):
                    tensor_inputs.append(arg)
                    ctx.tensor_indices.append(i)
                    ctx.inputs.append(None)
                else:
                    ctx.inputs.append(arg)
            ctx.save_for_backward(*tensor_inputs)
            with no_grad():
                outputs = run_function(*args)
            return outputs

        @staticmethod
        def backward(ctx, *args):
            from .. import autograd
            inputs = list(ctx.inputs)
            tensors = ctx.saved_tensors
            for i, idx in enumerate(ctx.tensor_indices):
                inputs[idx] = tensors[i]
            with _rng_as(getattr(ctx, "fwd_cpu_state", None), ctx.preserve_rng_state):
                detached_inputs = detach_variable(tuple(inputs))
                with enable_grad():
                    outputs = ctx.run_function(*detached_inputs)
            if isinstance(outputs, _Tensor()):
                outputs = (outputs,)
            outputs_with_grad, args_with_grad = [], []
            for i in range(len(outputs)):
                if isinstance(outputs[i], _Tensor()) and outputs[i].requires_grad:
                    outputs_with_grad.append(outputs[i])
                    args_with_grad.append(args[i])
            if len(outputs_with_grad) == 0:
                raise RuntimeError("none of output has requires_grad=True, this checkpoint() is not necessary")
            autograd.backward(outputs_with_grad, args_with_grad)
            grads = tuple(inp.grad if isinstance(inp, _Tensor()) else None for inp in detached_inputs)
            return (None, None) + grads

    return CheckpointFunction


_CF = []


def __getattr__(name):
    if name == "CheckpointFunction":
        if not _CF:
            _CF.append(_make_checkpoint_function())
        return _CF[0]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----- checkpoint's node -------------------------------------------------------------------------
def _flatten(obj, out):
    """The tensors of a (nested list / tuple / dict) structure, in order, and a function that
    rebuilds the structure from replacements for them."""
    T = _Tensor()
    if isinstance(obj, T):
        out.append(obj)
        k = len(out) - 1
        return lambda vals: vals[k]
    if isinstance(obj, (list, tuple)):
        subs = [_flatten(o, out) for o in obj]
        if type(obj) in (list, tuple):
            return lambda vals: type(obj)(s(vals) for s in subs)
        if hasattr(obj, "_fields"):   # a namedtuple
            return lambda vals: type(obj)(*(s(vals) for s in subs))
        return lambda vals: type(obj)(s(vals) for s in subs)
    if isinstance(obj, dict):
        subs = [(k, _flatten(v, out)) for k, v in obj.items()]
        return lambda vals: type(obj)((k, s(vals)) for k, s in subs)
    return lambda vals: obj


def _detached(t):
    x = t.detach()
    x.requires_grad = t.requires_grad
    return x


def _leaves_reached(outs, start, known_recs):
    """The leaves requiring grad that the graph of `outs` reaches through records made at or
    after global record `start` (the segment's), and whether it reaches a record made before
    `start` that is none of `known_recs` (a tensor with history the segment captured)."""
    from ..autograd.graph import AccumulateGrad
    leaves, seen_leaves, seen, stack = [], set(), set(), []
    foreign = False
    for o in outs:
        fn = o.grad_fn
        if fn is not None:
            stack.append(fn)
    while stack:
        node = stack.pop()
        if isinstance(node, AccumulateGrad):
            v = node.variable
            if v is not None and id(v) not in seen_leaves:
                seen_leaves.add(id(v))
                leaves.append(v)
            continue
        r = node.record_index
        if r in seen:
            continue
        seen.add(r)
        if r < start:
            if r not in known_recs:
                foreign = True
            continue
        for nxt, _ in node.next_functions:
            if nxt is not None:
                stack.append(nxt)
    return leaves, foreign


def _meta(t):
    return {"shape": tuple(t.shape), "dtype": t.dtype, "device": t.device}


class _Frame:
    """What the node keeps: the function, its arguments, the forward's random state."""
    __slots__ = ("function", "preserve", "rng", "recompute_context", "arg_tensors", "n_inputs",
                 "outs", "out_meta", "check", "rebuild_in", "leaves", "reentrant")


def _make_node_function():
    Function = _Function()

    class CheckpointNode(Function):
        @staticmethod
        def forward(ctx, frame, *inputs):
            ctx.frame = frame
            ctx.saved_leaves = frame.leaves
            frame.leaves = None
            outs = frame.outs
            frame.outs = None       # the node owns the outputs from now on (the segment's graph can die)
            return tuple(outs)

        @staticmethod
        def backward(ctx, *grads):
            from .. import autograd
            f = ctx.frame
            copies = [_detached(t) for t in f.arg_tensors]
            args, kwargs = f.rebuild_in(copies)
            with _rng_as(f.rng, f.preserve):
                with enable_grad(), f.recompute_context:
                    ret = f.function(*args, **kwargs)
            flat = []
            _flatten(ret, flat)
            outs = [flat[i] for i in f.out_meta[0]] if len(flat) > max(f.out_meta[0], default=-1) else None
            if outs is None or (f.check and [_meta(o) for o in outs] != f.out_meta[1]):
                raise CheckpointError(
                    "torch.utils.checkpoint: Recomputed values for the following tensors have different metadata "
                    "than during the forward pass.\n" + (
                        "" if outs is None else "".join(
                            f"tensor at position {k}:\nsaved metadata: {m}\nrecomputed metadata: {_meta(o)}\n"
                            for k, (o, m) in enumerate(zip(outs, f.out_meta[1])) if _meta(o) != m)))
            # the node's inputs: the tensor arguments that require grad (their copies here), then the leaves
            wrt = [c for c, t in zip(copies, f.arg_tensors) if t.requires_grad] + list(ctx.saved_leaves)
            pairs = [(o, g) for o, g in zip(outs, grads) if o.requires_grad]
            if not pairs and f.reentrant:
                raise RuntimeError("none of output has requires_grad=True, this checkpoint() is not necessary")
            if not pairs or not wrt:
                return (None,) * (1 + f.n_inputs)
            res = autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True)
            return (None,) + tuple(res)

    return CheckpointNode


_NR = []


def _checkpoint_impl(function, preserve_rng_state, context_fn, determinism_check, reentrant, args, kwargs):
    """Run the segment, find what its outputs depend on, and re-root them on one node."""
    from ..tape.tape import TAPE
    if reentrant:
        check_backward_validity(args)
        if not (is_grad_enabled() and any(isinstance(a, _Tensor()) and a.requires_grad for a in args)):
            with no_grad():     # torch: a Function none of whose inputs requires grad records nothing
                return function(*args)
    forward_context, recompute_context = context_fn()
    rng = _get_rng_state() if preserve_rng_state else None
    start = TAPE.next_index
    with forward_context:
        ret = function(*args, **kwargs)
    if not is_grad_enabled():
        return ret
    flat = []
    rebuild_out = _flatten(ret, flat)
    out_idx = [i for i, o in enumerate(flat) if o.requires_grad and o._dtype.is_floating_point]
    if not out_idx:
        return ret
    arg_tensors = []
    rebuild_in = _flatten((args, kwargs), arg_tensors)
    known = {t._rec for t in arg_tensors if t._rec >= 0}
    outs = [flat[i] for i in out_idx]
    leaves, foreign = _leaves_reached(outs, start, known)
    if foreign:
        warnings.warn("tapegrad.utils.checkpoint: the checkpointed function uses a tensor with autograd history "
                      "that is not one of its arguments; no gradient will flow to it through the checkpoint. Pass "
                      "it as an argument.", UserWarning, stacklevel=3)
    arg_ids = {id(t) for t in arg_tensors if t.requires_grad}
    saved_leaves = [v for v in leaves if id(v) not in arg_ids]
    # a tensor argument that appears twice is two inputs: in the recompute each place gets its own copy
    node_inputs = [t for t in arg_tensors if t.requires_grad] + saved_leaves
    frame = _Frame()
    frame.function, frame.preserve, frame.rng = function, preserve_rng_state, rng
    frame.recompute_context = recompute_context
    frame.arg_tensors = arg_tensors
    frame.rebuild_in = rebuild_in
    frame.n_inputs = len(node_inputs)
    frame.outs = outs
    frame.out_meta = (out_idx, [_meta(o) for o in outs])
    frame.check = determinism_check == _DEFAULT_DETERMINISM_MODE and not reentrant
    frame.reentrant = reentrant
    frame.leaves = saved_leaves
    del outs, leaves, saved_leaves
    if not _NR:
        _NR.append(_make_node_function())
    new = _NR[0].apply(frame, *node_inputs)
    vals = list(flat)
    for i, t in zip(out_idx, new):
        vals[i] = t
    del flat
    return rebuild_out(vals)


# ----- the entry points ------------------------------------------------------------------------
def checkpoint(function, *args, use_reentrant=None, context_fn=noop_context_fn,
               determinism_check=_DEFAULT_DETERMINISM_MODE, debug=False, early_stop=True, **kwargs):
    """Run ``function(*args, **kwargs)`` without keeping its intermediate values; backward
    recomputes them (torch.utils.checkpoint.checkpoint)."""
    if use_reentrant is None:
        warnings.warn(
            "torch.utils.checkpoint: the use_reentrant parameter should be "
            "passed explicitly. Starting in PyTorch 2.9, calling checkpoint "
            "without use_reentrant will raise an exception. use_reentrant=False is "
            "recommended, but if you need to preserve the current default "
            "behavior, you can pass use_reentrant=True. Refer to docs for more "
            "details on the differences between the two variants.",
            stacklevel=2)
        use_reentrant = True
    preserve = kwargs.pop("preserve_rng_state", True)
    if kwargs and use_reentrant:
        raise ValueError("Unexpected keyword arguments: " + ",".join(arg for arg in kwargs))
    if use_reentrant:
        if context_fn is not noop_context_fn or debug is not False:
            raise ValueError("Passing `context_fn` or `debug` is only supported when use_reentrant=False.")
    else:
        if debug if _checkpoint_debug_enabled is None else _checkpoint_debug_enabled:
            if context_fn is not noop_context_fn:
                raise ValueError("debug=True is incompatible with non-default context_fn")
        if determinism_check not in (_DEFAULT_DETERMINISM_MODE, "none"):
            raise ValueError(f"determinism_check should be one of {[_DEFAULT_DETERMINISM_MODE, 'none']}, "
                             f"but got {determinism_check}")
    return _checkpoint_impl(function, preserve, context_fn, determinism_check, use_reentrant, args, kwargs)


def checkpoint_sequential(functions, segments, input, use_reentrant=None, **kwargs):
    """Run a sequence of modules / functions in `segments` checkpointed chunks (the last one
    is not checkpointed), as torch.utils.checkpoint.checkpoint_sequential."""
    from ..nn.module import Sequential
    if use_reentrant is None:
        warnings.warn(
            "torch.utils.checkpoint.checkpoint_sequential: the use_reentrant "
            "parameter should be passed explicitly. "
            "In version 2.9 we will raise an exception if use_reentrant "
            "is not passed. use_reentrant=False is "
            "recommended, but if you need to preserve the current default "
            "behavior, you can pass use_reentrant=True. Refer to docs for more "
            "details on the differences between the two variants.", stacklevel=2)
        use_reentrant = True
    preserve = kwargs.pop("preserve_rng_state", True)
    if kwargs:
        raise ValueError("Unexpected keyword arguments: " + ",".join(arg for arg in kwargs))

    def run_function(start, end, functions):
        def forward(input):
            for j in range(start, end + 1):
                input = functions[j](input)
            return input
        return forward

    if isinstance(functions, Sequential):
        functions = list(functions.children())
    segment_size = len(functions) // segments
    end = -1
    for start in range(0, segment_size * (segments - 1), segment_size):
        end = start + segment_size - 1
        input = checkpoint(run_function(start, end, functions), input, use_reentrant=use_reentrant,
                           preserve_rng_state=preserve)
    return run_function(end + 1, len(functions) - 1, functions)(input)
