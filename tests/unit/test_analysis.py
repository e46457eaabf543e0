"""The measures behind the analysis figures (uda.analysis) against hand derivations, and the feature hook on
every baseline."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate

from uda.analysis import balance_measures, evaluation, lda_criterion, predict_with_features, stratified_indices
from uda.baselines.dwl_weight import lda_discriminability
from uda.callbacks import FeatureAnalysis
from uda.errors import ConfigError

BASELINES = ("source_only", "dann", "cdan", "mcd", "gvb", "dwl", "ssrt")


def test_stratified_subsample_keeps_class_proportions_by_largest_remainder() -> None:
    labels = torch.tensor([0] * 6 + [1] * 3 + [2] * 1)
    # quotas 5·(6, 3, 1)/10 = (3, 1.5, 0.5): floors (3, 1, 0); one left for the tie 0.5/0.5 -> class 1
    picked = stratified_indices(labels, 5, torch.Generator().manual_seed(0))
    assert torch.bincount(labels[picked], minlength=3).tolist() == [3, 2, 0]
    assert picked.tolist() == sorted(set(picked.tolist()))
    again = stratified_indices(labels, 5, torch.Generator().manual_seed(0))
    assert torch.equal(picked, again)
    assert torch.equal(stratified_indices(labels, 10, torch.Generator()), torch.arange(10))
    big = torch.arange(1000) % 4  # 250 per class -> 25 per class out of 100
    assert torch.bincount(big[stratified_indices(big, 100, torch.Generator().manual_seed(1))]).tolist() == [25] * 4


def test_mmd_and_lda_criterion_of_a_known_case() -> None:
    # means (2, 0) and (0, 2): ‖μs − μt‖² = 8
    source = torch.tensor([[1.0, 0.0], [3.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    target = torch.tensor([[0.0, 1.0], [0.0, 3.0]])
    # 1-d source classes {0, 2} and {4, 6}: S_w = 4, S_b = 2·(1−3)² + 2·(5−3)² = 16, J = (16/4) / 2 clusters = 2
    source_1d = torch.tensor([[0.0], [2.0], [4.0], [6.0]])
    labels = torch.tensor([0, 0, 1, 1])
    values = balance_measures(source_1d, labels, source_1d, labels, num_classes=2, target_labels=1 - labels)
    assert math.isclose(values["j_source"], 2.0, rel_tol=1e-6)
    assert math.isclose(values["j_target"], 2.0, rel_tol=1e-6)
    assert math.isclose(values["j_target_true"], 2.0, rel_tol=1e-6)  # relabelling the classes changes nothing
    assert values["mmd"] == 0.0
    mixed = balance_measures(source, torch.tensor([0, 0, 1, 1]), target, torch.tensor([0, 1]), num_classes=2)
    assert math.isclose(mixed["mmd"], 8.0, rel_tol=1e-12)
    assert "j_target_true" not in mixed


def test_lda_criterion_equals_dwls_eigenvalue_sum() -> None:
    gen = torch.Generator().manual_seed(0)
    for n, dim, k, present in ((400, 60, 10, 10), (120, 30, 10, 4), (40, 80, 3, 3)):  # the last: n < dim
        x = torch.randn(n, dim, generator=gen).relu()
        y = torch.randint(0, present, (n,), generator=gen)
        x[y == 1] += 0.7
        expected = lda_discriminability(x, y, k - 1)
        assert lda_criterion(x, y, k) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("baseline", BASELINES)
def test_feature_hook_catches_one_row_per_image_on_every_baseline(train_cfg, baseline: str) -> None:
    cfg = train_cfg(f"baseline={baseline}")
    model = instantiate(cfg.baseline, backbone=instantiate(cfg.backbone), num_classes=10)
    model.train()
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    feature_module = getattr(model, model.shared_scope[-1])
    with evaluation(model):
        features, logits = predict_with_features(model.predict, feature_module, x)
        assert not torch.is_grad_enabled()
        assert torch.equal(logits, model.predict(x))
    assert features.shape[0] == 3 and features.dim() == 2 and logits.shape == (3, 10)
    assert all(m.training for m in model.modules())  # every module back in its own mode
    twice = torch.nn.Identity()
    with pytest.raises(ValueError, match="ran 2 times"):
        predict_with_features(lambda v: twice(twice(v)), twice, x)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"split": "val"}, "split='val' is unknown"),
        ({"num_samples": 1}, "num_samples must be >= 2"),
        ({"balance_every": -1}, "balance_every must be >= 0"),
        ({"plots": "sometimes"}, "plots='sometimes' is unknown"),
        ({"batch_size": 0}, "batch_size must be positive"),
    ],
)
def test_bad_callback_options_fail_in_one_sentence(option: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FeatureAnalysis(**option)
