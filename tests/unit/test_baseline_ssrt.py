"""SSRT: masked KL, token perturbation, layer choice, safe training and the harmonized step, on a tiny ViT."""

from __future__ import annotations

import io
import math
from functools import partial

import pytest
import torch

from tests.unit.harmonizer_fakes import FixedTau
from uda.baselines import UDABatch
from uda.baselines.safe_training import SafeTraining, chunk_means, diversity_dropped
from uda.baselines.ssrt import (
    SSRT,
    append_perturbed_targets,
    masked_kl,
    self_refinement_loss,
    vit_features,
)
from uda.errors import ConfigError
from uda.models import LeNet, TimmBackbone
from uda.module import UDAModule
from uda.training import EngineOptions, run_stage

IMG = 16


def tiny_vit() -> TimmBackbone:
    """3 blocks of width 32 on 16x16 grayscale images (4x4 patches): builds and runs in milliseconds."""
    return TimmBackbone(
        "vit_tiny_patch16_224", img_size=IMG, patch_size=4, in_chans=1, depth=3, embed_dim=32, num_heads=2
    )


def tiny_ssrt(**kwargs) -> SSRT:
    torch.manual_seed(0)
    options = {"bottleneck_dim": 16, "sr_layers": (-1, 0, 2), "safe_period": 4, "safe_levels": 2, "rng_seed": 0}
    return SSRT(tiny_vit(), num_classes=5, **{**options, **kwargs})


def tiny_batch(n: int = 4, seed: int = 1) -> UDABatch:
    gen = torch.Generator().manual_seed(seed)
    return UDABatch(
        torch.randn(n, 1, IMG, IMG, generator=gen),
        torch.randint(0, 5, (n,), generator=gen),
        torch.randn(n, 1, IMG, IMG, generator=gen),
    )


# ------------------------------------------------------------------------ masked KL
P = torch.tensor([[0.9, 0.1], [0.5, 0.5]])
Q = torch.tensor([[0.6, 0.4], [0.2, 0.8]])


def test_masked_kl_by_hand_in_both_directions() -> None:
    # KL(P || Q): only row 0 is confident (0.9 > 0.6; 0.5 is not)
    kl_pq = 0.9 * math.log(0.9 / 0.6) + 0.1 * math.log(0.1 / 0.4)
    got = masked_kl(P.log(), Q.log(), epsilon=0.6)
    assert got.item() == pytest.approx(kl_pq / (1 + 1e-6), rel=1e-5)
    # KL(Q || P) masked by Q: row 1 only (0.8 > 0.6; the mask is strict, so 0.6 is out)
    kl_qp = 0.2 * math.log(0.2 / 0.5) + 0.8 * math.log(0.8 / 0.5)
    assert masked_kl(Q.log(), P.log(), epsilon=0.6).item() == pytest.approx(kl_qp / (1 + 1e-6), rel=1e-5)
    # the SR loss picks the direction: clean first = KL(clean || perturbed)
    assert self_refinement_loss(P.log(), Q.log(), 0.6, clean_first=True).item() == pytest.approx(got.item())
    reverse = self_refinement_loss(P.log(), Q.log(), 0.6, clean_first=False)
    assert reverse.item() == pytest.approx(kl_qp / (1 + 1e-6), rel=1e-5)
    # with a low threshold both rows count and the mean is over two samples
    kl_row1 = 0.5 * math.log(0.5 / 0.2) + 0.5 * math.log(0.5 / 0.8)
    both = masked_kl(P.log(), Q.log(), epsilon=0.4).item()
    assert both == pytest.approx((kl_pq + kl_row1) / (2 + 1e-6), rel=1e-5)


def test_masked_kl_is_zero_when_nothing_is_confident() -> None:
    assert masked_kl(P.log(), Q.log(), epsilon=0.95).item() == 0.0
    assert masked_kl(P.log(), P.log(), epsilon=0.0).item() == pytest.approx(0.0, abs=1e-7)


# ---------------------------------------------------------------------- perturbation
def test_perturbation_mixes_each_target_row_with_its_mirror() -> None:
    rows = torch.arange(10, dtype=torch.float32).reshape(5, 2)  # 2 source rows, 3 target rows
    out = append_perturbed_targets(rows, num_source=2, alpha=0.25)
    target = rows[2:]
    expected = target + 0.25 * (target.flip(0) - target)  # mirror of target row j is target row 2 - j
    assert out.shape == (8, 2)
    torch.testing.assert_close(out[:5], rows)
    torch.testing.assert_close(out[5:], expected)
    torch.testing.assert_close(out[5], torch.tensor([4.0 + 0.25 * 4, 5.0 + 0.25 * 4]))


def test_perturbation_gradient_skips_the_detached_difference() -> None:
    rows = torch.randn(5, 3, requires_grad=True)
    w = torch.arange(1.0, 10.0).reshape(3, 3)  # distinct weights per perturbed row
    (append_perturbed_targets(rows, num_source=2, alpha=0.4)[5:] * w).sum().backward()
    # d(perturbed_j)/d(target_j) = identity and nothing reaches the mirror row: the difference is detached
    torch.testing.assert_close(rows.grad[2:], w)
    assert rows.grad[:2].abs().sum() == 0


@pytest.mark.parametrize("layer", [-1, 0, 2])
def test_perturbed_rows_enter_the_chosen_block(layer: int) -> None:
    model = tiny_ssrt().eval()
    vit = model.vit
    seen: list[torch.Tensor] = []
    where = vit.patch_embed if layer == -1 else vit.blocks[layer]
    handle = where.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    x = torch.cat([tiny_batch().x_source, tiny_batch().x_target])
    feats = vit_features(vit, x, num_source=4, layer=layer, alpha=0.3)
    handle.remove()
    (rows,) = seen
    assert rows.shape[0] == 12 and feats.shape == (12, 32)
    target = rows[4:8]
    torch.testing.assert_close(rows[8:], target + 0.3 * (target.flip(0) - target))


def test_clean_walk_equals_the_backbone_and_zero_alpha_changes_nothing() -> None:
    model = tiny_ssrt().eval()
    b = tiny_batch()
    x = torch.cat([b.x_source, b.x_target])
    # no perturbation: the block-by-block walk is timm's forward (what predict() uses)
    torch.testing.assert_close(vit_features(model.vit, x), model.backbone(x))
    for layer in model.sr_layers:
        feats = vit_features(model.vit, x, num_source=4, layer=layer, alpha=0.0)
        logits = model.classifier(model.bottleneck(feats))
        torch.testing.assert_close(logits[8:], logits[4:8])
    out = tiny_ssrt(sr_alpha=0.0, safe_training=False).eval().compute_losses("main", b, iteration=3)
    assert out.losses["align"].item() == pytest.approx(out.metrics["domain_loss"].item(), abs=1e-6)
    assert out.metrics["sr_loss"].item() == pytest.approx(0.0, abs=1e-6)


def test_layer_choice_covers_sr_layers_and_is_seeded() -> None:
    model = tiny_ssrt()
    draws = [model.draw_layer() for _ in range(200)]
    assert set(draws) == {-1, 0, 2}
    assert abs(draws.count(0) / 200 - 1 / 3) < 0.12  # uniform-ish
    again = tiny_ssrt()
    assert [again.draw_layer() for _ in range(200)] == draws
    directions = [model.draw_clean_first() for _ in range(400)]
    assert 0.4 < sum(directions) / 400 < 0.6  # sr_loss_p = 0.5
    always = tiny_ssrt(sr_loss_p=1.0)
    assert all(always.draw_clean_first() for _ in range(20))


def test_non_vit_backbones_and_bad_layers_fail_in_one_sentence() -> None:
    with pytest.raises(ConfigError, match="timm VisionTransformer.*LeNet.*backbone=vit_digits"):
        SSRT(LeNet(), num_classes=10)
    with pytest.raises(ConfigError, match=r"sr_layers=\[0, 3\].*\[-1, 2\]"):
        SSRT(tiny_vit(), num_classes=5, sr_layers=[0, 3])
    with pytest.raises(ConfigError, match="safe_period >= 2\\*\\*safe_levels"):
        SSRT(tiny_vit(), num_classes=5, sr_layers=[0], safe_period=8, safe_levels=4)


def test_losses_and_metrics_follow_the_recipe() -> None:
    model = tiny_ssrt()
    out = model.compute_losses("main", tiny_batch(), iteration=2)
    r = math.sin(2 / 4 * math.pi / 2)  # T = 4
    assert set(out.losses) == {"cls", "align"}
    assert out.metrics["sr_ramp"] == pytest.approx(r)
    assert out.metrics["sr_alpha"] == pytest.approx(0.3 * r) and out.metrics["sr_weight"] == pytest.approx(0.2 * r)
    assert out.metrics["grl_coeff"] == pytest.approx(0.1 * (2 / (1 + math.exp(-2 / 1000)) - 1))
    expected_align = out.metrics["domain_loss"] + 0.2 * r * out.metrics["sr_loss"]
    assert out.losses["align"].item() == pytest.approx(expected_align.item(), rel=1e-6)
    assert 1 <= out.metrics["diversity"].item() <= 4  # distinct classes among 4 target predictions
    stage = model.stages[0]
    assert stage.harmonize == (("cls", "align"),) and stage.trade_off == "before" and stage.tau_applies_to == "all"
    assert stage.trade_offs == {"cls": 1.0, "align": 1.0}
    assert model.official_scope == ("backbone",)


# --------------------------------------------------------------------- safe training
def test_chunk_means_split_like_numpy() -> None:
    assert chunk_means([1, 2, 3, 4, 5], 2) == [2.0, 4.5]  # the first chunk takes the extra element
    assert chunk_means([1, 2, 3, 4], 4) == [1.0, 2.0, 3.0, 4.0]


def test_drop_test_on_hand_built_logs() -> None:
    flat = [10.0] * 16
    assert not diversity_dropped(flat, None, levels=4)
    assert diversity_dropped([10.0] * 8 + [8.5] * 8, None, levels=0) is False  # level 0: one chunk only
    assert diversity_dropped([10.0] * 8 + [8.5] * 8, None, levels=1)  # halves: 10 -> 8.5
    assert not diversity_dropped([10.0] * 8 + [9.5] * 8, None, levels=4)  # a drop of 0.5 is no collapse
    # a short dip is only seen at a fine scale: 16 chunks see 10 -> 7, 2 chunks see 10 -> 9.625
    dip = [10.0] * 12 + [7.0] * 2 + [10.0] * 2
    assert not diversity_dropped(dip, None, levels=1) and diversity_dropped(dip, None, levels=3)
    # a drop right at the period boundary needs the previous period's tail
    assert not diversity_dropped([8.5] * 16, None, levels=2)
    assert diversity_dropped([8.5] * 16, [10.0] * 16, levels=2)
    assert not diversity_dropped([8.5] * 16, [10.0] * 8 + [9.0] * 8, levels=0)  # 9.0 -> 8.5


def period_of(safe: SafeTraining, values: list[float]) -> None:
    safe.diversity = []
    for v in values:
        safe.record(v)


def test_restore_decision_ramp_and_period_doubling() -> None:
    safe = SafeTraining(period=4, levels=1)
    assert not safe.is_check_iteration(0) and safe.is_check_iteration(3) and not safe.is_check_iteration(4)

    period_of(safe, [5, 5, 5, 5])
    assert not safe.check(3) and safe.previous_diversity == [5, 5, 5, 5]

    # drop > 1 with r(7) = 1 > 0.1: restore next iteration, restart the ramp at 7; 7 - 0 > r_period = 4 ⇒ no doubling
    period_of(safe, [5, 5, 3, 3])
    assert safe.check(7)
    assert safe.restore_pending and safe.r_phase == 7 and safe.r_period == 4
    assert safe.previous_diversity == [5, 5, 5, 5]  # a collapsed period is not the next reference
    assert safe.ramp(7) == 0.0 and safe.ramp(9) == pytest.approx(math.sin(2 / 4 * math.pi / 2))
    model = tiny_ssrt(safe_training=False)
    safe.take_snapshot(model)
    assert safe.begin(8, model)
    assert safe.last_restore == 8 and not safe.restore_pending

    # collapsing again within r_period of that restore (11 - 8 <= 4): the ramp restarts and slows down
    period_of(safe, [5, 5, 3, 3])
    assert safe.check(11) and safe.r_period == 8 and safe.r_phase == 11

    # the same drop while r <= 0.1 is ignored: r(15) = sin(1/16·π/2) = 0.098 one iteration after a restart
    fresh = SafeTraining(period=4, levels=1)
    fresh.r_phase, fresh.r_period = 14, 16
    period_of(fresh, [5, 5, 3, 3])
    assert fresh.ramp(15) == pytest.approx(math.sin(1 / 16 * math.pi / 2)) and fresh.ramp(15) <= 0.1
    assert not fresh.check(15) and not fresh.restore_pending and fresh.r_period == 16
    # a small drop never restores
    period_of(fresh, [5, 5, 4.5, 4.5])
    assert not fresh.check(31)


def test_restore_reloads_the_snapshot_weights_and_buffers() -> None:
    model = tiny_ssrt()
    assert model.begin_iteration(0) == {"safe_restored": 0.0}
    snapshot = {n: p.detach().clone() for n, p in model.named_parameters()}
    bn_mean = model.bottleneck[1].running_mean.clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # in place, like an optimizer step
        model.bottleneck[1].running_mean.add_(3.0)
    assert all(v.device.type == "cpu" for v in model.safe.snapshot.values())
    # a copy, not views of the live tensors (the official state_dict() snapshot follows the weights)
    name, first = next(iter(model.named_parameters()))
    assert not torch.equal(first, model.safe.snapshot[name])
    model.safe.restore_pending = True
    params_before = [id(p) for p in model.parameters()]
    assert model.begin_iteration(1) == {"safe_restored": 1.0}
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), snapshot[name])
    torch.testing.assert_close(model.bottleneck[1].running_mean, bn_mean)
    assert [id(p) for p in model.parameters()] == params_before  # the optimizer keeps its parameters


def test_end_iteration_logs_diversity_and_checks_at_period_end() -> None:
    model = tiny_ssrt()
    b = tiny_batch()
    records = []
    for i in range(4):
        model.begin_iteration(i)
        out = model.compute_losses("main", b, i)
        records.append(out.metrics["diversity"].item())
        metrics = model.end_iteration(i, b, {"main": out})
        assert ("safe_restore_scheduled" in metrics) == (i == 3)  # the last iteration of the period T = 4
    assert [v.item() for v in model.safe.diversity] == records
    # without a collapse the log becomes the reference of the next period's drop test
    assert (model.safe.previous_diversity == records) == (metrics["safe_restore_scheduled"] == 0.0)


def test_safe_training_state_survives_a_checkpoint() -> None:
    model = tiny_ssrt()
    b = tiny_batch()
    for i in range(6):
        model.begin_iteration(i)
        model.end_iteration(i, b, {"main": model.compute_losses("main", b, i)})
    model.safe.r_period, model.safe.r_phase, model.safe.last_restore = 8, 3, 4
    model.safe.restore_pending = True
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # what a Lightning checkpoint holds, read safely

    other = tiny_ssrt(rng_seed=123)
    other.load_state_dict(state)
    assert other.safe.state_dict().keys() == model.safe.state_dict().keys()
    for key in ("r_period", "r_phase", "last_restore", "restore_pending", "diversity", "previous_diversity"):
        assert other.safe.state_dict()[key] == model.safe.state_dict()[key], key
    assert other.safe.snapshot.keys() == model.safe.snapshot.keys()
    for name, tensor in model.safe.snapshot.items():
        assert torch.equal(other.safe.snapshot[name], tensor) and other.safe.snapshot[name].device.type == "cpu"
    # the generator continues where it was: same layer choices and KL directions after resuming
    assert [other.draw_layer() for _ in range(20)] == [model.draw_layer() for _ in range(20)]
    assert [other.draw_clean_first() for _ in range(20)] == [model.draw_clean_first() for _ in range(20)]


# --------------------------------------------------------------------- harmonized step
def flat_grad(loss: torch.Tensor, params: list) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params, strict=True)]
    )


def test_harmonized_step_gram_over_the_vit_and_tau_on_every_parameter() -> None:
    harmonizer = FixedTau((2.0, 0.5))
    model = tiny_ssrt(cls_weight=0.7)
    module = UDAModule(model, harmonizer, optimizer=partial(torch.optim.SGD, lr=0.1), engine=EngineOptions())
    (optimizer,) = module.configure_optimizers()[0]
    iteration = 600  # GRL and ramp well above zero: the alignment loss reaches the ViT
    rng_state = model.rng.get_state()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    loss_fn = partial(model.stage("main").loss_fn, tiny_batch(), iteration)
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: .grad is read, the weights stay
    with torch.random.fork_rng():
        torch.manual_seed(5)  # same dropout masks as the reference below
        run_stage(module.plans["main"], loss_fn, [frozen], module.group_harmonizers["main"], iteration=iteration)
    got = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.rng.set_state(rng_state)  # same perturbed layer and KL direction
    with torch.random.fork_rng():
        torch.manual_seed(5)
        ref = model.compute_losses("main", tiny_batch(), iteration)
    vit_params = list(model.backbone.parameters())
    # weighted placement: the Gram matrix is over the ViT only, of (cls_weight·g_cls, g_align)
    over_vit = torch.stack([0.7 * flat_grad(ref.losses["cls"], vit_params), flat_grad(ref.losses["align"], vit_params)])
    assert over_vit[1].abs().sum() > 0
    torch.testing.assert_close(harmonizer.seen[0].double(), (over_vit @ over_vit.T).double(), rtol=1e-4, atol=1e-9)
    # tau multiplies every gradient (official tau_applies_to=all): heads and discriminator included
    names, params = zip(*model.named_parameters(), strict=True)
    g_cls, g_align = flat_grad(ref.losses["cls"], list(params)), flat_grad(ref.losses["align"], list(params))
    expected = 2.0 * 0.7 * g_cls + 0.5 * g_align
    torch.testing.assert_close(torch.cat([got[n].flatten() for n in names]), expected, rtol=1e-4, atol=1e-8)

    optimizer.step()  # every parameter moves: the ViT, the bottleneck, the classifier and the discriminator
    assert {n.split(".")[0] for n in before} == {"backbone", "bottleneck", "classifier", "discriminator"}
    assert [n for n, p in model.named_parameters() if torch.equal(p, before[n])] == []


# ------------------------------------------------------------------------- configs
def test_digits_config_builds_ssrt_on_the_tiny_digits_vit(train_cfg) -> None:
    from hydra.utils import instantiate

    cfg = train_cfg("baseline=ssrt")
    assert cfg.backbone.name == "vit_tiny_patch16_224" and cfg.backbone.in_chans == 1
    backbone = instantiate(cfg.backbone)
    model = instantiate(cfg.baseline, backbone=backbone, num_classes=10)
    assert isinstance(model, SSRT) and model.sr_layers == (0, 2, 4) and len(model.vit.blocks) == 6
    assert model.grl(1000) == pytest.approx(0.1 * (2 / (1 + math.exp(-1)) - 1))
    assert model.predict(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert cfg.optimizer.weight_decay == 0.0005


@pytest.mark.parametrize(
    ("preset", "lr", "bottleneck", "alpha"),
    [("office31", 0.001, 1024, 0.2), ("officehome", 0.004, 2048, 0.3), ("visda2017", 0.002, 1024, 0.3),
     ("domainnet", 0.004, 1024, 0.3)],
)  # fmt: skip
def test_benchmark_presets_select_vit_b_and_the_recipe(train_cfg, preset, lr, bottleneck, alpha) -> None:
    cfg = train_cfg(f"experiment={preset}_ssrt")
    assert cfg.backbone.name == "vit_base_patch16_224.augreg_in21k_ft_in1k" and "in_chans" not in cfg.backbone
    assert cfg.baseline._target_ == "uda.baselines.ssrt.SSRT" and list(cfg.baseline.sr_layers) == [0, 4, 8]
    assert (cfg.optimizer.lr, cfg.baseline.bottleneck_dim, cfg.baseline.sr_alpha) == (lr, bottleneck, alpha)
    assert dict(cfg.lr_mult) == {"backbone": 0.1, "heads": 1.0} and cfg.dataset.batch_size == 32
    assert cfg.baseline.safe_period == 1000 and cfg.iterations % cfg.eval_every == 0
