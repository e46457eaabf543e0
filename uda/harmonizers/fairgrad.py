"""FairGrad: α-fair gradient weighting (Ban & Ji, ICML 2024, "Fair Resource Allocation in Multi-Task Learning")."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from uda.errors import ConfigError
from uda.harmonizers.base import Harmonizer

#: the 1-D search over log(w2/w1) for two losses: bracket, grid points, zoom rounds (6 × 10 bits of precision)
_LOG_RATIO_BOUND = 700.0  # exp(700) is still finite in float64: the search never meets inf
_GRID_POINTS = 1024
_ZOOM_ROUNDS = 6
#: a solution must satisfy K w = w^(−1/α) to this relative accuracy, else the step falls back to the plain sum
#: (it catches the cases without a solution, whose residual is O(1); at α = 20, m = 10 the solver reaches 4e-6)
_RESIDUAL_RTOL = 1e-4


def _log_ratio_two(gram: Tensor, p: float) -> Tensor:
    """log t, t = w2/w1, for two losses: the root of a strictly increasing function, found on the device.

    Writing w2 = t w1, the two equations K w = w^(−p) give w1^(1+p) (a + c t) = 1 and
    w1^(1+p) t^p (c + b t) = 1 (a, b = ‖g_1‖², ‖g_2‖², c = g_1·g_2), hence t^p (c + b t) = a + c t.
    log(t^p (c + b t)) − log(a + c t) has derivative p/t + (ab − c²)/((c + bt)(a + ct)) > 0 on its domain
    (where both brackets are positive, an interval when c < 0), so the root is unique. A grid of
    ``_GRID_POINTS`` in log t is zoomed ``_ZOOM_ROUNDS`` times around the sign change: no host sync.
    """
    a, b, c = gram[0, 0], gram[1, 1], gram[0, 1]
    lo = torch.full_like(a, -_LOG_RATIO_BOUND)
    hi = torch.full_like(a, _LOG_RATIO_BOUND)
    grid = torch.linspace(0.0, 1.0, _GRID_POINTS, dtype=gram.dtype, device=gram.device)
    for _ in range(_ZOOM_ROUNDS):
        u = lo + (hi - lo) * grid
        t = torch.exp(u)
        rising, falling = c + b * t, a + c * t
        log_rising, log_falling = (
            torch.log(torch.clamp(rising, min=1e-300)),
            torch.log(torch.clamp(falling, min=1e-300)),
        )
        # above the root: past the domain's upper end (a + ct <= 0) or the function is positive there
        above = (falling <= 0) | ((rising > 0) & (p * u + log_rising > log_falling))
        below_count = (~above).sum().clamp(1, _GRID_POINTS - 1).view(1)
        lo, hi = u.gather(0, below_count - 1)[0], u.gather(0, below_count)[0]
    return 0.5 * (lo + hi)


def _solve_two(gram: Tensor, p: float) -> Tensor:
    log_t = _log_ratio_two(gram, p)
    t = torch.exp(log_t)
    w1 = torch.pow(gram[0, 0] + gram[0, 1] * t, -1.0 / (1.0 + p))
    return torch.stack([w1, t * w1])


def _solve_newton(gram: Tensor, p: float, max_iter: int = 200) -> Tensor:
    """m > 2: K w = w^(−p) is the stationarity condition of the strictly convex
    F(w) = ½ wᵀKw − Σ_i h(w_i), h'(w) = w^(−p) (h = log for p = 1), minimized by damped Newton with a
    backtracking line search that keeps w > 0, from the best multiple of the uniform weights. In float64
    NumPy on the CPU (one host transfer; tiny arrays are cheaper there than in torch), deterministic.
    The official code uses scipy's least_squares on the same equations."""
    k = gram.detach().to("cpu", torch.float64).numpy()
    m = k.shape[0]

    def objective(w: np.ndarray) -> float:
        barrier = np.log(w).sum() if p == 1.0 else (w ** (1.0 - p)).sum() / (1.0 - p)
        return float(0.5 * w @ k @ w - barrier)

    def residual(w: np.ndarray) -> float:
        return float(np.abs(k @ w - w ** (-p)).max())

    w = np.full(m, 1.0 / m)
    # F(s·w) is minimized at s^(1+p) = Σ w^(1−p) / wᵀKw: start on the right scale
    w = w * (float((w ** (1.0 - p)).sum()) / max(float(w @ k @ w), 1e-300)) ** (1.0 / (1.0 + p))
    for _ in range(max_iter):
        target = w ** (-p)
        grad = k @ w - target
        if np.abs(grad).max() <= 1e-14 * target.max():  # K w = w^(−p) to rounding
            break
        try:
            step = np.linalg.solve(k + np.diag(p * w ** (-p - 1.0)), grad)
        except np.linalg.LinAlgError:
            # the Hessian is singular only when some w_i has grown until p·w_i^(−p−1) vanished beside a
            # singular K: the weights diverge (no solution); the residual check below then falls back
            break
        decrement = float(grad @ step)  # the squared Newton decrement: F(w) − min F ≈ decrement / 2
        shrinking = step > 0
        t = min(1.0, 0.99 * float((w[shrinking] / step[shrinking]).min())) if shrinking.any() else 1.0
        # Armijo backtracking; the slack lets full steps through once F's change is below its rounding
        f0 = objective(w)
        slack = 1e-15 * (1.0 + abs(f0))
        trial = w - t * step
        if decrement <= 1e-12 * (1.0 + abs(f0)) and residual(trial) < np.abs(grad).max():
            # near the minimum F's change is below its rounding (an ill-conditioned K leaves the residual
            # far above it there, by how much depends on the BLAS kernel): judge the step by the residual
            # K w − w^(−p), which Newton's step still shrinks quadratically
            new_w = trial
        else:
            while t > 1e-12 and objective(w - t * step) > f0 - 1e-4 * t * decrement + slack:
                t *= 0.5
            new_w = w - t * step
        if t <= 1e-12 or np.array_equal(new_w, w):  # no progress left at this precision
            break
        w = new_w
    return torch.as_tensor(w, dtype=gram.dtype, device=gram.device)


class FairGrad(Harmonizer):
    r"""α-fair weights: w > 0 with K w = w^(−1/α), so each loss's progress d·g_i is an α-fair share.

    The update's progress on loss i, d·g_i = (K w)_i, is the α-fair allocation of the paper (the
    condition behind the official ``objfn``, solved there with scipy's least_squares).

    α = 1 is proportional fairness, Nash-MTL's condition K w = 1/w; α → ∞ approaches max-min fairness;
    α = 2 is the paper's "minimum potential delay". d·g_i = w_i^(−1/α) > 0: the update never conflicts
    (when the gradients admit a common descent direction at all; exactly opposite gradients do not, and
    fall back to the plain sum). The weights scale like λ^(−α/(α+1)) when K scales by λ.

    Two losses: a 1-D root search on the device (no host sync). More losses: damped Newton on the CPU.
    """

    name = "fairgrad"
    num_losses = None
    conflict_free = "yes"
    symmetric = True
    cost = "1-D root search on the device for 2 (6 grid zooms); damped Newton on the CPU for m > 2"

    def __init__(self, alpha: float = 2.0) -> None:
        if not alpha > 0.0:
            raise ConfigError(f"harmonizer.alpha={alpha} is invalid: FairGrad's fairness α must be > 0 (paper: 1-5)")
        self.alpha = float(alpha)

    def _weights(self, gram: Tensor) -> Tensor:
        p = 1.0 / self.alpha
        m = gram.shape[0]
        # solve at unit trace: if K w = w^(−p) then (λK)(μw) = (μw)^(−p) with μ = λ^(−1/(1+p))
        scale = torch.diagonal(gram).sum()
        unit = gram / scale
        if m == 1:
            w = torch.ones(1, dtype=gram.dtype, device=gram.device)
        elif m == 2:
            w = _solve_two(unit, p)
        else:
            w = _solve_newton(unit, p)
        residual = (unit @ w - w.pow(-p)).abs() <= _RESIDUAL_RTOL * w.pow(-p)
        w = torch.where(residual.all() & (w > 0).all(), w, torch.full_like(w, float("nan")))
        return w * torch.pow(scale, -1.0 / (1.0 + p))

    def hyperparameters(self) -> dict[str, float]:
        return {"alpha": self.alpha}
