"""Mixed precision through the real Lightning Trainer on CPU (bf16 autocast, float16 + a CPU GradScaler).

The precision rule: the Gram matrix and tau are computed outside autocast in float32 or wider, and under
a GradScaler the per-loss gradients, the monitored steps and clipping are on the scale of the step that
uses them. Each test compares with a float32 computation done independently of the code under test.
"""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from uda.baselines import CDAN
from uda.data import OfflineDigits
from uda.harmonizers import GH, GHPP, NoHarmonizer, harmonized_backward, loss_gradients
from uda.models import LeNet
from uda.module import UDAModule
from uda.training import EngineOptions

LR = 0.05


def small_cdan() -> CDAN:
    torch.manual_seed(0)
    return CDAN(LeNet(), num_classes=10, discriminator_hidden=32, discriminator_dropout=0.0)


def one_iteration(precision: str, harmonizer, plugins=None, **engine) -> tuple[dict, dict, UDAModule]:
    """Weights before and after one training iteration (plain SGD: Δw = -lr · grad)."""
    L.seed_everything(0, verbose=False)
    datamodule = OfflineDigits(source="mnist", target="uci", batch_size=16, iters_per_epoch=1, seed=0)
    module = UDAModule(
        small_cdan(), harmonizer, optimizer=partial(torch.optim.SGD, lr=LR), engine=EngineOptions(**engine)
    )
    before = {k: v.detach().clone() for k, v in module.baseline.state_dict().items()}
    if precision == "16-mixed" and plugins is None:
        # Lightning turns precision="16-mixed" on CPU into bf16; the float16 + GradScaler path that GPUs
        # take is selected explicitly (CPU autocast supports float16, and torch has a CPU GradScaler)
        plugins = [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]
    trainer = L.Trainer(
        accelerator="cpu",
        precision=None if plugins else precision,
        plugins=plugins,
        max_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=datamodule)
    after = {k: v.detach().clone() for k, v in module.baseline.state_dict().items()}
    return before, after, module


def weight_change(before: dict, after: dict) -> torch.Tensor:
    return torch.cat([(after[k] - before[k]).flatten() for k in before if before[k].is_floating_point()])


def test_tau_under_bf16_autocast_equals_tau_of_the_same_gradients_in_float32() -> None:
    model = small_cdan()
    gen = torch.Generator().manual_seed(3)
    xs, ys, xt = torch.randn(16, 1, 28, 28, generator=gen), torch.randint(0, 10, (16,), generator=gen), None
    xt = torch.randn(16, 1, 28, 28, generator=gen)
    from uda.baselines import UDABatch

    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.compute_losses("main", UDABatch(xs, ys, xt), iteration=500)
        losses = [out.losses["align"], out.losses["cls"]]
        params = list(model.parameters())
        stats = harmonized_backward(losses, params, GHPP(0.5), retain_graph=True)
    # independent: the same (float32) parameter gradients, Gram in float64, GH++ on it
    flat = loss_gradients(losses, params).double()
    expected = GHPP(0.5).weights(flat @ flat.T)
    assert stats.gram.dtype == torch.float32
    torch.testing.assert_close(stats.tau.double(), expected, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(stats.gram.double(), flat @ flat.T, rtol=1e-5, atol=0)
    # and the update written into .grad is Σ tau_i g_i at float32 precision
    update = torch.cat([p.grad.flatten() for p in params]).double()
    torch.testing.assert_close(update, expected @ flat, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("harmonizer", [NoHarmonizer(), GH()], ids=["none-monitored", "gh"])
def test_float16_with_grad_scaler_gives_the_float32_update(harmonizer) -> None:
    """A monitored (or harmonized) step under 16-mixed: the GradScaler must unscale an update that is
    on its scale; had the engine written unscaled gradients, the step would be 1/65536 of float32's."""
    b32, a32, m32 = one_iteration("32-true", harmonizer, monitor_every=1)
    b16, a16, m16 = one_iteration("16-mixed", harmonizer, monitor_every=1)
    assert m16.results()["monitored_steps"] == 1 and m16.skipped_steps == 0
    for k in b32:
        assert torch.equal(b32[k], b16[k]), k  # same start
    d32, d16 = weight_change(b32, a32), weight_change(b16, a16)
    assert d32.norm() > 0
    # float16 forward rounding only: the two updates agree to about a percent
    assert (d16 - d32).norm() / d32.norm() < 3e-2
    assert torch.nn.functional.cosine_similarity(d16, d32, dim=0) > 0.999


def test_float16_overflow_step_is_skipped_and_counted_not_applied() -> None:
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**120)  # every gradient overflows float16
    plugin = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    before, after, module = one_iteration("16-mixed", GH(), plugins=[plugin])
    assert module.skipped_steps == 1
    assert module.results()["skipped_steps"] == 1
    for k, v in before.items():
        if v.is_floating_point() and "running" not in k and "num_batches" not in k:
            assert torch.equal(v, after[k]), f"{k} changed although the step overflowed"
    assert scaler.get_scale() < 2.0**120  # the scaler backed off


@pytest.mark.parametrize("precision", ["32-true", "16-mixed"])
def test_clipping_sees_the_unscaled_gradients(precision: str) -> None:
    clip = 1e-3  # far below the gradient norm, so the step is exactly lr · clip long
    before, after, _ = one_iteration(precision, GH(), clip_grad_norm=clip)
    step = weight_change(before, after).norm()
    torch.testing.assert_close(step, torch.tensor(LR * clip), rtol=2e-2, atol=0)


def test_bf16_mixed_trains_with_the_default_callbacks(train_cfg, tmp_path) -> None:
    from tests.conftest import QUICK
    from uda.train import run

    cfg = train_cfg("trainer.precision=bf16-mixed", *QUICK)
    summary = run(cfg).to_dict()
    assert summary["iterations"] == 4 and summary["monitored_steps"] == 4
    assert (tmp_path / "diagnostics" / "final.png").is_file()
