"""The harmonizer interface: a pure map from the Gram matrix of per-loss gradients to loss weights.

For losses L_1..L_m with gradients g_i = dL_i/dθ over a parameter scope, the Gram matrix is
K_ij = g_i · g_j. A harmonizer returns weights tau (length m) so that the update direction is
d = Σ_i tau_i g_i, i.e. the step minimizes Σ_i tau_i L_i with tau held constant (GH paper, Eq. 41/44).
Because only K is needed, a harmonizer never sees the model: it is tested on hand-built matrices.

Methods that modify each gradient separately (GH, PCGrad, GradVac, the GH++ rotation) also expose the
*harmonized gradients* ĝ_i = Σ_j A_ij g_j through :meth:`Harmonizer.coefficients`; tau is then the
column sum of A. For the others ĝ_i = tau_i g_i (A = diag(tau)). The diagnostics use A to measure the
inner product of the harmonized pair (the paper's Fig. 12).

A few methods also weight by the loss values (FAMO, DB-MTL): they set ``needs_losses = True`` and the
engine passes the detached values of the group's losses as ``losses``; no extra backward pass is taken.
The class attributes below state what each method supports and guarantees; ``python -m
uda.harmonizers.table`` prints them for the whole family and the property tests check the claims.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


class Harmonizer:
    """Base class. Subclasses implement exactly one of ``_weights(K) -> tau`` or ``_coefficients(K) -> A``.

    The public methods validate the Gram matrix, compute in float64 where the device allows (the angle
    of nearly antiparallel gradients needs it), and fall back to the plain sum (A = I, tau = 1) when
    K or the result is non-finite (an AMP overflow) or when some gradient is exactly zero (nothing to
    harmonize against; e.g. an adversarial loss whose GRL coefficient is still 0). They return detached
    tensors in the Gram matrix's dtype and device, without host synchronisation for two losses.
    """

    #: short name used in logs and summaries; also the name of its conf/harmonizer/<name>.yaml
    name: str = "harmonizer"
    #: number of losses the method is defined for (None: any m >= 1)
    num_losses: int | None = None
    #: largest number of losses its solver accepts (None: no limit)
    max_losses: int | None = None
    #: whether the update d = Σ tau_i g_i provably never opposes a loss gradient (d·g_i >= 0 for every i):
    #: "yes", "for 2 losses" or "no"
    conflict_free: str = "no"
    #: whether permuting the losses permutes the weights alike (False: the loss order or a random order matters)
    symmetric: bool = False
    #: whether the weights depend on earlier steps (the state is checkpointed through state_dict)
    stateful: bool = False
    #: whether the method also needs the loss values (passed by the engine as ``losses``)
    needs_losses: bool = False
    #: work per call, in words, for the table
    cost: str = ""

    # ------------------------------------------------------------------ public
    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        """Loss weights tau, shape ``(m,)``, detached: the update is d = Σ_i tau_i g_i.

        ``losses`` (the m loss values) is required by the methods with ``needs_losses`` and ignored by the others.
        """
        # a subclass may override coefficients(gram) without the losses argument (GradVac): call it that way
        a = self.coefficients(gram) if losses is None else self.coefficients(gram, losses)
        return a.sum(dim=0)

    def coefficients(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        """Harmonized-gradient coefficients A, shape ``(m, m)``: ĝ_i = Σ_j A_ij g_j, tau = A.sum(0)."""
        k = self._validated(gram)
        eye = torch.eye(k.shape[0], dtype=k.dtype, device=k.device)
        finite = torch.isfinite(k).all()
        # solvers never see a non-finite matrix (eigh and friends raise on NaN); the result is discarded
        safe = torch.where(finite, k, eye)
        if self.needs_losses:
            a = self._coefficients_with_losses(safe, self._validated_losses(losses, k))
        else:
            a = self._coefficients(safe)
        usable = finite & torch.isfinite(a).all() & (torch.diagonal(k) > 0).all()
        self._commit(usable)
        return torch.where(usable, a, eye).to(gram.dtype)

    def __call__(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        return self.weights(gram, losses)

    # ------------------------------------------------------- subclass hooks
    def _weights(self, gram: Tensor) -> Tensor:
        raise NotImplementedError

    def _coefficients(self, gram: Tensor) -> Tensor:
        """Default: the method rescales each gradient, ĝ_i = tau_i g_i."""
        return torch.diag(self._weights(gram))

    def _coefficients_with_losses(self, gram: Tensor, losses: Tensor) -> Tensor:
        """The hook of methods with ``needs_losses``: A from the Gram matrix and the loss values (work dtype)."""
        raise NotImplementedError

    def _commit(self, usable: Tensor) -> None:
        """Stateful methods: keep the state computed by this call only where ``usable`` (a 0-d bool tensor,
        False when the step fell back to the plain sum), with ``torch.where``, so no host synchronisation."""
        return None

    # Stateful harmonizers (GradVac's EMA target, random task orders) override these so their state
    # is checkpointed with the model.
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    # --------------------------------------------------------------- helpers
    def _validated(self, gram: Tensor) -> Tensor:
        if gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
            raise ValueError(f"{self.name}: the Gram matrix must be square, got shape {tuple(gram.shape)}")
        m = gram.shape[0]
        if self.num_losses is not None and m != self.num_losses:
            raise ValueError(f"{self.name} harmonizes exactly {self.num_losses} losses, got {m}")
        if m == 0:
            raise ValueError(f"{self.name}: empty Gram matrix")
        work_dtype = torch.float64 if gram.device.type != "mps" else torch.float32
        k = gram.detach().to(work_dtype)
        return 0.5 * (k + k.T)  # exact symmetry; rounding in G Gᵀ can differ in the last bit

    def _validated_losses(self, losses: Tensor | None, k: Tensor) -> Tensor:
        if losses is None:
            raise ValueError(
                f"{self.name} weights the losses by their values: pass `losses` (one value per row of the Gram "
                "matrix); the engine does this for every harmonizer with needs_losses = True"
            )
        values = torch.as_tensor(losses).detach().to(device=k.device, dtype=k.dtype)
        if values.shape != (k.shape[0],):
            raise ValueError(f"{self.name}: expected {k.shape[0]} loss values, got shape {tuple(values.shape)}")
        return values

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.hyperparameters().items())
        return f"{self.name}({params})" if params else self.name

    def hyperparameters(self) -> dict[str, Any]:
        """The settings that change what the harmonizer computes (e.g. ``{"lam": 0.5}``); runs that differ in
        any of them are different methods, and the report never averages them together."""
        return {}


def pair_terms(gram: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Split a 2x2 Gram matrix into (‖g1‖², ‖g2‖², g1·g2)."""
    return gram[0, 0], gram[1, 1], gram[0, 1]


def pair_angle(n1_sq: Tensor, n2_sq: Tensor, c: Tensor) -> Tensor:
    """Angle θ ∈ [0, π] between g1 and g2 from Gram entries, via atan2 (never acos of a cosine > 1).

    sin θ · ‖g1‖‖g2‖ = sqrt(max(‖g1‖²‖g2‖² − c², 0)) and cos θ · ‖g1‖‖g2‖ = c. A zero gradient gives
    atan2(0, 0) = 0, i.e. "no conflict".
    """
    sin_part = torch.sqrt(torch.clamp(n1_sq * n2_sq - c * c, min=0.0))
    return torch.atan2(sin_part, c)


def safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den with den clamped away from zero, so branch-free code never makes inf or NaN."""
    tiny = torch.finfo(den.dtype).tiny
    return num / torch.clamp(den, min=tiny)


def projection_coefficients(gram: Tensor, order: list[list[int]] | None = None, strength: float = 1.0) -> Tensor:
    """Sequential conflict projections (PCGrad) expressed on coefficients, from the Gram matrix alone.

    Each harmonized gradient starts as g_i (row i of A = e_i); for j in ``order[i]`` (default: all
    j ≠ i in index order), if ĝ_i · g_j < 0 it becomes ĝ_i − strength·(ĝ_i · g_j / ‖g_j‖²) g_j.
    Since ĝ_i = Σ_k A_ik g_k, the dot product is (A K)_ij: no gradient vector is touched.
    """
    m = gram.shape[0]
    a = torch.eye(m, dtype=gram.dtype, device=gram.device)
    rows = []
    for i in range(m):
        row = a[i]
        for j in order[i] if order is not None else [j for j in range(m) if j != i]:
            dot = row @ gram[:, j]
            step = torch.where(dot < 0, strength * safe_div(dot, gram[j, j]), torch.zeros_like(dot))
            row = row - step * a[j]
        rows.append(row)
    return torch.stack(rows)


HALF_PI = math.pi / 2
