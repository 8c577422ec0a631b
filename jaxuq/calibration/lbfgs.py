"""A faithful JAX port of ``torch.optim.LBFGS`` without line search (torch 2.14.1).

torch-uncertainty fits its scalers with ``LBFGS(params, lr=0.1, max_iter)`` and one
``step(closure)``; everything else at torch's defaults (``max_eval = max_iter * 5 // 4``,
``tolerance_grad=1e-7``, ``tolerance_change=1e-9``, ``history_size=100``,
``line_search_fn=None``). This is *not* a converged optimiser: it stops after ``max_iter``
fixed-size steps (step ``lr``, the first one ``lr * min(1, 1/|g|_1)``). To reproduce TU's
fitted parameters we port the algorithm step by step, in float32, as one jitted
``lax.while_loop`` with a fixed-size history buffer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp


class LBFGSResult(NamedTuple):
    x: jax.Array  # [P] final flat parameters
    loss: jax.Array  # loss at the last evaluated point (the loss torch last saw)
    n_iter: jax.Array  # iterations performed
    func_evals: jax.Array  # closure evaluations


def _two_loop(g, old_dirs, old_stps, ro, num_old, h_diag):
    """torch's two-loop recursion over the first ``num_old`` history entries (oldest first)."""
    size = old_dirs.shape[0]

    def back(j, carry):
        q, al = carry
        i = size - 1 - j
        use = i < num_old
        a = jnp.dot(old_stps[i], q) * ro[i]
        q = jnp.where(use, q - a * old_dirs[i], q)
        al = al.at[i].set(jnp.where(use, a, 0.0))
        return q, al

    q, al = jax.lax.fori_loop(0, size, back, (-g, jnp.zeros((size,), g.dtype)))
    r = q * h_diag

    def fwd(i, r):
        use = i < num_old
        be = jnp.dot(old_dirs[i], r) * ro[i]
        return jnp.where(use, r + (al[i] - be) * old_stps[i], r)

    return jax.lax.fori_loop(0, size, fwd, r)


class _State(NamedTuple):
    """The loop carry: torch's ``state`` dict of one ``LBFGS.step`` (history in fixed-size buffers)."""

    x: jax.Array  # [P] current parameters
    g: jax.Array  # [P] gradient at x
    loss: jax.Array  # loss at x
    d: jax.Array  # [P] last direction
    t: jax.Array  # last step size
    prev_g: jax.Array  # [P] gradient at the previous point
    prev_loss: jax.Array
    old_dirs: jax.Array  # [H, P] y history (oldest first)
    old_stps: jax.Array  # [H, P] s history
    ro: jax.Array  # [H] 1 / (y . s)
    num_old: jax.Array  # entries in use
    h_diag: jax.Array  # initial Hessian scale
    n_iter: jax.Array
    evals: jax.Array  # closure evaluations
    done: jax.Array


class _Settings(NamedTuple):
    """torch's ``LBFGS`` arguments as the loop uses them (static)."""

    lr: float
    max_iter: int
    max_eval: int
    tolerance_grad: float
    tolerance_change: float
    hsize: int  # history buffer length


def _update_history(s: _State, first, hsize: int, f32):
    """torch's history update (iterations >= 2): pop the oldest pair when full, append ``(y, s)`` when
    ``y . s > 1e-10``, rescale ``H_diag``. Returns ``(old_dirs, old_stps, ro, num_old, h_diag)``."""
    y = s.g - s.prev_g
    st = s.d * s.t
    ys = jnp.dot(y, st)
    accept = jnp.logical_and(~first, ys > 1e-10)
    shift = jnp.logical_and(accept, s.num_old == hsize)
    old_dirs = jnp.where(shift, jnp.roll(s.old_dirs, -1, axis=0), s.old_dirs)
    old_stps = jnp.where(shift, jnp.roll(s.old_stps, -1, axis=0), s.old_stps)
    ro = jnp.where(shift, jnp.roll(s.ro, -1), s.ro)
    slot = jnp.where(shift, hsize - 1, s.num_old)  # the count after the pop
    old_dirs = jnp.where(accept, old_dirs.at[slot].set(y), old_dirs)
    old_stps = jnp.where(accept, old_stps.at[slot].set(st), old_stps)
    ro = jnp.where(accept, ro.at[slot].set(1.0 / ys), ro)
    num_old = jnp.where(accept, slot + 1, s.num_old)
    h_diag = jnp.where(accept, ys / jnp.dot(y, y), s.h_diag)
    h_diag = jnp.where(first, f32(1.0), h_diag)
    return old_dirs, old_stps, ro, num_old, h_diag


def _step(s: _State, vg, cfg: _Settings) -> _State:
    """One iteration of torch's loop: direction, fixed step (no line search), closure, stop tests."""
    f32 = s.x.dtype.type
    n_iter = s.n_iter + 1
    g = s.g
    first = n_iter == 1
    old_dirs, old_stps, ro, num_old, h_diag = _update_history(s, first, cfg.hsize, f32)
    d = jnp.where(first, -g, _two_loop(g, old_dirs, old_stps, ro, num_old, h_diag))
    prev_loss = s.loss
    t_first = jnp.minimum(f32(1.0), 1.0 / jnp.sum(jnp.abs(g))) * f32(cfg.lr)
    t = jnp.where(first, t_first, f32(cfg.lr))
    stop_gtd = jnp.dot(g, d) > -cfg.tolerance_change
    x_new = s.x + t * d
    last = n_iter == cfg.max_iter
    # evaluate only if we moved and it is not the last iteration (torch skips the closure there)
    do_eval = jnp.logical_and(~stop_gtd, ~last)
    loss_new, g_new = jax.lax.cond(do_eval, lambda x: vg(x), lambda x: (s.loss, g), x_new)
    evals = s.evals + do_eval.astype(jnp.int32)
    stop = (
        stop_gtd
        | last
        | (evals >= cfg.max_eval)
        | jnp.logical_and(do_eval, jnp.max(jnp.abs(g_new)) <= cfg.tolerance_grad)
        | (jnp.max(jnp.abs(d * t)) <= cfg.tolerance_change)
        | (jnp.abs(loss_new - prev_loss) < cfg.tolerance_change)  # exact in fp32 (Sterbenz)
    )
    return _State(x=jnp.where(stop_gtd, s.x, x_new), g=g_new, loss=loss_new.astype(f32), d=d, t=t, prev_g=g,
                  prev_loss=prev_loss, old_dirs=old_dirs, old_stps=old_stps, ro=ro, num_old=num_old,
                  h_diag=h_diag, n_iter=n_iter, evals=evals, done=stop)


def _initial_state(vg, x0, hsize: int, tolerance_grad: float) -> _State:
    """The state before the first iteration: one closure evaluation at ``x0``, empty history."""
    f32 = x0.dtype.type  # float32 for TU parity; float64 works too (used to check the port)
    p = x0.shape[0]
    loss0, g0 = vg(x0)
    return _State(x=x0, g=g0, loss=loss0.astype(f32), d=jnp.zeros((p,), f32), t=f32(0.0),
                  prev_g=jnp.zeros((p,), f32), prev_loss=f32(0.0), old_dirs=jnp.zeros((hsize, p), f32),
                  old_stps=jnp.zeros((hsize, p), f32), ro=jnp.zeros((hsize,), f32), num_old=jnp.int32(0),
                  h_diag=f32(1.0), n_iter=jnp.int32(0), evals=jnp.int32(1),
                  done=jnp.max(jnp.abs(g0)) <= tolerance_grad)


def lbfgs_torch(
    fun: Callable[[jax.Array], jax.Array],
    x0: jax.Array,
    *,
    lr: float = 1.0,
    max_iter: int = 20,
    max_eval: int | None = None,
    tolerance_grad: float = 1e-7,
    tolerance_change: float = 1e-9,
    history_size: int = 100,
) -> LBFGSResult:
    """Minimise ``fun`` (flat float32 vector -> scalar) like one ``torch.optim.LBFGS.step``.

    Args:
      fun: differentiable scalar loss of a flat parameter vector ``[P]``.
      x0: initial parameters ``[P]`` (float32 like torch; the dtype is kept).
      lr, max_iter, max_eval, tolerance_grad, tolerance_change, history_size: torch's
        arguments with torch's defaults (``max_eval`` defaults to ``max_iter * 5 // 4``).

    Returns:
      LBFGSResult with the final parameters. Jittable when ``fun`` is.
    """
    x0 = jnp.asarray(x0)
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        x0 = x0.astype(jnp.float32)
    hsize = max(1, min(history_size, max_iter))  # never more than max_iter-1 entries are stored
    cfg = _Settings(lr=lr, max_iter=max_iter, max_eval=max_iter * 5 // 4 if max_eval is None else max_eval,
                    tolerance_grad=tolerance_grad, tolerance_change=tolerance_change, hsize=hsize)
    vg = jax.value_and_grad(fun)
    out = jax.lax.while_loop(
        lambda s: jnp.logical_and(~s.done, s.n_iter < max_iter),
        lambda s: _step(s, vg, cfg),
        _initial_state(vg, x0, cfg.hsize, tolerance_grad),
    )
    return LBFGSResult(out.x, out.loss, out.n_iter, out.evals)
