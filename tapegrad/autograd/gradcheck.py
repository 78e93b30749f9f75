"""tapegrad.autograd.gradcheck: torch.autograd.gradcheck / gradgradcheck.

Finite differences against the analytical Jacobian, with torch 2.13's rules, checks and messages
(ported from ``torch/autograd/gradcheck.py``, real-valued dense tensors only):

* slow mode (default): for every input that requires grad, every element is perturbed by -eps and
  +eps and the central difference ``(f(x + eps) - f(x - eps)) / 2eps`` gives one row of the
  (input numel, output numel) numerical Jacobian, in the output's dtype; the analytical one has a
  row per input element too, and is built column by column: ``tapegrad.autograd.grad`` of each
  output with a one-hot ``grad_outputs`` (twice, to check that backward is reentrant);
* fast mode: both Jacobians are reduced to ``v^T J u`` with random unit vectors u, v;
* the comparison is torch.allclose's: ``|analytical - numerical| <= atol + rtol * |numerical|``.

Differences from torch, all forced by tapegrad having no such thing:

* the perturbed points are evaluated on fresh float tensors that hold the perturbed values (torch
  writes them into the inputs' ``.data`` and restores it), so ``func`` must use its arguments, not
  the input tensors it might capture;
* tapegrad has no undefined gradients: the undefined-gradient check runs backward with zero
  gradients (torch's ``UndefinedGrad`` is treated as zeros by every backward formula anyway);
* no complex dtypes, no sparse or MKLDNN layouts, no forward-mode AD and no vmap:
  ``check_forward_ad=True``, ``check_batched_grad=True`` and ``check_batched_forward_grad=True``
  raise NotImplementedError;
* fast mode draws u and v from NumPy's generator (fixed seed), not torch's, so its scalars (and
  the numbers in its messages) differ from torch's.
"""
import warnings

import numpy as np

import tapegrad as _tg

from .functional import _as_tuple_nocheck as _as_tuple   # one helper for both ports of torch's files

__all__ = ["gradcheck", "gradgradcheck", "GradcheckError"]


class GradcheckError(RuntimeError):
    r"""Error raised by :func:`gradcheck` and :func:`gradgradcheck`."""


FAILED_NONDET_MSG = """\n
NOTE: If your op relies on non-deterministic operations i.e., it is listed here:
https://pytorch.org/docs/stable/generated/torch.use_deterministic_algorithms.html
this failure might be expected.

If you are adding a new operator, please file an issue and then use one of the
workarounds. The workaround depends on how your test invokes gradcheck/gradgradcheck.
If the test
- manually invokes gradcheck/gradgradcheck, then call gradcheck/gradgradcheck
  with `nondet_tol=<tol>` as a keyword argument.
- is OpInfo-based (e.g., in test_ops_gradients.py), then modify the OpInfo for the test
  to have `gradcheck_nondet_tol=<tol>`.
- is a Module test (e.g., in common_nn.py), then modify the corresponding
  module_test entry to have `gradcheck_nondet_tol=<tol>`
"""

FAST_FAIL_SLOW_OK_MSG = """
Fast gradcheck failed but element-wise differences are small. This means that the
test might've passed in slow_mode!

If you are adding a new operator, please file an issue and then use one of the
workarounds. The workaround depends on how your test invokes gradcheck/gradgradcheck:

If the test
- manually invokes gradcheck/gradgradcheck, then call gradcheck/gradgradcheck
  with `fast_mode=False` as a keyword argument.
- is OpInfo-based (e.g., in test_ops_gradients.py), then modify the OpInfo for the test
  to have `gradcheck_fast_mode=False`
- is a Module test (e.g., in common_nn.py), then modify the corresponding
  module_test entry to have `gradcheck_fast_mode=False`
""".strip()

_FAST_SEED = 67280421310721   # torch.Generator()'s default seed (the generator itself differs)


# ----- small helpers -------------------------------------------------------------------------------

def _is_tensor(x):
    return isinstance(x, _tg.Tensor)


def _is_float_tensor(x):
    return _is_tensor(x) and x.dtype.is_floating_point




def _differentiable_outputs(x):
    return tuple(o for o in _as_tuple(x) if o.requires_grad)


def _np(t):
    """A private float copy of a tensor's values (``numpy()`` shares storage)."""
    return np.array(t.detach().numpy(), copy=True)


def _tensor(a, dtype=None):
    a = np.asarray(a)
    return _tg.tensor(a, dtype=dtype if dtype is not None else _tg._dtype.from_numpy_dtype(a.dtype))


def _grad(outputs, inputs, grad_outputs, **kw):
    return _tg.autograd.grad(outputs, inputs, grad_outputs, **kw)


def _diff_inputs(inputs):
    return [t for t in inputs if _is_tensor(t) and t.requires_grad]


# ----- comparison (exposed for tests: _compare, _allclose, _notallclose_msg) ----------------------

def _allclose(a, b, rtol, atol):
    """torch.allclose(a, b, rtol, atol) after type promotion: |a - b| <= atol + rtol * |b|, NaN never
    close, equal infinities close."""
    a, b = np.asarray(a), np.asarray(b)
    dt = np.promote_types(a.dtype, b.dtype)
    return bool(np.allclose(a.astype(dt), b.astype(dt), rtol=rtol, atol=atol, equal_nan=False))


def _notallclose_msg(analytical, numerical, output_idx, input_idx):
    return (f"Jacobian mismatch for output {output_idx:d} with respect to input {input_idx:d},\n"
            f"numerical:{numerical}\nanalytical:{analytical}\n")


def _compare(numerical, analytical, rtol=1e-3, atol=1e-5, *, output_idx=0, input_idx=0):
    """Compare one numerical / analytical Jacobian pair (tensors or arrays of the same shape) the way
    gradcheck does; raise GradcheckError with torch's message when they are not close."""
    n = numerical if _is_tensor(numerical) else _tensor(numerical)
    a = analytical if _is_tensor(analytical) else _tensor(analytical)
    if not _allclose(_np(a), _np(n), rtol, atol):
        raise GradcheckError(_notallclose_msg(a, n, output_idx, input_idx))
    return True


# ----- numerical Jacobians -------------------------------------------------------------------------

def _check_outputs_same_dtype_and_shape(output1, output2, eps, idx=None):
    on_index = f"on index {idx} " if idx is not None else ""
    if output1.shape != output2.shape:
        raise AssertionError(
            f"Expected `func` to return outputs with the same shape"
            f" when inputs are perturbed {on_index}by {eps}, but got:"
            f" shapes {output1.shape} and {output2.shape}.")
    if output1.dtype != output2.dtype:
        raise AssertionError(
            f"Expected `func` to return outputs with the same dtype"
            f" when inputs are perturbed {on_index}by {eps}, but got:"
            f" dtypes {output1.dtype} and {output2.dtype}.")


def _eval_perturbed(fn, inputs, input_idx, values):
    """fn(*inputs) with inputs[input_idx] replaced by a fresh tensor holding `values` (same dtype and
    requires_grad); returns the float outputs' tensors (checked for shape and dtype later)."""
    inp = inputs[input_idx]
    new = _tensor(values, inp.dtype)
    if inp.requires_grad:
        new.requires_grad_(True)
    args = tuple(new if i == input_idx else a for i, a in enumerate(inputs))
    return tuple(o.detach().clone() if _is_tensor(o) else o for o in _as_tuple(fn(*args)))


def _central_difference(outa, outb, eps, idx=None):
    res = []
    for a, b in zip(outa, outb):
        _check_outputs_same_dtype_and_shape(a, b, eps=eps, idx=idx)
        if not _is_float_tensor(a):
            continue
        res.append(((_np(b) - _np(a)) / (2 * eps)).reshape(-1))
    return res


def _numerical_jacobian_wrt_input(fn, input_idx, inputs, outputs, eps):
    """One (input numel, output numel) array per float output, in the output's dtype."""
    inp = inputs[input_idx]
    base = _np(inp)
    flat = base.reshape(-1)
    jacobians = [np.zeros((inp.numel(), o.numel()), o.dtype.np) for o in outputs if _is_float_tensor(o)]
    for d_idx in range(flat.size):
        idx = tuple(int(i) for i in np.unravel_index(d_idx, base.shape))
        orig = flat[d_idx]
        pert = flat.copy()
        pert[d_idx] = orig - eps
        outa = _eval_perturbed(fn, inputs, input_idx, pert.reshape(base.shape))
        pert[d_idx] = orig + eps
        outb = _eval_perturbed(fn, inputs, input_idx, pert.reshape(base.shape))
        for jac, col in zip(jacobians, _central_difference(outa, outb, eps, idx=idx)):
            jac[d_idx] = col
    return tuple(jacobians)


def _get_numerical_jacobian(fn, inputs, outputs, eps):
    """[input that requires grad][float output] -> (input numel, output numel) array."""
    return [_numerical_jacobian_wrt_input(fn, i, inputs, outputs, eps)
            for i, a in enumerate(inputs) if _is_tensor(a) and a.requires_grad]


def _numerical_jvp_wrt_input(fn, input_idx, inputs, u, eps):
    """(f(x + eps u) - f(x - eps u)) / 2eps, flattened, one per float output."""
    inp = inputs[input_idx]
    base = _np(inp)
    delta = (u * eps).reshape(base.shape).astype(base.dtype)
    outa = _eval_perturbed(fn, inputs, input_idx, base - delta)
    outb = _eval_perturbed(fn, inputs, input_idx, base + delta)
    return _central_difference(outa, outb, eps)


# ----- analytical Jacobians ------------------------------------------------------------------------

def _analytical_rows(output, diff_inputs, grad_outputs):
    """rows[i][j]: the gradient w.r.t. diff input i for the j-th grad_output (None when unused)."""
    rows = [[] for _ in diff_inputs]
    for go in grad_outputs:
        gis = _grad(output, diff_inputs, _tensor(go.reshape(output.shape), output.dtype),
                    retain_graph=True, allow_unused=True)
        for i, g in enumerate(gis):
            rows[i].append(g.detach().clone() if _is_tensor(g) else None)
    return rows


def _stack_and_check(rows, diff_inputs, numel_outputs):
    jacobians = [np.zeros((t.numel(), numel_outputs), t.dtype.np) for t in diff_inputs]
    correct_sizes = correct_types = True
    for inp, jac, tensor_list in zip(diff_inputs, jacobians, rows):
        for j, t in enumerate(tensor_list):
            if t is not None and t.shape != inp.shape:
                correct_sizes = False
            elif t is not None and t.dtype != inp.dtype:
                correct_types = False
            if t is not None:
                if jac[:, j].size != t.numel():
                    raise AssertionError(f"Expected out_jacobian column to have {t.numel()} elements, "
                                         f"but got {jac[:, j].size}")
                jac[:, j] = _np(t).reshape(-1)
    return jacobians, correct_sizes, correct_types


def _check_jacobians_equal(j1, j2, atol):
    return all(a.size == 0 or np.abs(a - b).max() <= atol for a, b in zip(j1, j2))


def _analytical_jacobian_attributes(inputs, output, nondet_tol, check_grad_dtypes, v=None):
    """torch's _check_analytical_jacobian_attributes: one (input numel, output numel) array per diff
    input (fast mode: (input numel, 1), the vector-Jacobian product with v)."""
    diff_inputs = _diff_inputs(inputs)
    if v is None:
        n = output.numel()
        basis = np.eye(n, dtype=output.dtype.np) if n else np.zeros((0, 0), output.dtype.np)
        grad_outputs = list(basis)
    else:
        grad_outputs = [v]
    rows1 = _analytical_rows(output, diff_inputs, grad_outputs)
    rows2 = _analytical_rows(output, diff_inputs, grad_outputs)
    # torch unpacks (jacobians, sizes_ok, types_ok) as (jacobians, types_ok, sizes_ok): a gradient of
    # the wrong dtype reports "incorrect size", one of the wrong shape (same numel) only fails with
    # check_grad_dtypes. Kept, so that tapegrad raises what torch raises.
    jacobians1, types_ok, sizes_ok = _stack_and_check(rows1, diff_inputs, len(grad_outputs))
    jacobians2, _, _ = _stack_and_check(rows2, diff_inputs, len(grad_outputs))
    reentrant = _check_jacobians_equal(jacobians1, jacobians2, nondet_tol)
    if not types_ok and check_grad_dtypes:
        raise GradcheckError("Gradient has dtype mismatch")
    if not sizes_ok:
        raise GradcheckError("Analytical gradient has incorrect size")
    if not reentrant:
        raise GradcheckError(
            "Backward is not reentrant, i.e., running backward with "
            "same input and grad_output multiple times gives different values, "
            "although analytical gradient matches numerical gradient."
            f"The tolerance for nondeterminism was {nondet_tol}." + FAILED_NONDET_MSG)
    return jacobians1


# ----- the checks ----------------------------------------------------------------------------------

def _check_inputs(tupled_inputs):
    any_input_requiring_grad = False
    for idx, inp in enumerate(tupled_inputs):
        if _is_tensor(inp) and inp.requires_grad:
            if inp.dtype != _tg.float64:
                warnings.warn(
                    f"Input #{idx} requires gradient and "
                    "is not a double precision floating point or complex. "
                    "This check will likely fail if all the inputs are "
                    "not of double precision floating point or complex. ",
                    stacklevel=3)
            if not all(st > 0 or sz <= 1 for st, sz in zip(inp.stride(), inp.size())):
                raise RuntimeError(
                    f"The {idx}th input has a dimension with stride 0. gradcheck only "
                    "supports inputs that are non-overlapping to be able to "
                    "compute the numerical gradients correctly. You should call "
                    ".contiguous on the input before passing it to gradcheck.")
            any_input_requiring_grad = True
    if not any_input_requiring_grad:
        raise ValueError(
            "gradcheck expects at least one input tensor to require gradient, "
            "but none of them have requires_grad=True.")
    return True


def _check_no_differentiable_outputs(func, inputs, func_out, eps):
    for jacobians in _get_numerical_jacobian(func, inputs, func_out, eps):
        for jacobian in jacobians:
            if np.count_nonzero(jacobian) > 0:
                raise GradcheckError("Numerical gradient for function expected to be zero")
    return True


def _check_no_differentiable_outputs_fast(func, inputs, inputs_indices, all_u, eps, nondet_tol):
    for inp_idx, u in zip(inputs_indices, all_u):
        for jvp in _numerical_jvp_wrt_input(func, inp_idx, inputs, u, eps):
            if jvp.size and np.abs(jvp).max() > nondet_tol:
                raise GradcheckError("Numerical gradient for function expected to be zero")
    return True


def _slow_gradcheck(func, func_out, tupled_inputs, outputs, eps, rtol, atol, check_grad_dtypes,
                    nondet_tol):
    func_out = _as_tuple(func_out)
    if not outputs:
        return _check_no_differentiable_outputs(func, tupled_inputs, func_out, eps)
    numerical = list(zip(*_get_numerical_jacobian(func, tupled_inputs, func_out, eps)))
    numerical = [nj for o, nj in zip(func_out, numerical) if o.requires_grad]
    for i, o in enumerate(outputs):
        analytical = _analytical_jacobian_attributes(tupled_inputs, o, nondet_tol, check_grad_dtypes)
        for j, (a, n) in enumerate(zip(analytical, numerical[i])):
            if not _allclose(a, n, rtol, atol):
                raise GradcheckError(_notallclose_msg(_tensor(a), _tensor(n), i, j))
    return True


def _vec_from_tensor(x, rng):
    vec = rng.random(x.numel()).astype(x.dtype.np)
    norm = np.sqrt(np.sum(vec * vec, dtype=vec.dtype))
    return vec / norm if norm else vec


def _adjusted_atol(atol, u, v):
    sum_v = 1.0 if v is None else float(v.sum())
    return atol * float(u.sum()) * sum_v


def _run_slow_mode_and_get_error(func, tupled_inputs, outputs, input_idx, output_idx, rtol, atol, eps):
    slow_numerical = _get_numerical_jacobian(func, tupled_inputs, outputs, eps)[input_idx][output_idx]
    slow_analytical = _analytical_jacobian_attributes(tupled_inputs, outputs[output_idx],
                                                      nondet_tol=float("inf"),
                                                      check_grad_dtypes=False)[input_idx]
    dt = np.promote_types(slow_numerical.dtype, slow_analytical.dtype)
    slow_max_diff = np.abs(slow_numerical.astype(dt) - slow_analytical.astype(dt)).max()
    slow_allclose = _allclose(slow_analytical, slow_numerical, rtol, atol)
    msg = (
        "\nThe above quantities relating the numerical and analytical jacobians are computed \n"
        "in fast mode. See: https://github.com/pytorch/pytorch/issues/53876 for more background \n"
        "about fast mode. Below, we recompute numerical and analytical jacobians in slow mode:\n\n"
        f"Numerical:\n {_tensor(slow_numerical)}\n"
        f"Analytical:\n{_tensor(slow_analytical)}\n\n"
        f"The max per-element difference (slow mode) is: {_tensor(slow_max_diff)}.\n")
    if slow_allclose:
        msg += FAST_FAIL_SLOW_OK_MSG
    return msg


def _fast_gradcheck(func, func_out, inputs, outputs, eps, rtol, atol, check_grad_dtypes, nondet_tol):
    inp_indices = [i for i, t in enumerate(inputs) if _is_tensor(t) and t.requires_grad]
    inp_tensors = [inputs[i] for i in inp_indices]
    rng = np.random.default_rng(_FAST_SEED)
    all_u = [_vec_from_tensor(t, rng) for t in inp_tensors]
    all_v = [_vec_from_tensor(o, rng) for o in outputs]

    numerical_vJu = []
    for inp_idx, u in zip(inp_indices, all_u):
        all_Ju = _numerical_jvp_wrt_input(func, inp_idx, inputs, u, eps)
        numerical_vJu.append([np.sum(v * Ju) for v, Ju in zip(all_v, all_Ju)])

    if not outputs:
        _check_no_differentiable_outputs_fast(func, inputs, inp_indices, all_u, eps, nondet_tol)
    analytical_vJu = []
    for output, v in zip(outputs, all_v):
        all_vJ = _analytical_jacobian_attributes(inputs, output, nondet_tol, check_grad_dtypes, v=v)
        analytical_vJu.append([np.sum(vJ.T.reshape(-1) * u) for vJ, u in zip(all_vJ, all_u)])

    for i, numerical_for_input_i in enumerate(numerical_vJu):
        for j, n in enumerate(numerical_for_input_i):
            a = analytical_vJu[j][i]
            updated_atol = _adjusted_atol(atol, all_u[i], all_v[j])
            if not _allclose(a, n, rtol, updated_atol):
                detail = _run_slow_mode_and_get_error(func, inputs, outputs, i, j, rtol, atol, eps)
                raise GradcheckError(_notallclose_msg(_tensor(a), _tensor(n), j, i) + detail)
    return True


def _test_backward_mul_by_grad_output(outputs, inputs):
    diff_input_list = _diff_inputs(inputs)
    if not diff_input_list:
        raise GradcheckError("no Tensors requiring grad found in input")
    grads_input = _grad(outputs, diff_input_list, [_tg.zeros(o.shape, dtype=o.dtype) for o in outputs],
                        allow_unused=True)
    for gi, di in zip(grads_input, diff_input_list):
        if gi is None:
            continue
        if not bool(gi.eq(0).all()):
            raise GradcheckError("backward not multiplied by grad_output")
        if gi.dtype != di.dtype:
            raise GradcheckError("grad is incorrect type")
        if gi.device != di.device:
            raise GradcheckError("grad is incorrect device")
        if gi.size() != di.size():
            raise GradcheckError("grad is incorrect size")
    return True


def _test_undefined_backward_mode(func, outputs, inputs):
    """torch runs backward with undefined output gradients; tapegrad has none, and a backward formula
    must treat an undefined gradient as zeros, so this runs it with zero output gradients."""
    diff_input_list = _diff_inputs(inputs)
    if not diff_input_list:
        raise GradcheckError("no Tensors requiring grad found in input")

    def warn_bc_breaking():
        warnings.warn(
            "Backwards compatibility: New undefined gradient support checking "
            "feature is enabled by default, but it may break existing callers "
            "of this function. If this is true for you, you can call this "
            'function with "check_undefined_grad=False" to disable the feature',
            stacklevel=2)

    output_to_check = [o for o in _differentiable_outputs(func(*inputs)) if _is_tensor(o)]
    grads_output = [_tg.zeros(o.shape, dtype=o.dtype) for o in output_to_check]
    try:
        grads_input = _grad(output_to_check, diff_input_list, grads_output, allow_unused=True)
    except RuntimeError as e:
        warn_bc_breaking()
        raise GradcheckError(
            "Expected backward function to handle undefined output grads. "
            'Please look at "Notes about undefined output gradients" in '
            '"tools/autograd/derivatives.yaml"') from e
    for gi in grads_input:
        if gi is not None and not bool(gi.eq(0).all()):
            warn_bc_breaking()
            raise GradcheckError(
                "Expected all input grads to be undefined or zero when all output grads are undefined "
                'or zero. Please look at "Notes about undefined output gradients" in '
                '"tools/autograd/derivatives.yaml"')
    return True


def gradcheck(func, inputs, *, eps=1e-6, atol=1e-5, rtol=1e-3, raise_exception=True, nondet_tol=0.0,
              check_undefined_grad=True, check_grad_dtypes=False, check_batched_grad=False,
              check_batched_forward_grad=False, check_forward_ad=False, check_backward_ad=True,
              fast_mode=False, masked=None):
    r"""Check gradients computed via small finite differences against analytical gradients w.r.t.
    the tensors in `inputs` that are floating point and have ``requires_grad=True``
    (torch.autograd.gradcheck). Returns True, or raises GradcheckError (returns False when
    ``raise_exception=False``)."""
    if not (check_forward_ad or check_backward_ad):
        raise AssertionError("Expected at least one of check_forward_ad or check_backward_ad to be True")
    if check_batched_grad and not check_backward_ad:
        raise AssertionError("Setting check_batched_grad=True requires check_backward_ad to be True")
    if check_batched_forward_grad and not check_forward_ad:
        raise AssertionError("Setting check_batched_forward_grad=True requires check_forward_ad to be True")
    if check_forward_ad or check_batched_forward_grad:
        raise NotImplementedError("gradcheck(check_forward_ad=True): tapegrad has no forward-mode AD")
    if check_batched_grad:
        raise NotImplementedError("gradcheck(check_batched_grad=True): tapegrad has no vmap")
    try:
        return _gradcheck_helper(func, inputs, eps, atol, rtol, nondet_tol, check_undefined_grad,
                                 check_grad_dtypes, fast_mode)
    except GradcheckError:
        if raise_exception:
            raise
        return False


def _gradcheck_helper(func, inputs, eps, atol, rtol, nondet_tol, check_undefined_grad, check_grad_dtypes,
                      fast_mode):
    tupled_inputs = _as_tuple(inputs)
    _check_inputs(tupled_inputs)
    func_out = func(*tupled_inputs)
    outputs = _differentiable_outputs(func_out)
    check = _fast_gradcheck if fast_mode else _slow_gradcheck
    check(func, func_out, tupled_inputs, outputs, eps, rtol, atol, check_grad_dtypes, nondet_tol)
    _test_backward_mul_by_grad_output(outputs, tupled_inputs)
    if check_undefined_grad:
        _test_undefined_backward_mode(func, outputs, tupled_inputs)
    return True


def _make_grad_output(x, noncontiguous):
    """torch.testing.make_tensor(x.shape, low=-1, high=1, requires_grad=True, noncontiguous=...):
    uniform in [-1, 1) from tapegrad's global generator (torch draws from its global one too)."""
    dtype = x.dtype if x.dtype.is_floating_point else _tg.float64
    with _tg.no_grad():
        vals = _np(_tg.rand(*x.shape, dtype=dtype) * 2 - 1) if x.numel() else np.zeros(x.shape, dtype.np)
    if noncontiguous and x.numel() > 1:
        t = _tensor(np.repeat(vals, 2, axis=-1), dtype)[..., ::2]
    else:
        t = _tensor(vals, dtype)
    return t.requires_grad_(True)


def gradgradcheck(func, inputs, grad_outputs=None, *, eps=1e-6, atol=1e-5, rtol=1e-3,
                  gen_non_contig_grad_outputs=False, raise_exception=True, nondet_tol=0.0,
                  check_undefined_grad=True, check_grad_dtypes=False, check_batched_grad=False,
                  check_fwd_over_rev=False, check_rev_over_rev=True, fast_mode=False, masked=False):
    r"""Check gradients of gradients computed via small finite differences against analytical
    gradients w.r.t. the tensors in `inputs` and `grad_outputs` that require grad
    (torch.autograd.gradgradcheck): gradcheck of
    ``(inputs, grad_outputs) -> grad(func(inputs), inputs, grad_outputs, create_graph=True)``."""
    if not (check_fwd_over_rev or check_rev_over_rev):
        raise AssertionError("Expected at least one of check_fwd_over_rev or check_rev_over_rev to be True")
    if check_undefined_grad and not check_rev_over_rev:
        raise AssertionError("Setting check_undefined_grad=True requires check_rev_over_rev to be True")
    if check_batched_grad and not check_rev_over_rev:
        raise AssertionError("Setting check_batched_grad=True requires check_rev_over_rev to be True")
    tupled_inputs = _as_tuple(inputs)

    if grad_outputs is None:
        outputs = _differentiable_outputs(func(*tupled_inputs))
        tupled_grad_outputs = tuple(_make_grad_output(x, gen_non_contig_grad_outputs) for x in outputs)
    else:
        tupled_grad_outputs = _as_tuple(grad_outputs)

    num_outputs = len(tupled_grad_outputs)
    diff_input_args_indices = {i for i, x in enumerate(tupled_inputs) if _is_tensor(x) and x.requires_grad}
    diff_grad_output_indices = {i for i, x in enumerate(tupled_grad_outputs) if x.requires_grad}

    def new_func(*args):
        input_args = tuple(x.requires_grad_() if i in diff_input_args_indices else x
                           for i, x in enumerate(args[:-num_outputs]))
        outputs = _differentiable_outputs(func(*input_args))
        grad_outputs = tuple(x.requires_grad_() if i in diff_grad_output_indices else x
                             for i, x in enumerate(args[-num_outputs:]))
        diff_input_args = tuple(x for i, x in enumerate(input_args) if i in diff_input_args_indices)
        grad_inputs = _grad(outputs, diff_input_args, grad_outputs, create_graph=True, allow_unused=True)
        return tuple(g for g in grad_inputs if g is not None)

    return gradcheck(new_func, tupled_inputs + tupled_grad_outputs, eps=eps, atol=atol, rtol=rtol,
                     raise_exception=raise_exception, nondet_tol=nondet_tol,
                     check_undefined_grad=check_undefined_grad, check_grad_dtypes=check_grad_dtypes,
                     check_batched_grad=check_batched_grad, fast_mode=fast_mode,
                     check_forward_ad=check_fwd_over_rev, check_backward_ad=check_rev_over_rev,
                     masked=masked)
