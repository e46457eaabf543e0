"""DWL: MMD, LDA and the dynamic weight by hand; each stage steps exactly its modules; T survives a checkpoint."""

from __future__ import annotations

import io
import math
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.unit.harmonizer_fakes import FixedTau
from uda.baselines import UDABatch
from uda.baselines.dwl import DWL, discrepancy_sum, pseudo_label_loss, soft_label_bce
from uda.baselines.dwl_weight import DynamicWeight, balance_factor, lda_discriminability, linear_mmd
from uda.errors import ConfigError
from uda.harmonizers import GH, Harmonizer
from uda.models import LeNet
from uda.module import UDAModule
from uda.training import EngineOptions, run_stage

# ----------------------------------------------------------------------------- alignment and discriminability


def test_linear_mmd_is_the_squared_distance_of_the_domain_means() -> None:
    source = torch.tensor([[0.0, 0.0], [2.0, 2.0]])  # mean (1, 1)
    target = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # mean (1, 0)
    assert linear_mmd(source, target).item() == pytest.approx(1.0)
    # the official formula, mean((f_s − f_t)(f_s − f_t)ᵀ) over index-paired rows, is the same number
    gen = torch.Generator().manual_seed(0)
    fs, ft = torch.randn(6, 4, generator=gen), torch.randn(6, 4, generator=gen) + 1.0
    delta = fs.double() - ft.double()
    assert linear_mmd(fs, ft).item() == pytest.approx((delta @ delta.T).mean().item(), rel=1e-10)


def test_lda_criterion_by_hand_separated_vs_overlapping_classes() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    # 1-d: class means 1 and 11, grand mean 6: S_w = 1+1+1+1 = 4, S_b = 2·25 + 2·25 = 100
    separated = torch.tensor([[0.0], [2.0], [10.0], [12.0]])
    assert lda_discriminability(separated, labels, num_components=1) == pytest.approx(100 / (4 + 1e-6) / 2)
    # class means 1 and 2, grand mean 1.5: S_w = 4, S_b = 2·0.25 + 2·0.25 = 1
    overlapping = torch.tensor([[0.0], [2.0], [1.0], [3.0]])
    assert lda_discriminability(overlapping, labels, num_components=1) == pytest.approx(1 / (4 + 1e-6) / 2)


def test_lda_criterion_matches_the_official_eigen_route_and_divides_by_the_clusters_present() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(10)
    features = torch.randn(30, 5, generator=gen, dtype=torch.float64) + 2.0 * labels.unsqueeze(1)
    x, y = features.numpy(), labels.numpy()
    sw = sum((x[y == c] - x[y == c].mean(0)).T @ (x[y == c] - x[y == c].mean(0)) for c in range(3))
    sb = sum(10 * np.outer(x[y == c].mean(0) - x.mean(0), x[y == c].mean(0) - x.mean(0)) for c in range(3))
    eig = np.sort(np.linalg.eig(np.linalg.inv(sw + 1e-6 * np.eye(5)) @ sb)[0].real)
    assert lda_discriminability(features, labels, num_components=2) == pytest.approx(eig[-2:].sum() / 3, rel=1e-8)
    # S_b has rank (clusters − 1) = 2: the top-2 sum is the whole trace of (S_w + εI)^−1 S_b
    trace = np.trace(np.linalg.solve(sw + 1e-6 * np.eye(5), sb))
    assert lda_discriminability(features, labels, num_components=2) == pytest.approx(trace / 3, rel=1e-8)
    # target pseudo-labels may cover fewer clusters than K = 3 classes: the top K − 1 = 2 eigenvalues of
    # a 1-d problem are its only one, and J is divided by the 2 clusters present (S_b = 100, S_w = 4)
    separated = torch.tensor([[0.0], [2.0], [10.0], [12.0]])
    j = lda_discriminability(separated, torch.tensor([0, 0, 2, 2]), num_components=2)
    assert j == pytest.approx(100 / (4 + 1e-6) / 2)


# ----------------------------------------------------------------------------------------- dynamic weight T


def test_dynamic_weight_starts_at_one_half_and_follows_the_running_normalization() -> None:
    weight = DynamicWeight()
    assert (weight.a_norm, weight.j_norm, weight.t) == (0.5, 0.5, 0.5)

    assert weight.update(alignment=2.0, j_source=3.0, j_target=5.0)
    # A_min stays 0, A_max = 2: A_norm = 2/(2 + 1e-6); J_min = min(1, 3, 5) = 1, J_max = 5, J_w = 3
    a1, j1 = 2 / (2 + 1e-6), (3 - 1) / (5 - 1 + 1e-6)
    assert (weight.a_norm, weight.j_norm) == (pytest.approx(a1), pytest.approx(j1))
    assert weight.t == pytest.approx(a1 / (a1 + 1 - j1))  # ≈ 2/3
    assert weight.j_min == 5.0  # the official reset of the minimum after the first epoch

    weight.update(alignment=1.0, j_source=6.0, j_target=4.0)
    # A_max stays 2: A_norm = 1/2; J range [4, 6], J_w = 4: J_norm = 0
    a2 = 1 / (2 + 1e-6)
    assert (weight.a_norm, weight.j_norm) == (pytest.approx(a2), 0.0)
    assert weight.t == pytest.approx(a2 / (a2 + 1))  # ≈ 1/3

    weight.update(alignment=4.0, j_source=5.0, j_target=7.0)
    # A_max = 4: A_norm ≈ 1; J range [4, 7], J_w = 5: J_norm ≈ 1/3 (no second reset)
    a3, j3 = 4 / (4 + 1e-6), (5 - 4) / (7 - 4 + 1e-6)
    assert (weight.j_min, weight.j_max) == (4.0, 7.0)
    assert weight.t == pytest.approx(a3 / (a3 + 1 - j3))  # ≈ 0.6
    assert weight.epochs == 3


def test_non_finite_measurements_leave_the_weight_unchanged() -> None:
    weight = DynamicWeight()
    weight.update(2.0, 3.0, 5.0)
    before = weight.as_dict()
    assert not weight.update(float("nan"), 3.0, 5.0)
    assert not weight.update(1.0, float("inf"), 5.0)
    assert weight.as_dict() == before


def test_balance_factor_is_clamped_and_defined_everywhere() -> None:
    assert balance_factor(0.6, 0.8) == pytest.approx(0.75)
    assert balance_factor(0.0, 0.3) == 0.0  # perfectly aligned: all weight on discriminability
    assert balance_factor(1.0, 1.0) == 1.0
    assert balance_factor(0.0, 1.0) == 0.5  # 0/0: no preference, the initial value
    assert balance_factor(float("nan"), 0.5) == 0.5
    assert balance_factor(0.5, 1.2) == 1.0  # a J_norm beyond the range would give T > 1


# ------------------------------------------------------------------------------------------------- losses


def test_discrepancy_sum_adds_the_three_classifier_pairs() -> None:
    p = torch.tensor([[1.0, 0.0]])
    p1 = torch.tensor([[0.5, 0.5]])
    p2 = torch.tensor([[0.0, 1.0]])
    # disc(C1, C2) = 0.5, disc(C, C1) = 0.5, disc(C, C2) = 1
    assert discrepancy_sum(p, p1, p2).item() == pytest.approx(2.0)
    assert discrepancy_sum(p, p, p).item() == 0.0


def test_soft_label_bce_uses_the_detached_target_outputs_as_labels() -> None:
    source = torch.tensor([0.0], requires_grad=True)  # sigmoid 0.5
    target = torch.tensor([math.log(3.0)], requires_grad=True)  # sigmoid 0.75
    loss = soft_label_bce(source, target)
    # −(0.75 log 0.5 + 0.25 log 0.5) = log 2
    assert loss.item() == pytest.approx(math.log(2.0))
    loss.backward()
    assert source.grad.item() == pytest.approx(0.5 - 0.75)  # d/dx BCE(σ(x), t) = σ(x) − t
    assert target.grad is None


def test_pseudo_label_loss_by_hand_and_only_its_cross_entropy_trains() -> None:
    uniform = torch.zeros(1, 2)
    loss, mu = pseudo_label_loss(uniform, weight=2.0)
    entropy = math.log(2) / 2  # −mean over samples and classes of p log p
    mu_hand = (math.exp(-entropy) - 0.5) / 0.5  # = √2 − 1
    assert mu.item() == pytest.approx(mu_hand)
    assert loss.item() == pytest.approx(2 * (mu_hand * math.log(2) + (1 - mu_hand) * entropy))

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]], requires_grad=True)
    loss, mu = pseudo_label_loss(logits, weight=2.0)
    (grad,) = torch.autograd.grad(loss, logits)
    ce = F.cross_entropy(logits, torch.tensor([0, 1]))
    (ce_grad,) = torch.autograd.grad(ce, logits)
    torch.testing.assert_close(grad, 2.0 * mu * ce_grad)  # H and μ are constants


# ------------------------------------------------------------------------------------------ model and stages


def small_dwl(**kwargs) -> DWL:
    torch.manual_seed(0)
    defaults = {"hidden": 16, "discriminator_hidden": 16, "num_k1": 2, "num_k3": 3}
    return DWL(LeNet(), num_classes=10, **{**defaults, **kwargs})


def test_stages_follow_the_four_step_procedure_with_the_current_weight() -> None:
    model = small_dwl(num_k2=2)
    names = [s.name for s in model.stages]
    assert names == ["source", "discriminator", "classifiers", "generator", "pseudo_label"]
    source, disc, classifiers, generator, pseudo = model.stages
    assert source.optimizers == ("g", "c") and source.repeat == 2 and source.trade_offs == {"cls": 1.0}
    assert disc.optimizers == ("d",) and disc.repeat == 2 and disc.trade_offs == {"domain": 0.1}
    assert classifiers.optimizers == ("c",) and classifiers.trade_offs == {"cls": 1.0, "neg_discrepancy": 1.0}
    # GH placement: loss "1" = adversarial, Gram over G, tau from the unweighted losses, T applied after
    assert generator.optimizers == ("g",) and generator.repeat == 3 and generator.trade_off == "after"
    assert generator.harmonize == (("adversarial", "discrepancy"),)
    assert generator.trade_offs == {"adversarial": 0.5, "discrepancy": 0.5}
    assert pseudo.optimizers == ("g", "c") and pseudo.repeat == 1
    assert model.official_scope_for("generator") == ("backbone",)

    model.weight.a_norm, model.weight.j_norm = 0.6, 0.8  # T = 0.6 / (0.6 + 0.2)
    assert model.stage("generator").trade_offs == {
        "adversarial": pytest.approx(0.75),
        "discrepancy": pytest.approx(0.25),
    }
    assert [s.name for s in small_dwl(num_k4=0).stages][-1] == "generator"


def test_optimizers_and_generator_momentum_override() -> None:
    model = small_dwl()
    groups = model.optimizer_groups()
    assert set(groups) == {"g", "d", "c"}
    count = {name: sum(p.numel() for ps in g.values() for p in ps) for name, g in groups.items()}
    assert count["g"] == sum(p.numel() for p in model.backbone.parameters())
    assert count["d"] == sum(p.numel() for p in model.discriminator.parameters())
    assert sum(count.values()) == sum(p.numel() for p in model.parameters())
    assert model.optimizer_overrides() == {}  # GH port: SGD momentum 0.9 for every module
    assert small_dwl(generator_momentum=0.0).optimizer_overrides() == {"g": {"momentum": 0.0, "nesterov": False}}


def test_discriminator_init_follows_the_recipe() -> None:
    d = small_dwl(discriminator_hidden=512).discriminator
    assert d.hidden.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert d.out.weight.std().item() == pytest.approx(0.3, rel=0.2)
    assert d.hidden.bias.abs().sum().item() == 0.0 and d.out.bias.abs().sum().item() == 0.0


@pytest.mark.parametrize(("key", "value"), [("num_k3", -1), ("iters_per_epoch", 0)])
def test_bad_settings_are_config_errors(key: str, value: int) -> None:
    with pytest.raises(ConfigError, match=f"baseline.{key}={value} is invalid"):
        small_dwl(**{key: value})


def test_predict_averages_the_three_classifiers() -> None:
    model = small_dwl().eval()
    x = torch.randn(4, 1, 28, 28)
    f = model.backbone(x)
    heads = (model.classifier, model.classifier1, model.classifier2)
    expected = sum(F.softmax(h(f), dim=1) for h in heads) / 3
    torch.testing.assert_close(model.predict(x).exp(), expected)


def batch(seed: int = 1, n: int = 8) -> UDABatch:
    gen = torch.Generator().manual_seed(seed)
    return UDABatch(
        torch.randn(n, 1, 28, 28, generator=gen),
        torch.randint(0, 10, (n,), generator=gen),
        torch.randn(n, 1, 28, 28, generator=gen),
    )


def dwl_module(harmonizer: Harmonizer) -> UDAModule:
    return UDAModule(small_dwl(), harmonizer, optimizer=partial(torch.optim.SGD, lr=0.1, momentum=0.9))


def step_stage(m: UDAModule, name: str, optimizers: list[torch.optim.Optimizer] | None = None) -> list:
    """One run_stage of stage ``name`` on ``batch()`` at iteration 0 with the module's plan (current trade-offs),
    harmonizers and optimizers (or the given ones); returns the step's stats."""
    stage = m.baseline.stage(name)
    plan = m.plans[name].with_trade_offs(stage.trade_offs)
    if optimizers is None:
        by_name = dict(zip(["g", "d", "c"], m.configure_optimizers()[0], strict=True))
        optimizers = [by_name[o] for o in plan.optimizers]
    return run_stage(plan, partial(stage.loss_fn, batch(), 0), optimizers, m.group_harmonizers[name]).stats


@pytest.mark.parametrize(
    ("stage", "expected"),
    [
        ("source", {"backbone", "classifier"}),
        ("discriminator", {"discriminator"}),
        ("classifiers", {"classifier", "classifier1", "classifier2"}),
        ("generator", {"backbone"}),
        ("pseudo_label", {"backbone", "classifier"}),
    ],
)
def test_each_stage_changes_exactly_its_modules(stage: str, expected: set[str]) -> None:
    m = dwl_module(GH())
    before = {n: p.detach().clone() for n, p in m.baseline.named_parameters()}
    step_stage(m, stage)
    changed = {n.split(".")[0] for n, p in m.baseline.named_parameters() if not torch.equal(p, before[n])}
    assert changed == expected


def test_generator_step_harmonizes_the_raw_losses_over_g_and_applies_t_afterwards() -> None:
    harmonizer = FixedTau((2.0, 0.5))
    m = dwl_module(harmonizer)
    m.baseline.weight.a_norm, m.baseline.weight.j_norm = 0.6, 0.8  # T = 0.75
    g_params = list(m.baseline.backbone.parameters())
    with torch.random.fork_rng():
        torch.manual_seed(5)  # same dropout masks as the reference below
        step_stage(m, "generator", [torch.optim.SGD(g_params, lr=0.0)])  # lr 0: .grad is read, G stays
    got = torch.cat([p.grad.flatten() for p in g_params])
    others = [p for n, p in m.baseline.named_parameters() if not n.startswith("backbone.")]
    assert all(p.grad is None for p in others)  # only G is stepped: no gradient written elsewhere

    with torch.random.fork_rng():
        torch.manual_seed(5)
        ref = m.baseline.compute_losses("generator", batch(), 0)

    def flat(loss: torch.Tensor) -> torch.Tensor:
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, g_params, retain_graph=True)])

    g_adv, g_dis = flat(ref.losses["adversarial"]), flat(ref.losses["discrepancy"])
    grads = torch.stack([g_adv, g_dis])
    # unweighted placement: the harmonizer sees the raw gradients' Gram matrix over G ...
    torch.testing.assert_close(harmonizer.seen[0].double(), (grads @ grads.T).double(), rtol=1e-4, atol=1e-10)
    # ... and G's update is tau1·T·g_adv + tau2·(1 − T)·g_dis
    torch.testing.assert_close(got, 2.0 * 0.75 * g_adv + 0.5 * 0.25 * g_dis, rtol=1e-4, atol=1e-8)


# ------------------------------------------------------------------------------------------ epoch updates of T


class LinearBackbone(nn.Module):
    """A deterministic feature extractor (no dropout) so the collected features can be recomputed."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.out_features = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def tiny_dwl() -> DWL:
    torch.manual_seed(0)
    return DWL(LinearBackbone(), num_classes=3, iters_per_epoch=2, hidden=8, discriminator_hidden=8)


def tiny_batch(seed: int) -> UDABatch:
    gen = torch.Generator().manual_seed(seed)
    return UDABatch(torch.randn(6, 4, generator=gen), torch.arange(3).repeat(2), torch.randn(6, 4, generator=gen) + 1)


def test_t_is_recomputed_once_per_epoch_from_the_collected_features() -> None:
    model = tiny_dwl()
    batches = [tiny_batch(1), tiny_batch(2)]
    first = model.end_iteration(0, batches[0], {"source": model.compute_losses("source", batches[0], 0)})
    assert "dwl/alignment" not in first and first["dwl/T"] == 0.5  # mid-epoch: T unchanged

    second = model.end_iteration(1, batches[1], {"source": model.compute_losses("source", batches[1], 1)})
    with torch.no_grad():
        f_s = model.backbone(torch.cat([b.x_source for b in batches]))
        f_t = model.backbone(torch.cat([b.x_target for b in batches]))
        pseudo = torch.cat([model.classifier(model.backbone(b.x_target)).argmax(1) for b in batches])
    y_s = torch.cat([b.y_source for b in batches])
    expected = DynamicWeight()
    a, js, jt = linear_mmd(f_s, f_t).item(), lda_discriminability(f_s, y_s, 2), lda_discriminability(f_t, pseudo, 2)
    expected.update(a, js, jt)
    assert second["dwl/alignment"] == pytest.approx(a)
    assert (second["dwl/j_source"], second["dwl/j_target"]) == (pytest.approx(js), pytest.approx(jt))
    assert second["dwl/T"] == pytest.approx(expected.t) and model.weight.t == pytest.approx(expected.t)
    assert model.stage("generator").trade_offs["adversarial"] == pytest.approx(expected.t)
    assert model.pending_batches == 0  # the epoch's features are dropped once used


def test_state_dict_round_trip_keeps_t_and_the_pending_epoch() -> None:
    model = tiny_dwl()
    for i in range(3):  # one full epoch (T updated) and one batch of the next
        model.end_iteration(i, tiny_batch(i), {"source": model.compute_losses("source", tiny_batch(i), i)})
    assert model.weight.epochs == 1 and model.weight.t != 0.5 and model.pending_batches == 1

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    restored = tiny_dwl()
    restored.load_state_dict(torch.load(buffer, weights_only=True))  # what a Lightning checkpoint holds
    assert restored.weight == model.weight and restored.stages == model.stages

    outputs = {m: {"source": m.compute_losses("source", tiny_batch(3), 3)} for m in (model, restored)}
    t_restored = restored.end_iteration(3, tiny_batch(3), outputs[restored])["dwl/T"]
    torch.testing.assert_close(t_restored, model.end_iteration(3, tiny_batch(3), outputs[model])["dwl/T"])
    assert restored.weight == model.weight and restored.weight.epochs == 2


def test_generator_step_in_feature_space_also_steps_only_g() -> None:
    # engine.grad_space=features needs the one tensor all of a stage's losses depend on
    m = UDAModule(
        small_dwl(), GH(), optimizer=partial(torch.optim.SGD, lr=0.1), engine=EngineOptions(grad_space="features")
    )
    before = {n: p.detach().clone() for n, p in m.baseline.named_parameters()}
    stats = step_stage(m, "generator")
    changed = {n.split(".")[0] for n, p in m.baseline.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"backbone"} and stats[0].stats.space == "features"
