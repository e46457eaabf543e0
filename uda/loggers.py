"""Logger construction: W&B online when an API key is configured, offline otherwise; CSV beside it."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from uda.provenance import provenance

WANDB_LOGGER = "lightning.pytorch.loggers.WandbLogger"
WANDB_MODES = ("auto", "online", "offline", "disabled")


def wandb_api_key_configured() -> bool:
    """True when W&B has credentials: WANDB_API_KEY or an api.wandb.ai entry in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return path.is_file() and netrc.netrc(path).authenticators("api.wandb.ai") is not None
    except (netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: str) -> str:
    """``auto`` → ``online`` with credentials, else ``offline``; an explicit WANDB_MODE always wins."""
    env = os.environ.get("WANDB_MODE")
    if env:
        return env
    if mode == "auto":
        return "online" if wandb_api_key_configured() else "offline"
    return mode


def run_group(cfg: DictConfig) -> str:
    """W&B group: the experiment preset when one is used, else ``<dataset>-<source>-<target>-<baseline>``."""
    from hydra.core.hydra_config import HydraConfig

    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    if choices.get("experiment"):
        return str(choices["experiment"])
    dataset = choices.get("dataset") or "dataset"
    baseline = choices.get("baseline") or "baseline"
    return f"{dataset}-{cfg.dataset.get('source')}-{cfg.dataset.get('target')}-{baseline}"


def build_loggers(cfg: DictConfig) -> list[Logger]:
    """Instantiate every logger under ``cfg.logger``; W&B gets the resolved config and mode."""
    loggers: list[Logger] = []
    for node in (cfg.get("logger") or {}).values():
        if node is None:
            continue
        kwargs: dict[str, Any] = {}
        if node.get("_target_") == WANDB_LOGGER:
            mode = str(node.get("mode", "auto"))
            if mode not in WANDB_MODES:
                from uda.errors import ConfigError

                raise ConfigError(f"logger.wandb.mode={mode!r} is unknown; choose one of: {', '.join(WANDB_MODES)}")
            kwargs["mode"] = resolve_wandb_mode(mode)
            if not node.get("group"):
                kwargs["group"] = run_group(cfg)
            if not node.get("name"):
                kwargs["name"] = None  # no overrides: let W&B pick a name rather than an empty one
            config = OmegaConf.to_container(cfg, resolve=True)
            config["provenance"] = provenance()  # git commit and library versions beside the resolved config
            # `config` cannot be passed through instantiate() (it is that function's own first argument)
            factory = instantiate(node, _partial_=True, **kwargs)
            loggers.append(factory(config=config))
            continue
        loggers.append(instantiate(node, **kwargs))
    return loggers


def finish_wandb(exit_code: int = 0) -> None:
    """Close the active W&B run, if any (always called at the end of a job, success or not)."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)
