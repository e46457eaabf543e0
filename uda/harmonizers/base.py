"""The harmonizer interface: a pure map from the Gram matrix of per-loss gradients to loss weights.

For losses L_1..L_m with gradients g_i = dL_i/dθ over a parameter scope, the Gram matrix is
K_ij = g_i · g_j. A harmonizer returns weights tau (length m) so that the update direction is
d = Σ_i tau_i g_i, i.e. the step minimizes Σ_i tau_i L_i with tau held constant (GH paper, Eq. 41/44).
Because only K is needed, a harmonizer never sees the model: it is tested on hand-built matrices.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor


class Harmonizer(ABC):
    """Base class: ``weights(gram) -> tau``; subclasses implement :meth:`_weights`.

    The public :meth:`weights` validates the Gram matrix, computes in float64 where the device allows
    (the angle of nearly antiparallel gradients needs it), replaces any non-finite result by the plain
    sum (tau = 1, the safe choice when an AMP overflow made K non-finite) and returns a detached tensor
    in the Gram matrix's dtype and device. No host synchronisation happens here.
    """

    #: short name used in logs and summaries
    name: str = "harmonizer"
    #: number of losses the method is defined for (None: any m >= 1)
    num_losses: int | None = None

    def weights(self, gram: Tensor) -> Tensor:
        """Return the loss weights tau (shape ``(m,)``, detached) for the ``(m, m)`` Gram matrix."""
        if gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
            raise ValueError(f"{self.name}: the Gram matrix must be square, got shape {tuple(gram.shape)}")
        m = gram.shape[0]
        if self.num_losses is not None and m != self.num_losses:
            raise ValueError(f"{self.name} harmonizes exactly {self.num_losses} losses, got {m}")
        gram = gram.detach()
        work_dtype = torch.float64 if gram.device.type != "mps" else torch.float32
        k = gram.to(work_dtype)
        tau = self._weights(k)
        finite = torch.isfinite(k).all() & torch.isfinite(tau).all()
        tau = torch.where(finite, tau, torch.ones_like(tau))
        return tau.to(gram.dtype)

    def __call__(self, gram: Tensor) -> Tensor:
        return self.weights(gram)

    @abstractmethod
    def _weights(self, gram: Tensor) -> Tensor:
        """Weights for a float Gram matrix (may contain non-finite entries; the caller guards)."""

    # Stateful harmonizers (e.g. GradVac's EMA target) override these so their state is checkpointed.
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        pass

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self._params().items())
        return f"{self.name}({params})" if params else self.name

    def _params(self) -> dict[str, Any]:
        return {}


def pair_terms(gram: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Split a 2x2 Gram matrix into (‖g1‖², ‖g2‖², g1·g2); the off-diagonal is symmetrised."""
    return gram[0, 0], gram[1, 1], 0.5 * (gram[0, 1] + gram[1, 0])


def pair_angle(n1_sq: Tensor, n2_sq: Tensor, c: Tensor) -> Tensor:
    """Angle θ ∈ [0, π] between g1 and g2 from Gram entries, via atan2 (never acos of a cosine > 1).

    sin θ · ‖g1‖‖g2‖ = sqrt(max(‖g1‖²‖g2‖² − c², 0)) and cos θ · ‖g1‖‖g2‖ = c. A zero gradient gives
    atan2(0, 0) = 0, i.e. "no conflict", which is the convention every harmonizer needs.
    """
    sin_part = torch.sqrt(torch.clamp(n1_sq * n2_sq - c * c, min=0.0))
    return torch.atan2(sin_part, c)


def safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den with den clamped away from zero, so branch-free code never makes inf or NaN."""
    tiny = torch.finfo(den.dtype).tiny
    return num / torch.clamp(den, min=tiny)


HALF_PI = math.pi / 2
