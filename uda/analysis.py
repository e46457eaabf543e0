"""What the GH paper's analysis figures measure (Sec. 5: t-SNE Fig. 8, confusion Fig. 10, balance Fig. 11),
as plain PyTorch functions of a model and tensors; :class:`uda.callbacks.FeatureAnalysis` calls them during
training and :mod:`uda.report.figures` draws the results.

- :func:`stratified_indices`: a class-proportional subsample drawn with a caller's private generator.
- :func:`predict_with_features`: class logits and the feature extractor's output in one forward pass
  (a forward hook on the feature module, so no baseline needs a new method).
- :func:`balance_measures`: the alignment / discriminability balance of Fig. 11 with DWL's measures
  (:mod:`uda.baselines.dwl_weight`): linear MMD between source and target features, and the LDA criterion
  max J(W) on source features with labels and on target features with pseudo-labels (and, for analysis
  only, with the true target labels).
- :func:`evaluation`: eval mode and no autograd for a measurement, every submodule's mode restored after.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from uda.baselines.dwl_weight import LDA_RIDGE, lda_discriminability, linear_mmd, scatter_matrices


def stratified_indices(labels: Tensor, num_samples: int, generator: torch.Generator) -> Tensor:
    """Sorted indices of a subsample of ``num_samples`` items whose class counts are proportional to the
    class counts of ``labels`` (largest-remainder rounding, ties to the smaller class index), drawn
    uniformly within each class with ``generator``. All indices when ``num_samples >= len(labels)``."""
    labels = torch.as_tensor(labels).flatten().cpu()
    total = labels.numel()
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    if num_samples >= total:
        return torch.arange(total)
    classes, counts = torch.unique(labels, return_counts=True)
    quotas = counts.double() * num_samples / total
    take = quotas.floor().long()
    remainder = quotas - take
    # largest fractional parts first; a stable sort keeps the smaller class index first on ties
    order = torch.sort(-remainder, stable=True).indices
    take[order[: num_samples - int(take.sum())]] += 1
    chosen = []
    for cls, k in zip(classes.tolist(), take.tolist(), strict=True):
        members = torch.nonzero(labels == cls).flatten()
        chosen.append(members[torch.randperm(members.numel(), generator=generator)[:k]])
    return torch.cat(chosen).sort().values


def dataset_labels(dataset: Dataset) -> Tensor:
    """The class label of every item of ``dataset``, without decoding images where the dataset keeps its
    labels (``.labels``, ``TensorDataset``, ``Subset`` of those); otherwise read item by item."""
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        return torch.as_tensor(np.asarray(labels)).long()
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None and len(tensors) >= 2:
        return tensors[1].long()
    inner, indices = getattr(dataset, "dataset", None), getattr(dataset, "indices", None)
    if inner is not None and indices is not None:
        return dataset_labels(inner)[torch.as_tensor(indices)]
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])  # type: ignore[arg-type]


@contextmanager
def evaluation(module: nn.Module) -> Iterator[None]:
    """Eval mode (dropout off, BatchNorm statistics frozen) and no autograd; afterwards every submodule
    gets back its own mode, so a module that training keeps in eval mode stays there."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training


def predict_with_features(predict: Any, feature_module: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(features, logits)`` of one batch: ``predict(x)`` gives the logits and a forward hook on
    ``feature_module`` catches its output (flattened to ``(batch, dim)``) on the way."""
    caught: list[Tensor] = []
    handle = feature_module.register_forward_hook(lambda _m, _i, out: caught.append(out))
    try:
        logits = predict(x)
    finally:
        handle.remove()
    if len(caught) != 1 or not isinstance(caught[0], Tensor) or caught[0].shape[0] != x.shape[0]:
        raise ValueError(
            f"the feature module {type(feature_module).__name__} ran {len(caught)} times in one prediction of "
            f"{x.shape[0]} images; the analysis needs one run per batch returning one feature row per image"
        )
    return caught[0].flatten(1), logits


def collect_features(
    predict: Any, feature_module: nn.Module, batches: Iterable[Any], device: torch.device | str
) -> dict[str, Tensor]:
    """Features, logits' argmax (``predictions``) and ``labels`` over ``batches`` of ``(x, y)``, on the CPU."""
    feats, preds, labels = [], [], []
    for x, y in batches:
        f, logits = predict_with_features(predict, feature_module, x.to(device, non_blocking=True))
        feats.append(f.float().cpu())
        preds.append(logits.argmax(dim=1).cpu())
        labels.append(torch.as_tensor(y).cpu())
    return {"features": torch.cat(feats), "predictions": torch.cat(preds), "labels": torch.cat(labels).long()}


def lda_criterion(features: Tensor, labels: Tensor, num_classes: int) -> float:
    """DWL's LDA criterion max J(W) (:func:`uda.baselines.dwl_weight.lda_discriminability` with K − 1
    components), computed without the d×d eigenproblem.

    S_b = Mᵀ M with the rows of M = sqrt(N_c) (μ_c − μ), and Σ_c N_c (μ_c − μ) = 0, so S_b has rank at
    most K − 1 and the K − 1 largest eigenvalues of (S_w + 1e−6 I)^−1 S_b are all its non-zero ones:
    their sum is trace((S_w + 1e−6 I)^−1 S_b) = ‖L^−1 Mᵀ‖²_F with S_w + 1e−6 I = L Lᵀ. One Cholesky
    factorization instead of an eigendecomposition of a feature-dimension matrix (equal values, tested;
    DWL's own routine is used when the factorization fails). Divided by the number of clusters present.
    """
    x = features.double().flatten(1)
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    within, _ = scatter_matrices(x, labels)
    means = torch.zeros(counts.numel(), x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, inverse, x)
    means /= counts.unsqueeze(1).to(x.dtype)
    rows = (means - x.mean(dim=0)) * counts.unsqueeze(1).to(x.dtype).sqrt()
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    chol, info = torch.linalg.cholesky_ex(within + LDA_RIDGE * eye)
    if int(info) != 0:
        return lda_discriminability(x, labels, max(int(num_classes) - 1, 1))
    whitened = torch.linalg.solve_triangular(chol, rows.T, upper=False)
    return float(whitened.pow(2).sum()) / counts.numel()


def balance_measures(
    source_features: Tensor,
    source_labels: Tensor,
    target_features: Tensor,
    target_predictions: Tensor,
    num_classes: int,
    target_labels: Tensor | None = None,
) -> dict[str, float]:
    """The between-task balance of Fig. 11 with DWL's measures (:mod:`uda.baselines.dwl_weight`).

    ``mmd``: linear MMD ``‖mean f_s − mean f_t‖²`` (alignment: smaller is better aligned);
    ``j_source``: LDA max J(W) of the source features with their labels; ``j_target``: of the target
    features with the model's predictions as pseudo-labels (DWL's J_t; no target labels involved);
    ``j_target_true``: with the true target labels (analysis only). J sums the K−1 largest eigenvalues of
    ``(S_w + 1e−6 I)^−1 S_b`` per cluster (:func:`lda_criterion`; larger = more discriminative); it is
    ill-conditioned when a subsample has fewer samples than the feature dimension.
    """
    out = {
        "mmd": float(linear_mmd(source_features, target_features)),
        "j_source": lda_criterion(source_features, source_labels, num_classes),
        "j_target": lda_criterion(target_features, target_predictions, num_classes),
    }
    if target_labels is not None:
        out["j_target_true"] = lda_criterion(target_features, target_labels, num_classes)
    return out
