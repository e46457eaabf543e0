"""DWL's dynamic weight T between alignment and discriminability (Xiao & Zhang, CVPR 2021).

Recipe: reference/baselines.md §2.4 (official DWL code and its GH port ``fuxianghuang1/GH:dwl``).
Once per epoch DWL measures

* the *alignment degree* A: linear MMD between the source and target features of the epoch,
  ``A = ‖mean f_s − mean f_t‖²`` (the official ``mean((f_s − f_t)(f_s − f_t)ᵀ)`` over index-paired rows
  is the same number);
* the *discriminability degree* J: the LDA criterion max J(W), i.e. the sum of the top K−1 eigenvalues of
  ``(S_w + 1e−6 I)^−1 S_b`` divided by the number of clusters, on source features with true labels
  (J_s) and on target features with pseudo-labels (J_t); ``J_w = min(J_s, J_t)``.

Both are normalized by running minima/maxima and combined into
``T = A_norm / (A_norm + 1 − J_norm)``: a poorly aligned model (large A_norm) puts more weight T on the
adversarial loss, a poorly discriminative one (small J_norm) more weight 1 − T on the discrepancy loss.
Everything here is a pure function of tensors or a plain dataclass, so it is tested on hand-made inputs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

#: ridge added to the within-class scatter before inverting it (official code)
LDA_RIDGE = 1e-6
#: added to the (max − min) normalizers (official code)
NORM_EPS = 1e-6
#: T when it is undefined (A_norm = 0 and J_norm = 1): the official initial value, no preference
NEUTRAL_T = 0.5


def linear_mmd(source: Tensor, target: Tensor) -> Tensor:
    """Linear MMD ``‖mean f_s − mean f_t‖²`` in float64 (DWL's alignment degree A)."""
    return (source.double().mean(dim=0) - target.double().mean(dim=0)).pow(2).sum()


def scatter_matrices(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """LDA within-class scatter ``S_w = Σ_c Σ_{i∈c} (x_i − μ_c)(x_i − μ_c)ᵀ`` and between-class scatter
    ``S_b = Σ_c N_c (μ_c − μ)(μ_c − μ)ᵀ`` (float64), over the classes present in ``labels``."""
    x = features.double().flatten(1)
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    counts = counts.to(x.dtype)
    class_means = torch.zeros(counts.numel(), x.shape[1], dtype=x.dtype, device=x.device)
    class_means.index_add_(0, inverse, x)
    class_means /= counts.unsqueeze(1)
    centered = x - class_means[inverse]
    offsets = class_means - x.mean(dim=0)
    return centered.T @ centered, (offsets * counts.unsqueeze(1)).T @ offsets


def lda_eigenvalues(within: Tensor, between: Tensor, ridge: float = LDA_RIDGE) -> Tensor:
    """Eigenvalues of ``(S_w + ridge·I)^−1 S_b``, ascending.

    The official code calls ``numpy.linalg.eig`` on the non-symmetric product. With the Cholesky factor
    ``S_w + ridge·I = L Lᵀ`` the product is similar to the symmetric ``L^−1 S_b L^−ᵀ``, which has the same
    (real, non-negative) eigenvalues and is solved stably by ``eigvalsh``. If the factorization fails
    (rounding on a huge matrix), the real parts of the general eigenvalues are used, as the official
    code does.
    """
    eye = torch.eye(within.shape[0], dtype=within.dtype, device=within.device)
    regularized = within + ridge * eye
    chol, info = torch.linalg.cholesky_ex(regularized)
    if int(info) == 0:
        half = torch.linalg.solve_triangular(chol, between, upper=False)  # L^−1 S_b
        sym = torch.linalg.solve_triangular(chol, half.T, upper=False)  # L^−1 S_b L^−ᵀ
        return torch.linalg.eigvalsh((sym + sym.T) / 2)
    return torch.linalg.eigvals(torch.linalg.solve(regularized, between)).real.sort().values


def lda_discriminability(features: Tensor, labels: Tensor, num_components: int) -> float:
    """LDA criterion J: the sum of the ``num_components`` (= K − 1) largest eigenvalues of
    ``(S_w + 1e−6 I)^−1 S_b``, divided by the number of clusters present in ``labels``."""
    if num_components < 1:
        raise ValueError(f"num_components must be >= 1 (K − 1 for K classes), got {num_components}")
    within, between = scatter_matrices(features, labels)
    eigenvalues = lda_eigenvalues(within, between)
    clusters = int(torch.unique(labels).numel())
    return float(eigenvalues[-num_components:].sum()) / clusters


def balance_factor(a_norm: float, j_norm: float) -> float:
    """``T = A_norm / (A_norm + 1 − J_norm)``, clamped to [0, 1]; :data:`NEUTRAL_T` where it is undefined
    (a zero or non-finite denominator, i.e. A_norm = 0 and J_norm = 1)."""
    denominator = a_norm + 1.0 - j_norm
    if not (math.isfinite(denominator) and denominator > 0 and math.isfinite(a_norm)):
        return NEUTRAL_T
    return min(1.0, max(0.0, a_norm / denominator))


@dataclass
class DynamicWeight:
    """Running normalization of DWL's alignment and discriminability degrees (official ``main.py`` and
    ``solver.py`` state, carried between epochs).

    Initial values as in the official code: A_min = A_max = 0 (A_min therefore stays 0), J_min = J_max = 1,
    A_norm = J_norm = 0.5 (so T = 0.5 during the first epoch). After the first update J_min is reset to
    J_max (the official ``if t == 0: min_Jw = max_Jw``).
    """

    a_min: float = 0.0
    a_max: float = 0.0
    j_min: float = 1.0
    j_max: float = 1.0
    a_norm: float = 0.5
    j_norm: float = 0.5
    epochs: int = 0

    @property
    def t(self) -> float:
        """The current balance factor T (weight of the adversarial loss; 1 − T weighs the discrepancy)."""
        return balance_factor(self.a_norm, self.j_norm)

    def update(self, alignment: float, j_source: float, j_target: float) -> bool:
        """Fold in one epoch's A, J_s, J_t. Non-finite measurements leave the state unchanged (returns
        False), so one degenerate epoch cannot turn T into NaN."""
        if not all(math.isfinite(v) for v in (alignment, j_source, j_target)):
            return False
        a = abs(alignment)
        self.a_max = max(abs(self.a_max), a)
        self.a_min = min(abs(self.a_min), a)
        self.a_norm = abs(a - self.a_min) / (self.a_max - self.a_min + NORM_EPS)
        self.j_max = max(self.j_max, j_source, j_target)
        self.j_min = min(self.j_min, j_source, j_target)
        j_w = min(j_source, j_target)
        self.j_norm = (j_w - self.j_min) / (self.j_max - self.j_min + NORM_EPS)
        if self.epochs == 0:
            self.j_min = self.j_max
        self.epochs += 1
        return True

    def as_dict(self) -> dict[str, float | int]:
        """Plain values for a checkpoint."""
        return asdict(self)
