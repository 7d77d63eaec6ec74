"""The weighted spherical geometric median: the point minimising the expected great-circle
distance to a discrete distribution, for many distributions at once.

`geometric_median_batch` solves B problems in lock-step with numpy (Riemannian Newton steps
with a Weiszfeld fallback and backtracking), coarse to fine: first on the support merged into
voxels of about 400 km (mass-weighted mean directions), then on the full support from that
answer, where Newton needs a few steps. It replaced `geometric_median_lbfgs` (Weiszfeld steps
then scipy's L-BFGS, one problem at a time, 20-130 ms on 4,096 points), which stays as the
reference the tests and `benchmarks/distribution.py` compare it with.
"""

from __future__ import annotations

import math

import numpy as np

TOL = 1e-9  # radians (6 mm): a problem is solved when a step moves less than this
HEAVY = 16  # the heaviest support points are candidate starts (the optimum can be one)
VOXELS = 32  # the coarse pass merges support points per cell of a 32^3 grid on [-1, 1]^3
COARSE_ABOVE = 256  # smaller supports are solved directly


def angles(xyz: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Great-circle angles from unit vectors [N, 3] to unit x [3]: atan2(|a x b|, a . b), exact
    for tiny angles too (arccos of a dot product loses half the digits there)."""
    return np.arctan2(np.linalg.norm(np.cross(xyz, x), axis=-1), xyz @ x)


def _tangents(
    xyz: np.ndarray, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """At points x [B, 3]: unit tangent directions towards the support [B, N, 3] (zero where
    undefined: a support point at x or opposite it), the angles' sines, cosines and their exact
    values [B, N]."""
    cos = np.einsum("bnd,bd->bn", xyz, x)
    tangent = xyz - cos[..., None] * x[:, None, :]
    sin = np.sqrt(np.einsum("bnd,bnd->bn", tangent, tangent))
    ok = sin > 1e-15
    tangent *= (ok / np.where(ok, sin, 1.0))[..., None]
    return tangent, sin, cos, np.arctan2(sin, cos)


def _cost(xyz: np.ndarray, w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """sum_i w_i angle(x, x_i) per problem, with the exact angle of `_tangents`."""
    cos = np.einsum("bnd,bd->bn", xyz, x)
    d = xyz - cos[..., None] * x[:, None, :]
    return np.einsum("bn,bn->b", w, np.arctan2(np.sqrt(np.einsum("bnd,bnd->bn", d, d)), cos))


def _exp(x: np.ndarray, step: np.ndarray) -> np.ndarray:
    """The exponential map: walk |step| radians from x [B, 3] along the tangent step [B, 3]."""
    size = np.sqrt(np.einsum("bd,bd->b", step, step))[:, None]
    new = np.cos(size) * x + np.sin(size) * (step / np.where(size > 0, size, 1.0))
    return new / np.sqrt(np.einsum("bd,bd->b", new, new))[:, None]


def _solve(
    xyz: np.ndarray,
    w: np.ndarray,
    *,
    tol: float = TOL,
    heavy: int = HEAVY,
    x0: np.ndarray | None = None,
    max_steps: int = 100,
) -> np.ndarray:
    """Newton on the sphere for B problems (weights normalised), from the best of the `heavy`
    heaviest points, the mean direction and `x0`.

    The Hessian of the angle to x_i is cot(theta_i) (P - u_i u_i^T), u_i the unit direction
    towards x_i; where the sum is not positive definite (mass beyond 90 degrees), or Newton's
    last step needed backtracking (a kink at a support point), the step is Weiszfeld's (the
    isotropic majoriser sum_i w_i / theta_i). Every step is halved until the objective drops; a
    problem stops when a step moves less than `tol` or no step lowers its objective.

    A trial point's tangents give both its objective (to accept it) and, once accepted, the
    next step: one pass over the support per trial, the cost of this solver."""
    rows = np.arange(len(w))
    heavy = min(heavy, w.shape[1])
    top = np.argpartition(-w, heavy - 1, axis=1)[:, :heavy]  # the heaviest, in any order
    starts = [xyz[rows[:, None], top]]
    heaviest = xyz[rows, w.argmax(axis=1)]
    mean = np.einsum("bn,bnd->bd", w, xyz)
    norm = np.sqrt(np.einsum("bd,bd->b", mean, mean))[:, None]
    starts.append(np.where(norm > 1e-9, mean / np.maximum(norm, 1e-300), heaviest)[:, None])
    if x0 is not None:
        starts.append(x0[:, None])
    cand = np.concatenate(starts, axis=1)
    cos = np.einsum("bkd,bnd->bkn", cand, xyz)
    np.minimum(cos, 1.0, out=cos)
    np.maximum(cos, -1.0, out=cos)
    x = cand[rows, np.einsum("bkn,bn->bk", np.arccos(cos, out=cos), w).argmin(axis=1)]
    u, sin, cos, theta = _tangents(xyz, x)  # at x, kept up to date as problems move
    here = np.einsum("bn,bn->b", w, theta)
    eye = np.eye(3)
    active = rows
    fallback = np.zeros(len(w), dtype=bool)
    for _ in range(max_steps):
        if not len(active):
            break
        if len(active) == len(w):  # (no copies while every problem is still moving)
            W, xa, ua, sa, ca, ta = w, x.copy(), u, sin, cos, theta
        else:
            W, xa = w[active], x[active]
            ua, sa, ca, ta = u[active], sin[active], cos[active], theta[active]
        grad = -np.einsum("bn,bnd->bd", W, ua)  # the Riemannian gradient
        defined = sa > 1e-15
        inv = np.einsum("bn,bn->b", W, defined / np.where(defined, ta, 1.0))
        step = -grad / np.maximum(inv, 1e-300)[:, None]  # Weiszfeld's step
        cot = W * (defined * ca / np.where(defined, sa, 1.0))
        hess = cot.sum(axis=1)[:, None, None] * (eye - xa[:, :, None] * xa[:, None, :])
        hess -= np.matmul((cot[..., None] * ua).transpose(0, 2, 1), ua)
        hess += xa[:, :, None] * xa[:, None, :]  # the normal direction: the solve stays tangent
        newton = (np.linalg.eigvalsh(hess)[:, 0] > 1e-12) & ~fallback[active]
        if newton.any():
            s = np.linalg.solve(hess[newton], -grad[newton][..., None])[..., 0]
            step[newton] = s - np.einsum("bd,bd->b", s, xa[newton])[:, None] * xa[newton]
        size = np.sqrt(np.einsum("bd,bd->b", step, step))
        t = np.ones(len(active))
        moved = np.zeros(len(active), dtype=bool)
        todo = np.flatnonzero(size >= tol)
        while len(todo):  # backtracking, only for the problems still without a descent
            new = _exp(xa[todo], t[todo, None] * step[todo])
            probs = active[todo]
            every = len(probs) == len(w)  # (no copies of the support while all are trying)
            nu, ns, nc, nt = _tangents(xyz if every else xyz[probs], new)
            cost = np.einsum("bn,bn->b", w if every else w[probs], nt)
            better = cost < here[probs]
            keep = probs[better]
            x[keep], here[keep] = new[better], cost[better]
            u[keep], sin[keep], cos[keep], theta[keep] = (
                nu[better],
                ns[better],
                nc[better],
                nt[better],
            )
            moved[todo[better]] = True
            todo = todo[~better]
            t[todo] /= 2
            todo = todo[t[todo] * size[todo] >= tol]
        fallback[active] = newton & (~moved | (t < 1e-2))
        # done: a step that moved less than tol, or Weiszfeld's step found no descent (a failed
        # Newton step is retried as Weiszfeld's)
        active = active[~np.where(moved, t * size < tol, ~newton)]
    # The optimum can sit on a support point (a kink): the nearest one, where it is better.
    near = xyz[rows, theta.argmin(axis=1)]
    snap = _cost(xyz, w, near) <= here
    x[snap] = near[snap]
    return x


def _merge(xyz: np.ndarray, w: np.ndarray, k: int = VOXELS) -> tuple[np.ndarray, np.ndarray]:
    """The support merged per cell of a k^3 grid on the cube [-1, 1]^3 (about 2/k radians
    across): each cell's mass at its mass-weighted mean direction; rows padded with zero mass."""
    b, n, _ = xyz.shape
    vox = np.minimum(((xyz + 1) * (k / 2)).astype(np.int64), k - 1)
    keys = np.arange(b)[:, None] * k**3 + (vox[..., 0] * k + vox[..., 1]) * k + vox[..., 2]
    uniq, inv = np.unique(keys.ravel(), return_inverse=True)
    mass = np.bincount(inv, w.ravel(), minlength=len(uniq))
    wx = (w[..., None] * xyz).reshape(-1, 3)
    centre = np.stack([np.bincount(inv, wx[:, d], minlength=len(uniq)) for d in range(3)], 1)
    norm = np.sqrt(np.einsum("gd,gd->g", centre, centre))
    centre = np.where(norm[:, None] > 0, centre / np.maximum(norm, 1e-300)[:, None], [0, 0, 1.0])
    row = uniq // k**3
    pos = np.arange(len(uniq)) - np.searchsorted(row, np.arange(b))[row]
    merged = np.zeros((b, int(pos.max()) + 1, 3))
    merged[..., 2] = 1.0
    merged_w = np.zeros(merged.shape[:2])
    merged[row, pos], merged_w[row, pos] = centre, mass
    return merged, merged_w


def geometric_median_batch(xyz: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Unit vectors [B, 3] minimising sum_i w_i * angle(x, x_i) for B problems at once:
    support [B, N, 3] (unit vectors), weights [B, N] (zero weights pad problems to one N)."""
    xyz = np.asarray(xyz, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum(axis=1, keepdims=True)
    if xyz.shape[1] <= COARSE_ABOVE:
        return _solve(xyz, w)
    coarse = _solve(*_merge(xyz, w), tol=1e-6)
    return _solve(xyz, w, x0=coarse, heavy=1)


def geometric_median(xyz: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Unit vector minimising the expected angle sum_i w_i * angle(x, x_i) (support [N, 3])."""
    return geometric_median_batch(np.asarray(xyz)[None], np.asarray(weights)[None])[0]


def geometric_median_lbfgs(
    xyz: np.ndarray, weights: np.ndarray, *, weiszfeld_steps: int = 5
) -> np.ndarray:
    """The previous solver, kept as the reference the fast one is tested and benchmarked
    against (one problem at a time, 20-130 ms on a 4,096-point support).

    A few Weiszfeld steps in the tangent plane (the log map at the current point, each step
    halved until the objective drops: on the sphere a full step can overshoot) from the better of
    the mean direction and the heaviest point, then L-BFGS (scipy) on x = y / |y| with the exact
    gradient: Weiszfeld alone creeps for weight split between far-apart clusters, where the
    objective is nearly flat. The heaviest support points are candidates too (the optimum can be
    a point holding half the weight, where the objective has no gradient)."""
    from scipy.optimize import minimize

    w = weights / weights.sum()

    def cost(x: np.ndarray) -> float:
        return float((w * angles(xyz, x)).sum())

    heavy = xyz[np.argsort(-w)[:16]]
    starts = [heavy[0]]
    mean = (w[:, None] * xyz).sum(0)
    if np.linalg.norm(mean) > 1e-9:
        starts.append(mean / np.linalg.norm(mean))
    x = min(starts, key=cost)
    for _ in range(weiszfeld_steps):
        cos = np.clip(xyz @ x, -1, 1)
        ang = angles(xyz, x)
        far = ang > 1e-12  # a support point at x contributes no direction (and no division)
        if not far.any():
            break
        tangent = xyz[far] - cos[far, None] * x
        logs = tangent * (ang[far] / np.maximum(np.linalg.norm(tangent, axis=1), 1e-300))[:, None]
        inv = w[far] / ang[far]
        step = (inv[:, None] * logs).sum(0) / inv.sum()
        size = float(np.linalg.norm(step))
        if size < 1e-13:
            break
        here, direction = cost(x), step / size
        for _ in range(40):
            new = math.cos(size) * x + math.sin(size) * direction
            new /= np.linalg.norm(new)
            if cost(new) < here:
                break
            size /= 2
        else:
            break
        x = new

    def objective(y: np.ndarray) -> tuple[float, np.ndarray]:
        norm = np.linalg.norm(y)
        u = y / norm
        cos = xyz @ u
        tangent = xyz - cos[:, None] * u
        sin = np.linalg.norm(tangent, axis=1)
        ok = sin > 1e-15
        grad_u = -((w[ok] / sin[ok])[:, None] * tangent[ok]).sum(0)
        grad_y = (grad_u - (grad_u @ u) * u) / norm
        return float((w * np.arctan2(sin, cos)).sum()), grad_y

    res = minimize(objective, x, jac=True, method="L-BFGS-B", options={"maxiter": 80, "gtol": 1e-7})
    polished = res.x / np.linalg.norm(res.x)
    return min([x, polished, *heavy], key=cost)
