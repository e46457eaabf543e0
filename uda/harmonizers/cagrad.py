"""CAGrad: conflict-averse gradient descent (Liu et al., NeurIPS 2021)."""

from __future__ import annotations

import torch
from torch import Tensor

from uda.errors import ConfigError
from uda.harmonizers.base import Harmonizer


def _objective(w: Tensor, gram: Tensor, c: Tensor) -> Tensor:
    """F(w) = wᵀ K b + c · sqrt(wᵀ K w), b = uniform weights; w has shape (..., m)."""
    m = gram.shape[0]
    b = torch.full((m,), 1.0 / m, dtype=gram.dtype, device=gram.device)
    return w @ (gram @ b) + c * torch.sqrt(torch.clamp(((w @ gram) * w).sum(-1), min=0.0))


def _solve_two(gram: Tensor, c: Tensor, points: int = 1001, rounds: int = 3) -> Tensor:
    """1-D convex search over w = (x, 1 − x): vectorized grid refinement, no host synchronisation."""
    lo = torch.zeros((), dtype=gram.dtype, device=gram.device)
    hi = torch.ones_like(lo)
    grid = torch.linspace(0.0, 1.0, points, dtype=gram.dtype, device=gram.device)
    for _ in range(rounds):
        x = lo + (hi - lo) * grid
        f = _objective(torch.stack([x, 1 - x], dim=-1), gram, c)
        best = x.gather(0, torch.argmin(f).view(1))[0]  # x[0-d tensor] would read the index on the host
        step = (hi - lo) / (points - 1)
        lo, hi = torch.clamp(best - step, min=0.0), torch.clamp(best + step, max=1.0)
    return torch.stack([best, 1 - best])


def _solve_simplex(gram: Tensor, c: Tensor) -> Tensor:
    """m > 2: SLSQP on the simplex (as the official code), on the CPU in float64 (one host transfer)."""
    import numpy as np
    from scipy.optimize import minimize

    k = gram.detach().to("cpu", torch.float64).numpy()
    cc = float(c)
    m = k.shape[0]
    b = np.full(m, 1.0 / m)
    scale = max(float(np.abs(k).max()), np.finfo(float).tiny)  # the problem is scale-free: solve at unit scale
    k_unit, c_unit = k / scale, cc / np.sqrt(scale)

    def objective(w: np.ndarray) -> float:
        return float(w @ k_unit @ b + c_unit * np.sqrt(max(w @ k_unit @ w, 0.0) + 1e-16))

    result = minimize(
        objective,
        b,
        bounds=[(0.0, 1.0)] * m,
        constraints={"type": "eq", "fun": lambda w: 1.0 - w.sum()},
        method="SLSQP",
        options={"ftol": 1e-12, "maxiter": 500},
    )
    w = np.clip(result.x, 0.0, None)
    return torch.as_tensor(w / w.sum(), dtype=gram.dtype, device=gram.device)


class CAGrad(Harmonizer):
    r"""Maximize the worst local improvement within a ball around the mean gradient g0.

    Solve min_{w ∈ Δ} wᵀ K b + c_a ‖g0‖ sqrt(wᵀ K w) (b uniform), then
    d = g0 + (c_a ‖g0‖ / ‖g_w‖) g_w, i.e. tau = 1/m + (c_a ‖g0‖ / ‖g_w‖) w, divided by 1 + c_a² when
    ``rescale`` (the official default). ``c_a`` ∈ [0.2, 0.5] in the paper (0 gives the mean gradient).
    Scale-invariant; mean-gradient scale.
    """

    name = "cagrad"
    num_losses = None
    symmetric = True
    cost = "grid search on the device for 2; SLSQP (scipy) on the CPU for m > 2"

    def __init__(self, c_a: float = 0.4, rescale: bool = True) -> None:
        if c_a < 0:
            raise ConfigError(
                f"harmonizer.c_a={c_a} is invalid: CAGrad's conflict-averse radius must be >= 0 (paper: 0.4)"
            )
        self.c_a = float(c_a)
        self.rescale = bool(rescale)

    def _weights(self, gram: Tensor) -> Tensor:
        m = gram.shape[0]
        g0_norm = torch.sqrt(torch.clamp(gram.sum() / m**2, min=0.0))
        c = self.c_a * g0_norm
        if m == 1:
            return torch.ones(1, dtype=gram.dtype, device=gram.device)
        w = _solve_two(gram, c) if m == 2 else _solve_simplex(gram, c)
        gw_norm = torch.sqrt(torch.clamp(w @ gram @ w, min=0.0))
        tau = 1.0 / m + torch.where(gw_norm > 0, c / torch.clamp(gw_norm, min=1e-30), torch.zeros_like(c)) * w
        return tau / (1.0 + self.c_a**2) if self.rescale else tau

    def hyperparameters(self) -> dict[str, object]:
        return {"c_a": self.c_a, "rescale": self.rescale}
