"""L-BFGS for many independent problems at once, each with its own history, step length and
stopping test.

A probe sweep is [layers x strengths] small convex problems. Stacking them into one problem
for ``torch.optim.LBFGS`` shares one line search and one curvature history among problems
that have nothing to do with each other, and runs until the slowest converges under the
strictest test: measured, about 2.5x the iterations scikit-learn needs per problem. Here each
problem gets the textbook algorithm (Nocedal & Wright, alg. 7.4, two-loop recursion; Armijo
backtracking), vectorised over problems: one batched evaluation per step serves all of them,
and a problem stops when its own gradient is small (scikit-learn's ``gtol`` test). The
objective is asked only for the problems still searching (``rows``), so problems that have
converged, or whose step is already accepted in a backtracking round, cost nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# (x [k, n] of the problems ``rows`` [k] (indices into the P problems)) -> (f [k], grad [k, n])
Objective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def batched_lbfgs(fun: Objective, x0: torch.Tensor, max_iter: int = 200, history: int = 10, gtol: float = 1e-4,
                  max_backtracks: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise P independent smooth functions from x0 [P, n]; returns (x, iterations [P])."""
    x = x0.clone()
    P = x.shape[0]
    f, g = fun(x, torch.arange(P))
    S: list[torch.Tensor] = []  # s_k = x_{k+1} - x_k, [P, n] each
    Y: list[torch.Tensor] = []  # y_k = g_{k+1} - g_k
    R: list[torch.Tensor] = []  # rho_k = 1 / (y_k . s_k), 0 where the pair is unusable
    iters = torch.zeros(P, dtype=torch.long)
    active = g.abs().amax(1) > gtol
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        # two-loop recursion: d = -H g with H the L-BFGS inverse-Hessian estimate
        q = g.clone()
        alphas = []
        for s, y, r in zip(reversed(S), reversed(Y), reversed(R)):
            a = r * (s * q).sum(1)
            q -= a[:, None] * y
            alphas.append(a)
        if S:
            yy = (Y[-1] * Y[-1]).sum(1)
            gamma = torch.where(R[-1] > 0, 1 / (R[-1] * yy).clamp(min=1e-30), torch.ones_like(yy))
        else:
            gamma = 1 / g.abs().sum(1).clamp(min=1.0)  # first step: a short one, as scipy's L-BFGS-B takes
        z = gamma[:, None] * q
        for s, y, r, a in zip(S, Y, R, reversed(alphas)):
            b = r * (y * z).sum(1)
            z += s * (a - b)[:, None]
        d = -z
        slope = (g * d).sum(1)
        bad = slope >= 0  # not a descent direction (numerical trouble): fall back to the gradient
        if bool(bad.any()):
            d[bad] = -g[bad]
            slope = (g * d).sum(1)
        d[~active] = 0
        # Armijo backtracking, per problem: a problem whose step is accepted stops being evaluated
        # while the others halve theirs
        t = torch.ones(P, dtype=x.dtype)
        x_new, f_new, g_new = x.clone(), f.clone(), g.clone()
        pending = active.clone()
        for _ in range(max_backtracks):
            rows = pending.nonzero()[:, 0]
            x_try = x[rows] + t[rows, None] * d[rows]
            f_try, g_try = fun(x_try, rows)
            ok = f_try <= f[rows] + 1e-4 * t[rows] * slope[rows]
            done = rows[ok]
            x_new[done], f_new[done], g_new[done] = x_try[ok], f_try[ok], g_try[ok]
            pending[done] = False
            if not bool(pending.any()):
                break
            t[rows[~ok]] /= 2
        accepted = active & ~pending
        s_new, y_new = x_new - x, g_new - g
        sy = (s_new * y_new).sum(1)
        keep = accepted & (sy > 1e-10)
        S.append(torch.where(keep[:, None], s_new, torch.zeros_like(s_new)))
        Y.append(torch.where(keep[:, None], y_new, torch.zeros_like(y_new)))
        R.append(torch.where(keep, 1 / sy.clamp(min=1e-30), torch.zeros_like(sy)))
        if len(S) > history:
            S.pop(0), Y.pop(0), R.pop(0)
        x, f, g = x_new, f_new, g_new  # unchanged where the step was not accepted
        iters += accepted.long()
        # stop a problem when its gradient is small, or when no step decreases it any more
        active = active & accepted & (g.abs().amax(1) > gtol)
    return x, iters
