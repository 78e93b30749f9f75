"""Jitted optimizer updates: one call updates every parameter of an optimizer.

An optimizer hands its kernel one row per parameter (``P``, int64):

    ADDR   address of the parameter's element 0 (storage never moves)
    SLOT   the parameter's gradient slot in the tape's leaf table, -1 if none yet
    N      elements
    CODE   dtype: 0 float32, 1 float64
    GROUP  index of its param group: a row of ``H``, the groups' hyperparameters
    INIT   1 once the state was initialised (set by the kernel)
    S0-S2  addresses of state buffers (same dtype and size as the parameter), 0 if unused
    STEP   address of the float32 step counter, 0 if unused

and the tape's slot table (``la``: gradient addresses, ``ls``: 0 where .grad is None).
``f64s`` is None when every row is float32: Numba prunes the float64 branch before typing, and
the kernel compiles its update once, not twice (0.13 s of a cold first W5a step; session 28).
A parameter whose grad is None is skipped, as PyTorch skips it. ``upd[i]`` is set
to 0 (skipped), 1 (updated) or 2 (updated, state initialised now). Each kernel
returns (rows updated, rows whose state was initialised).

The arithmetic follows PyTorch's single-tensor (``foreach=False``) functions
operation by operation, in the parameter's dtype, with every Python-float
scalar rounded to that dtype as PyTorch's CPU kernels do; step counts and bias
corrections are Python floats (float64) there, and here. The only differences
left are PyTorch's fused multiply-adds in its vectorised loops (about 1 ulp).

CPU only for now: the project has no CUDA replay yet. The CUDA twin of each
kernel would be one thread block per row of P over the same addresses.
"""
import numpy as np
from numba import carray, njit

from ..config import NJIT, NJIT_INNER
from .ptr import f32p, f64p

ADDR, SLOT, N, CODE, GROUP, INIT, S0, S1, S2, STEP = range(10)
NCOL = 10

# hyperparameter columns of H, per algorithm
SGD_LR, SGD_MOMENTUM, SGD_DAMPENING, SGD_WD, SGD_NESTEROV, SGD_MAXIMIZE = range(6)
ADAM_LR, ADAM_BETA1, ADAM_BETA2, ADAM_EPS, ADAM_WD, ADAM_AMSGRAD, ADAM_MAXIMIZE, ADAM_DECOUPLED = range(8)
RMS_LR, RMS_ALPHA, RMS_EPS, RMS_WD, RMS_MOMENTUM, RMS_CENTERED, RMS_MAXIMIZE = range(7)


# ----- SGD ------------------------------------------------------------------------------

@njit(**NJIT_INNER)
def _sgd_one(p, g, buf, first, wd, mom, one_m_damp, nesterov, neg_lr, maximize):  # pragma: no cover
    for j in range(p.size):
        d = -g[j] if maximize else g[j]
        if wd != 0:
            d = d + wd * p[j]                      # grad.add(param, alpha=weight_decay)
        if mom != 0:
            if first:
                b = d                              # buf = grad.detach().clone()
            else:
                b = buf[j] * mom                   # buf.mul_(momentum)
                b = b + one_m_damp * d             #    .add_(grad, alpha=1 - dampening)
            buf[j] = b
            if nesterov:
                d = d + mom * b                    # grad.add(buf, alpha=momentum)
            else:
                d = b
        p[j] = p[j] + neg_lr * d                   # param.add_(grad, alpha=-lr)


@njit(**NJIT)
def sgd_step(P, la, ls, H, upd, f64s):  # pragma: no cover
    """SGD (torch.optim.sgd._single_tensor_sgd) over every row of P."""
    done = new = 0
    for i in range(P.shape[0]):
        upd[i] = 0
        s = P[i, SLOT]
        if s < 0 or ls[s] == 0:
            continue
        h = H[P[i, GROUP]]
        n = P[i, N]
        mom = h[SGD_MOMENTUM]
        nb = n if mom != 0 else 0
        first = P[i, INIT] == 0
        nesterov = h[SGD_NESTEROV] != 0
        maximize = h[SGD_MAXIMIZE] != 0
        if f64s is not None and P[i, CODE] != 0:    # (f64s None: float32 rows only)
            _sgd_one(carray(f64p(P[i, ADDR]), n), carray(f64p(la[s]), n), carray(f64p(P[i, S0]), nb), first,
                     np.float64(h[SGD_WD]), np.float64(mom), np.float64(1.0 - h[SGD_DAMPENING]), nesterov,
                     np.float64(-h[SGD_LR]), maximize)
        else:
            _sgd_one(carray(f32p(P[i, ADDR]), n), carray(f32p(la[s]), n), carray(f32p(P[i, S0]), nb), first,
                     np.float32(h[SGD_WD]), np.float32(mom), np.float32(1.0 - h[SGD_DAMPENING]), nesterov,
                     np.float32(-h[SGD_LR]), maximize)
        if mom != 0 and first:
            P[i, INIT] = 1
            upd[i] = 2
            new += 1
        else:
            upd[i] = 1
        done += 1
    return done, new


# ----- Adam / AdamW -----------------------------------------------------------------------

@njit(**NJIT_INNER)
def _adam_one(p, g, m, v, vmax, wd, decay, decoupled, w1, one_m_w1, b2, one_m_b2, bc2_sqrt, eps, neg_step,
              amsgrad, maximize):  # pragma: no cover
    small = abs(w1) < 0.5
    for j in range(p.size):
        d = -g[j] if maximize else g[j]
        x = p[j]
        if wd != 0:
            if decoupled:
                x = x * decay                      # param.mul_(1 - lr * weight_decay)
            else:
                d = d + wd * x                     # grad.add(param, alpha=weight_decay)
        mj = m[j]                                  # exp_avg.lerp_(grad, 1 - beta1)
        if small:
            mj = mj + w1 * (d - mj)
        else:
            mj = d - (d - mj) * one_m_w1
        m[j] = mj
        vj = v[j] * b2                             # exp_avg_sq.mul_(beta2)
        vj = vj + one_m_b2 * d * d                 #   .addcmul_(grad, grad, value=1 - beta2)
        v[j] = vj
        if amsgrad:
            mx = vmax[j]                           # torch.maximum(max_exp_avg_sq, exp_avg_sq, out=...)
            if vj > mx or vj != vj:
                mx = vj
            vmax[j] = mx
            den = np.sqrt(mx) / bc2_sqrt + eps     # (max_exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        else:
            den = np.sqrt(vj) / bc2_sqrt + eps     # (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        p[j] = x + neg_step * mj / den             # param.addcdiv_(exp_avg, denom, value=-step_size)


@njit(**NJIT)
def adam_step(P, la, ls, H, upd, f64s):  # pragma: no cover
    """Adam and AdamW (torch.optim.adam._single_tensor_adam, capturable=False) over every row of P."""
    done = new = 0
    for i in range(P.shape[0]):
        upd[i] = 0
        s = P[i, SLOT]
        if s < 0 or ls[s] == 0:
            continue
        h = H[P[i, GROUP]]
        n = P[i, N]
        st = carray(f32p(P[i, STEP]), 1)
        st[0] += np.float32(1.0)                   # step_t += 1  (a float32 tensor)
        step = np.float64(st[0])
        lr, beta1, beta2, wd = h[ADAM_LR], h[ADAM_BETA1], h[ADAM_BETA2], h[ADAM_WD]
        bc1 = 1.0 - beta1 ** step
        bc2 = 1.0 - beta2 ** step
        step_size = lr / bc1
        bc2_sqrt = bc2 ** 0.5
        decoupled = h[ADAM_DECOUPLED] != 0
        amsgrad = h[ADAM_AMSGRAD] != 0
        maximize = h[ADAM_MAXIMIZE] != 0
        if f64s is not None and P[i, CODE] != 0:    # (f64s None: float32 rows only)
            w1d = 1.0 - beta1
            _adam_one(carray(f64p(P[i, ADDR]), n), carray(f64p(la[s]), n), carray(f64p(P[i, S0]), n),
                      carray(f64p(P[i, S1]), n), carray(f64p(P[i, S2]), n if amsgrad else 0),
                      wd, 1.0 - lr * wd, decoupled, w1d, 1.0 - w1d, beta2, 1.0 - beta2, bc2_sqrt, h[ADAM_EPS],
                      -step_size, amsgrad, maximize)
        else:
            w1 = np.float32(1.0 - beta1)
            _adam_one(carray(f32p(P[i, ADDR]), n), carray(f32p(la[s]), n), carray(f32p(P[i, S0]), n),
                      carray(f32p(P[i, S1]), n), carray(f32p(P[i, S2]), n if amsgrad else 0),
                      np.float32(wd), np.float32(1.0 - lr * wd), decoupled, w1, np.float32(1.0) - w1,
                      np.float32(beta2), np.float32(1.0 - beta2), np.float32(bc2_sqrt), np.float32(h[ADAM_EPS]),
                      np.float32(-step_size), amsgrad, maximize)
        if P[i, INIT] == 0:
            P[i, INIT] = 1
            upd[i] = 2
            new += 1
        else:
            upd[i] = 1
        done += 1
    return done, new


# ----- RMSprop -----------------------------------------------------------------------------

@njit(**NJIT_INNER)
def _rmsprop_one(p, g, sq, buf, ga, one, wd, alpha, one_m_alpha, w, one_m_w, eps, mom, neg_lr, centered,
                 use_mom, maximize):  # pragma: no cover
    small = abs(w) < 0.5
    for j in range(p.size):
        d = -g[j] if maximize else g[j]
        x = p[j]
        if wd != 0:
            d = d + wd * x                         # grad.add(param, alpha=weight_decay)
        a = sq[j] * alpha                          # square_avg.mul_(alpha)
        a = a + one_m_alpha * d * d                #   .addcmul_(grad, grad, value=1 - alpha)
        sq[j] = a
        if centered:
            gj = ga[j]                             # grad_avg.lerp_(grad, 1 - alpha)
            if small:
                gj = gj + w * (d - gj)
            else:
                gj = d - (d - gj) * one_m_w
            ga[j] = gj
            a = np.sqrt(a + (-one) * gj * gj)     # square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
        else:
            a = np.sqrt(a)                         # square_avg.sqrt()
        a = a + eps                                # avg.add_(eps)
        if use_mom:
            b = buf[j] * mom                       # buf.mul_(momentum)
            b = b + one * d / a                    #   .addcdiv_(grad, avg)
            buf[j] = b
            p[j] = x + neg_lr * b                  # param.add_(buf, alpha=-lr)
        else:
            p[j] = x + neg_lr * d / a              # param.addcdiv_(grad, avg, value=-lr)


@njit(**NJIT)
def rmsprop_step(P, la, ls, H, upd, f64s):  # pragma: no cover
    """RMSprop (torch.optim.rmsprop._single_tensor_rmsprop, capturable=False) over every row of P."""
    done = new = 0
    for i in range(P.shape[0]):
        upd[i] = 0
        s = P[i, SLOT]
        if s < 0 or ls[s] == 0:
            continue
        h = H[P[i, GROUP]]
        n = P[i, N]
        st = carray(f32p(P[i, STEP]), 1)
        st[0] += np.float32(1.0)                   # step += 1
        alpha = h[RMS_ALPHA]
        mom = h[RMS_MOMENTUM]
        use_mom = mom > 0
        centered = h[RMS_CENTERED] != 0
        maximize = h[RMS_MAXIMIZE] != 0
        nb = n if use_mom else 0
        nc = n if centered else 0
        if f64s is not None and P[i, CODE] != 0:    # (f64s None: float32 rows only)
            _rmsprop_one(carray(f64p(P[i, ADDR]), n), carray(f64p(la[s]), n), carray(f64p(P[i, S0]), n),
                         carray(f64p(P[i, S1]), nb), carray(f64p(P[i, S2]), nc), 1.0,
                         h[RMS_WD], alpha, 1.0 - alpha, 1.0 - alpha, 1.0 - (1.0 - alpha), h[RMS_EPS], mom, -h[RMS_LR],
                         centered, use_mom, maximize)
        else:
            w = np.float32(1.0 - alpha)
            _rmsprop_one(carray(f32p(P[i, ADDR]), n), carray(f32p(la[s]), n), carray(f32p(P[i, S0]), n),
                         carray(f32p(P[i, S1]), nb), carray(f32p(P[i, S2]), nc), np.float32(1.0),
                         np.float32(h[RMS_WD]), np.float32(alpha), np.float32(1.0 - alpha), w, np.float32(1.0) - w,
                         np.float32(h[RMS_EPS]), np.float32(mom), np.float32(-h[RMS_LR]), centered, use_mom,
                         maximize)
        if P[i, INIT] == 0:
            P[i, INIT] = 1
            upd[i] = 2
            new += 1
        else:
            upd[i] = 1
        done += 1
    return done, new


# ----- zero_grad(set_to_none=False) ----------------------------------------------------------

@njit(**NJIT)
def zero_grads(P, la, ls):  # pragma: no cover
    """Zero every existing gradient of the rows of P, in place."""
    done = 0
    for i in range(P.shape[0]):
        s = P[i, SLOT]
        if s < 0 or ls[s] == 0:
            continue
        n = P[i, N]
        if P[i, CODE] == 0:
            g32 = carray(f32p(la[s]), n)
            for j in range(n):
                g32[j] = 0
        else:
            g64 = carray(f64p(la[s]), n)
            for j in range(n):
                g64[j] = 0
        done += 1
    return done
