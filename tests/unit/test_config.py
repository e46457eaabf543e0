"""Bad config values fail before training with one sentence naming the key and the fix."""

from __future__ import annotations

import pytest

from uda.config import validate
from uda.errors import ConfigError
from uda.loggers import resolve_wandb_mode, wandb_api_key_configured
from uda.train import build_node


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lr=-0.01", r"optimizer.lr=-0.01 is invalid: the learning rate must be a positive number"),
        ("optimizer.lr=0", r"optimizer.lr=0 is invalid"),
        ("iterations=1000", r"iterations=1000 is not a multiple of eval_every=250"),
        ("iterations=0", r"iterations=0 is invalid"),
        ("baseline.trade_off=-1", r"baseline.trade_off=-1 is invalid"),
        ("lr_mult.backbone=-1", r"lr_mult.backbone=-1 is invalid"),
    ],
)
def test_bad_values_fail_early_with_one_sentence(train_cfg, override: str, message: str) -> None:
    if override.startswith("iterations=1000"):
        cfg = train_cfg(override, "eval_every=250")
        cfg.iterations = 1001
        message = "iterations=1001 is not a multiple of eval_every=250"
    else:
        cfg = train_cfg(override)
    with pytest.raises(ConfigError, match=message) as err:
        validate(cfg)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("dataset.batch_size=0", r"dataset.batch_size=0 is invalid: it must be a positive integer"),
        ("dataset.eval_batch_size=1.5", r"dataset.eval_batch_size=1.5 is invalid: it must be a positive integer"),
        ("dataset.num_workers=-1", r"dataset.num_workers=-1 is invalid: it must be 0 or a positive integer"),
        ("dataset.target=usps", r"dataset.target='usps' is not a domain of offline_digits; choose one of: mnist, uci"),
        ("dataset.source=MNIST", r"dataset.source='MNIST' is not a domain"),
        ("dataset.target=mnist", r"dataset.source and dataset.target are both 'mnist': domain adaptation needs two"),
    ],
)
def test_bad_dataset_values_fail_when_the_datamodule_is_built(train_cfg, override: str, message: str) -> None:
    """The datamodule owns its domains and batch sizes: building it (before any data is read) refuses them."""
    cfg = train_cfg(override)
    validate(cfg)  # not a cross-cutting value: the config check leaves it to the owner
    with pytest.raises(ConfigError, match=message) as err:
        build_node(cfg.dataset, "dataset", iters_per_epoch=cfg.eval_every, seed=cfg.seed)
    assert "\n" not in str(err.value)


def test_default_config_is_valid(train_cfg) -> None:
    validate(train_cfg())
    validate(train_cfg("trainer.precision=16-mixed"))  # the engine works with the float16 GradScaler


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["harmonizer.lam=1.5"], r"harmonizer.lam=1.5 is outside \[0, 1\]: for GH\+\+ it splits the angular"),
        (["harmonizer.lam=-0.1"], r"harmonizer.lam=-0.1 is outside \[0, 1\]"),
        (["harmonizer=prograd", "harmonizer.lam=2"], r"harmonizer.lam=2.0 is outside \[0, 1\]: for ProGrad it is the"),
        (["harmonizer=gradvac", "harmonizer.beta=2"], r"harmonizer.beta=2 is outside \[0, 1\]: it is GradVac's"),
        (["harmonizer=cagrad", "harmonizer.c_a=-1"], r"harmonizer.c_a=-1 is invalid: CAGrad's conflict-averse radius"),
    ],
)
def test_harmonizer_values_are_checked_by_their_owner_in_its_own_terms(train_cfg, overrides, message) -> None:
    """Each harmonizer validates its own hyper-parameters (ProGrad's lam is not GH++'s trade-off)."""
    cfg = train_cfg(*overrides)
    with pytest.raises(ConfigError, match=message) as err:
        build_node(cfg.harmonizer, "harmonizer")
    assert "\n" not in str(err.value)


def test_wandb_mode_auto_is_offline_without_credentials(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert not wandb_api_key_configured()
    assert resolve_wandb_mode("auto") == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    assert resolve_wandb_mode("auto") == "online"
    monkeypatch.setenv("NETRC", str(tmp_path / "missing"))
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_wandb_mode("auto") == "online"
    assert resolve_wandb_mode("offline") == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")  # an explicit environment choice always wins
    assert resolve_wandb_mode("auto") == "disabled"
